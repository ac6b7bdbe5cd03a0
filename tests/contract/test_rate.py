"""docs/spec.md section 8: rate=True returns (y_hat, bits), bits[n] = sum over sample n of -log2 P,
accumulated in float64, without a likelihood tensor.

- values: against the reference (its likelihoods, then -log2 in float64 summed per sample) for
  every family, mode and dtype, and against the same backend's own likelihoods (the reduction
  alone: 1e-12 relative before the cast to the likelihoods' dtype);
- gradients: against the reference's autograd, and against the same backend's rate=False
  gradients through -log2(P).sum (both have the same P: they differ by the rounding of g_P only);
- deterministic (1 and 2 threads, repeated calls), CPU and Triton within 1e-6 relative;
- N = 1, odd sample sizes (noise not aligned to Philox blocks), samples of several chunks, empty y
  (no samples, or empty samples: 0 bits), non-contiguous inputs, NaN propagation;
- no P-sized allocation forward or backward (torch.profiler's memory events);
- opcheck of the ops with rate=True, torch.compile(fullgraph=True) of the CPU route, the errors.
"""
from __future__ import annotations

import math

import pytest
import torch

import lic_quant as lq
from lic_quant import reference as ref
from lic_quant._checks import FAMILIES, MODES

HAS_EXT = lq.extension_available()
NEEDS_EXT = pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")


