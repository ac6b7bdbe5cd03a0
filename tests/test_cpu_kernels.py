"""C++ CPU kernels against the pure-PyTorch reference: values and the three gradients, for every
mode x zero_center x dtype on odd shapes, with the same inputs, noise and upstream gradients.

Comparisons and why they are what they are:
- y_hat: both sides run the same float32/float64 operations in the same order (c + r~_D), so it
  must match bit for bit (also for float16/bfloat16, which round the same float32 value).
- likelihoods and gradients: compared with the float64 reference (inputs upcast, same u) within
  the per-element rounding bound of tests/helpers.py; for float16/bfloat16 the gradients are then
  rounded to the input dtype, which adds half an ulp of that dtype.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import lic_quant as lq
from helpers import (DTYPES, EPS, LIKELIHOOD_BOUND as LB, ODD_SHAPES, SCALE_BOUND as SB,
                     compute_eps, error_bounds, make_inputs, make_upstream, rate_residual64,
                     reference_fn, run)
from helpers import kernel_fn as _kernel_fn

pytestmark = pytest.mark.skipif(not lq.extension_available(), reason="C++ extension not built")



def lik_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_fn(mode, zero_center, seed, temperature, backend="cpu"):
    return _kernel_fn(mode, zero_center, seed, temperature, backend)


CASES = list(itertools.product(lq.MODES, [True, False], DTYPES))


@pytest.mark.parametrize("mode,zero_center,dtype", CASES)
@pytest.mark.parametrize("shape", ODD_SHAPES[:2])
def test_values_and_gradients_match_reference(mode, zero_center, dtype, shape):
    seed, temperature = 1234, 0.37
    y, s, m = make_inputs(shape, dtype, seed=7)
    g_yhat, g_lik = make_upstream(shape, dtype, lik_dtype(dtype))
    u = lq.uniform_noise(shape, seed) if mode != "ste" else None

    k_yhat, k_lik, k_grads = run(kernel_fn(mode, zero_center, seed, temperature), y, s, m,
                                 g_yhat, g_lik)
    # Same dtype reference: y_hat bit for bit.
    r_yhat, r_lik, _ = run(reference_fn(mode, zero_center, u, temperature), y, s, m, g_yhat, g_lik)
    assert k_yhat.dtype == dtype and k_lik.dtype == lik_dtype(dtype)
    assert torch.equal(k_yhat, r_yhat)

    # float64 reference on the same (upcast) inputs and noise.
    y64, s64, m64 = (t.to(torch.float64) for t in (y, s, m))
    u64 = u.to(torch.float64) if u is not None else None
    d_yhat, d_lik, d_grads = run(reference_fn(mode, zero_center, u64, temperature),
                                 y64, s64, m64, g_yhat.to(torch.float64), g_lik.to(torch.float64))
    eps = compute_eps(dtype)
    v = rate_residual64(y64, m64, u64, mode, zero_center, temperature)
    err_p, err_gv, err_gs, ambiguous = error_bounds(
        y64, s64, m64, u64, v, g_lik.to(torch.float64), eps, scale_bound=SB,
        likelihood_bound=LB)
    # The likelihood-bound decision only matters where the upstream gradient is >= 0.
    ambiguous &= g_lik >= 0
    assert ambiguous.float().mean() < 0.01  # the mask must not hide the comparison

    diff_p = (k_lik.to(torch.float64) - d_lik).abs()
    assert (diff_p <= err_p).all(), f"likelihood off by {(diff_p - err_p).max():.3e} beyond bound"

    out_eps = EPS[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0
    grad_y64, grad_s64, grad_m64 = d_grads
    bounds = {
        "y": err_gv + eps * g_yhat.to(torch.float64).abs(),
        "scales": err_gs,
        "means": err_gv + eps * g_yhat.to(torch.float64).abs(),  # the reference sums g_yhat - g_yhat
    }
    for name, got, want in zip(("y", "scales", "means"), k_grads, (grad_y64, grad_s64, grad_m64)):
        assert got.dtype == dtype
        want = want.to(torch.float64)
        # rounding to a half dtype: half an ulp, which is absolute below its smallest normal
        tol = bounds[name] + out_eps * want.abs() + out_eps * torch.finfo(dtype).tiny
        tol = tol + 2 * eps * want.abs()  # each side rounds its final sum g_yhat + g_v once
        diff = (got.to(torch.float64) - want).abs()
        ok = (diff <= tol) | ambiguous
        assert ok.all(), f"grad {name}: {int((~ok).sum())} elements beyond bound, worst " \
                         f"{(diff - tol)[~ok].max():.3e}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_means_and_missing_upstreams(dtype):
    shape = (2, 3, 9, 5)
    y, s, _ = make_inputs(shape, dtype, with_means=False, seed=3)
    u = lq.uniform_noise(shape, 99)
    for mode in lq.MODES:
        k = lq.gaussian_quantize(y, s, mode=mode, seed=99, backend="cpu")
        r = lq.gaussian_quantize_reference(y, s, None, u, mode=mode, temperature=1.0)
        assert torch.equal(k[0], r[0])
    # Only the likelihood used: gradients flow into y and scales; y_hat unused is fine.
    yy, ss = y.clone().requires_grad_(), s.clone().requires_grad_()
    _, lik = lq.gaussian_quantize(yy, ss, mode="mixed", seed=5, backend="cpu")
    (-lik.log()).sum().backward()
    assert torch.isfinite(yy.grad).all() and torch.isfinite(ss.grad).all()
    # Only y_hat used: identity gradient into y, nothing into scales.
    yy, ss = y.clone().requires_grad_(), s.clone().requires_grad_()
    y_hat, _ = lq.gaussian_quantize(yy, ss, mode="ste", seed=5, backend="cpu")
    y_hat.float().sum().backward()
    assert torch.equal(yy.grad, torch.ones_like(y)) and ss.grad is None


def test_only_needed_gradients_are_computed():
    y, s, m = make_inputs((4, 33), torch.float32)
    seed, temp = lq.make_seed(1, y.device), torch.tensor(0.5, dtype=torch.float64)
    g_yhat, g_lik = make_upstream(y.shape, torch.float32, torch.float32)
    full = torch.ops.lic_quant.quantize_backward(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB,
                                                 True, [True, True, True])
    part = torch.ops.lic_quant.quantize_backward(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB,
                                                 True, [False, True, False])
    assert part[0].numel() == 0 and part[2].numel() == 0
    assert torch.equal(part[1], full[1])
    yy = y.clone().requires_grad_()
    y_hat, lik = lq.gaussian_quantize(yy, s, m, mode="sua", temperature=0.5, seed=1, backend="cpu")
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
    assert torch.equal(yy.grad, full[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_contiguous_and_channels_last(dtype):
    y, s, m = make_inputs((2, 5, 6, 7), dtype, seed=11)
    base = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.5, seed=3, backend="cpu")
    cl = [t.to(memory_format=torch.channels_last) for t in (y, s, m)]
    out = lq.gaussian_quantize(*cl, mode="sua", temperature=0.5, seed=3, backend="cpu")
    assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])
    # a transposed view: values equal those of its contiguous copy
    yt, st, mt = (t.transpose(1, 3) for t in (y, s, m))
    out = lq.gaussian_quantize(yt, st, mt, mode="noise", seed=3, backend="cpu")
    ref = lq.gaussian_quantize(yt.contiguous(), st.contiguous(), mt.contiguous(), mode="noise",
                               seed=3, backend="cpu")
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    # gradients of strided inputs too
    g = [t.clone().requires_grad_() for t in (yt, st, mt)]
    yh, lik = lq.gaussian_quantize(*g, mode="noise", seed=3, backend="cpu")
    (yh.float().sum() + lik.sum()).backward()
    gc = [t.contiguous().clone().requires_grad_() for t in (yt, st, mt)]
    yh, lik = lq.gaussian_quantize(*gc, mode="noise", seed=3, backend="cpu")
    (yh.float().sum() + lik.sum()).backward()
    for a, b in zip(g, gc):
        assert torch.equal(a.grad, b.grad)


def test_empty_inputs():
    for dtype in DTYPES:
        y = torch.empty(0, 3, dtype=dtype, requires_grad=True)
        s = torch.empty(0, 3, dtype=dtype, requires_grad=True)
        y_hat, lik = lq.gaussian_quantize(y, s, mode="mixed", backend="cpu")
        assert y_hat.shape == (0, 3) and lik.shape == (0, 3)
        (y_hat.float().sum() + lik.sum()).backward()
        assert y.grad.shape == (0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", lq.MODES)
def test_nan_propagates(dtype, mode):
    y, s, m = make_inputs((3, 8), dtype, seed=2)
    nan = float("nan")
    y[0, 1], s[1, 2], m[2, 3] = nan, nan, nan
    g = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, lik = lq.gaussian_quantize(*g, mode=mode, seed=4, backend="cpu")
    assert torch.isnan(lik[0, 1]) and torch.isnan(lik[1, 2]) and torch.isnan(lik[2, 3])
    assert torch.isnan(y_hat[0, 1])
    if mode in ("ste", "mixed") or mode == "sua":
        assert torch.isnan(y_hat[2, 3])  # the lattice centre is NaN
    (y_hat.float().sum() - lik.log().sum()).backward()
    for gr, (i, j) in zip((g[0].grad, g[1].grad, g[2].grad), ((0, 1), (1, 2), (2, 3))):
        assert torch.isnan(gr[i, j])
    # untouched elements stay finite
    assert torch.isfinite(lik[0, 0]) and torch.isfinite(g[0].grad[0, 0])


def test_same_result_with_one_and_two_threads():
    y, s, m = make_inputs((8, 16, 24, 24), torch.float32, seed=5)  # several parallel chunks
    g_yhat, g_lik = make_upstream(y.shape, torch.float32, torch.float32)
    fn = kernel_fn("sua", True, 77, 0.3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run(fn, y, s, m, g_yhat, g_lik)
        torch.set_num_threads(2)
        b = run(fn, y, s, m, g_yhat, g_lik)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for ga, gb in zip(a[2], b[2]):
        assert torch.equal(ga, gb)


def test_seed_defaults_to_torch_generator():
    y, s, m = make_inputs((4, 50), torch.float32)
    torch.manual_seed(0)
    a = lq.gaussian_quantize(y, s, m, mode="noise", backend="cpu")
    b = lq.gaussian_quantize(y, s, m, mode="noise", backend="cpu")
    torch.manual_seed(0)
    c = lq.gaussian_quantize(y, s, m, mode="noise", backend="cpu")
    assert torch.equal(a[0], c[0]) and not torch.equal(a[0], b[0])
    # an int seed, a tensor seed and the same bits as unsigned all agree
    d = lq.gaussian_quantize(y, s, m, mode="noise", seed=-1, backend="cpu")
    e = lq.gaussian_quantize(y, s, m, mode="noise", seed=2**64 - 1, backend="cpu")
    f = lq.gaussian_quantize(y, s, m, mode="noise", seed=torch.tensor(-1), backend="cpu")
    assert torch.equal(d[0], e[0]) and torch.equal(d[0], f[0])


def test_temperature_tensor_equals_float():
    y, s, m = make_inputs((3, 40), torch.float32)
    a = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.25, seed=8, backend="cpu")
    b = lq.gaussian_quantize(y, s, m, mode="sua", temperature=torch.tensor(0.25), seed=8,
                             backend="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
