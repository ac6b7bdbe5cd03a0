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


def lik_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def assert_matches_reference(got, y, scales, means, g_yhat, g_lik, *, mode, zero_center, seed,
                             temperature):
    """got = (y_hat, likelihoods, [grad_y, grad_scales, grad_means]) of a backend on the CPU, for
    inputs y, scales, means (CPU, any dtype), upstreams g_yhat, g_lik, scale and likelihood bounds
    SCALE_BOUND and LIKELIHOOD_BOUND. Holds it to the contract:

    - y_hat bit for bit the reference's of the same dtype with the same u: both run the same
      float32/float64 operations c + r~_D in the same order (float16/bfloat16 round the same
      float32 value).
    - likelihoods and gradients within the per-element first-order bound of error_bounds around
      the float64 reference on the upcast inputs and the same u. Gradients get on top: both sides
      round their final sum g_yhat + g_v once (2 eps of the value), the reference's grad_mu sums
      g_yhat - g_yhat (one rounding of |g_yhat|, counted in the y and mu bounds), and half-precision
      gradients are rounded to their dtype at the end (half an ulp, absolute below its smallest
      normal: out_eps * tiny).
    - Where the likelihood bound decides whether g_P passes and the bound is within the error of
      p (ambiguous, and g_P >= 0, the only sign where the decision matters) the gradient may take
      either side; such elements must stay below 1 % so that the mask cannot hide a comparison.
    """
    k_yhat, k_lik, k_grads = got
    dtype = y.dtype
    u = lq.uniform_noise(y.shape, seed) if mode != "ste" else None
    assert k_yhat.dtype == dtype and k_lik.dtype == lik_dtype(dtype)
    assert k_yhat.shape == y.shape and k_lik.shape == y.shape
    r_yhat, _, _ = run(reference_fn(mode, zero_center, u, temperature), y, scales, means, g_yhat,
                       g_lik)
    assert torch.equal(k_yhat, r_yhat), "y_hat differs from the reference's bits"

    f64 = lambda t: None if t is None else t.to(torch.float64)  # noqa: E731
    y64, s64, m64, u64 = f64(y), f64(scales), f64(means), f64(u)
    _, d_lik, d_grads = run(reference_fn(mode, zero_center, u64, temperature), y64, s64, m64,
                            f64(g_yhat), f64(g_lik))
    eps = compute_eps(dtype)
    v = rate_residual64(y64, m64, u64, mode, zero_center, temperature)
    err_p, err_gv, err_gs, ambiguous = error_bounds(
        y64, s64, m64, u64, v, f64(g_lik), eps, scale_bound=SCALE_BOUND,
        likelihood_bound=LIKELIHOOD_BOUND)
    ambiguous &= g_lik >= 0
    assert ambiguous.float().mean() < 0.01  # the mask must not hide the comparison

    diff_p = (f64(k_lik) - d_lik).abs()
    assert (diff_p <= err_p).all(), f"likelihood off by {(diff_p - err_p).max():.3e} beyond bound"

    out_eps = EPS[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0
    g_term = eps * f64(g_yhat).abs()
    bounds = {"y": err_gv + g_term, "scales": err_gs, "means": err_gv + g_term}
    for name, k, want in zip(("y", "scales", "means"), k_grads, d_grads):
        if want is None:
            assert k is None, f"grad {name}: given without an input"
            continue
        assert k.dtype == dtype, name
        tol = bounds[name] + 2 * eps * want.abs()
        tol = tol + out_eps * want.abs() + out_eps * torch.finfo(dtype).tiny
        diff = (f64(k) - want).abs()
        ok = (diff <= tol) | ambiguous
        assert ok.all(), f"grad {name}: {int((~ok).sum())} elements beyond bound, worst " \
                         f"{(diff - tol)[~ok].max():.3e}"


def same_bits(a, b) -> bool:
    """Equal bit patterns (+0 and -0 differ; NaN payloads and signs too); None matches None."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    if not a.is_floating_point():
        return torch.equal(a, b)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(ints), b.view(ints))


def assert_same_bits(a, b, what: str) -> None:
    """same_bits, with the first differing element and the ulp distance in the message."""
    if same_bits(a, b):
        return
    assert a is not None and b is not None, f"{what}: {a is None} vs {b is None} for None"
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    a, b = a.detach().cpu(), b.detach().cpu()
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    ia, ib = a.view(ints).to(torch.int64), b.view(ints).to(torch.int64)
    bad = ia != ib
    first = bad.nonzero()[0].tolist()
    raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} elements differ, max "
                         f"{int((ia - ib).abs().max())} ulp; first at {first}: "
                         f"{a[tuple(first)].item()!r} vs {b[tuple(first)].item()!r}")


def special_inputs(shape, dtype, with_means=True):
    """make_inputs plus edge values: NaN, inf, huge, exact half-integers, signed zeros, scales at,
    below and above the bound, zero and negative scales, deep tails (at least 40 elements)."""
    y, s, m = make_inputs(shape, torch.float64, with_means=with_means)
    y, s = y.flatten().clone(), s.flatten().clone()
    assert y.numel() >= 40
    y[:12] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 2.5, -0.5, 0.5, -0.0,
                           0.0, 3.5, 1e-30, -7.5], dtype=torch.float64)
    s[12:24] = torch.tensor([float("nan"), 0.0, -1.0, 0.11, 1e-30, 1e30, float("inf"), 0.05,
                             2.0, 0.11, 0.3, 1e-3], dtype=torch.float64)
    y[24:36] = torch.tensor([40.0, -40.0, 12.0, -3.2, 1.2, -1.2, 0.7, 100.0, 5.49, 5.51, 6.0,
                             -6.0], dtype=torch.float64)
    s[24:36] = 0.11
    if m is not None:
        m = m.flatten().clone()
        m[36:40] = torch.tensor([float("nan"), float("inf"), 0.5, -0.0], dtype=torch.float64)
        m = m.view(shape).to(dtype)
    return y.view(shape).to(dtype), s.view(shape).to(dtype), m


def fuzz_inputs(n, dtype, seed):
    """Extreme magnitudes of both signs, subnormals, zeros of both signs, exact ties, values at the
    rounding limits; scales from below the bound to the float maximum."""
    g = torch.Generator().manual_seed(seed)
    fmax = torch.finfo(dtype).max if dtype == torch.float64 else torch.finfo(torch.float32).max
    def log_uniform(lo, hi):  # noqa: E306
        e = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
        return 10.0**e
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    y = sign * log_uniform(-3, 2)
    kind = torch.randint(0, 10, (n,), generator=g)
    y = torch.where(kind == 0, sign * log_uniform(2, 38), y)
    y = torch.where(kind == 1, sign * (torch.randint(-40, 40, (n,), generator=g).double() + 0.5), y)
    y = torch.where(kind == 2, sign * 1e-40, y)                                # subnormal
    y = torch.where(kind == 3, sign * 0.0, y)                                  # +-0
    y = torch.where(kind == 4, sign * (2.0**22 + 0.5), y)
    y = torch.where(kind == 5, sign * fmax, y)
    means = torch.randn(n, generator=g, dtype=torch.float64) * 3
    means = torch.where(torch.rand(n, generator=g) < 0.1, -0.0 * means, means)
    means = torch.where(kind == 6, sign * log_uniform(0, 37), means)
    scales = log_uniform(-2, 2)
    skind = torch.randint(0, 8, (n,), generator=g)
    scales = torch.where(skind == 0, log_uniform(2, 37.5), scales)
    scales = torch.where(skind == 1, torch.full_like(scales, 1e-42), scales)  # below the bound
    scales = torch.where(skind == 2, -log_uniform(-3, 3), scales)              # negative
    scales = torch.where(skind == 3, torch.full_like(scales, fmax), scales)
    cast = lambda t: t.to(dtype)  # noqa: E731
    y, means, scales = cast(y), cast(means), cast(scales)
    ok = torch.isfinite(y) & torch.isfinite(means) & torch.isfinite(scales)
    return y[ok], scales[ok], means[ok]


def fuzz_seed(*key) -> int:
    """A seed for fuzz_inputs fixed by `key` across processes (hash() of a str is salted)."""
    import zlib

    return zlib.crc32(repr(key).encode()) % 1000
