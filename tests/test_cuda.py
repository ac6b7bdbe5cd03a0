"""What only the CUDA kernels have: registration and code generation (checked on any machine that
built them: PTX without contraction, vector loads, the SASS budget), the vectorized and scalar
paths (misaligned pointers, several grid-stride steps), no host synchronization, CUDA graphs with
refreshed seeds, and more than 2^31 elements (on a GPU only). Values, gradients, bit identity with
the CPU kernels, NaN, layouts, opcheck and torch.compile are the contract suite's
(tests/contract/, backend "cuda").

Comparisons: u and y_hat bit for bit the CPU kernels'; likelihoods and gradients too for float16,
bfloat16 and float32 (the same IEEE +, -, *, / and selects, uncontracted: --fmad=false); float64
uses each platform's erfc/exp (glibc vs libdevice), so there the float64 rounding bound of
tests/helpers.py applies.

LIC_QUANT_CUDA_TEST_DEVICE=cpu runs the GPU tests' logic on the CPU kernels (a check of the tests
themselves on a machine without a GPU); LIC_QUANT_EXPECT_CUDA_BUILD=1 makes a CPU-only build an error.
"""
from __future__ import annotations

import functools
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
from helpers import (DTYPES, EPS, LIKELIHOOD_BOUND as LB, SCALE_BOUND as SB, assert_same_bits,
                     error_bounds, make_inputs, make_upstream, rate_residual64, run)
from helpers import kernel_fn as _kernel_fn

OPS = ("quantize_forward", "quantize_backward", "uniform_noise", "mixture_quantize_forward",
       "mixture_quantize_backward", "entropy_bottleneck_forward", "entropy_bottleneck_backward")
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
    # (float64 kernels: <double, double, ...> or, for the rate forward, <double, family>)
    # (and the EntropyBottleneck kernels that evaluate float64 libm: constants, reduce)
    float_entries = [p for p in entries if not re.search(
        r"kernelId[dL]|eb_(constants|reduce)_kernel|eb_\w+_kernelILi\d+Edd", p.split("(", 1)[0])]
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
    body = _kernel_ptx(ptx, "backward_kernelIffLi4ELi0ELi0ELb0E")  # rate=False (Lb0E)
    assert len(re.findall(r"ld\.global(\.nc)?\.v4\.f32", body)) >= 5  # g_yhat, g_P, y, mu, sigma
    assert len(re.findall(r"st\.global\.v4\.f32", body)) >= 3


def test_entropy_bottleneck_codegen():
    """The EntropyBottleneck kernels (csrc/cuda/entropy_bottleneck_cuda.cu): every layer count
    1 .. 8 and dtype; the float-compute forward and backward use the header's explicit fmas (no
    mad, no approximate arithmetic but the reciprocal estimate: test_cuda_codegen) and keep
    their activations and per-lane parameter accumulators in registers (indexed by constants) up
    to seven layers: at most 16 bytes of stack, the few values ptxas keeps around the calls to the
    IEEE division's slow path in some instantiations (docs/design/entropy_bottleneck_gpu.md)."""
    if not (lq.extension_available() and extension_has_device_code()):
        pytest.skip("lic_quant._C was built CPU-only")
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump")
    so = extension_path()
    ptx = subprocess.run([tool, "-ptx", so], capture_output=True, text=True).stdout
    for dtype in ("ff", "dd", "N3c104HalfEf", "N3c108BFloat16Ef"):
        for layers in range(1, 9):
            for kind in ("constants", "forward", "backward", "reduce"):
                body = _kernel_ptx(ptx, f"eb_{kind}_kernelILi{layers}E{dtype}E")
                if kind in ("forward", "backward") and dtype != "dd":
                    assert re.search(r"\bfma\.rn\.f32", body), (kind, dtype, layers)
    res = subprocess.run([tool, "-res-usage", "-arch", "sm_90", so], capture_output=True,
                         text=True).stdout
    if "Function" not in res:
        pytest.skip("no sm_90 machine code in this build (TORCH_CUDA_ARCH_LIST)")
    stacks = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"Function (\S*eb_(?:forward|backward)_kernelILi(?:[1-7])E(?:ff|N3c104HalfEf|"
        r"N3c108BFloat16Ef)E\S*):\s*\n\s*REG:\d+ STACK:(\d+)", res)}
    assert len(stacks) == 2 * 7 * 3, sorted(stacks)
    assert all(v <= 16 for v in stacks.values()), {k: v for k, v in stacks.items() if v > 16}


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


# every mode and dtype on the scalar path; the grid-stride loop in two dtypes
CASES = [(*c, "misaligned") for c in itertools.product(lq.MODES, [True, False], DTYPES)] + [
    ("sua", True, torch.float32, "large"), ("sua", True, torch.float16, "large")]


