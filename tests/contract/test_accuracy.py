"""docs/spec.md section 1, accuracy: the bin mass against an independent float64 evaluation at
the same v and s, at every scale (relative error <= 1e-5 where p >= 1e-12 and <= 1e-4 where
p >= 1e-30 in float32 compute, <= 1e-12 where p >= 1e-250 in float64), the tail values the spec
quotes, the normal tail at exact arguments, and a seeded fuzz over extreme inputs in every mode
and dtype (finite, in [b_p, 1], accurate)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lic_quant as lq
from helpers import fuzz_inputs, fuzz_seed

MODES = lq.MODES

# ---------------------------------------------------------------------------------------------
# the exact bin mass in float64, independent of the kernels' method


_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)


def exact_bin_mass(v, s):
    """p = P(|v| - 1/2 < s X < |v| + 1/2) in float64 for float64 arrays v, s > 0: Gauss-Legendre
    quadrature of the density where the bin is narrow relative to the Gaussian (h max(m, 1) < 1,
    where the difference of tails would cancel and the integrand is nearly polynomial), the
    difference of float64 tails elsewhere (it cancels by at most a factor 1 / (1 - e^-1))."""
    from scipy.special import ndtr

    av, h = np.abs(v), 1.0 / s
    with np.errstate(all="ignore"):  # |v| / s overflows for the fuzz's extremes: inf is right
        m = av * h
    narrow = h * np.maximum(m, 1.0) < 1.0
    with np.errstate(all="ignore"):
        nodes = m[:, None] + 0.5 * h[:, None] * _GL_X[None, :]
        quad = 0.5 * h * (np.exp(-0.5 * nodes**2) @ _GL_W) / math.sqrt(2 * math.pi)
        a, b = (av - 0.5) * h, (av + 0.5) * h
        diff = ndtr(-a) - ndtr(-b)
    return np.where(narrow, quad, diff)


def check_accuracy(p, v, s, *, float64=False):
    """docs/spec.md section 1: relative error <= 1e-5 where p >= 1e-12 and <= 1e-4 where
    p >= 1e-30 (float32 compute); <= 1e-12 where p >= 1e-250 (float64)."""
    truth = exact_bin_mass(v.double().numpy(), s.double().numpy())
    got = p.double().numpy()
    rel = np.abs(got - truth) / np.where(truth > 0, truth, 1.0)
    bands = [(1e-250, 1e-12)] if float64 else [(1e-12, 1e-5), (1e-30, 1e-4)]
    for floor, tol in bands:
        sel = truth >= floor
        assert sel.any()
        worst = int(np.argmax(np.where(sel, rel, 0.0)))
        assert rel[sel].max() <= tol, (
            f"rel err {rel[worst]:.3e} > {tol} at v={v[worst].item()!r}, s={s[worst].item()!r}, "
            f"p={got[worst]!r}, truth={truth[worst]!r}")


# ---------------------------------------------------------------------------------------------
# tails and exact arguments


@pytest.mark.parametrize("v,sigma,expected", [(1.0, 0.11, 2.74084e-06), (2.0, 0.2, 3.19089e-14),
                                                (1.2, 0.11, 9.8516e-11)])
def test_tail_likelihoods(backend, v, sigma, expected):
    """The values docs/spec.md quotes (9.8516e-11 at |v| = 1.2, s = 0.11), both signs of v."""
    for sign in (1.0, -1.0):
        for dtype in (d for d in (torch.float32, torch.float64) if backend.takes(d)):
            # y = 0 rounds to 0 and is not re-centred, so the residual is exactly 0 - mu = v
            y = torch.zeros(1, dtype=dtype)
            mu = torch.tensor([-sign * v], dtype=dtype)
            s = torch.tensor([sigma], dtype=dtype)
            _, p = backend.quantize(y, s, mu, mode="ste", zero_center=False,
                                    likelihood_bound=0.0)
            assert abs(p.item() / expected - 1) < 1e-4, (dtype, p.item())


def test_likelihood_accuracy_at_exact_arguments(backend):
    # Integer v and power-of-two s make (|v| -+ 1/2)/s exact in float32, so what remains is the
    # error of the normal tail itself: ours is within 3.3e-7 of the truth (tools/fit_normal_sf.py),
    # torch's float32 erfc within a few ulps, and the subtraction adds one rounding. 1e-6 of the
    # summed tails is therefore a bound a 1e-5 relative error anywhere in the tail would break.
    import scipy.special

    v = torch.arange(0, 9, dtype=torch.float64)
    s = 2.0 ** torch.arange(-4, 4, dtype=torch.float64)
    vv, ss = torch.meshgrid(v, s, indexing="ij")
    vv, ss = vv.flatten(), ss.flatten()
    y = torch.zeros_like(vv, dtype=torch.float32)
    _, p = backend.quantize(y, ss.float(), (-vv).float(), mode="ste", zero_center=False,
                            scale_bound=0.0, likelihood_bound=0.0)
    a1, a2 = ((vv - 0.5) / ss).numpy(), ((vv + 0.5) / ss).numpy()
    q1, q2 = scipy.special.ndtr(-a1), scipy.special.ndtr(-a2)
    truth = torch.from_numpy(q1 - q2)
    keep = truth > 1e-37
    err = (p.double() - truth).abs()[keep]
    bound = 1e-6 * torch.from_numpy(q1 + q2)
    if not backend.is_kernel:
        # torch's form rounds the argument x = a/sqrt(2) once more before erfc (and a/s in
        # (1/2 - |v|)/s then -x is exact): a relative argument error of 2 eps moves Q(a) by
        # phi(a) * |a| * 2 eps. Its erfc adds a few ulps of Q.
        phi = lambda a: np.exp(-0.5 * a * a) / np.sqrt(2 * np.pi)  # noqa: E731
        eps32 = 2.0**-24
        extra = 2 * eps32 * (np.abs(a1) * phi(a1) + np.abs(a2) * phi(a2)) + 4 * eps32 * (q1 + q2)
        bound = bound + torch.from_numpy(extra)
    bound = bound[keep]
    assert (err <= bound).all(), (err / bound).max()


# ---------------------------------------------------------------------------------------------
# every scale


def test_likelihood_accuracy_at_large_scales(kernel_backend):
    """Where the two tails are nearly equal (large s) the kernels use the midpoint series; before
    it the error was 3.6e-3 at sigma in (1e2, 1e4], 12 % at 1e6 and 140x at 1.9e9."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.11, 0.3, 1.0, 2.5, 8.0, 1e2, 3e3, 1e4, 1e6, 1.9e9, 1e12, 1e20])
    s = scales.repeat_interleave(2000)
    v = torch.round(torch.randn(s.shape, generator=g) * s * torch.rand(s.shape, generator=g) * 4)
    v[::7] = 0.0
    _, p = kernel_backend.quantize(v, s, mode="ste", likelihood_bound=0.0)
    check_accuracy(p, torch.round(v), s)


