"""backend="triton": the Triton kernels against the reference, the C++ kernels and torch.library.

Without a GPU the kernels run on CPU tensors in Triton's interpreter: this module sets
TRITON_INTERPRET=1 before lic_quant loads its kernels (triton.jit reads it when the kernels are
decorated, on the first Triton call). Shapes are small and the interpreter takes one large block
per program instance, so the module runs in well under a minute on two cores.

With a GPU the same tests run on CUDA tensors (compiled, autotuned kernels), plus the GPU-only
tests at the end (torch.compile(fullgraph=True), bitwise agreement with the C++/CUDA kernels).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On GPU one fixed config, so that each constexpr variant compiles once; the tests marked
# `autotune` switch the autotuner (six configs) back on.
os.environ.setdefault("LIC_QUANT_TRITON_AUTOTUNE", "0")

pytest.importorskip("triton")
pytest.importorskip("numpy")

import lic_quant as lq  # noqa: E402
from lic_quant import reference as ref  # noqa: E402
from lic_quant import triton_ops  # noqa: E402
from lic_quant.noise import philox_uniform  # noqa: E402

import triton_hooks  # noqa: E402

from helpers import (  # noqa: E402
    EPS,
    compute_eps,
    error_bounds,
    make_inputs,
    make_upstream,
    rate_residual64,
    run,
)

INTERPRETED = triton_ops.interpreted()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
ON_GPU = DEVICE == "cuda"
HAVE_CPP = lq.extension_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="the C++ extension is not built")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs CUDA (compiled Triton kernels)")

TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPE = (3, 5, 7, 11)
SCALE_BOUND, LIK_BOUND = 0.11, 1e-9
TEMPERATURE = 0.37
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on NaN/inf (interpreter)


def quantize(backend, mode, zero_center, seed, temperature=TEMPERATURE, **kw):
    def fn(y, scales, means):
        return lq.gaussian_quantize(y, scales, means, mode=mode, temperature=temperature,
                                    scale_bound=SCALE_BOUND, likelihood_bound=LIK_BOUND,
                                    zero_center=zero_center, seed=seed, backend=backend, **kw)
    return fn


def same_bits(a, b):
    """Equal bit patterns, any NaN matching any NaN; None matches None."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(((a.view(ints) == b.view(ints)) | (a.isnan() & b.isnan())).all())


def special_inputs(dtype, with_means=True):
    """make_inputs plus edge values: NaN, inf, huge, exact half-integers, signed zeros, scales
    at, below and above the bound, zero and negative scales, deep tails."""
    y, s, m = make_inputs(SHAPE, torch.float64, with_means=with_means)
    y, s = y.flatten().clone(), s.flatten().clone()
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
        m = m.view(SHAPE).to(dtype)
    return y.view(SHAPE).to(dtype), s.view(SHAPE).to(dtype), m


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


@pytest.mark.parametrize("seed", [0, 1, -1, 2**40 + 7, -(2**63), 2**63 - 1, 0xDEADBEEFCAFEF00D])
def test_noise_bit_identical_to_cpp(seed):
    seed_t = lq.make_seed(seed, torch.device(DEVICE))
    u = triton_hooks.uniform_noise(3001, seed_t).cpu()
    expected = lq.uniform_noise((3001,), lq.make_seed(seed, torch.device("cpu")))  # C++ if built
    assert same_bits(u, expected)
    assert same_bits(u, philox_uniform((3001,), seed))
    assert float(u.min()) >= -0.5 and float(u.max()) < 0.5


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


def test_forward_noise_is_uniform_noise():
    y = torch.zeros(SHAPE, device=DEVICE)
    for mode in ("noise", "mixed"):
        y_hat, lik = quantize("triton", mode, False, 4242)(y, torch.ones_like(y), None)
        if mode == "noise":
            assert same_bits(y_hat.cpu(), lq.uniform_noise(SHAPE, 4242))


# ---------------------------------------------------------------------------------------------
# values and gradients against the reference


