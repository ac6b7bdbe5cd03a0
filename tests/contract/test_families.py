"""docs/spec.md section 6: lq.quantize(..., family=...) for the Gaussian, Laplace and logistic
families on every backend, checked against an independent evaluation with mpmath
(tests/mp_oracle.py: the definitions, at 50 significant digits).

- accuracy of p (section 1's clauses for every family): float32 compute 1e-5 relative where
  p >= 1e-12 and 1e-4 where p >= 1e-30, float64 1e-12 where p >= 1e-250, over a grid of |v| and s
  that reaches the underflow edge of the tails, s from 1e-6 to 1e9 and |v| up to 1e8, on the
  exact v each mode feeds the density;
- the slopes dp/d|v| and dp/ds against the oracle, relative to the size of their terms
  (|f(a)| + |f(b)|, |a f(a)| + |b f(b)|: a slope that is a difference of two nearly equal terms
  has no relative accuracy to ask for);
- the reference against the oracle, the kernels against the reference (every mode, dtype,
  centring and bound rule), CPU against Triton (interpreter or GPU) and CUDA bit for bit;
- NaN propagation, finite values and gradients for extreme finite inputs with b_sigma > 0;
- the Gaussian path unchanged: quantize(family="gaussian") is gaussian_quantize, and both give
  the digests of the code before the families existed.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import sys

import numpy as np
import pytest
import torch

import lic_quant as lq
from lic_quant import reference as ref
from lic_quant._checks import FAMILIES

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mp_oracle import bin_mass, relative_error  # noqa: E402

try:
    from lic_quant import triton_ops
except ImportError:  # pragma: no cover
    triton_ops = None

MODES = ("noise", "ste", "mixed", "sua")
HALF = (torch.float16, torch.bfloat16)
NEEDS_EXT = pytest.mark.skipif(not lq.extension_available(), reason="the C++ extension is not built")


def _triton_runs_on(device: str) -> str | None:
    """Why backend='triton' cannot run on `device` tensors here, or None."""
    if triton_ops is None or triton_ops.TRITON_ERROR is not None:
        return "triton is not installed"
    if device == "cpu" and not triton_ops.interpreted():
        return "the Triton kernels are compiled for the GPU (TRITON_INTERPRET is not set)"
    if device == "cuda" and (triton_ops.interpreted() or not torch.cuda.is_available()):
        return "no CUDA device for compiled Triton kernels"
    return None


def _cuda_missing() -> str | None:
    if not lq.extension_available():
        return "the C++ extension is not built"
    if not lq._ops.cuda_kernels_built():
        return "the extension was built without its CUDA kernels"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


# (id, backend argument, device, dtypes)
BACKENDS = [
    ("cpu", "cpu", "cpu", (torch.float32, torch.float64, torch.float16, torch.bfloat16)),
    ("cuda", "cuda", "cuda", (torch.float32, torch.float64, torch.float16, torch.bfloat16)),
    ("triton", "triton", "cuda", (torch.float32, torch.float16, torch.bfloat16)),
    ("triton-interpreter", "triton", "cpu", (torch.float32, torch.float16, torch.bfloat16)),
]


def _need_backend(bid: str) -> tuple[str, str]:
    _, name, device, _ = next(b for b in BACKENDS if b[0] == bid)
    if name in ("cpu", "cuda") and not lq.extension_available():
        pytest.skip("the C++ extension is not built")
    why = _cuda_missing() if bid == "cuda" else _triton_runs_on(device) if name == "triton" else None
    if why:
        pytest.skip(why)
    return name, device


def _backend_dtype_params():
    return [pytest.param(b[0], d, id=f"{b[0]}-{str(d)[6:]}") for b in BACKENDS for d in b[3]]


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _float_list(t: torch.Tensor) -> list[float]:
    return t.detach().to("cpu", torch.float64).tolist()


@functools.lru_cache(maxsize=None)
def _exact(family: str, av: float, s: float):
    return bin_mass(family, av, s)


@functools.lru_cache(maxsize=None)
def _term_scales(family: str, av: float, s: float):
    """(|f(a)| + |f(b)|)/s and (|a f(a)| + |b f(b)|)/s in float64: the size of the terms whose
    differences the slopes are."""
    a, b = (av - 0.5) / s, (av + 0.5) / s
    if family == "gaussian":
        f = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    elif family == "laplace":
        f = lambda x: 0.5 * math.exp(-abs(x))  # noqa: E731
    else:
        f = lambda x: math.exp(-abs(x)) / (1 + math.exp(-abs(x))) ** 2  # noqa: E731
    fa, fb = f(a), f(b)
    return (fa + fb) / s, (abs(a) * fa + abs(b) * fb) / s


# Accuracy clauses of section 1: (smallest exact p, largest relative error) per compute dtype.
P_CLAUSES = {torch.float32: ((1e-12, 1e-5), (1e-30, 1e-4)), torch.float64: ((1e-250, 1e-12),)}
# Slopes, relative to the size of their terms, where p >= the last clause's floor.
SLOPE_TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _check_against_oracle(family, av, s, p, d_av, d_s, cdt, what, grad_dtype=None):
    """p, dp/d|v|, dp/ds (lists of floats) at |v| = av, s (lists) against the oracle; returns the
    worst relative errors seen, for the report. grad_dtype: the dtype the slopes were rounded to
    (float16/bfloat16 gradients carry that rounding, and are checked where they are normal
    numbers of that dtype)."""
    floor_p = P_CLAUSES[cdt][-1][0]
    slope_tol = SLOPE_TOL[cdt]
    lo, hi = 0.0, math.inf
    if grad_dtype in HALF:
        info = torch.finfo(grad_dtype)
        slope_tol += info.eps
        lo, hi = info.tiny, info.max / 2
    worst = {"p": 0.0, "d_av": 0.0, "d_s": 0.0}
    bad = []
    for i in range(len(av)):
        ep, edav, eds = _exact(family, av[i], s[i])
        err = relative_error(p[i], ep)
        for floor, tol in P_CLAUSES[cdt]:
            if ep >= floor and err > tol:
                bad.append(f"p at |v|={av[i]!r} s={s[i]!r}: {p[i]!r} vs {float(ep)!r} "
                           f"(rel {err:.3g} > {tol})")
        if ep >= floor_p:
            worst["p"] = max(worst["p"], err)
        if d_av is None:
            continue
        sc_av, sc_s = _term_scales(family, av[i], s[i])
        for name, got, ex, sc in (("d_av", d_av[i], edav, sc_av), ("d_s", d_s[i], eds, sc_s)):
            if sc > hi:
                continue  # beyond float16's range: inf there is the dtype's, not the kernel's
            if not math.isfinite(got):
                bad.append(f"{name} not finite at |v|={av[i]!r} s={s[i]!r}: {got}")
                continue
            if ep < floor_p or sc < lo:
                continue
            # Slopes are h times differences of densities: below h times p's floor they are held
            # to that floor (where every term underflows, e.g. the Gaussian's a f(a) at |a| = 20,
            # 1e-85, 0 or 1e-30 h is as good as the exact value).
            e = float(abs(got - ex)) / max(sc, floor_p / s[i])
            worst[name] = max(worst[name], e)
            if e > slope_tol:
                bad.append(f"{name} at |v|={av[i]!r} s={s[i]!r}: {got!r} vs {float(ex)!r} "
                           f"({e:.3g} of the terms' size)")
    assert not bad, f"{what}: {len(bad)} failures, first: " + "; ".join(bad[:5])
    return worst


# ---------------------------------------------------------------------------------------------
# The grid of |v| and s

SCALES = (1e-6, 1e-3, 0.05, 0.11, 0.3, 1.0, 3.0, 10.0, 100.0, 1e4, 1e6, 1e9)
ABS_V = (0.0, 1e-30, 1e-7, 0.01, 0.25, 0.4999, 0.5, 0.5001, 0.7, 1.0, 1.5, 2.0, 3.3, 7.0, 1e4, 1e8)
# Multiples of s: the tails out to the float32 underflow (Gaussian ~14 s, Laplace and logistic
# ~103 s) and, in float64, to p ~ 1e-250 and beyond.
TAIL32 = (0.5, 1, 2, 5, 10, 13, 14, 20, 27, 40, 60, 69, 80, 100, 103, 110)
TAIL64 = (33.8, 38, 200, 400, 575, 700, 740, 800)


def _grid(dtype):
    """(|v|, s) pairs, rounded to `dtype` (the values the kernels see), finite there."""
    pairs = []
    for s in SCALES:
        tails = TAIL32 + (TAIL64 if dtype == torch.float64 else ())
        for av in ABS_V + tuple(s * k for k in tails) + tuple(s * k + 0.5 for k in (1, 3)):
            pairs.append((av, s))
    t = torch.tensor(pairs, dtype=torch.float64).to(dtype)
    keep = torch.isfinite(t.double()).all(1) & (t[:, 1].double() > 0)
    t = t[keep]
    # one copy of each pair as the dtype rounds it
    return torch.unique(t.double(), dim=0).to(dtype)


def _op_at(backend, device, family, av, s, dtype):
    """The op's p, dp/d|v| and dp/ds at |v| = av, s: y = 0, mode 'ste' and zero_center=False give
    v = 0 - mu = -av exactly; scale_bound below every s and likelihood_bound 0 leave the
    bound rules out (grad_mu = dp/d|v|, grad_sigma = dp/ds)."""
    mu = av.to(device).clone().requires_grad_(True)
    sigma = s.to(device).clone().requires_grad_(True)
    y = torch.zeros_like(mu)
    _, lik = lq.quantize(y, sigma, mu, family=family, mode="ste", zero_center=False,
                         scale_bound=1e-30, likelihood_bound=0.0, seed=0, backend=backend)
    lik.backward(torch.ones_like(lik))
    return _float_list(lik), _float_list(mu.grad), _float_list(sigma.grad)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bid,dtype", _backend_dtype_params())
def test_values_and_slopes_vs_mpmath(bid, dtype, family):
    """p and its slopes from the kernels on the (|v|, s) grid against the oracle."""
    name, device = _need_backend(bid)
    grid = _grid(dtype)
    av, s = grid[:, 0], grid[:, 1]
    p, d_av, d_s = _op_at(name, device, family, av, s, dtype)
    worst = _check_against_oracle(family, _float_list(av), _float_list(s), p, d_av, d_s,
                                  _compute_dtype(dtype), f"{bid} {dtype} {family}", dtype)
    print(f"max errors {bid} {dtype} {family}: " +
          ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_reference_vs_mpmath(dtype, family):
    """The reference's mass (lic_quant/reference.py) and its autograd slopes against the oracle;
    the Gaussian's reference is the plain reflected erfc form, exact only where it does not
    cancel (s below 10)."""
    grid = _grid(dtype)
    if family == "gaussian":
        grid = grid[grid[:, 1] <= 10]
    av = grid[:, 0].clone().requires_grad_(True)
    s = grid[:, 1].clone().requires_grad_(True)
    p = ref.BIN_MASSES[family](av, s)
    p.backward(torch.ones_like(p))
    worst = _check_against_oracle(family, _float_list(av), _float_list(s), _float_list(p),
                                  _float_list(av.grad), _float_list(s.grad), dtype,
                                  f"reference {dtype}")
    print(f"max errors reference {dtype} {family}: " +
          ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def _surrogate_v(y, mu, u, mode, temperature, cdt):
    """|v| as the kernels compute it (zero_center=True): the reference's surrogate, which is
    the kernels' bit for bit."""
    r = y.to(cdt) - mu.to(cdt)
    rate, _ = ref.surrogate(mode, r, u.to(cdt), temperature)
    return rate.abs()


