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

OPS = ("quantize_forward", "quantize_backward", "uniform_noise", "entropy_bottleneck_forward",
       "entropy_bottleneck_backward")
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