def _check_against_reference(y, scales, means, mode, zero_center, dtype, temperature=TEMPERATURE):
    seed = 20240611
    lik_dtype = torch.float32
    g_yhat, g_lik = make_upstream(y.shape, dtype, lik_dtype)
    dev = to_device(y, scales, means, g_yhat, g_lik)
    out = run(quantize("triton", mode, zero_center, seed, temperature), *dev)
    y_hat, lik = (t.cpu() for t in out[:2])
    grads = [g.cpu() if g is not None else None for g in out[2]]
    assert y_hat.dtype == dtype and lik.dtype == lik_dtype

    u = lq.uniform_noise(y.shape, seed) if mode != "ste" else None
    # y_hat: bit for bit the float32 reference with the same noise
    kw = dict(mode=mode, temperature=temperature, scale_bound=SCALE_BOUND,
              likelihood_bound=LIK_BOUND, zero_center=zero_center)
    y_hat32, _ = ref.gaussian_quantize_reference(y, scales, means, u, **kw)
    assert torch.equal(y_hat, y_hat32)

    # likelihoods and gradients: within the error model of tests/helpers.py of a float64 reference
    d = lambda t: None if t is None else t.double()  # noqa: E731
    y64, s64, m64, u64 = d(y), d(scales), d(means), d(u)
    y_hat64, lik64, grads64 = run(
        lambda a, b, c: ref.gaussian_quantize_reference(a, b, c, u64, **kw),
        y64, s64, m64, g_yhat.double(), g_lik.double())
    v64 = rate_residual64(y64, m64, u64, mode, zero_center, temperature)
    err_p, err_gv, err_gs, ambiguous = error_bounds(
        y64, s64, m64, u64, v64, g_lik.double(), compute_eps(dtype),
        scale_bound=SCALE_BOUND, likelihood_bound=LIK_BOUND)
    # + the float32 rounding of the output itself (b_p = 1e-9 is not a float32)
    lik_err = (lik.double() - lik64).abs() - (err_p + EPS[torch.float32] * lik64)
    assert bool((lik_err <= 0).all()), f"likelihood off by {float(lik_err.max())} beyond bound"

    out_eps = EPS[dtype]  # the gradients are rounded to the input dtype at the end
    tiny = 2.0**-24 if dtype == torch.float16 else 0.0  # float16 subnormal spacing
    ok = ~ambiguous
    # the float64 reference sums g_yhat - g_yhat into grad_mu (and adds g_yhat into grad_y):
    # one rounding of |g_yhat| each
    g_term = compute_eps(dtype) * g_yhat.double().abs()
    for g, g64, err in zip(grads, grads64, (err_gv + g_term, err_gs, err_gv + g_term)):
        if g64 is None:
            assert g is None
            continue
        assert g.dtype == dtype
        tol = err + out_eps * g64.abs() + tiny
        bad = ((g.double() - g64).abs() > tol) & ok
        assert not bool(bad.any()), (
            f"{int(bad.sum())} gradients off, worst excess "
            f"{float(((g.double() - g64).abs() - tol).max())}")


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("zero_center", [True, False])
@pytest.mark.parametrize("mode", lq.MODES)
def test_matches_reference(mode, zero_center, dtype):
    y, s, m = make_inputs(SHAPE, dtype)
    _check_against_reference(y, s, m, mode, zero_center, dtype)


@pytest.mark.parametrize("shape", [(1, 17, 13), (257,), (2, 3, 1, 64, 5)])
@pytest.mark.parametrize("mode", ["noise", "sua"])
def test_matches_reference_shapes_without_means(shape, mode):
    y, s, _ = make_inputs(shape, torch.float32, with_means=False)
    _check_against_reference(y, s, None, mode, True, torch.float32)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_matches_reference_sua_temperature_ends(temperature):
    y, s, m = make_inputs(SHAPE, torch.float32)
    _check_against_reference(y, s, m, "sua", True, torch.float32, temperature=temperature)