@NEEDS_EXT
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.float16))
def test_every_mode_vs_mpmath(dtype, mode, family):
    """The mass each mode's v sees, on the CPU kernels, against the oracle at that v: random
    latents, means and scales from 1e-3 to 1e6, |y - mu| up to 1e8."""
    g = torch.Generator().manual_seed(5)
    n = 96
    s = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e6),
                                                               generator=g))
    y = torch.randn(n, generator=g, dtype=torch.float64) * s * torch.rand(n, generator=g) * 30
    y[:8] = torch.tensor([1e8, -1e8, 2.5, -0.5, 0.5, 1.5, 1e5 + 0.5, -3e7])
    mu = torch.randn(n, generator=g, dtype=torch.float64)
    y, s, mu = (t.to(dtype) for t in (y, s, mu))
    keep = torch.isfinite(y) & torch.isfinite(s)
    y, s, mu = y[keep], s[keep], mu[keep]
    seed, temperature = 11, 0.3
    _, lik = lq.quantize(y, s, mu, family=family, mode=mode, temperature=temperature,
                         scale_bound=1e-30, likelihood_bound=0.0, seed=seed, backend="cpu")
    cdt = _compute_dtype(dtype)
    u = lq.uniform_noise(y.shape, seed)
    av = _surrogate_v(y, mu, u, mode, temperature, cdt)
    worst = _check_against_oracle(family, _float_list(av), _float_list(s.to(cdt)),
                                  _float_list(lik), None, None, cdt, f"{mode} {dtype}")
    print(f"max errors cpu {mode} {dtype} {family}: p {worst['p']:.3g}")