def test_float64_accuracy_at_every_scale(kernel_backend):
    kernel_backend.need_dtype(torch.float64)
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([0.11, 0.7, 3.0, 40.0, 1e3, 1e6, 1e12, 1e100], dtype=torch.float64)
    s = scales.repeat_interleave(1000)
    v = torch.round(torch.randn(s.shape, generator=g, dtype=torch.float64) * s * 3)
    _, p = kernel_backend.quantize(v, s, mode="ste", likelihood_bound=0.0)
    check_accuracy(p, v, s, float64=True)


# ---------------------------------------------------------------------------------------------
# seeded fuzz


def rate_residual(y, means, u, mode, temperature):
    """v of the kernels for zero_center=True, in the compute dtype (the reference's surrogate)."""
    from lic_quant.reference import surrogate

    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    r = y.to(cdt) - means.to(cdt)
    rate, _ = surrogate(mode, r, None if u is None else u.to(cdt), temperature)
    return rate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_fuzz(kernel_backend, mode, dtype):
    """Likelihoods finite and in [b_p, 1], y_hat and all gradients finite wherever v is finite,
    and the accuracy bands of check_accuracy, on 25 000 extreme inputs per mode and dtype (the
    interpreter takes 4096: numpy is slow). The other kernel backends give the CPU kernels' bits
    on these inputs (test_bit_identity.py)."""
    kernel_backend.need_dtype(dtype)
    n = 4096 if kernel_backend.is_interpreter else 25_000
    y, s, m = fuzz_inputs(n, dtype, seed=fuzz_seed(mode, dtype))
    b_p, b_s = 1e-9, 0.11
    kw = dict(mode=mode, seed=77, temperature=0.375, scale_bound=b_s)
    leaves = [t.clone().requires_grad_(True) for t in (y, s, m)]
    y_hat, lik = kernel_backend.quantize(*leaves, likelihood_bound=b_p, **kw)
    gy, gs, gm = torch.autograd.grad((-lik.double().log2().sum() + y_hat.double().sum()), leaves)
    u = lq.uniform_noise(y.shape, 77) if mode != "ste" else None
    v = rate_residual(y, m, u, mode, 0.375)
    v_finite = torch.isfinite(v)
    assert v_finite.float().mean() > 0.9  # the fuzz is not all overflow
    assert torch.isfinite(lik).all()
    assert (lik >= b_p).all() and (lik <= 1).all()
    assert torch.isfinite(y_hat[v_finite]).all()
    for g in (gy, gs, gm):
        assert torch.isfinite(g[v_finite]).all()
    # accuracy against the float64 evaluation at the same v and s (beyond 2^125, resp. 2^1000,
    # the kernels hold s there: section 1)
    cdt = v.dtype
    s_eff = torch.clamp(s.to(cdt), min=b_s)
    sel = v_finite & (s_eff < (2.0**125 if cdt == torch.float32 else 2.0**1000))
    p_raw = kernel_backend.quantize(y, s, m, likelihood_bound=0.0, **kw)[1]
    check_accuracy(p_raw[sel], v[sel], s_eff[sel], float64=dtype == torch.float64)