def test_sua_limits():
    y, s, m = to_device(*make_inputs(SHAPE, torch.float32))
    ste = quantize("triton", "ste", True, 5)(y, s, m)
    sua0 = quantize("triton", "sua", True, 5, temperature=0.0)(y, s, m)
    assert same_bits(sua0[0], ste[0]) and same_bits(sua0[1], ste[1])
    noise = quantize("triton", "noise", True, 5)(y, s, m)
    sua1 = quantize("triton", "sua", True, 5, temperature=1.0)(y, s, m)
    torch.testing.assert_close(sua1[0], noise[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the C++ kernels: same bits


@needs_cpp
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("with_means", [True, False])
@pytest.mark.parametrize("zero_center", [True, False])
@pytest.mark.parametrize("mode", lq.MODES)
def test_bit_identical_to_cpp_kernels(mode, zero_center, with_means, dtype):
    """u, y_hat, likelihoods and all gradients equal the C++ CPU kernels' bit for bit (same
    per-element float32 math, no contraction), edge values and NaN included."""
    y, s, m = special_inputs(dtype, with_means)
    g_yhat, g_lik = make_upstream(SHAPE, dtype, torch.float32, seed=3)
    seed = -123456789012345
    cpp = run(quantize("cpu", mode, zero_center, seed), y, s, m, g_yhat, g_lik)
    tri = run(quantize("triton", mode, zero_center, seed), *to_device(y, s, m, g_yhat, g_lik))
    names = ["y_hat", "likelihoods", "grad_y", "grad_scales", "grad_means"]
    for name, a, b in zip(names, [cpp[0], cpp[1], *cpp[2]], [tri[0], tri[1], *tri[2]]):
        assert same_bits(a, b if b is None else b.cpu()), name


@needs_cpp
@pytest.mark.parametrize("mode", lq.MODES)
def test_bit_identical_to_cpp_all_negative_upstream(mode):
    """g_P < 0 everywhere (loss = -log P): the kernels skip recomputing p for the bound."""
    y, s, m = special_inputs(torch.float32)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=5)
    g_lik = -g_lik.abs() - 1e-3
    cpp = run(quantize("cpu", mode, True, 17), y, s, m, g_yhat, g_lik)
    tri = run(quantize("triton", mode, True, 17), *to_device(y, s, m, g_yhat, g_lik))
    for a, b in zip(cpp[2], tri[2]):
        assert same_bits(a, b.cpu())


@needs_cpp
@pytest.mark.skipif(ON_GPU, reason="interpreter block size")
def test_bit_identical_to_cpp_many_blocks(monkeypatch):
    """Several program instances and a ragged last block (1155 elements in blocks of 128)."""
    monkeypatch.setattr(triton_ops, "INTERPRETER_BLOCK", 128)
    y, s, m = special_inputs(torch.float16)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float16, torch.float32, seed=6)
    g_lik[:, :2] = -g_lik[:, :2].abs()  # some blocks all negative, some mixed
    cpp = run(quantize("cpu", "sua", False, 23), y, s, m, g_yhat, g_lik)
    tri = run(quantize("triton", "sua", False, 23), y, s, m, g_yhat, g_lik)
    for a, b in zip([cpp[0], cpp[1], *cpp[2]], [tri[0], tri[1], *tri[2]]):
        assert same_bits(a, b)
    u = triton_hooks.uniform_noise(1000, torch.tensor(5), start=2**32 - 300)
    assert same_bits(u, philox_uniform((1000,), 5, start=2**32 - 300))


@needs_cpp
def test_bit_identical_to_cpp_partial_gradients():
    """Only some gradients requested, no grad for y_hat, and a likelihood bound of 0."""
    y, s, m = special_inputs(torch.float32)
    _, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=4)
    for requires in ((True, False, False), (False, True, False), (False, False, True)):
        res = []
        for backend, dev in (("cpu", "cpu"), ("triton", DEVICE)):
            # fresh leaves per backend: requires_grad_ on shared inputs would leak into the
            # next backend's (non-leaf .to(dev) copies, or gradients accumulated twice on CPU)
            leaves = [t.detach().clone().to(dev).requires_grad_(r)
                      for t, r in zip((y, s, m), requires)]
            _, lik = lq.gaussian_quantize(*leaves, mode="mixed", seed=8, likelihood_bound=0.0,
                                          backend=backend)
            lik.backward(g_lik.to(dev))
            res.append([t.grad.cpu() if t.grad is not None else None for t in leaves])
        for a, b in zip(*res):
            assert same_bits(a, b)