# ---------------------------------------------------------------------------------------------
# Kernels against the reference: every mode, centring, means or not, dtype and bound rule


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    scales = torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-4, 3, generator=g))
    means = torch.randn(shape, generator=g, dtype=torch.float64)
    big = 6e4 if dtype == torch.float16 else 1e6
    y.view(-1)[:6] = torch.tensor([0.5, 1.5, -2.5, 0.0, 1e4 + 0.5, -big])  # ties and extremes
    g_yhat = torch.randn(shape, generator=g, dtype=torch.float64)
    g_lik = torch.randn(shape, generator=g, dtype=torch.float64)  # both signs: both bound rules
    lik_dt = _compute_dtype(dtype)
    return (y.to(dtype), scales.to(dtype), means.to(dtype), g_yhat.to(dtype), g_lik.to(lik_dt))


def _values_and_grads(backend, device, family, mode, zero_center, with_means, dtype, shape=(4, 33),
                      seed=0, temperature=0.4):
    y, scales, means, g_yhat, g_lik = (t.to(device) for t in _inputs(shape, dtype, seed))
    y = y.clone().requires_grad_(True)
    scales = scales.clone().requires_grad_(True)
    means = means.clone().requires_grad_(True) if with_means else None
    y_hat, lik = lq.quantize(y, scales, means, family=family, mode=mode, temperature=temperature,
                             zero_center=zero_center, seed=1234, backend=backend)
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
    out = [y_hat.detach(), lik.detach(), y.grad, scales.grad]
    if with_means:
        out.append(means.grad)
    return [t.cpu() for t in out]