def _inputs(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    scales = torch.rand(shape, generator=g, dtype=torch.float64) * 2.5 + 0.02
    tiny = torch.rand(shape, generator=g) < 0.2  # scale bound and likelihood bound both in play
    scales = torch.where(tiny, torch.rand(shape, generator=g, dtype=torch.float64) * 0.2, scales)
    means = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
    return tuple(t.to(dtype=dtype, device=device) for t in (y, scales, means))


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def _bits_of(lik: torch.Tensor) -> torch.Tensor:
    """The defining expression in float64 (not cast)."""
    return -torch.log2(lik.double()).reshape(lik.shape[0], -1).sum(1)


SETTINGS = dict(temperature=0.4, seed=1234)


def _rate_call(backend, y, s, m, **kw):
    return lq.quantize(y, s, m, rate=True, backend=backend, **{**SETTINGS, **kw})


def _grads(out, leaves, g_bits, g_yhat):
    y_hat, bits = out
    return torch.autograd.grad((bits * g_bits).sum() + (y_hat * g_yhat).sum(), leaves)


def _rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_values_and_gradients(kernel_backend, family, mode, dtype):
    kernel_backend.need_dtype(dtype)
    backend, device = kernel_backend.name, kernel_backend.device
    shape = (3, 5, 7, 11)  # samples of 385 elements: chunks not on Philox blocks
    y, s, m = _inputs(shape, dtype, device)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(5)
    g_bits = (torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.5).to(lik_dtype).to(device)
    g_bits[1] = -g_bits[1]  # a negative gradient exercises the likelihood bound's rule
    g_yhat = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    leaves = _leaves(y, s, m)
    out = _rate_call(backend, *leaves, family=family, mode=mode)
    assert out[1].shape == (shape[0],) and out[1].dtype == lik_dtype
    grads = _grads(out, leaves, g_bits, g_yhat)

    # The same backend's likelihoods: the reduction alone.
    own_leaves = _leaves(y, s, m)
    own_yhat, own_lik = lq.quantize(*own_leaves, backend=backend, family=family, mode=mode,
                                    **SETTINGS)
    assert torch.equal(out[0], own_yhat)
    own_bits = _bits_of(own_lik)
    torch.testing.assert_close(out[1].double(), own_bits.to(lik_dtype).double(), rtol=1e-12,
                               atol=0)
    own_grads = _grads((own_yhat, own_bits.to(lik_dtype)), own_leaves, g_bits, g_yhat)
    for a, b in zip(grads, own_grads):
        assert _rel_norm(a, b) < (2e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-6)

    # The reference: likelihoods, then -log2 in float64 summed per sample.
    ref_leaves = _leaves(y, s, m)
    u = lq.uniform_noise(shape, SETTINGS["seed"], device=device) if mode != "ste" else None
    ref_yhat, ref_lik = ref.quantize_reference(
        *ref_leaves, u, family=family, mode=mode, temperature=SETTINGS["temperature"])
    ref_bits = _bits_of(ref_lik)
    assert torch.equal(out[0], ref_yhat)
    torch.testing.assert_close(out[1].double(), ref_bits, rtol=1e-5, atol=0)
    ref_grads = _grads((ref_yhat, ref_bits.to(lik_dtype)), ref_leaves, g_bits, g_yhat)
    for a, b in zip(grads, ref_grads):
        assert _rel_norm(a, b) < (5e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-4)
    # The reference's own rate=True path is that expression.
    _, ref_rate = ref.quantize_reference(y, s, m, u, family=family, mode=mode, rate=True,
                                         temperature=SETTINGS["temperature"])
    assert torch.equal(ref_rate, ref_bits.to(lik_dtype))


@pytest.mark.parametrize("shape", [(1, 1000), (2, 3), (4, 1), (5, 3, 1, 64, 5), (2, 1, 70000),
                                   (7,)], ids=str)
def test_shapes(kernel_backend, shape):
    """N = 1, odd and tiny samples, samples of many chunks (also beyond the interpreter's block),
    a 1-dim y (one element per sample)."""
    backend, device = kernel_backend.name, kernel_backend.device
    y, s, m = _inputs(shape, torch.float32, device)
    y_hat, bits = _rate_call(backend, y, s, m, mode="noise")
    own_yhat, own_lik = lq.quantize(y, s, m, backend=backend, mode="noise", **SETTINGS)
    assert torch.equal(y_hat, own_yhat)
    torch.testing.assert_close(bits.double(), _bits_of(own_lik).float().double(), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_empty(kernel_backend, shape):
    backend, device = kernel_backend.name, kernel_backend.device
    y, s, m = _leaves(*_inputs(shape, torch.float32, device))
    y_hat, bits = _rate_call(backend, y, s, m)
    assert y_hat.shape == shape and bits.shape == (shape[0],)
    assert torch.equal(bits, torch.zeros(shape[0], device=device))  # an empty sum is 0 bits
    gy, gs, gm = torch.autograd.grad(bits.sum() + y_hat.sum(), (y, s, m), allow_unused=True)
    for grad in (gy, gs, gm):
        assert grad is None or grad.shape == shape


def test_zero_dim_y_raises(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    y = torch.tensor(0.3, device=device)
    with pytest.raises(ValueError, match="rate=True needs y with at least 1 dimension"):
        lq.quantize(y, torch.ones_like(y), rate=True, backend=backend)
    with pytest.raises(ValueError, match="y"):
        lq.gaussian_quantize(y, torch.ones_like(y), rate=True, backend=backend)


def test_zero_dim_y_raises_reference():
    y = torch.tensor(0.3)
    with pytest.raises(ValueError, match="rate=True needs y with at least 1 dimension"):
        lq.quantize(y, torch.ones_like(y), rate=True, backend="reference")


def test_rate_must_be_bool(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    y = torch.zeros(2, 3, device=device)
    with pytest.raises(TypeError, match="rate must be a bool"):
        lq.quantize(y, torch.ones_like(y), rate=1, backend=backend)


def test_gaussian_quantize_rate(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    y, s, m = _inputs((2, 40), torch.float32, device)
    a = lq.gaussian_quantize(y, s, m, rate=True, backend=backend, **SETTINGS)
    b = lq.quantize(y, s, m, family="gaussian", rate=True, backend=backend, **SETTINGS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_deterministic(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    shape = (3, 4, 50, 61)  # many chunks per sample: several tasks per thread
    y, s, m = _inputs(shape, torch.float32, device)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            leaves = _leaves(y, s, m)
            y_hat, bits = _rate_call(backend, *leaves)
            grads = torch.autograd.grad(bits.sum(), leaves)
            runs.append((bits, *grads))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_backends_agree(cpu_backend, other_kernel):
    """Bits within 1e-6 relative of the C++ CPU kernels' (the same P, another log2 and order of
    the float64 sums); y_hat and the float32 gradients bit for bit (the same float32 steps)."""
    for shape in [(3, 5, 7, 11), (2, 3, 1, 64, 5), (1, 70001)]:
        for family in FAMILIES:
            y, s, m = _inputs(shape, torch.float32)
            cpu_leaves = _leaves(y, s, m)
            other_leaves = _leaves(*other_kernel.to(y, s, m))
            c = _rate_call("cpu", *cpu_leaves, family=family, mode="sua")
            o = _rate_call(other_kernel.name, *other_leaves, family=family, mode="sua")
            assert torch.equal(c[0], o[0].cpu())
            torch.testing.assert_close(c[1], o[1].cpu(), rtol=1e-6, atol=0)
            g_bits = torch.tensor([1.0, -0.5, 2.0][: shape[0]])
            gc = torch.autograd.grad((c[1] * g_bits).sum(), cpu_leaves)
            go = torch.autograd.grad((o[1] * other_kernel.to(g_bits)).sum(), other_leaves)
            for a, b in zip(gc, go):
                assert torch.equal(a, b.cpu())


def test_non_contiguous(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    y, s, m = _inputs((6, 3, 10), torch.float32, device)
    nc = [t.transpose(0, 2).contiguous().transpose(0, 2) for t in (y, s, m)]
    assert not nc[0].is_contiguous()
    a = _rate_call(backend, *nc)
    b = _rate_call(backend, y, s, m)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    cl = [t.unsqueeze(-1).expand(6, 3, 10, 2)[..., 0] for t in (y, s, m)]  # stride 2 in the last dim
    c = _rate_call(backend, *cl)
    assert torch.equal(c[1], b[1])


def test_nan_propagates(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    y, s, m = _inputs((3, 40), torch.float32, device)
    y[1, 7] = math.nan
    s[2, 3] = math.nan
    leaves = _leaves(y, s, m)
    y_hat, bits = _rate_call(backend, *leaves)
    assert torch.isfinite(bits[0]) and torch.isnan(bits[1]) and torch.isnan(bits[2])
    gy, gs, gm = torch.autograd.grad(bits.sum(), leaves)
    assert torch.isnan(gy[1, 7]) and torch.isnan(gs[2, 3])
    assert torch.isfinite(gy[0]).all() and torch.isfinite(gs[0]).all()


def test_zero_likelihood_bound_gives_inf_bits(kernel_backend):
    """P = 0 (likelihood_bound=0 and a far tail) is infinitely many bits, as -log2(0)."""
    y = kernel_backend.to(torch.tensor([[0.0, 200.0], [0.0, 0.3]]))
    s = torch.full_like(y, 0.2)
    _, bits = lq.quantize(y, s, rate=True, likelihood_bound=0.0, mode="ste",
                          backend=kernel_backend.name)
    assert bits[0] == math.inf and math.isfinite(bits[1])


# ---------------------------------------------------------------------------------------------
# Memory: no tensor of y's size for P, forward or backward.


def _allocated_bytes(fn) -> list[int]:
    """Sizes of the CPU allocations of torch's allocator while fn runs, each one (the profiler's
    raw memory events: its per-op view nets allocations against frees)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    return [e.nbytes() for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.nbytes() > 0]


def test_no_likelihood_sized_allocation(kernel_backend):
    backend, device = kernel_backend.name, kernel_backend.device
    shape = (4, 8, 32, 32)
    if device != "cpu":
        _no_likelihood_sized_allocation_cuda(backend, shape)
        return
    nbytes = math.prod(shape) * 4
    y, s, m = _leaves(*_inputs(shape, torch.float32, device))
    out = {}

    def forward():
        out["r"] = _rate_call(backend, y, s, m)

    fwd = _allocated_bytes(forward)
    # y_hat only (the bits and the chunk partials are a few hundred bytes).
    assert sum(a >= nbytes for a in fwd) == 1 and sum(a for a in fwd if a < nbytes) < nbytes / 16

    def backward():
        torch.autograd.grad(out["r"][1].sum() + out["r"][0].sum(), (y, s, m))

    bwd = _allocated_bytes(backward)
    # The three gradients and g_yhat's ones (y_hat.sum()'s backward), never a g_P or a P.
    assert sum(a >= nbytes for a in bwd) <= 4


def _no_likelihood_sized_allocation_cuda(backend, shape):
    nbytes = math.prod(shape) * 4
    y, s, m = _leaves(*_inputs(shape, torch.float32, "cuda"))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y_hat, bits = _rate_call(backend, y, s, m)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < nbytes * 1.1  # y_hat, bits, chunk sums
    del y_hat


# ---------------------------------------------------------------------------------------------
# The ops: opcheck, torch.compile.


@NEEDS_EXT
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_cpu(dtype):
    y, s, m = _inputs((3, 2, 9), dtype)
    seed = torch.tensor(7, dtype=torch.int64)
    temp = torch.tensor(0.5, dtype=torch.float64)
    fwd = torch.ops.lic_quant.quantize_forward.default
    args = (y.requires_grad_(), s.requires_grad_(), m.requires_grad_(), seed, temp, "sua", 0.11,
            1e-9, True, "logistic", True)
    torch.library.opcheck(fwd, args)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g_bits = torch.tensor([1.0, -2.0, 0.5], dtype=lik_dtype)
    bwd_args = (torch.randn_like(y), g_bits, y.detach(), s.detach(), m.detach(), seed, temp,
                "sua", 0.11, 1e-9, True, [True, True, True], "logistic", True)
    torch.library.opcheck(torch.ops.lic_quant.quantize_backward.default, bwd_args)


def test_opcheck_triton(kernel_backend):
    if not kernel_backend.is_triton:
        pytest.skip("the Triton ops")
    y, s, m = kernel_backend.to(*_inputs((3, 2, 9), torch.float32))
    seed = kernel_backend.to(torch.tensor(7, dtype=torch.int64))
    temp = kernel_backend.to(torch.tensor(0.5, dtype=torch.float64))
    args = (y.requires_grad_(), s.requires_grad_(), m, seed, temp, "noise", 0.11, 1e-9, False,
            "laplace", True)
    torch.library.opcheck(torch.ops.lic_quant.triton_quantize_forward.default, args)
    g_bits = kernel_backend.to(torch.tensor([1.0, 2.0, -1.0]))
    bwd_args = (None, g_bits, y.detach(), s.detach(), m, seed, temp,
                "noise", 0.11, 1e-9, False, [True, True, True], "laplace", True)
    torch.library.opcheck(torch.ops.lic_quant.triton_quantize_backward.default, bwd_args)


@NEEDS_EXT
def test_compile_fullgraph_cpu():
    torch._dynamo.reset()
    y, s, m = _inputs((2, 4, 6, 6), torch.float32)

    def step(y, s, m):
        y_hat, bits = lq.quantize(y, s, m, family="laplace", mode="mixed", seed=3, rate=True)
        return y_hat, bits

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_leaves, comp_leaves = _leaves(y, s, m), _leaves(y, s, m)
    e = step(*eager_leaves)
    c = compiled(*comp_leaves)
    assert torch.equal(e[0], c[0]) and torch.equal(e[1], c[1])
    ge = torch.autograd.grad(e[1].sum() + e[0].sum(), eager_leaves)
    gc = torch.autograd.grad(c[1].sum() + c[0].sum(), comp_leaves)
    for a, b in zip(ge, gc):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# mixture_quantize(..., rate=True) (docs/spec.md sections 7 and 8), on every backend with mixture
# kernels (lic_quant.api.MIXTURE_BACKENDS).


def _mixture_backend(backend):
    from lic_quant.api import MIXTURE_BACKENDS

    if backend.name not in MIXTURE_BACKENDS:
        pytest.skip(f"backend {backend.id}: no mixture kernels (MIXTURE_BACKENDS = "
                    f"{MIXTURE_BACKENDS})")
    return backend.name, backend.device


def _mixture_inputs(shape, K, dtype, device="cpu", logits=False, blocked=False, seed=0):
    """y, scales, means, weights of shape (K, *y.shape); blocked: CompressAI's channel-blocked
    (N, K*M, ...) tensors viewed as (K, N, M, ...)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    full = (shape[0], K * shape[1], *shape[2:]) if blocked else (K, *shape)
    scales = torch.rand(full, generator=g, dtype=torch.float64) * 2.0 + 0.01
    tiny = torch.rand(full, generator=g) < 0.2  # both bounds in play
    scales = torch.where(tiny, torch.rand(full, generator=g, dtype=torch.float64) * 0.1, scales)
    means = torch.randn(full, generator=g, dtype=torch.float64) * 2.0
    w = torch.randn(full, generator=g, dtype=torch.float64)
    view = (lambda t: t.unflatten(1, (K, shape[1])).movedim(1, 0)) if blocked else (lambda t: t)
    if not logits:
        w = torch.softmax(view(w), 0)
        w = w.movedim(0, 1).flatten(1, 2) if blocked else w
    ts = [t.to(dtype=dtype, device=device) for t in (y, scales, means, w)]
    return ts[0], view(ts[1]), view(ts[2]), view(ts[3])


MIX_SETTINGS = dict(temperature=0.6, seed=4321)


def _mixture_call(backend, y, s, m, w, rate=True, **kw):
    return lq.mixture_quantize(y, s, m, w, rate=rate, backend=backend, **{**MIX_SETTINGS, **kw})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("K,logits,zero_center", [(1, False, True), (3, False, False),
                                                  (3, True, True), (8, True, False)])
def test_mixture_values_and_gradients(backend, family, mode, dtype, K, logits, zero_center):
    name, device = _mixture_backend(backend)
    backend.need_dtype(dtype)
    shape = (3, 5, 7, 11)  # samples of 385 elements: chunks not on Philox blocks
    ins = _mixture_inputs(shape, K, dtype, device, logits=logits)
    kw = dict(family=family, mode=mode, weights_are_logits=logits, zero_center=zero_center)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(5)
    g_bits = (torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.5).to(lik_dtype)
    g_bits[1] = -g_bits[1]  # a negative gradient exercises the likelihood bound's rule
    g_bits = g_bits.to(device)
    g_yhat = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    leaves = _leaves(*ins)
    out = _mixture_call(name, *leaves, **kw)
    assert out[1].shape == (shape[0],) and out[1].dtype == lik_dtype
    grads = _grads(out, leaves, g_bits, g_yhat)

    # The same backend's rate=False likelihoods: the reduction alone, and their gradients
    # through -log2(P).sum (the same P; g_P rounded differently).
    own_leaves = _leaves(*ins)
    own_yhat, own_lik = _mixture_call(name, *own_leaves, rate=False, **kw)
    assert torch.equal(out[0], own_yhat)
    own_bits = _bits_of(own_lik)
    torch.testing.assert_close(out[1].double(), own_bits.to(lik_dtype).double(), rtol=1e-12,
                               atol=0)
    own_grads = _grads((own_yhat, own_bits.to(lik_dtype)), own_leaves, g_bits, g_yhat)
    for a, b in zip(grads, own_grads):
        assert _rel_norm(a, b) < (2e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-6)

    # The reference (its likelihoods, -log2 in float64 summed per sample), within section 8's
    # 1e-6 relative.
    ref_ins = [t.cpu() for t in ins]
    ref_leaves = _leaves(*ref_ins)
    ref_out = lq.mixture_quantize(*ref_leaves, rate=True, backend="reference",
                                  **{**MIX_SETTINGS, **kw})
    # y_hat bit for bit unless the centre holds a softmax (the kernels' exp, torch's).
    torch.testing.assert_close(out[0].cpu(), ref_out[0], rtol=0 if not (logits and zero_center)
                               else 1e-6, atol=0 if not (logits and zero_center) else 1e-6)
    torch.testing.assert_close(out[1].cpu().double(), ref_out[1].double(), rtol=1e-6, atol=0)
    ref_grads = _grads(ref_out, ref_leaves, g_bits.cpu(), g_yhat.cpu())
    for a, b in zip(grads, ref_grads):
        assert _rel_norm(a.cpu(), b) < (5e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-4)


def test_mixture_reference_rate_is_rate_bits():
    ins = _mixture_inputs((2, 3, 4, 5), 3, torch.float64)
    u = lq.uniform_noise((2, 3, 4, 5), MIX_SETTINGS["seed"])
    _, lik = ref.mixture_quantize_reference(*ins, u, temperature=0.6)
    _, bits = ref.mixture_quantize_reference(*ins, u, temperature=0.6, rate=True)
    assert torch.equal(bits, ref.rate_bits(lik))


@pytest.mark.parametrize("shape", [(1, 1000), (2, 3), (4, 1), (5, 3, 1, 64, 5), (2, 1, 70000),
                                   (7,)], ids=str)
def test_mixture_shapes(backend, shape):
    """N = 1, odd and tiny samples, samples of many chunks, a 1-dim y (one element per sample),
    against the same backend's likelihoods."""
    name, device = _mixture_backend(backend)
    ins = _mixture_inputs(shape, 3, torch.float32, device)
    y_hat, bits = _mixture_call(name, *ins)
    own_yhat, own_lik = _mixture_call(name, *ins, rate=False)
    assert torch.equal(y_hat, own_yhat)
    torch.testing.assert_close(bits.double(), _bits_of(own_lik).float().double(), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_mixture_empty(backend, shape):
    name, device = _mixture_backend(backend)
    y, s, m, w = _leaves(*_mixture_inputs(shape, 2, torch.float32, device))
    y_hat, bits = _mixture_call(name, y, s, m, w)
    assert y_hat.shape == shape and bits.shape == (shape[0],)
    assert torch.equal(bits, torch.zeros(shape[0], device=device))
    grads = torch.autograd.grad(bits.sum() + y_hat.sum(), (y, s, m, w), allow_unused=True)
    for grad, t in zip(grads, (y, s, m, w)):
        assert grad is None or grad.shape == t.shape


def test_mixture_zero_dim_y_raises(backend):
    name, device = _mixture_backend(backend)
    y = torch.tensor(0.3, device=device)
    ones = torch.ones(2, device=device)
    with pytest.raises(ValueError, match="rate=True needs y with at least 1 dimension"):
        lq.mixture_quantize(y, ones, ones, ones / 2, rate=True, backend=name)
    with pytest.raises(TypeError, match="rate must be a bool"):
        lq.mixture_quantize(y.reshape(1), ones[:, None], ones[:, None], ones[:, None], rate=1,
                            backend=name)


def test_mixture_deterministic(kernel_backend):
    name, device = _mixture_backend(kernel_backend)
    ins = _mixture_inputs((3, 4, 50, 61), 3, torch.float32, device, logits=True)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            leaves = _leaves(*ins)
            _, bits = _mixture_call(name, *leaves, weights_are_logits=True)
            grads = torch.autograd.grad(bits.sum(), leaves)
            runs.append((bits, *grads))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_mixture_channel_blocked_view(backend):
    """CompressAI's channel-blocked view read in place gives the contiguous layout's bits and
    gradients, the gradients in the view's strides."""
    name, device = _mixture_backend(backend)
    y, s, m, w = _mixture_inputs((2, 4, 9, 7), 3, torch.float32, device, blocked=True)
    leaves = _leaves(y, s, m, w)
    out = _mixture_call(name, *leaves)
    grads = torch.autograd.grad(out[1].sum(), leaves)
    c_leaves = _leaves(y, s.contiguous(), m.contiguous(), w.contiguous())
    c_out = _mixture_call(name, *c_leaves)
    c_grads = torch.autograd.grad(c_out[1].sum(), c_leaves)
    assert torch.equal(out[1], c_out[1])
    for a, b in zip(grads, c_grads):
        assert torch.equal(a, b)


def test_mixture_nan_propagates(backend):
    name, device = _mixture_backend(backend)
    y, s, m, w = _mixture_inputs((3, 40), 3, torch.float32, device)
    y[1, 7] = math.nan
    s[2, 2, 3] = math.nan
    leaves = _leaves(y, s, m, w)
    _, bits = _mixture_call(name, *leaves)
    assert torch.isfinite(bits[0]) and torch.isnan(bits[1]) and torch.isnan(bits[2])
    gy, gs, gm, gw = torch.autograd.grad(bits.sum(), leaves)
    assert torch.isnan(gy[1, 7]) and torch.isnan(gs[2, 2, 3])
    assert torch.isfinite(gy[0]).all() and torch.isfinite(gs[:, 0]).all()


def test_mixture_zero_likelihood_bound_gives_inf_bits(backend):
    name, device = _mixture_backend(backend)
    y = torch.tensor([[0.0, 200.0], [0.0, 0.3]], device=device)
    s = torch.full((2, 2, 2), 0.2, device=device)
    m = torch.zeros_like(s)
    w = torch.full_like(s, 0.5)
    _, bits = lq.mixture_quantize(y, s, m, w, rate=True, likelihood_bound=0.0, mode="ste",
                                  backend=name)
    assert bits[0] == math.inf and math.isfinite(bits[1])


def test_mixture_no_likelihood_sized_allocation(kernel_backend):
    name, device = _mixture_backend(kernel_backend)
    if device != "cpu":
        pytest.skip("the profiler's CPU memory events")
    shape = (4, 8, 32, 32)
    nbytes = math.prod(shape) * 4
    leaves = _leaves(*_mixture_inputs(shape, 3, torch.float32, device))
    out = {}

    def forward():
        out["r"] = _mixture_call(name, *leaves)

    fwd = _allocated_bytes(forward)
    assert sum(a >= nbytes for a in fwd) == 1 and sum(a for a in fwd if a < nbytes) < nbytes / 16

    def backward():
        torch.autograd.grad(out["r"][1].sum() + out["r"][0].sum(), leaves)

    bwd = _allocated_bytes(backward)
    # y's gradient, the parameters' three (K times y's size each) and g_yhat's ones; no g_P or P.
    assert sum(nbytes <= a < 2 * nbytes for a in bwd) <= 2


@NEEDS_EXT
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("blocked", [False, True])
def test_mixture_opcheck_cpu(dtype, blocked):
    y, s, m, w = _mixture_inputs((3, 2, 4, 5), 3, dtype, logits=True, blocked=blocked)
    seed = torch.tensor(7, dtype=torch.int64)
    temp = torch.tensor(0.5, dtype=torch.float64)
    fwd_args = tuple(t.detach().requires_grad_() for t in (y, s, m, w)) + (
        seed, temp, "sua", 0.11, 1e-9, True, "logistic", True, True)
    torch.library.opcheck(torch.ops.lic_quant.mixture_quantize_forward.default, fwd_args)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    g_bits = torch.tensor([1.0, -2.0, 0.5], dtype=lik_dtype)
    bwd_args = (torch.randn_like(y), g_bits, y, s, m, w, seed, temp, "noise", 0.11, 1e-9, False,
                "gaussian", True, [True, True, False, True], True)
    torch.library.opcheck(torch.ops.lic_quant.mixture_quantize_backward.default, bwd_args)


@NEEDS_EXT
def test_mixture_compile_fullgraph_cpu():
    torch._dynamo.reset()
    ins = _mixture_inputs((2, 4, 6, 6), 3, torch.float32, logits=True, blocked=True)

    def step(y, s, m, w):
        return lq.mixture_quantize(y, s, m, w, weights_are_logits=True, mode="mixed", seed=3,
                                   rate=True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_leaves, comp_leaves = _leaves(*ins), _leaves(*ins)
    e = step(*eager_leaves)
    c = compiled(*comp_leaves)
    assert torch.equal(e[0], c[0]) and torch.equal(e[1], c[1])
    ge = torch.autograd.grad(e[1].sum() + e[0].sum(), eager_leaves)
    gc = torch.autograd.grad(c[1].sum() + c[0].sum(), comp_leaves)
    for a, b in zip(ge, gc):
        assert torch.equal(a, b)