# ---------------------------------------------------------------------------------------------
# torch.library


def _opcheck_samples():
    seed = torch.tensor(77, dtype=torch.int64, device=DEVICE)
    temp = torch.tensor(0.5, dtype=torch.float64, device=DEVICE)
    y32, s32, m32 = to_device(*make_inputs((3, 5, 7), torch.float32))
    y16, s16, _ = to_device(*make_inputs((4, 9), torch.float16))
    yb, sb, mb = to_device(*make_inputs((2, 13), torch.bfloat16))
    g = torch.randn((3, 5, 7), device=DEVICE)
    fwd = [
        (y32.requires_grad_(), s32.requires_grad_(), m32.requires_grad_(), seed, temp, "sua",
         0.11, 1e-9, True),
        (y16, s16, None, seed, temp, "ste", 0.11, 1e-9, False),
        (yb.requires_grad_(), sb, mb, seed, temp, "mixed", 0.0, 0.0, False),
    ]
    bwd = [
        (y32.detach().clone(), g, y32.detach(), s32.detach(), m32.detach(), seed, temp, "noise",
         0.11, 1e-9, True, [True, True, True]),
        (None, -g.abs(), y32.detach(), s32.detach(), None, seed, temp, "mixed", 0.11, 1e-9, False,
         [False, True, False]),
    ]
    return fwd, bwd


def test_opcheck():
    fwd, bwd = _opcheck_samples()
    for args in fwd:
        torch.library.opcheck(torch.ops.lic_quant.triton_quantize_forward, args)
    for args in bwd:
        torch.library.opcheck(torch.ops.lic_quant.triton_quantize_backward, args)


def test_compile_fullgraph_aot_eager():
    """No graph break: the Triton op (the interpreter's opaque op on CPU) inside a compiled
    function with a fresh seed tensor per call, gradients included."""
    y, s, m = to_device(*make_inputs((2, 3, 17), torch.float32))

    def f(y, s, m, seed):
        y_hat, lik = lq.gaussian_quantize(y, s, m, mode="mixed", seed=seed, backend="triton")
        return y_hat.square().sum() - lik.log2().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for seed in (3, 4):
        seed_t = torch.tensor(seed, dtype=torch.int64, device=DEVICE)
        leaves_e = [t.clone().requires_grad_() for t in (y, s, m)]
        leaves_c = [t.clone().requires_grad_() for t in (y, s, m)]
        le, lc = f(*leaves_e, seed_t), compiled(*leaves_c, seed_t)
        le.backward()
        lc.backward()
        assert same_bits(le, lc)
        for a, b in zip(leaves_e, leaves_c):
            assert same_bits(a.grad, b.grad)


def test_backward_saves_only_inputs():
    y, s, m = to_device(*make_inputs((3, 4), torch.float32))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y_hat, lik = lq.gaussian_quantize(*leaves, mode="noise", seed=1, backend="triton")
    assert len(saved) == 5  # y, scales, means, seed, temperature
    assert [t.shape for t in saved[:3]] == [y.shape] * 3 and saved[3].dim() == saved[4].dim() == 0
    before = [t.detach().clone() for t in leaves]
    (y_hat.sum() + lik.sum()).backward()
    for t, b in zip(leaves, before):  # nothing was written into the saved inputs
        assert same_bits(t.detach(), b)


# ---------------------------------------------------------------------------------------------
# edge cases and errors


def test_gradient_through_y_hat_only():
    y, s, m = to_device(*make_inputs((5, 6), torch.float32))
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, _ = lq.gaussian_quantize(*leaves, mode="sua", seed=2, backend="triton")
    g = torch.randn_like(y_hat)
    y_hat.backward(g)
    assert same_bits(leaves[0].grad, g)
    assert leaves[1].grad is None and leaves[2].grad is None