COMBOS = [(m, zc, wm) for m in MODES for zc in (True, False) for wm in (True, False)]


@NEEDS_EXT
@pytest.mark.parametrize("family", ("laplace", "logistic"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                         ids=lambda d: str(d)[6:])
def test_cpu_matches_reference(dtype, family):
    """y_hat bit for bit; likelihoods and gradients within the rounding of the reference (which
    computes in the same dtype with torch's exp and expm1)."""
    for mode, zc, wm in COMBOS:
        got = _values_and_grads("cpu", "cpu", family, mode, zc, wm, dtype)
        want = _values_and_grads("reference", "cpu", family, mode, zc, wm, dtype)
        what = f"{family} {dtype} mode={mode} zero_center={zc} means={wm}"
        assert torch.equal(got[0], want[0]), what
        cdt = _compute_dtype(dtype)
        rtol = 1e-10 if cdt == torch.float64 else 2e-5
        torch.testing.assert_close(got[1], want[1], rtol=rtol, atol=1e-30, msg=what)
        for g, w in zip(got[2:], want[2:]):
            # Gradients in dtype: half precision rounds both to its own resolution.
            tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, rtol)
            scale = float(w.abs().max()) if w.numel() else 0.0
            torch.testing.assert_close(g, w, rtol=tol, atol=tol * scale, msg=what)


