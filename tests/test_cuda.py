"""CUDA kernels: registration and code generation (checked on any machine that built them), then
values and gradients against the reference and against the CPU kernels, opcheck, torch.compile,
CUDA graphs and > 2^31 elements (on a GPU only).

Comparisons and why they are what they are:
- u: a pure function of (seed, index) computed with the same integer ops and two separately
  rounded float32 steps (--fmad=false, _rn intrinsics): bit for bit equal to the CPU kernels.
- y_hat: the same float32/float64 operations in the same order as the reference and the CPU
  kernels: bit for bit (float16/bfloat16 round the same float32 value with round-to-nearest-even).
- likelihoods and gradients vs the float64 reference: within the per-element rounding bound of
  tests/helpers.py (as the CPU kernel tests).
- likelihoods and gradients vs the CPU kernels: float32 compute uses only IEEE +, -, *, / and
  selects (tests/../csrc/lic_quant/normal_dist.h), uncontracted on both sides, so float16, bfloat16
  and float32 must match bit for bit. float64 uses each platform's erfc/exp (glibc vs CUDA's
  libdevice, both within a few ulps), so there the float64 rounding bound applies.

LIC_QUANT_CUDA_TEST_DEVICE=cpu runs the GPU tests' logic on the CPU kernels (a check of the tests
themselves on a machine without a GPU); LIC_QUANT_EXPECT_CUDA_BUILD=1 makes a CPU-only build an error.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import lic_quant as lq
from helpers import (DTYPES, EPS, LIKELIHOOD_BOUND as LB, ODD_SHAPES, SCALE_BOUND as SB,
                     compute_eps, error_bounds, make_inputs, make_upstream, rate_residual64,
                     reference_fn, run)
from helpers import kernel_fn as _kernel_fn

OPS = ("quantize_forward", "quantize_backward", "uniform_noise")
DEVICE = os.environ.get("LIC_QUANT_CUDA_TEST_DEVICE", "cuda")
BACKEND = "cuda" if DEVICE == "cuda" else "cpu"
ON_GPU = DEVICE == "cuda"

needs_device = pytest.mark.skipif(
    not lq.extension_available()
    or (ON_GPU and not (torch.cuda.is_available() and lq.cuda_kernels_built())),
    reason="needs a CUDA device and the extension built with its CUDA kernels")
needs_gpu = pytest.mark.skipif(
    not (ON_GPU and torch.cuda.is_available() and lq.cuda_kernels_built()),
    reason="needs a CUDA device")


def lik_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def extension_path():
    from lic_quant import _C

    return _C.__file__


def extension_has_device_code() -> bool:
    """Whether lic_quant._C holds CUDA device code (an .nv_fatbin section), whatever the machine."""
    with open(extension_path(), "rb") as f:
        return b".nv_fatbin" in f.read()


def find_cuobjdump():
    cands = [shutil.which("cuobjdump")]
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cands.append(os.path.join(home, "bin", "cuobjdump"))
    # triton ships one; find it without importing triton (an import here would fix triton's
    # interpreter setting before lic_quant.triton_ops chooses it)
    spec = importlib.util.find_spec("triton")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        cands.append(os.path.join(loc, "backends", "nvidia", "bin", "cuobjdump"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


# -------------------------------------------------------------------------------------------------
# Any machine: the built extension


def test_cuda_kernels_registered():
    """A build with CUDA device code must register all three ops for the CUDA key."""
    if not lq.extension_available():
        pytest.skip("C++ extension not built")
    has_code = extension_has_device_code()
    expect = os.environ.get("LIC_QUANT_EXPECT_CUDA_BUILD", "") == "1"
    if not has_code and not lq.cuda_kernels_built():
        assert not expect, "LIC_QUANT_EXPECT_CUDA_BUILD=1 but lic_quant._C was built without CUDA"
        pytest.skip("lic_quant._C was built CPU-only")
    assert lq.cuda_kernels_built()
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lic_quant::{op}", "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lic_quant::{op}", "CPU"), op


def _kernel_ptx(ptx: str, marker: str) -> str:
    """The PTX body of the first .entry whose mangled name contains marker."""
    parts = re.split(r"\n(?=\.visible \.entry|\.entry)", ptx)
    for p in parts:
        head = p.split("(", 1)[0]
        if ".entry" in head and marker in head:
            return p
    raise AssertionError(f"no kernel {marker} in the PTX")


def test_cuda_codegen():
    """The compiled device code: sm_80/sm_90 machine code and PTX for newer GPUs (default
    TORCH_CUDA_ARCH_LIST), only the header's explicit fused multiply-adds (built with
    --fmad=false, nothing is contracted: the noise kernel, whose source has none, has none), u =
    rand - 0.5 as two separately rounded steps, the reciprocal as the hardware estimate plus one
    Newton step, and 16-byte loads/stores on the aligned path."""
    if not (lq.extension_available() and extension_has_device_code()):
        pytest.skip("lic_quant._C was built CPU-only")
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump")
    so = extension_path()
    listing = subprocess.run([tool, "-lelf", "-lptx", so], capture_output=True, text=True).stdout
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        assert "sm_80" in listing and "sm_90" in listing, listing
        assert re.search(r"PTX file.*sm_90", listing), listing
    ptx = subprocess.run([tool, "-ptx", so], capture_output=True, text=True).stdout
    assert ".entry" in ptx
    # every float-compute kernel (float32, float16, bfloat16; all modes, both paths): IEEE fma and
    # the reciprocal estimate only (no mad, no other approximate or flush-to-zero arithmetic)
    entries = [p for p in re.split(r"\n(?=\.visible \.entry|\.entry)", ptx)
               if p.lstrip().startswith((".entry", ".visible .entry"))]
    float_entries = [p for p in entries if not re.search(r"kernelIdd", p.split("(", 1)[0])]
    assert len(float_entries) >= 20, len(float_entries)
    for body in float_entries:
        name = body.split("(", 1)[0].split()[-1]
        assert not re.search(r"\bmad\.[a-z.]*f32", body), f"mad in {name}"
        assert not re.search(r"\.(approx|ftz)\b", body.replace("rcp.approx.ftz.f32", "")), name
    noise_body = _kernel_ptx(ptx, "uniform_noise_kernel")
    assert not re.search(r"\bfma\.", noise_body), "the noise kernel fused rand - 0.5"
    fwd_body = _kernel_ptx(ptx, "forward_kernelIffLi4E")
    assert re.search(r"\bfma\.rn\.f32", fwd_body) and "rcp.approx.ftz.f32" in fwd_body
    for marker in ("forward_kernelIffLi4E", "backward_kernelIffLi4E", "uniform_noise_kernel"):
        body = _kernel_ptx(ptx, marker)
        assert re.search(r"\bmul\.rn\.f32", body) and re.search(r"\bsub\.rn\.f32", body), marker
    for marker in ("forward_kernelIffLi4E", "forward_kernelIN3c104HalfEfLi8E",
                   "forward_kernelIddLi2E"):
        body = _kernel_ptx(ptx, marker)
        assert re.search(r"ld\.global(\.nc)?\.v(4|2)\.(f32|u32|f64|b32|b64)", body), marker
        assert re.search(r"st\.global\.v(4|2)\.(f32|u32|f64|b32|b64)", body), marker
    body = _kernel_ptx(ptx, "backward_kernelIffLi4E")
    assert len(re.findall(r"ld\.global(\.nc)?\.v4\.f32", body)) >= 5  # g_yhat, g_P, y, mu, sigma
    assert len(re.findall(r"st\.global\.v4\.f32", body)) >= 3


# -------------------------------------------------------------------------------------------------
# On the device


def dev(*ts):
    out = tuple(None if t is None else t.to(DEVICE) for t in ts)
    return out if len(out) > 1 else out[0]


def kernel_fn(mode, zero_center, seed, temperature, backend=BACKEND):
    return _kernel_fn(mode, zero_center, seed, temperature, backend)


def cpu(t):
    return None if t is None else t.detach().cpu()


def misaligned(t):
    """A contiguous copy of t whose data pointer is 4 bytes past a 16-byte boundary (or 2/8)."""
    flat = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    off = 1 if t.element_size() >= 4 else 2
    out = flat[off:off + t.numel()].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0 and out.is_contiguous()
    return out


CASES = list(itertools.product(lq.MODES, [True, False], DTYPES))


@needs_device
@pytest.mark.parametrize("mode,zero_center,dtype", CASES)
@pytest.mark.parametrize("shape", [ODD_SHAPES[0], (4, 8, 16, 16)])
def test_values_and_gradients_match_reference(mode, zero_center, dtype, shape):
    seed, temperature = 1234, 0.37
    y, s, m = make_inputs(shape, dtype, seed=7)
    g_yhat, g_lik = make_upstream(shape, dtype, lik_dtype(dtype))
    u = lq.uniform_noise(shape, seed) if mode != "ste" else None  # CPU u, the contract's

    k_yhat, k_lik, k_grads = run(kernel_fn(mode, zero_center, seed, temperature), *dev(y, s, m),
                                 *dev(g_yhat, g_lik))
    k_yhat, k_lik, k_grads = cpu(k_yhat), cpu(k_lik), [cpu(g) for g in k_grads]
    r_yhat, _, _ = run(reference_fn(mode, zero_center, u, temperature), y, s, m, g_yhat, g_lik)
    assert k_yhat.dtype == dtype and k_lik.dtype == lik_dtype(dtype)
    assert torch.equal(k_yhat, r_yhat)

    y64, s64, m64 = (t.to(torch.float64) for t in (y, s, m))
    u64 = u.to(torch.float64) if u is not None else None
    _, d_lik, d_grads = run(reference_fn(mode, zero_center, u64, temperature), y64, s64, m64,
                            g_yhat.to(torch.float64), g_lik.to(torch.float64))
    eps = compute_eps(dtype)
    v = rate_residual64(y64, m64, u64, mode, zero_center, temperature)
    err_p, err_gv, err_gs, ambiguous = error_bounds(
        y64, s64, m64, u64, v, g_lik.to(torch.float64), eps, scale_bound=SB, likelihood_bound=LB)
    ambiguous &= g_lik >= 0
    assert ambiguous.float().mean() < 0.01
    diff_p = (k_lik.to(torch.float64) - d_lik).abs()
    assert (diff_p <= err_p).all(), f"likelihood off by {(diff_p - err_p).max():.3e} beyond bound"

    out_eps = EPS[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0
    gabs = eps * g_yhat.to(torch.float64).abs()
    bounds = {"y": err_gv + gabs, "scales": err_gs, "means": err_gv + gabs}
    for name, got, want in zip(("y", "scales", "means"), k_grads, d_grads):
        assert got.dtype == dtype
        want = want.to(torch.float64)
        # both sides round the final sum g_yhat + g_v (and -g_v): up to one ulp apart
        tol = bounds[name] + 2 * eps * want.abs()
        tol = tol + out_eps * want.abs() + out_eps * torch.finfo(dtype).tiny
        diff = (got.to(torch.float64) - want).abs()
        ok = (diff <= tol) | ambiguous
        assert ok.all(), f"grad {name}: {int((~ok).sum())} elements beyond bound, worst " \
                         f"{(diff - tol)[~ok].max():.3e}"


def _assert_same_bits(a, b, what):
    if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                             and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))):
        return
    bad = a != b
    msg = f"{what}: {int(bad.sum())} of {a.numel()} elements differ"
    if a.dtype in (torch.float32, torch.float64):
        ia = a.view(torch.int32 if a.dtype == torch.float32 else torch.int64).to(torch.int64)
        ib = b.view(torch.int32 if b.dtype == torch.float32 else torch.int64).to(torch.int64)
        msg += f", max {int((ia - ib).abs().max())} ulp; first at {bad.nonzero()[0].tolist()}: " \
               f"{a[bad][0].item()!r} vs {b[bad][0].item()!r}"
    raise AssertionError(msg)


@needs_device
@pytest.mark.parametrize("mode,zero_center,dtype", CASES)
@pytest.mark.parametrize("layout", ["aligned", "misaligned", "large"])
def test_cuda_matches_cpu_kernels(mode, zero_center, dtype, layout):
    """u, y_hat bit for bit; likelihoods and gradients bit for bit except float64 (libm)."""
    shape, seed, temperature = (2, 3, 37, 29), -987654321, 0.61  # odd numel: tails too
    if layout == "large":  # several grid-stride steps per thread, and an odd tail
        if dtype not in (torch.float32, torch.float16) or (mode, zero_center) != ("sua", True):
            pytest.skip("one mode is enough for the large shape")
        shape = (5, 1001, 997)
    y, s, m = make_inputs(shape, dtype, seed=21)
    g_yhat, g_lik = make_upstream(shape, dtype, lik_dtype(dtype), seed=22)
    c_yhat, c_lik, c_grads = run(kernel_fn(mode, zero_center, seed, temperature, "cpu"), y, s, m,
                                 g_yhat, g_lik)
    if layout == "misaligned":
        # inputs 4 or 8 bytes off a 16-byte boundary: the scalar kernels (the ops are called
        # directly, since autograd leaves would be fresh, aligned copies)
        ins = tuple(misaligned(t) for t in dev(y, s, m, g_yhat, g_lik))
        seed_t = lq.make_seed(seed, ins[0].device)
        temp_t = torch.tensor(temperature, dtype=torch.float64, device=ins[0].device)
        args = (seed_t, temp_t, mode, SB, LB, zero_center)
        k_yhat, k_lik = torch.ops.lic_quant.quantize_forward(*ins[:3], *args)
        gy, gs, gm = torch.ops.lic_quant.quantize_backward(ins[3], ins[4], *ins[:3], *args,
                                                           [True, True, True])
        k_grads = [gy, gs, gm]
    else:
        k_yhat, k_lik, k_grads = run(kernel_fn(mode, zero_center, seed, temperature), *dev(y, s, m),
                                     *dev(g_yhat, g_lik))
    _assert_same_bits(cpu(k_yhat), c_yhat, "y_hat")
    if dtype != torch.float64:
        _assert_same_bits(cpu(k_lik), c_lik, "likelihoods")
        for name, a, b in zip(("y", "scales", "means"), k_grads, c_grads):
            _assert_same_bits(cpu(a), b, f"grad {name}")
        return
    # float64: erfc/exp differ by a few ulps between glibc and CUDA
    u = lq.uniform_noise(shape, seed).to(torch.float64) if mode != "ste" else None
    v = rate_residual64(y, m, u, mode, zero_center, temperature)
    err_p, err_gv, err_gs, ambiguous = error_bounds(y, s, m, u, v, g_lik, EPS[dtype],
                                                    scale_bound=SB, likelihood_bound=LB)
    ambiguous &= g_lik >= 0
    assert ((cpu(k_lik) - c_lik).abs() <= err_p).all()
    gabs = EPS[dtype] * g_yhat.abs()
    for a, b, tol in zip(k_grads, c_grads, (err_gv + gabs, err_gs, err_gv + gabs)):
        assert (((cpu(a) - b).abs() <= tol) | ambiguous).all()


@needs_device
@pytest.mark.parametrize("seed", [0, 1, -1, 2**62 + 12345, -(2**63)])
@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (1000, 1001)])
def test_uniform_noise_bit_identical(seed, shape):
    ref = lq.noise.philox_uniform(shape, seed)  # the readable definition, pure torch
    cpu_u = lq.uniform_noise(shape, seed)
    dev_u = lq.uniform_noise(shape, seed, device=DEVICE)
    assert dev_u.device.type == torch.device(DEVICE).type and dev_u.dtype == torch.float32
    _assert_same_bits(cpu(dev_u), cpu_u, "u vs CPU kernel")
    _assert_same_bits(cpu(dev_u), ref, "u vs pure-torch Philox")
    assert (dev_u >= -0.5).all() and (dev_u < 0.5).all()


@needs_device
def test_only_needed_gradients_are_computed():
    y, s, m = dev(*make_inputs((4, 33), torch.float32))
    seed = lq.make_seed(1, y.device)
    temp = torch.tensor(0.5, dtype=torch.float64, device=y.device)
    g_yhat, g_lik = dev(*make_upstream(y.shape, torch.float32, torch.float32))
    bwd = torch.ops.lic_quant.quantize_backward
    full = bwd(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, [True, True, True])
    for mask in ([False, True, False], [True, False, False], [False, False, True],
                 [False, False, False]):
        part = bwd(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, mask)
        for need, got, want in zip(mask, part, (full[0], full[1], full[2])):
            if need:
                assert torch.equal(got, want)
            else:
                assert got.numel() == 0 and got.device == y.device
    none_gyh = bwd(None, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, [True, True, True])
    assert torch.equal(none_gyh[0], -full[2])  # 0 + g_v and -g_v


@needs_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_contiguous_channels_last_and_empty(dtype):
    y, s, m = dev(*make_inputs((2, 5, 6, 7), dtype, seed=11))
    base = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.5, seed=3, backend=BACKEND)
    cl = [t.to(memory_format=torch.channels_last) for t in (y, s, m)]
    out = lq.gaussian_quantize(*cl, mode="sua", temperature=0.5, seed=3, backend=BACKEND)
    assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])
    yt, st, mt = (t.transpose(1, 3) for t in (y, s, m))
    g = [t.clone().requires_grad_() for t in (yt, st, mt)]
    yh, lik = lq.gaussian_quantize(*g, mode="noise", seed=3, backend=BACKEND)
    (yh.float().sum() + lik.sum()).backward()
    gc = [t.contiguous().clone().requires_grad_() for t in (yt, st, mt)]
    yh2, lik2 = lq.gaussian_quantize(*gc, mode="noise", seed=3, backend=BACKEND)
    (yh2.float().sum() + lik2.sum()).backward()
    assert torch.equal(yh, yh2) and torch.equal(lik, lik2)
    for a, b in zip(g, gc):
        assert torch.equal(a.grad, b.grad)
    e = torch.empty(0, 3, dtype=dtype, device=DEVICE, requires_grad=True)
    yh, lik = lq.gaussian_quantize(e, e.detach().clone(), mode="mixed", backend=BACKEND)
    assert yh.shape == (0, 3) and lik.shape == (0, 3) and lik.dtype == lik_dtype(dtype)
    (yh.float().sum() + lik.sum()).backward()
    assert e.grad.shape == (0, 3)


@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(dtype):
    y, s, m = make_inputs((3, 8), dtype, seed=2)
    y[0, 1], s[1, 2], m[2, 3] = float("nan"), float("nan"), float("nan")
    g = [t.to(DEVICE).requires_grad_() for t in (y, s, m)]
    y_hat, lik = lq.gaussian_quantize(*g, mode="sua", temperature=0.3, seed=4, backend=BACKEND)
    assert torch.isnan(lik[0, 1]) and torch.isnan(lik[1, 2]) and torch.isnan(lik[2, 3])
    (y_hat.float().sum() - lik.log().sum()).backward()
    for gr, (i, j) in zip((g[0].grad, g[1].grad, g[2].grad), ((0, 1), (1, 2), (2, 3))):
        assert torch.isnan(gr[i, j])
    assert torch.isfinite(lik[0, 0]) and torch.isfinite(g[0].grad[0, 0])


@needs_gpu
def test_no_host_synchronization():
    y, s, m = dev(*make_inputs((8, 64, 32), torch.float32))
    seed = lq.make_seed(5, y.device)
    temp = torch.tensor(0.4, dtype=torch.float64, device=y.device)
    g = [t.clone().requires_grad_() for t in (y, s, m)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y_hat, lik = lq.gaussian_quantize(*g, mode="sua", temperature=temp, seed=seed,
                                          backend="cuda")
        torch.autograd.backward([y_hat, lik], [torch.ones_like(y_hat), -torch.ones_like(lik)])
        lq.uniform_noise(y.shape, seed)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@needs_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("with_means", [True, False])
def test_opcheck(dtype, with_means):
    y, s, m = dev(*make_inputs((3, 5, 7), dtype, with_means=with_means, seed=4))
    y.requires_grad_(), s.requires_grad_()
    if m is not None:
        m.requires_grad_()
    seed = lq.make_seed(17, y.device)
    temp = torch.tensor(0.7, dtype=torch.float64, device=y.device)
    for mode in lq.MODES:
        torch.library.opcheck(torch.ops.lic_quant.quantize_forward,
                              (y, s, m, seed, temp, mode, SB, LB, True))
    g_yhat, g_lik = dev(*make_upstream(y.shape, dtype, lik_dtype(dtype)))
    torch.library.opcheck(torch.ops.lic_quant.quantize_backward,
                          (g_yhat, g_lik, y.detach(), s.detach(),
                           None if m is None else m.detach(), seed, temp, "mixed", SB, LB, False,
                           [True, True, m is not None]))
    torch.library.opcheck(torch.ops.lic_quant.uniform_noise, (seed, [4, 9]))


@needs_device
@pytest.mark.parametrize("mode,backend", [("noise", BACKEND), ("sua", BACKEND), ("mixed", "auto")])
def test_torch_compile_fullgraph(mode, backend):
    torch._dynamo.reset()
    y, s, m = dev(*make_inputs((2, 16, 9, 11), torch.float32, seed=8))
    g_yhat, g_lik = dev(*make_upstream(y.shape, torch.float32, torch.float32))
    seed = lq.make_seed(41, y.device)
    temp = torch.tensor(0.45, dtype=torch.float64, device=y.device)

    def step(y, s, m, seed, temp):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode=mode, temperature=temp, seed=seed,
                                          backend=backend)
        return y_hat * 2.0, lik

    compiled = torch.compile(step, fullgraph=True)
    outs = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (y, s, m)]
        y_hat, lik = fn(*leaves, seed, temp)
        torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
        outs.append((y_hat.detach(), lik.detach(), [t.grad for t in leaves]))
    (a_yh, a_lik, a_g), (b_yh, b_lik, b_g) = outs
    assert torch.equal(a_yh, b_yh) and torch.equal(a_lik, b_lik)
    for ga, gb in zip(a_g, b_g):
        assert torch.equal(ga, gb)
    # a fresh seed tensor runs the same compiled graph with new noise (no recompilation)
    seed2 = lq.make_seed(42, y.device)
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        c_yh, c_lik = compiled(*leaves, seed2, temp)
    e_yh, e_lik = step(*leaves, seed2, temp)
    assert torch.equal(c_yh, e_yh) and torch.equal(c_lik, e_lik)
    assert not torch.equal(c_lik, a_lik)  # new noise (the rate path is noisy in every mode here)


@needs_gpu
def test_cuda_graph_replays_with_refreshed_seed():
    y, s, m = dev(*make_inputs((4, 32, 16, 16), torch.float32, seed=9))
    g_yhat, g_lik = dev(*make_upstream(y.shape, torch.float32, torch.float32))
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    seed = lq.make_seed(100, y.device)
    temp = torch.tensor(0.8, dtype=torch.float64, device=y.device)

    def step():
        y_hat, lik = lq.gaussian_quantize(*leaves, mode="sua", temperature=temp, seed=seed,
                                          backend="cuda")
        grads = torch.autograd.grad([y_hat, lik], leaves, [g_yhat, g_lik])
        return y_hat, lik, grads

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()

    def check(seed_value, temp_value):
        seed.fill_(seed_value)  # in place: the graph reads the same memory
        temp.fill_(temp_value)
        graph.replay()
        want = lq.gaussian_quantize(*(t.detach() for t in leaves), mode="sua",
                                    temperature=temp_value, seed=seed_value, backend="cuda")
        want_g = run(kernel_fn("sua", True, seed_value, temp_value, "cuda"), y, s, m, g_yhat,
                     g_lik)[2]
        torch.cuda.synchronize()
        assert torch.equal(static[0], want[0]) and torch.equal(static[1], want[1])
        for a, b in zip(static[2], want_g):
            assert torch.equal(a, b)
        return static[0].clone()

    first = check(100, 0.8)
    second = check(-7, 0.8)
    assert not torch.equal(first, second)  # fresh noise on replay
    third = check(-7, 0.2)
    assert not torch.equal(second, third)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_more_than_2_31_elements(dtype):
    n = 2**31 + 37
    esize = torch.finfo(dtype).bits // 8
    # y, scales, y_hat, float32 likelihoods; backward: float32 g_P, 2 grads (scales, y)
    need = n * (4 * esize + 8) + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory; {free / 2**30:.1f} free")
    seed, mode = 2024, "noise"
    gen = torch.Generator(device="cuda").manual_seed(0)
    y = torch.randn(n, device="cuda", dtype=dtype, generator=gen).mul_(3)
    s = torch.rand(n, device="cuda", dtype=dtype, generator=gen).add_(0.05)
    seed_t = lq.make_seed(seed, y.device)
    temp = torch.tensor(1.0, dtype=torch.float64, device="cuda")
    y_hat, lik = torch.ops.lic_quant.quantize_forward(y, s, None, seed_t, temp, mode, SB, LB, True)
    windows = [(0, 1000), (2**31 - 500, 2**31 + 37)]
    for a, b in windows:
        ys, ss = y[a:b].cpu(), s[a:b].cpu()
        u = lq.noise.philox_uniform((b - a,), seed, start=a)
        r_yhat, r_lik = lq.gaussian_quantize_reference(ys, ss, None, u, mode=mode,
                                                       scale_bound=SB, likelihood_bound=LB)
        assert torch.equal(y_hat[a:b].cpu(), r_yhat)  # the noise index is the global one
        got = lik[a:b].cpu().double()
        assert ((got - r_lik.double()).abs() <= 1e-4 * r_lik.double() + 1e-7).all()
    del y_hat
    g_lik = lik.neg_()  # float32, negative: the usual rate-loss sign
    del lik
    gy, gs, _ = torch.ops.lic_quant.quantize_backward(None, g_lik, y, s, None, seed_t, temp, mode,
                                                       SB, LB, True, [True, True, False])
    for a, b in windows:
        u = lq.noise.philox_uniform((b - a,), seed, start=a)
        leaves = [y[a:b].cpu().requires_grad_(), s[a:b].cpu().requires_grad_()]
        _, lk = lq.gaussian_quantize_reference(*leaves, None, u, mode=mode, scale_bound=SB,
                                               likelihood_bound=LB)
        torch.autograd.backward([lk], [g_lik[a:b].cpu()])
        # a wrong index would give unrelated values; rounding differences stay far below this
        for got, want in ((gy[a:b].cpu(), leaves[0].grad), (gs[a:b].cpu(), leaves[1].grad)):
            got, want = got.double(), want.double()
            assert ((got - want).abs() <= 1e-2 * want.abs() + 1e-4 * want.abs().max()).all()


def test_sass_instruction_budget():
    """Issue-bound on the GPU, so the static SASS count per element of the hot loops is the speed
    budget (docs/design/cuda_kernels.md): float32 forward <= 150 (mixed, sua), float32 backward
    <= 220 (every path of the loop), float16/bfloat16 within 10 % of float32. Counted on sm_90 by
    tools/cuda_sass_stats.py from the extension this run built."""
    if not (lq.extension_available() and extension_has_device_code()):
        pytest.skip("lic_quant._C was built CPU-only")
    if find_cuobjdump() is None:
        pytest.skip("no cuobjdump")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "tools", "cuda_sass_stats.py"),
                          extension_path()], capture_output=True, text=True)
    if "sm_90" not in out.stdout or "forward_kernel<f32" not in out.stdout:
        pytest.skip("no sm_90 machine code in this build (TORCH_CUDA_ARCH_LIST)")
    per = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(\w+_kernel<(\w+), N=\d+, mode=(\w+)>)\s.*\s(\d+)\s*$", line)
        if m and m.group(3) != "runtime":
            per[(m.group(1).split("<")[0], m.group(2), m.group(3))] = int(m.group(4))
    assert len(per) == 24, out.stdout  # 2 passes x 3 dtypes x 4 modes on the aligned path
    for mode in ("mixed", "sua"):
        assert per[("forward_kernel", "f32", mode)] <= 150, per
    for mode in ("noise", "ste", "mixed", "sua"):
        assert per[("backward_kernel", "f32", mode)] <= 220, per
        for kind in ("forward_kernel", "backward_kernel"):
            for half in ("f16", "bf16"):
                assert per[(kind, half, mode)] <= 1.1 * per[(kind, "f32", mode)], (kind, half, mode)