def test_nan_propagates():
    y, s, m = to_device(*make_inputs((4, 50), torch.float32))
    y[0, 3] = float("nan")
    s[1, 4] = float("nan")
    m[2, 5] = float("nan")
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, lik = lq.gaussian_quantize(*leaves, mode="noise", seed=2, backend="triton")
    (y_hat.sum() + lik.sum()).backward()
    assert y_hat[0, 3].isnan() and lik[0, 3].isnan() and lik[1, 4].isnan() and lik[2, 5].isnan()
    assert y_hat[2, 5].isnan()
    assert leaves[0].grad[0, 3].isnan() and leaves[1].grad[1, 4].isnan()
    assert leaves[2].grad[2, 5].isnan()
    finite = torch.ones_like(y, dtype=torch.bool)
    finite[0, 3] = finite[1, 4] = finite[2, 5] = False
    assert bool(lik[finite].isfinite().all()) and bool(leaves[0].grad[finite].isfinite().all())


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)])
def test_empty(shape):
    y = torch.empty(shape, device=DEVICE, requires_grad=True)
    s = torch.empty(shape, device=DEVICE, requires_grad=True)
    y_hat, lik = lq.gaussian_quantize(y, s, mode="noise", seed=1, backend="triton")
    assert y_hat.shape == lik.shape == torch.Size(shape)
    (y_hat.sum() + lik.sum()).backward()
    assert y.grad.shape == torch.Size(shape) and s.grad.shape == torch.Size(shape)


def test_non_contiguous_and_channels_last():
    y, s, m = to_device(*make_inputs((2, 5, 6, 7), torch.float32))
    g_yhat, g_lik = to_device(*make_upstream((2, 5, 6, 7), torch.float32, torch.float32))
    fn = quantize("triton", "sua", True, 11)
    base = run(fn, y, s, m, g_yhat, g_lik)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (y, s, m)]
    strided = [t.transpose(1, 3).contiguous().transpose(1, 3) for t in (y, s, m)]
    for variant in (cl, strided):
        assert not variant[0].is_contiguous()
        got = run(fn, *variant, g_yhat, g_lik)
        assert same_bits(got[0], base[0]) and same_bits(got[1], base[1])
        for a, b in zip(got[2], base[2]):
            assert same_bits(a.contiguous(), b)


def test_errors():
    y, s, m = to_device(*make_inputs((3, 4), torch.float32))
    with pytest.raises(TypeError, match="float64"):
        lq.gaussian_quantize(y.double(), s.double(), backend="triton", seed=1)
    with pytest.raises(ValueError, match="scales"):
        lq.gaussian_quantize(y, s[:2], backend="triton", seed=1)
    with pytest.raises(ValueError, match="mode"):
        lq.gaussian_quantize(y, s, mode="round", backend="triton", seed=1)
    seed = torch.tensor(1, dtype=torch.int64, device=DEVICE)
    temp = torch.tensor(1.0, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="scale_bound"):
        torch.ops.lic_quant.triton_quantize_forward(y, s, None, seed, temp, "ste", -1.0, 0.0, True)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="temperature"):
            lq.gaussian_quantize(y, s, backend="triton", seed=1,
                                 temperature=torch.tensor(1.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        lq.gaussian_quantize(y, s, backend="triton", seed=1, temperature=-0.1)
    with pytest.raises(TypeError, match="seed"):
        torch.ops.lic_quant.triton_quantize_forward(y, s, None, seed.float(), temp, "ste", 0.1,
                                                    0.0, True)


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
@pytest.mark.skipif(not lq.cuda_kernels_built(), reason="CUDA kernels not built")
@pytest.mark.parametrize("mode", lq.MODES)
def test_gpu_bit_identical_to_cuda_kernels(mode):
    y, s, m = to_device(*special_inputs(torch.float32))
    g_yhat, g_lik = to_device(*make_upstream(SHAPE, torch.float32, torch.float32, seed=3))
    cu = run(quantize("cuda", mode, True, 5), y, s, m, g_yhat, g_lik)
    tr = run(quantize("triton", mode, True, 5), y, s, m, g_yhat, g_lik)
    for a, b in zip([cu[0], cu[1], *cu[2]], [tr[0], tr[1], *tr[2]]):
        assert same_bits(a, b)


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