# ---------------------------------------------------------------------------------------------
# Bit identity across kernel backends


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64,
                   torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def _extreme_inputs(dtype):
    """Tails, large and tiny scales, ties and zeros as (y, scales, means)."""
    y = torch.tensor([0.0, 0.5, -0.5, 1.5, 2.5, 7.0, 40.0, -300.0, 1e4, 6e4, 1e-3, 0.49])
    s = torch.tensor([1e-3, 0.11, 0.2, 1e3, 3.0, 0.05, 0.4, 3.0, 1e4, 0.5, 6e4, 1e-2])
    mu = torch.tensor([0.0, 0.0, 0.25, -0.5, 1e-3, 0.1, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0])
    if dtype != torch.float16:
        y = torch.cat([y, torch.tensor([1e8, -3e7, 1e30])])
        s = torch.cat([s, torch.tensor([1e9, 1e-7, 1e30])])
        mu = torch.cat([mu, torch.tensor([0.0, 2.0, 0.0])])
    return y.to(dtype), s.to(dtype), mu.to(dtype)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("other", ("triton-interpreter", "triton", "cuda"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64),
                         ids=lambda d: str(d)[6:])
def test_bit_identical_across_backends(other, dtype, family):
    """Values and gradients of every mode, centring and means/no means: the other kernel backend
    gives the CPU kernels' bits (float32 compute; float64 only on CUDA, whose libm may differ
    from the host's by an ulp: compared to 1e-14 there)."""
    if not lq.extension_available():
        pytest.skip("the C++ extension is not built")
    name, device = _need_backend(other)
    if dtype == torch.float64 and name == "triton":
        pytest.skip("the Triton kernels have no float64")
    shape = (2, 36) if other == "triton-interpreter" else (8, 130)
    for mode, zc, wm in COMBOS:
        if other == "triton-interpreter" and wm and mode in ("noise", "ste"):
            continue  # keep the interpreter's share short: every mode is still run
        a = _values_and_grads("cpu", "cpu", family, mode, zc, wm, dtype, shape=shape)
        b = _values_and_grads(name, device, family, mode, zc, wm, dtype, shape=shape)
        for i, (x, z) in enumerate(zip(a, b)):
            what = f"{family} {dtype} mode={mode} zero_center={zc} means={wm} output {i}"
            if dtype == torch.float64:
                torch.testing.assert_close(z, x, rtol=1e-14, atol=0, equal_nan=True, msg=what)
            else:
                assert torch.equal(_bits(x), _bits(z)), what
    # extremes, forward and backward
    y, s, mu = _extreme_inputs(dtype)
    outs = []
    for bname, dev in (("cpu", "cpu"), (name, device)):
        yy, ss, mm = (t.to(dev).clone().requires_grad_(True) for t in (y, s, mu))
        y_hat, lik = lq.quantize(yy, ss, mm, family=family, mode="mixed", seed=3, backend=bname,
                                 likelihood_bound=0.0)
        lik.backward(torch.full_like(lik, 0.5))
        outs.append([t.detach().cpu() for t in (y_hat, lik, yy.grad, ss.grad, mm.grad)])
    for x, z in zip(*outs):
        if dtype == torch.float64:
            torch.testing.assert_close(z, x, rtol=1e-14, atol=0, equal_nan=True)
        else:
            assert torch.equal(_bits(x), _bits(z)), (family, dtype, x, z)