@needs_device
@pytest.mark.parametrize("mode,zero_center,dtype,layout", CASES)
def test_cuda_paths_match_cpu_kernels(mode, zero_center, dtype, layout):
    """The scalar path (inputs off a 16-byte boundary) and the grid-stride loop (a large shape):
    u, y_hat bit for bit; likelihoods and gradients bit for bit except float64 (libm). The
    aligned vector path on an odd shape is tests/contract/test_bit_identity.py's."""
    shape, seed, temperature = (2, 3, 37, 29), -987654321, 0.61  # odd numel: tails too
    if layout == "large":  # several grid-stride steps per thread, and an odd tail
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
    assert_same_bits(cpu(k_yhat), c_yhat, "y_hat")
    if dtype != torch.float64:
        assert_same_bits(cpu(k_lik), c_lik, "likelihoods")
        for name, a, b in zip(("y", "scales", "means"), k_grads, c_grads):
            assert_same_bits(cpu(a), b, f"grad {name}")
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


# -------------------------------------------------------------------------------------------------
# Mixtures (docs/spec.md section 7): the CUDA kernels against the CPU kernels, every family, mode
# and dtype; K = 1, 3, 8; probabilities and logits; with and without zero_center; the parameters
# contiguous, channel-blocked views (inner sizes that are not multiples of the four elements a
# thread takes, so groups cross blocks) and weights broadcast over the batch, read in place.

MIXTURE_CONFIGS = [  # K, logits, zero_center, layout, shape
    (1, False, True, "contiguous", (2, 3, 5, 7)),
    (3, False, False, "blocked", (3, 5, 7, 9)),
    (3, True, True, "broadcast", (2, 3, 5, 7)),
    (8, True, False, "blocked", (2, 2, 3, 5)),
]


def mixture_inputs(K, logits, layout, shape, dtype, device, seed=31):
    """y and the (K, *shape) parameters, built on `device` in the layout asked for (so the copy to
    the device keeps it)."""
    g = torch.Generator().manual_seed(seed)
    full = (shape[0], K * shape[1], *shape[2:]) if layout == "blocked" else (K, *shape)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    sc = torch.rand(full, generator=g, dtype=torch.float64) * 2
    mu = torch.randn(full, generator=g, dtype=torch.float64) * 2
    w = torch.randn(full, generator=g, dtype=torch.float64)
    ts = [t.to(device=device, dtype=dtype) for t in (y, sc, mu, w)]
    if layout == "blocked":
        ts[1:] = [t.unflatten(1, (K, shape[1])).movedim(1, 0) for t in ts[1:]]
    if not logits:
        ts[3] = torch.softmax(ts[3].double(), 0).to(dtype)
    if layout == "broadcast":
        ts[3] = ts[3][:, :1].expand_as(ts[3])
    return ts


def mixture_ops(ins, g_yhat, g_lik, mask, family, mode, logits, zero_center, seed, temperature,
                rate=False):
    dev_ = ins[0].device
    seed_t = lq.make_seed(seed, dev_)
    temp_t = torch.tensor(temperature, dtype=torch.float64, device=dev_)
    args = (seed_t, temp_t, mode, SB, LB, zero_center, family, logits)
    y_hat, lik = torch.ops.lic_quant.mixture_quantize_forward(*ins, *args, rate)
    grads = torch.ops.lic_quant.mixture_quantize_backward(g_yhat, g_lik, *ins, *args, mask, rate)
    return y_hat, lik, grads


