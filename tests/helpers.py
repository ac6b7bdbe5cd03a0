"""Shared test inputs and the error model behind the tolerances of the kernel tests.

Tolerance model (first-order rounding analysis, evaluated in float64 for every element):
the float32 pipeline computes v = r~_R with a few roundings of size eps*(|y - mu| + |v| + |u| + 1),
then the arguments a_i = (|v| -+ 1/2)/s with a few more, then Q(a_i) with the relative error of
the implementation (measured max 3.3e-7 ~ 6 eps for ours, ~2 eps for torch's erfc). A perturbation
da of the argument moves Q(a) by phi(a) da, so the likelihood is off by at most
    C * [ phi(a1) da1 + phi(a2) da2 + eps (Q(a1) + Q(a2)) ]
where the last term is the evaluation error of both tail terms, which p = Q(a1) - Q(a2) can cancel
(the bound does not divide by p, so cancellation is allowed for, not hidden). The gradient bounds
follow the same pattern for phi and u*phi. C = 16 covers the roundings counted above with margin;
an implementation that is off by 1e-5 relative in the tails, or takes a wrong branch, fails it.
"""
from __future__ import annotations

import math

import torch

import lic_quant as lq

EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24,
       torch.float64: 2.0**-53}
C_ROUNDING = 16.0
SCALE_BOUND, LIKELIHOOD_BOUND = 0.11, 1e-9
ODD_SHAPES = [(3, 5, 7, 11), (1, 17, 13), (257,), (2, 3, 1, 64, 5)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def compute_eps(dtype: torch.dtype) -> float:
    return EPS[torch.float64] if dtype == torch.float64 else EPS[torch.float32]


def make_inputs(shape, dtype=torch.float32, *, seed=0, with_means=True, device="cpu"):
    """Latents spread over many bins, scales on both sides of the 0.11 bound and deep into the
    tails (likelihoods below 1e-9 occur), means off the lattice."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    scales = torch.rand(shape, generator=g, dtype=torch.float64) * 2.5 + 0.02
    # a share of tiny scales so the scale bound and the likelihood tails are exercised
    tiny = torch.rand(shape, generator=g) < 0.2
    scales = torch.where(tiny, torch.rand(shape, generator=g, dtype=torch.float64) * 0.2, scales)
    means = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 if with_means else None
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
    return cast(y), cast(scales), cast(means)


def make_upstream(shape, dtype, lik_dtype, *, seed=1, device="cpu"):
    """Upstream gradients of both signs (so both bounds' sign rules are exercised)."""
    g = torch.Generator().manual_seed(seed)
    g_yhat = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    g_lik = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=lik_dtype, device=device)
    return g_yhat, g_lik


def run(fn, y, scales, means, g_yhat, g_lik):
    """Values and gradients of fn(y, scales, means) -> (y_hat, likelihoods) for given upstreams."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (y, scales, means)]
    y_hat, lik = fn(*leaves)
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
    grads = [t.grad if t is not None else None for t in leaves]
    return y_hat.detach(), lik.detach(), grads


def _phi(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _q(x):
    return 0.5 * torch.special.erfc(x / math.sqrt(2.0))


def error_bounds(y, scales, means, u, v, g_lik, eps, *, scale_bound, likelihood_bound):
    """Per-element absolute error bounds (float64) for P, grad through v, and grad through s.

    All arguments are float64 tensors; v is the float64 reference's rate residual."""
    mu = means if means is not None else torch.zeros_like(y)
    uu = u if u is not None else torch.zeros_like(y)
    s = scales.clamp_min(scale_bound)
    av = v.abs()
    # v = (y - c) + offset: the subtraction, the offset arithmetic and the final add each round
    r = y - mu
    dv = eps * (2 * r.abs() + 2 * av + uu.abs() + 1.0)
    a1, a2 = (av - 0.5) / s, (av + 0.5) / s
    da1 = (dv + eps * (av + 0.5)) / s + eps * a1.abs()
    da2 = (dv + eps * (av + 0.5)) / s + eps * a2.abs()
    p1, p2 = _phi(a1), _phi(a2)
    # the last term: the bound itself is rounded to the compute dtype (1e-9 is not a float32)
    err_p = C_ROUNDING * (p1 * da1 + p2 * da2 + eps * (_q(a1) + _q(a2)) + eps * likelihood_bound)
    # g_p passes or not; where the likelihood-bound decision is ambiguous the caller masks it out
    gp = g_lik.abs()
    u1, u2 = (v + 0.5) / s, (v - 0.5) / s
    du = da2  # |du_i| <= da2 (the larger of the two)
    gv = gp / s * ((p1 + p2) * eps + (u1.abs() * p1 + u2.abs() * p2) * du)
    gv = gv + eps * gp * (p1 - p2).abs() / s
    gs = gp / s * ((u1.abs() * p1 + u2.abs() * p2) * eps
                   + ((1 - u1 * u1).abs() * p1 + (1 - u2 * u2).abs() * p2) * du)
    gs = gs + eps * gp * (u1 * p1 - u2 * p2).abs() / s
    # phi below the smallest normal float loses relative accuracy: allow that absolute slack
    tiny = torch.finfo(torch.float64 if eps < 2.0**-30 else torch.float32).tiny
    floor = tiny * gp / s * (2 + u1.abs() + u2.abs())
    gv, gs = gv + floor, gs + floor
    p = _q(a1) - _q(a2)  # unbounded, float64
    ambiguous = (p - likelihood_bound).abs() <= err_p
    return err_p, C_ROUNDING * gv, C_ROUNDING * gs, ambiguous


def kernel_fn(mode, zero_center, seed, temperature, backend):
    """fn(y, scales, means) -> (y_hat, likelihoods) through gaussian_quantize on `backend`."""
    def fn(y, s, m):
        return lq.gaussian_quantize(y, s, m, mode=mode, temperature=temperature, seed=seed,
                                    zero_center=zero_center, backend=backend,
                                    scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND)
    return fn


def reference_fn(mode, zero_center, u, temperature):
    """The same through the pure-PyTorch reference with explicit noise u."""
    def fn(y, s, m):
        return lq.gaussian_quantize_reference(y, s, m, u, mode=mode, temperature=temperature,
                                              zero_center=zero_center, scale_bound=SCALE_BOUND,
                                              likelihood_bound=LIKELIHOOD_BOUND)
    return fn


def rate_residual64(y, means, u, mode, zero_center, temperature):
    """v of the float64 reference (the input of the error model)."""
    mu = means if means is not None else torch.zeros_like(y)
    c = mu if zero_center else torch.zeros_like(y)
    rate, _ = lq.reference.surrogate(mode, y - c, u, temperature)
    return rate if zero_center else rate - mu