# ---------------------------------------------------------------------------------------------
# NaN and finiteness


def _kernel_backends():
    return [pytest.param(b[0], id=b[0]) for b in BACKENDS]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bid", [b[0] for b in BACKENDS] + ["reference"])
def test_nan_propagates(bid, family):
    """NaN in y, means or scales gives NaN in that element's likelihood and gradients; the
    other elements are untouched."""
    if bid == "reference":
        name, device = "reference", "cpu"
    else:
        name, device = _need_backend(bid)
    nan = float("nan")
    y = torch.tensor([nan, 0.3, 0.3, 0.3], device=device)
    s = torch.tensor([1.0, nan, 1.0, 1.0], device=device)
    mu = torch.tensor([0.0, 0.0, nan, 0.0], device=device)
    for mode in MODES:
        yy, ss, mm = (t.clone().requires_grad_(True) for t in (y, s, mu))
        y_hat, lik = lq.quantize(yy, ss, mm, family=family, mode=mode, seed=2, backend=name)
        lik.backward(torch.full_like(lik, 0.5))
        assert torch.isnan(lik[:3]).all() and torch.isfinite(lik[3]), (mode, lik)
        for g in (yy.grad, ss.grad, mm.grad):
            assert torch.isnan(g[:3]).all() and torch.isfinite(g[3]), (mode, g)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bid,dtype", _backend_dtype_params())
def test_finite_for_extreme_finite_inputs(bid, dtype, family):
    """Finite inputs with b_sigma > 0 give finite likelihoods in [0, 1] and finite gradients,
    however large |v| is and however small or large s is."""
    name, device = _need_backend(bid)
    fmax = torch.finfo(dtype).max
    vals = [0.0, 0.5, 1.0, 1e-3, 1e3, fmax, -fmax, fmax / 4, 2.0 ** -20]
    y = torch.tensor([a for a in vals for _ in vals], dtype=torch.float64)
    s = torch.tensor([abs(b) for _ in vals for b in vals], dtype=torch.float64)
    mu = torch.tensor([(-1) ** i * 0.25 for i in range(len(vals) ** 2)], dtype=torch.float64)
    y, s, mu = (t.to(dtype) for t in (y, s, mu))
    # float16/bfloat16 gradients of s near 1e-30 exceed their range (h f(0) > 65504): the
    # dtype's limit, so there only the default bound.
    for sb in ((0.11,) if dtype in HALF else (1e-30, 0.11)):
        for mode in MODES:
            yy, ss, mm = (t.to(device).clone().requires_grad_(True) for t in (y, s, mu))
            y_hat, lik = lq.quantize(yy, ss, mm, family=family, mode=mode, scale_bound=sb,
                                     likelihood_bound=0.0, seed=4, backend=name)
            lik.backward(torch.full_like(lik, -1.0))
            assert torch.isfinite(lik).all() and (lik >= 0).all() and (lik <= 1).all(), (mode, lik)
            for g in (yy.grad, ss.grad, mm.grad):
                assert torch.isfinite(g).all(), (mode, sb, g)


# ---------------------------------------------------------------------------------------------
# Lists, checks and the Gaussian path


def test_family_lists():
    assert FAMILIES == lq.FAMILIES == ("gaussian", "laplace", "logistic")
    if lq.extension_available():
        assert lq._ops._C.FAMILIES == FAMILIES