@needs_device
@pytest.mark.parametrize("family", lq.FAMILIES)
@pytest.mark.parametrize("mode", lq.MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixture_matches_cpu_kernels(family, mode, dtype):
    """y_hat bit for bit; likelihoods and the four gradients bit for bit except float64 (libm);
    the parameters' gradients in the parameters' own strides where those are dense."""
    for K, logits, zero_center, layout, shape in MIXTURE_CONFIGS:
        what = f"{family} {mode} {dtype} K={K} logits={logits} zc={zero_center} {layout}"
        seed, temperature = -123456789, 0.45
        c_ins = mixture_inputs(K, logits, layout, shape, dtype, "cpu")
        k_ins = mixture_inputs(K, logits, layout, shape, dtype, DEVICE)
        g_yhat, g_lik = make_upstream(shape, dtype, lik_dtype(dtype), seed=K)
        for mask in ([True, True, True, True], [False, True, False, True]):
            want = mixture_ops(c_ins, g_yhat, g_lik, mask, family, mode, logits, zero_center, seed,
                               temperature)
            got = mixture_ops(k_ins, *dev(g_yhat, g_lik), mask, family, mode, logits,
                              zero_center, seed, temperature)
            assert_same_bits(cpu(got[0]), want[0], f"{what} y_hat")
            pairs = [("likelihoods", got[1], want[1])] + [
                (f"grad {n}", a, b) for n, a, b, m in
                zip(("y", "scales", "means", "weights"), got[2], want[2], mask) if m]
            for name, a, b in pairs:
                if dtype == torch.float64:  # erfc/exp/expm1 of glibc vs CUDA: a few ulps
                    torch.testing.assert_close(cpu(a), b, rtol=1e-12, atol=1e-300,
                                               equal_nan=True, msg=f"{what} {name}")
                else:
                    assert_same_bits(cpu(a), b, f"{what} {name}")
            for g, t, m in zip(got[2][1:], k_ins[1:], mask[1:]):
                if m and 0 not in t.stride():  # dense (the broadcast weights are not)
                    assert g.stride() == t.stride(), what


@needs_device
def test_mixture_grid_stride_loop():
    """Several grid-stride steps per thread and an odd tail, float32, against the CPU kernels."""
    shape, K = (3, 40, 97, 101), 3
    ins = mixture_inputs(K, True, "blocked", shape, torch.float32, "cpu", seed=5)
    g_yhat, g_lik = make_upstream(shape, torch.float32, torch.float32, seed=6)
    mask = [True, True, True, True]
    want = mixture_ops(ins, g_yhat, g_lik, mask, "gaussian", "sua", True, True, 77, 0.3)
    k_ins = mixture_inputs(K, True, "blocked", shape, torch.float32, DEVICE, seed=5)
    got = mixture_ops(k_ins, *dev(g_yhat, g_lik), mask, "gaussian", "sua", True, True, 77, 0.3)
    for a, b, name in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2]),
                          ("y_hat", "likelihoods", "y", "scales", "means", "weights")):
        assert_same_bits(cpu(a), b, name)


