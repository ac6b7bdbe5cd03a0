"""What only the Triton backend has: its float32 normal tail, its noise at 64-bit logical indices
and against tl.rand4x (through the test hooks of tests/triton_hooks.py), the interpreter's
program instances and block size, its availability messages, the autotuned GPU configs and the
machine code (no contraction, checked offline for sm_90). Values, gradients, bit identity with the
C++ kernels, NaN, layouts, opcheck and torch.compile are the contract suite's (tests/contract/,
backends "triton" and "triton-interpreter").

Without a GPU the kernels run on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton); with one they run compiled on CUDA tensors.
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")

import lic_quant as lq  # noqa: E402
from lic_quant import _triton_kernels as triton_kernels  # noqa: E402
from lic_quant import triton_ops  # noqa: E402
from lic_quant.noise import philox_uniform  # noqa: E402

import triton_hooks  # noqa: E402

from helpers import make_inputs, make_upstream, run, same_bits, special_inputs  # noqa: E402

INTERPRETED = triton_ops.interpreted()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
ON_GPU = DEVICE == "cuda"
HAVE_CPP = lq.extension_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="the C++ extension is not built")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs CUDA (compiled Triton kernels)")

SHAPE = (3, 5, 7, 11)
SCALE_BOUND, LIK_BOUND = 0.11, 1e-9
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on NaN/inf (interpreter)


def quantize(backend, mode, zero_center, seed, temperature=0.37, **kw):
    def fn(y, scales, means):
        return lq.gaussian_quantize(y, scales, means, mode=mode, temperature=temperature,
                                    scale_bound=SCALE_BOUND, likelihood_bound=LIK_BOUND,
                                    zero_center=zero_center, seed=seed, backend=backend, **kw)
    return fn


def to_device(*ts):
    return [t.to(DEVICE) if t is not None else None for t in ts]


# ---------------------------------------------------------------------------------------------
# erfc / normal tail


def test_normal_sf_accuracy():
    """Q(a) = erfc(a/sqrt2)/2 of the kernels: <= 1e-6 relative (measured 3.5e-7) over [0, 14]
    wherever Q > 1e-37, the negative side, and NaN/inf handling."""
    np = pytest.importorskip("numpy")
    special = pytest.importorskip("scipy.special")
    a = torch.from_numpy(np.linspace(0.0, 14.0, 1_000_001).astype(np.float32))
    a = torch.cat([a, -a[:200_001]])
    q = triton_hooks.normal_sf(a.to(DEVICE)).cpu().double().numpy()
    truth = special.ndtr(-a.double().numpy())
    ok = truth > 1e-37
    rel = np.abs(q[ok] - truth[ok]) / truth[ok]
    worst = a.numpy()[ok][rel.argmax()]
    assert rel.max() <= 1e-6, f"max relative error {rel.max():.3e} at a={worst}"
    assert rel.max() <= 4e-7  # what the method achieves; a regression shows up here first
    edge = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 40.0, -40.0])
    out = triton_hooks.normal_sf(edge.to(DEVICE)).cpu()
    assert out[0].isnan()
    assert out[[1, 2, 5, 6]].tolist() == [0.0, 1.0, 0.0, 1.0]
    # Q(0) = 1/2 comes out of the one tail formula like every other value: within its accuracy
    assert (out[3:5] - 0.5).abs().max() <= 4e-7 * 0.5


# ---------------------------------------------------------------------------------------------
# noise


@pytest.mark.parametrize("start", [2**32 - 700, 2**33 + 4, 2**34 - 4, 2**40 - 4, 2**62])
def test_noise_high_indices(start):
    """64-bit logical indices: hi32(i // 4) enters the counter (checked without 2^32 elements).
    The kernels' index shift must be a multiple of 4 (whole Philox blocks)."""
    seed_t = lq.make_seed(987654321, torch.device(DEVICE))
    u = triton_hooks.uniform_noise(1500, seed_t, start=start).cpu()
    assert same_bits(u, philox_uniform((1500,), 987654321, start=start))
    # the quantize kernel's own noise at those indices: y = 0, no means, mode noise -> y_hat = u
    y = torch.zeros(1500, device=DEVICE)
    y_hat, _ = triton_hooks.quantize_forward_at(
        y, torch.ones_like(y), None, seed_t, torch.tensor(1.0, dtype=torch.float64, device=DEVICE),
        "noise", SCALE_BOUND, LIK_BOUND, True, start)
    assert same_bits(y_hat.cpu(), u)


def _tl_rand4x_reference(seed: int, start: int, n: int):
    """Triton's own tl.rand4x(seed, b) for the blocks b that hold elements start .. start + n - 1
    (start a multiple of 4), element 4 b + j taking output j, minus 1/2 in torch (one float32
    rounding, as the kernels do)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rand4x_kernel(out_ptr, seed, first_block, n_blocks, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        r0, r1, r2, r3 = tl.rand4x(seed, b + first_block)
        mask = b < n_blocks
        tl.store(out_ptr + 4 * b, r0, mask=mask)
        tl.store(out_ptr + 4 * b + 1, r1, mask=mask)
        tl.store(out_ptr + 4 * b + 2, r2, mask=mask)
        tl.store(out_ptr + 4 * b + 3, r3, mask=mask)

    assert start % 4 == 0
    n_blocks = (n + 3) // 4
    out = torch.empty(4 * n_blocks, dtype=torch.float32, device=DEVICE)
    rand4x_kernel[(triton.cdiv(n_blocks, 256),)](out, seed, start // 4, n_blocks, BLOCK=256)
    return (out[:n] - 0.5).cpu()


@pytest.mark.parametrize("seed,start", [(12345, 0), (2**40 + 7, 2**32 - 500), (7, 2**45 + 4)])
def test_noise_equals_tl_rand4x(seed, start):
    """docs/spec.md section 3: element i is tl.rand4x(seed, i // 4)[i % 4] - 1/2 (checked for
    the installed Triton; the kernels write Philox out themselves, so they do not depend on how a
    version splits 64-bit offsets)."""
    import triton

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 4):
        pytest.skip("older Triton may run a 64-bit Philox for int64 offsets")
    seed_t = lq.make_seed(seed, torch.device(DEVICE))
    u = triton_hooks.uniform_noise(1203, seed_t, start=start).cpu()
    assert same_bits(u, _tl_rand4x_reference(seed, start, 1203))


# ---------------------------------------------------------------------------------------------
# the interpreter's program instances


@needs_cpp
@pytest.mark.skipif(ON_GPU, reason="interpreter block size")
def test_bit_identical_to_cpp_many_blocks(monkeypatch):
    """Several program instances and a ragged last block (1155 elements in blocks of 128)."""
    monkeypatch.setattr(triton_ops, "INTERPRETER_BLOCK", 128)
    y, s, m = special_inputs(SHAPE, torch.float16)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float16, torch.float32, seed=6)
    g_lik[:, :2] = -g_lik[:, :2].abs()  # some blocks all negative, some mixed
    cpp = run(quantize("cpu", "sua", False, 23), y, s, m, g_yhat, g_lik)
    tri = run(quantize("triton", "sua", False, 23), y, s, m, g_yhat, g_lik)
    for a, b in zip([cpp[0], cpp[1], *cpp[2]], [tri[0], tri[1], *tri[2]]):
        assert same_bits(a, b)
    u = triton_hooks.uniform_noise(1000, torch.tensor(5), start=2**32 - 300)
    assert same_bits(u, philox_uniform((1000,), 5, start=2**32 - 300))


# ---------------------------------------------------------------------------------------------
# availability


def test_check_available_messages(monkeypatch):
    y = torch.zeros(3)
    monkeypatch.setattr(triton_ops, "interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_ops.check_available(y)
    monkeypatch.setattr(triton_ops, "TRITON_ERROR", ImportError("no triton"))
    with pytest.raises(RuntimeError, match="triton did not import"):
        triton_ops.check_available(y)


# ---------------------------------------------------------------------------------------------
# GPU only (compiled kernels)


@pytest.fixture
def autotune(monkeypatch):
    monkeypatch.setattr(triton_ops, "AUTOTUNE", True)


@gpu_only
@pytest.mark.slow
def test_gpu_torch_compile_inductor_fullgraph(autotune):
    y, s, m = to_device(*make_inputs((4, 8, 16, 16), torch.float32))

    def f(y, s, m, seed):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.5, seed=seed,
                                          backend="triton")
        return (y_hat - y).square().mean() - lik.log2().sum() / y.numel()

    compiled = torch.compile(f, fullgraph=True)
    seed_t = torch.tensor(9, dtype=torch.int64, device=DEVICE)
    le = [t.clone().requires_grad_() for t in (y, s, m)]
    lc = [t.clone().requires_grad_() for t in (y, s, m)]
    a, b = f(*le, seed_t), compiled(*lc, seed_t)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    for x, z in zip(le, lc):
        torch.testing.assert_close(x.grad, z.grad)


@gpu_only
def test_gpu_large_and_odd_sizes(autotune):
    """Several blocks, a ragged tail, and the autotuned configs agree with the C++ kernels."""
    n = 3 * 4096 + 17
    y, s, m = (t.flatten()[:n] for t in make_inputs((n,), torch.float32))
    g_yhat, g_lik = make_upstream((n,), torch.float32, torch.float32)
    tr = run(quantize("triton", "noise", True, 5), *to_device(y, s, m, g_yhat, g_lik))
    if HAVE_CPP:
        cpu = run(quantize("cpu", "noise", True, 5), y, s, m, g_yhat, g_lik)
        for a, b in zip([cpu[0], cpu[1], *cpu[2]], [tr[0], tr[1], *tr[2]]):
            assert same_bits(a, b.cpu())


def test_gpu_machine_code_has_no_contraction():
    """Without a GPU: compile the kernels for sm_90 with Triton's bundled ptxas and check the
    PTX/SASS for fma contraction, approximate division and flush-to-zero
    (tools/check_triton_ptx.py),
    the three things that would break the bitwise agreement with the C++/CUDA kernels on GPU."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, os.path.join(root, "tools", "check_triton_ptx.py")],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode == 2:
        pytest.skip(f"no NVIDIA toolchain in Triton: {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_eb_tanh_constants_are_the_fit():
    """eb_math.h's eb_tanh and its Triton port hold the coefficients and the argument clamp that
    tools/fit_eb_tanh.py computes (float32 for float32), in the order it lists them, so the tool
    that bounds the error is about the code that runs. The header's clamp is kEbTanhArgMax, which
    eb_tanh reads through LQ_LIMIT."""
    import inspect
    import re
    import sys

    import numpy as np
    pytest.importorskip("scipy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "tools"))
    try:
        import fit_eb_tanh
    finally:
        sys.path.pop(0)
    _, p, q = fit_eb_tanh.fit()
    hold = fit_eb_tanh.find_hold(p, q)
    # Horner from the top coefficient: P's, then Q's, the clamp first.
    want = [hold] + list(p[::-1]) + list(q[::-1])
    want = [w for w in want if w != 1.0]  # the constant terms 1 are written as 1.0f / 1.0

    with open(os.path.join(root, "csrc", "lic_quant", "eb_math.h")) as f:
        header = f.read()
    body = header[header.index("LQ_HD float eb_tanh(float x) {"):]
    body = body[:body.index("\n}\n")]
    assert "LQ_LIMIT(kEbTanhArgMax)" in body
    clamp = re.search(r"constexpr float kEbTanhArgMax = (\S+)f;", header).group(1)
    body = clamp + " " + body
    # The Python function under the jit wrapper (compiled or interpreted), after its docstring.
    src = inspect.getsource(triton_kernels._eb_tanh.fn).split('"""')[-1]
    for text in (body, src):
        got = [np.float32(v) for v in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", text)]
        got = [g for g in got if g != 1.0]
        assert got == want, (text, want)


def test_eb_tanh_against_mpmath():
    """The EntropyBottleneck's tanh (eb_math.h eb_tanh; its Triton port gives the C++ bits, which
    test_entropy_bottleneck_backends.py checks through the op): within 5 ulp of tanh on arguments
    from 1e-12 to 20 (mpmath at 40 digits), odd, exactly 1 from |x| = 9.03 on, NaN -> NaN. The
    bound: tools/fit_eb_tanh.py evaluates every float32 argument of [2^-14, 9.2] (below, P and Q
    round to 1) as the kernels do and finds at most 4.98 ulp; the rational function itself is
    within 0.14 ulp of tanh, the rest is the rounding of the nine fmas, the product and the
    quotient."""
    mpmath = pytest.importorskip("mpmath")
    import numpy as np
    import triton
    import triton.language as tl

    @triton.jit
    def tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ON_GPU: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, triton_kernels._eb_tanh(x, ON_GPU), mask=mask)

    rng = np.random.default_rng(0)
    mags = np.concatenate([10.0 ** rng.uniform(-12, 1.31, 6000), rng.uniform(0, 12, 2000),
                           [1e-30, 1e-45, 0.5, 1.0, 8.652172, 9.02, 9.03, 10.0, 88.0, np.inf]])
    x = torch.from_numpy(np.concatenate([mags, -mags, [np.nan]]).astype(np.float32)).to(DEVICE)
    out = torch.empty_like(x)
    tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024, ON_GPU=ON_GPU)
    xs, ts = x.cpu().numpy(), out.cpu().numpy()
    mpmath.mp.dps = 40
    worst = 0.0
    for xi, ti in zip(xs[:-1], ts[:-1]):
        want = mpmath.tanh(mpmath.mpf(float(xi)))
        ulp = float(np.spacing(np.float32(abs(float(want)))))
        if ulp > 0:
            worst = max(worst, abs(float(ti) - float(want)) / ulp)
    assert worst <= 5.0, worst
    n = mags.size
    assert np.array_equal(ts[n:2 * n], -ts[:n])
    assert np.all(np.abs(ts[:-1][np.abs(xs[:-1]) >= 9.03]) == 1.0)
    assert np.isnan(ts[-1])