def test_unknown_family_raises():
    y = torch.zeros(3)
    for backend in ("reference",) + (("cpu",) if lq.extension_available() else ()):
        with pytest.raises(ValueError, match="family must be one of"):
            lq.quantize(y, torch.ones(3), family="cauchy", backend=backend)


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_definitions(family):
    """The spec's own formulas at a few points (float64 reference): F as written in section 6."""
    F = {"gaussian": lambda x: 0.5 * math.erfc(-x / math.sqrt(2)),
         "laplace": lambda x: 0.5 * math.exp(x) if x < 0 else 1 - 0.5 * math.exp(-x),
         "logistic": lambda x: 1 / (1 + math.exp(-x))}[family]
    for av, s in ((0.0, 1.0), (0.3, 0.7), (1.2, 0.5), (2.0, 3.0)):
        want = F((0.5 - av) / s) - F((-0.5 - av) / s)
        got = float(ref.BIN_MASSES[family](torch.tensor(av, dtype=torch.float64),
                                           torch.tensor(s, dtype=torch.float64)))
        assert got == pytest.approx(want, rel=1e-12)


@NEEDS_EXT
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                         ids=lambda d: str(d)[6:])
def test_gaussian_quantize_is_quantize_gaussian(dtype):
    for mode, zc, wm in COMBOS:
        y, scales, means, _, _ = _inputs((3, 17), dtype)
        m = means if wm else None
        a = lq.gaussian_quantize(y, scales, m, mode=mode, zero_center=zc, seed=9, backend="cpu")
        b = lq.quantize(y, scales, m, family="gaussian", mode=mode, zero_center=zc, seed=9,
                        backend="cpu")
        for x, z in zip(a, b):
            assert torch.equal(_bits(x), _bits(z))


def _gaussian_digest(dtype) -> str:
    """SHA-256 of every output and gradient of gaussian_quantize on fixed inputs, every mode,
    centring and means/no means, on the CPU kernels."""
    h = hashlib.sha256()
    for mode, zc, wm in COMBOS:
        for t in _values_and_grads("cpu", "cpu", "gaussian", mode, zc, wm, dtype, shape=(5, 67),
                                   seed=7):
            h.update(_bits(t.contiguous()).numpy().tobytes())
    y, s, mu = _extreme_inputs(dtype)
    yy, ss, mm = (t.clone().requires_grad_(True) for t in (y, s, mu))
    y_hat, lik = lq.gaussian_quantize(yy, ss, mm, mode="mixed", seed=3, backend="cpu",
                                      likelihood_bound=0.0)
    lik.backward(torch.full_like(lik, 0.5))
    for t in (y_hat, lik, yy.grad, ss.grad, mm.grad):
        h.update(_bits(t.detach().contiguous()).numpy().tobytes())
    return h.hexdigest()


# Digests of the CPU kernels built from the code before the families were added (commit 12317cb);
# the C++ kernels give the same bits on every x86-64 ISA (tests/test_cpu_isa_variants.py). The
# float64 path calls libm (erfc, exp, expm1), so its digest holds for the glibc it was taken with.
GAUSSIAN_DIGESTS = {
    "torch.float32": "6f9ba93cf72b307f1d47f6fb566be5edafd2b3e77ca63642e2e65400365cbe03",
    "torch.float64": "d2f8fddf8ac23b30556c4647a601f4fac9f35f6efd1fd1720882ab41d49deacf",
    "torch.float16": "97586be25495f5898ec05cdbddf5f67e2ae4a1adc4c69d3b4b79ce7f8c7f892a",
    "torch.bfloat16": "d25738c2cf7e052bb924acaacdd6a3e9627eab85df485849d88d1d1d5b792127",
}


@NEEDS_EXT
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                         ids=lambda d: str(d)[6:])
def test_gaussian_unchanged(dtype):
    want = GAUSSIAN_DIGESTS.get(str(dtype))
    if want is None:
        pytest.skip("no saved digest for this dtype")
    assert _gaussian_digest(dtype) == want