@needs_device
@pytest.mark.parametrize("family", lq.FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mixture_rate_matches_cpu_kernels(family, dtype):
    """rate=True (docs/spec.md section 8): y_hat bit for bit, the bits within 1e-6 relative (the
    same P; only the log2 and the order of the float64 sums differ), the gradients from the bits'
    gradient bit for bit except float64. Samples of 35 elements (not a multiple of the four a
    thread takes) and of 1540 (two chunks of the CUDA reduction)."""
    for shape, K, logits, layout in (((3, 5, 7), 3, True, "contiguous"),
                                     ((2, 4, 5, 77), 2, False, "blocked")):
        what = f"{family} {dtype} {shape}"
        c_ins = mixture_inputs(K, logits, layout, shape, dtype, "cpu")
        k_ins = mixture_inputs(K, logits, layout, shape, dtype, DEVICE)
        g_yhat = make_upstream(shape, dtype, dtype, seed=3)[0]
        g_bits = torch.randn(shape[0], generator=torch.Generator().manual_seed(4),
                             dtype=torch.float64).to(lik_dtype(dtype))
        mask = [True, True, True, True]
        kw = dict(family=family, mode="mixed", logits=logits, zero_center=False, seed=5,
                  temperature=1.0, rate=True)
        want = mixture_ops(c_ins, g_yhat, g_bits, mask, **kw)
        got = mixture_ops(k_ins, *dev(g_yhat, g_bits), mask, **kw)
        assert_same_bits(cpu(got[0]), want[0], f"{what} y_hat")
        assert got[1].shape == (shape[0],)
        torch.testing.assert_close(cpu(got[1]).double(), want[1].double(), rtol=1e-6, atol=0,
                                   msg=f"{what} bits")
        for name, a, b in zip(("y", "scales", "means", "weights"), got[2], want[2]):
            if dtype == torch.float64:
                torch.testing.assert_close(cpu(a), b, rtol=1e-12, atol=1e-300,
                                           msg=f"{what} grad {name}")
            else:
                assert_same_bits(cpu(a), b, f"{what} grad {name}")


@needs_gpu
def test_mixture_api_selects_cuda():
    y, sc, mu, w = mixture_inputs(3, False, "blocked", (2, 4, 6, 6), torch.float32, "cuda")
    out = lq.mixture_quantize(y, sc, mu, w, seed=3)
    ref = lq.mixture_quantize(*(t.cpu() for t in (y, sc, mu, w)), seed=3, backend="cpu")
    assert out[0].is_cuda
    assert_same_bits(out[0].cpu(), ref[0], "y_hat")
    assert_same_bits(out[1].cpu(), ref[1], "likelihoods")


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


@functools.lru_cache(maxsize=None)
def _sass_listing(binary: str) -> str:
    """The tool's table for one binary: the two SASS tests share one disassembly (16 s)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(root, "tools", "cuda_sass_stats.py"),
                           binary], capture_output=True, text=True).stdout


def sass_table():
    """tools/cuda_sass_stats.py on the extension this run built (sm_90): {kernel: (reg, stack,
    sass, loop, per element or None)}; skips where there is nothing to count."""
    if not (lq.extension_available() and extension_has_device_code()):
        pytest.skip("lic_quant._C was built CPU-only")
    if find_cuobjdump() is None:
        pytest.skip("no cuobjdump")
    listing = _sass_listing(extension_path())
    if "sm_90" not in listing or "forward_kernel<f32" not in listing:
        pytest.skip("no sm_90 machine code in this build (TORCH_CUDA_ARCH_LIST)")
    table = {}
    for line in listing.splitlines():
        m = re.match(r"(\w+<[^>]*>)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*(\d*)\s*$", line)
        if m:
            table[m.group(1)] = (*(int(g) for g in m.groups()[1:5]),
                                 int(m.group(6)) if m.group(6) else None)
    return table


def test_sass_instruction_budget():
    """Issue-bound on the GPU, so the static SASS count per element of the hot loops is the speed
    budget (docs/design/cuda_kernels.md): float32 forward <= 150 (mixed, sua), float32 backward
    <= 220 (every path of the loop), float16/bfloat16 within 10 % of float32; the Laplace and
    logistic forwards within 10 % of the Gaussian's. Counted on sm_90 by tools/cuda_sass_stats.py
    from the extension this run built."""
    table = sass_table()
    per = {}
    for name, row in table.items():
        m = re.match(r"(\w+_kernel)<(\w+), N=\d+, mode=(\w+)>$", name)
        if m and m.group(3) != "runtime":
            per[m.groups()] = row[4]
    assert len(per) == 24, table  # 2 passes x 3 dtypes x 4 modes on the aligned path
    for mode in ("mixed", "sua"):
        assert per[("forward_kernel", "f32", mode)] <= 150, per
        for family in ("laplace", "logistic"):
            row = table[f"forward_kernel<f32, N=4, mode={mode}, family={family}>"]
            assert row[4] <= 1.1 * per[("forward_kernel", "f32", mode)], (family, mode, row)
    for mode in ("noise", "ste", "mixed", "sua"):
        assert per[("backward_kernel", "f32", mode)] <= 220, per
        for kind in ("forward_kernel", "backward_kernel"):
            for half in ("f16", "bf16"):
                assert per[(kind, half, mode)] <= 1.1 * per[(kind, "f32", mode)], (kind, half, mode)


def test_mixture_sass():
    """The mixture kernels (docs/design/cuda_kernels.md, "Mixtures"): every family, mode, rate and
    logits option and dtype built (the mode a template constant in float compute, read at run
    time in float64); no stack frame (so no local memory) in the float-compute kernels; one
    element at K = 3 (tools/cuda_sass_stats.py's mixture_path) at most its recorded ceiling in
    float32, float16/bfloat16 within 10 % of float32; the Gaussian's probabilities path within
    issue 16's bar (3x the single Gaussian's forward 144 and backward 210)."""
    table = sass_table()
    rows = {k: v for k, v in table.items() if k.startswith("mixture_")}
    # 2 passes x (3 dtypes x 4 modes + float64) x 3 families x rate or not x logits or not
    assert len(rows) == 2 * (3 * 4 + 1) * 3 * 2 * 2, sorted(rows)
    for name, (reg, stack, sass, loop, per) in rows.items():
        assert per is not None and loop > 0, name
        if "f64" not in name:
            assert stack == 0, name
    # Regression ceilings per pass, rate and logits option (the largest count over the families
    # and modes plus a margin): the rate=True forward carries the chunk's reduction and a
    # per-element noise path for unaligned samples; logits add the softmax's two loops.
    ceiling = {("mixture_forward_kernel", False, False): 460,
               ("mixture_forward_kernel", True, False): 590,
               ("mixture_forward_kernel", False, True): 610,
               ("mixture_forward_kernel", True, True): 740,
               ("mixture_backward_kernel", False, False): 665,
               ("mixture_backward_kernel", True, False): 705,
               ("mixture_backward_kernel", False, True): 875,
               ("mixture_backward_kernel", True, True): 920}
    for name, row in rows.items():
        if "<f32" in name:
            key = (name.split("<")[0], ", rate" in name, ", logits" in name)
            assert row[4] <= ceiling[key], (name, row)
            for half in ("f16", "bf16"):
                assert rows[name.replace("f32", half)][4] <= 1.1 * row[4], (name, half)
    for kind, bar in (("forward", 3 * 144), ("backward", 3 * 210)):
        assert rows[f"mixture_{kind}_kernel<f32, N=4, any K, mode=mixed>"][4] <= bar, kind
