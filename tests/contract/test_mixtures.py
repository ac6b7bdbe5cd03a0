"""docs/spec.md section 7: lic_quant.mixture_quantize, K-component mixtures of a family.

Values and gradients of the fused kernels against lic_quant.reference.mixture_quantize_reference on
the same noise (every family, mode, dtype, K in {1, 3, 8}, probabilities and logits), also with
every g_P negative (the -log P loss); each element's gradients independent of the other elements'
upstream, bit for bit; the reference against CompressAI's GaussianMixtureConditional; K = 1 against
quantize(); the channel-blocked view read in place; NaN, empty and bad inputs; opcheck,
torch.compile and determinism. Every kernel backend that lic_quant.api.MIXTURE_BACKENDS names runs
them (the ids of tests/contract/conftest.py; the others skip); the Triton kernels' bits against the
CPU kernel's are in test_mixtures_bit_identity.py.
"""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from lic_quant._checks import FAMILIES, MODES, component_layout

KS = (1, 3, 8)
# Tolerances of kernel vs reference: the same formulas in another order of operations (the
# kernels' own exp/erfc, the reference's torch ones), float32 or float64 compute.
TOL = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-12, 1e-15),
       torch.float16: (2e-3, 1e-4), torch.bfloat16: (2e-2, 1e-3)}


def needs_extension():
    if not lq.extension_available():
        pytest.skip("lic_quant._C is not built")


def mixture_backend(b):
    """b (a Backend of conftest.py), or a skip where it has no mixture kernels (not in
    lic_quant.api.MIXTURE_BACKENDS)."""
    if b.name not in lq.api.MIXTURE_BACKENDS:
        pytest.skip(f"backend {b.id}: no mixture kernels")
    return b


def mixture_quantize(b, y, sc, mu, w, **kw):
    """lq.mixture_quantize on backend b's device (autograd reaches the given tensors), outputs
    back on the CPU."""
    y, sc, mu, w = b.to(y, sc, mu, w)
    return tuple(t.cpu() for t in lq.mixture_quantize(y, sc, mu, w, backend=b.name, **kw))


def make_inputs(shape=(2, 3, 5, 7), K=3, dtype=torch.float32, logits=False, seed=0,
                blocked=False):
    """y, scales, means, weights; with blocked=True the parameters are CompressAI's
    channel-blocked (N, K*M, H, W) tensors viewed as (K, N, M, H, W)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    full = (shape[0], K * shape[1], *shape[2:]) if blocked else (K, *shape)
    sc = torch.rand(full, generator=g, dtype=torch.float64) * 2
    mu = torch.randn(full, generator=g, dtype=torch.float64) * 2
    w = torch.randn(full, generator=g, dtype=torch.float64)
    if blocked:
        def view(t):
            return t.unflatten(1, (K, shape[1])).movedim(1, 0)
    else:
        def view(t):
            return t
    if not logits:
        w = torch.softmax(view(w), 0)
        w = w.movedim(0, 1).flatten(1, 2).contiguous() if blocked else w
    ts = [t.to(dtype) for t in (y, sc, mu, w)]
    return ts[0], view(ts[1]), view(ts[2]), view(ts[3])


def run(backend, y, sc, mu, w, grads=True, negative=False, **kw):
    """Outputs and the gradients of sum(y_hat * a + lik * b) for fixed random a, b: b of both
    signs, or with negative=True every b < 0 (the -log P loss)."""
    leaves = [t.detach().clone().requires_grad_(grads) for t in (y, sc, mu, w)]
    if backend == "reference-direct":
        yh, lik = lq.mixture_quantize_reference(*leaves, kw.pop("noise"), **kw)
    else:
        yh, lik = mixture_quantize(mixture_backend(backend), *leaves, **kw)
    if not grads:
        return yh, lik, None
    g = torch.Generator().manual_seed(1)
    a = torch.randn(yh.shape, generator=g, dtype=torch.float64).to(yh.dtype)
    b = (-torch.rand(lik.shape, generator=g, dtype=torch.float64) * 1e3).to(lik.dtype)
    if not negative:
        b[..., 0] = -b[..., 0]  # some positive likelihood gradients exercise the bound's rule
    torch.autograd.backward([yh, lik], [a, b])
    return yh, lik, [t.grad for t in leaves]


def assert_close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def interpreter_dtypes(b):
    """The dtypes a test runs on backend b: float32 only in the Triton interpreter (its other
    dtypes' bits are the CPU kernel's, test_mixtures_bit_identity.py)."""
    dtypes = (torch.float32,) if b.is_interpreter else (
        torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return [d for d in dtypes if b.takes(d)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("zero_center", [False, True])
def test_values_and_gradients_vs_reference(kernel_backend, reference_backend, family, mode, K,
                                           logits, zero_center):
    b = mixture_backend(kernel_backend)
    if b.is_interpreter and not (K == 3 and logits == zero_center
                                 and MODES.index(mode) % len(FAMILIES) == FAMILIES.index(family)):
        # About a second per launch in the interpreter: one mode per family here, and its bits
        # equal the CPU kernel's over every family, mode, K and setting
        # (test_mixtures_bit_identity.py).
        pytest.skip("triton-interpreter: one mode per family (see test_mixtures_bit_identity.py)")
    for dtype in interpreter_dtypes(b):
        ins = make_inputs(K=K, dtype=dtype, logits=logits)
        kw = dict(family=family, mode=mode, weights_are_logits=logits, zero_center=zero_center,
                  temperature=0.6, seed=11)
        out = run(b, *ins, **kw)
        ref = run(reference_backend, *ins, **kw)
        assert out[0].dtype == dtype and out[1].dtype == (
            torch.float64 if dtype == torch.float64 else torch.float32)
        for name, x, z in zip(("y_hat", "likelihoods"), out[:2], ref[:2]):
            assert_close(x, z, dtype, f"{family} {mode} K={K} {dtype} {name}")
        for name, x, z in zip(("y", "scales", "means", "weights"), out[2], ref[2]):
            assert x.dtype == dtype and x.shape == z.shape
            # Gradients scale with the incoming 1e3: compare relative to their size.
            scale = z.double().abs().max().clamp_min(1.0)
            assert_close(x / scale, z / scale, dtype, f"{family} {mode} K={K} {dtype} grad {name}")


# Many blocks of every kernel's size (256 elements on the CPU), the last one partial.
MANY_BLOCKS = (2, 3, 16, 21)


@pytest.mark.parametrize("family", FAMILIES)
def test_negative_upstream_vs_reference(kernel_backend, reference_backend, family):
    """Every g_P < 0 with probabilities as weights: the likelihood bound passes every g_P whatever
    p is, so kernels may form each component's gradients without p (the CPU kernel does, in one
    pass per group of components). Values and gradients against the reference, every dtype and K."""
    b = mixture_backend(kernel_backend)
    for dtype in interpreter_dtypes(b):
        for K in (3,) if b.is_interpreter else KS:
            ins = make_inputs(shape=MANY_BLOCKS, K=K, dtype=dtype)
            kw = dict(family=family, mode="mixed", seed=5)
            out = run(b, *ins, negative=True, **kw)
            ref = run(reference_backend, *ins, negative=True, **kw)
            for name, x, z in zip(("y_hat", "likelihoods"), out[:2], ref[:2]):
                assert_close(x, z, dtype, f"{family} K={K} {dtype} {name}")
            for name, x, z in zip(("y", "scales", "means", "weights"), out[2], ref[2]):
                scale = z.double().abs().max().clamp_min(1.0)
                assert_close(x / scale, z / scale, dtype, f"{family} K={K} {dtype} grad {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_ignore_the_other_elements_upstream(kernel_backend, family):
    """The op is elementwise: an element's gradients depend on its own upstream gradients only.
    With every g_P negative, then with every 64th made positive (one in each block of 64 or more
    elements), the other elements' gradients are the same bits; a kernel that forms the gradients
    without p where all of a block's g_P are negative takes both of its paths here."""
    b = mixture_backend(kernel_backend)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64,
            torch.float16: torch.int16, torch.bfloat16: torch.int16}
    for dtype in interpreter_dtypes(b):
        y, sc, mu, w = make_inputs(shape=MANY_BLOCKS, K=3, dtype=dtype)
        lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        g = torch.Generator().manual_seed(3)
        a = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        negative = -(torch.rand(y.shape, generator=g, dtype=torch.float64) * 1e3 + 1e-3)
        flipped = negative.clone()
        flipped.view(-1)[::64] *= -1
        grads = []
        for upstream in (negative, flipped):
            leaves = [t.detach().clone().requires_grad_() for t in (y, sc, mu, w)]
            yh, lik = mixture_quantize(b, *leaves, family=family, mode="noise", seed=5)
            torch.autograd.backward([yh, lik], [a, upstream.to(lik_dtype)])
            grads.append([t.grad for t in leaves])
        keep = torch.ones(y.numel(), dtype=torch.bool)
        keep[::64] = False
        keep = keep.view(y.shape)
        for name, g1, g2 in zip(("y", "scales", "means", "weights"), *grads):
            m = keep.expand_as(g1)
            assert torch.equal(g1[m].view(bits[dtype]), g2[m].view(bits[dtype])), \
                f"{family} {dtype} grad {name}"
            assert not torch.equal(g1[~m], g2[~m]), f"{family} {dtype} grad {name}: no change"


def test_reference_equals_compressai(backend):
    """zero_center=False, mode='noise': CompressAI's GaussianMixtureConditional.forward (its
    _likelihood, then LowerBound) with the same noise, values and gradients."""
    b = mixture_backend(backend)
    entropy_models = pytest.importorskip("compressai.entropy_models")
    K, M = 3, 4
    y, sc, mu, w = make_inputs(shape=(2, M, 5, 6), K=K, blocked=True)
    u = lq.uniform_noise(y.shape, 5)
    gmc = entropy_models.GaussianMixtureConditional(K=K).train()
    # The channel-blocked tensors CompressAI takes, and our views of them.
    flat = [t.movedim(0, 1).flatten(1, 2).detach().clone().requires_grad_() for t in (sc, mu, w)]
    y_c = y.clone().requires_grad_()
    y_hat_c = y_c + u  # CompressAI's quantize(inputs, "noise")
    lik_c = gmc.likelihood_lower_bound(gmc._likelihood(y_hat_c, *flat))
    g = torch.randn(lik_c.shape, generator=torch.Generator().manual_seed(2))
    (lik_c * g + y_hat_c).sum().backward()

    leaves = [t.detach().clone().requires_grad_() for t in flat]
    y_l = y.clone().requires_grad_()
    views = [t.unflatten(1, (K, M)).movedim(1, 0) for t in leaves]
    y_hat, lik = mixture_quantize(b, y_l, *views, seed=5)
    (lik * g + y_hat).sum().backward()
    torch.testing.assert_close(y_hat, y_hat_c, rtol=0, atol=0)
    torch.testing.assert_close(lik, lik_c, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(y_l.grad, y_c.grad, rtol=1e-4, atol=1e-6)
    for x, z in zip(leaves, flat):
        torch.testing.assert_close(x.grad, z.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zero_center", [False, True])
def test_one_component_is_quantize(backend, family, mode, zero_center):
    b = mixture_backend(backend)
    y, sc, mu, _ = make_inputs(K=1)
    w = torch.ones_like(sc)
    kw = dict(family=family, mode=mode, zero_center=zero_center, temperature=0.3, seed=3)
    yh, lik = mixture_quantize(b, y, sc, mu, w, **kw)
    yh1, lik1 = lq.quantize(*b.to(y, sc[0], mu[0]), backend=b.name, **kw)
    yh1, lik1 = yh1.cpu(), lik1.cpu()
    assert torch.equal(yh, yh1)
    assert torch.equal(lik, lik1)


@pytest.mark.parametrize("logits", [False, True])
def test_channel_blocked_view_is_read_in_place(kernel_backend, logits):
    b = mixture_backend(kernel_backend)
    y, sc, mu, w = make_inputs(K=3, blocked=True, logits=logits)
    for t in (sc, mu, w):
        assert not t.is_contiguous() and component_layout(t) is not None
    kw = dict(weights_are_logits=logits, mode="noise", seed=4)
    out = run(b, y, sc, mu, w, **kw)
    contiguous = run(b, y, sc.contiguous(), mu.contiguous(), w.contiguous(), **kw)
    assert torch.equal(out[0], contiguous[0]) and torch.equal(out[1], contiguous[1])
    for x, z in zip(out[2], contiguous[2]):
        assert torch.equal(x, z)
    # The parameter gradients come back in the view's own strides (no copy on their way back).
    for a, t in zip(out[2][1:], (sc, mu, w)):
        assert a.stride() == t.stride()
    # No allocation of a parameter's size in the forward: the kernel reads the views in place.
    if b.device != "cpu":
        return  # the profiler's CPU allocations are this check's yardstick
    leaves = [t.detach() for t in (y, sc, mu, w)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        lq.mixture_quantize(*leaves, backend=b.name, **kw)
    param_bytes = sc.numel() * sc.element_size()
    allocations = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations and max(allocations) < param_bytes, allocations


def test_other_layouts_give_the_contiguous_values(kernel_backend):
    backend = mixture_backend(kernel_backend)
    y, sc, mu, w = make_inputs(K=3)
    strided = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (sc, mu, w)]
    assert component_layout(strided[0]) is None
    y_cl = y.contiguous(memory_format=torch.channels_last)
    out = run(backend, y_cl, *strided, seed=6)
    ref = run(backend, y, sc, mu, w, seed=6)
    for a, b in zip(out[:2] + tuple(out[2]), ref[:2] + tuple(ref[2])):
        assert torch.equal(a, b)
    # Broadcast weights (stride 0 over the batch) are read in place too.
    wb = w[:, :1].expand_as(w)
    assert component_layout(wb) is not None
    torch.testing.assert_close(run(backend, y, sc, mu, wb, seed=6)[1],
                               run(backend, y, sc, mu, wb.contiguous(), seed=6)[1], rtol=0,
                               atol=0)


def test_nan_propagates(backend):
    backend = mixture_backend(backend)
    y, sc, mu, w = make_inputs(shape=(1, 1, 2, 3), K=3, logits=True)
    y[0, 0, 0, 0] = float("nan")
    sc[1, 0, 0, 0, 1] = float("nan")
    mu[2, 0, 0, 0, 2] = float("nan")
    w[0, 0, 0, 1, 0] = float("nan")
    yh, lik, grads = run(backend, y, sc, mu, w, weights_are_logits=True, seed=1)
    flat = lik.flatten()
    assert flat[:4].isnan().all() and not flat[4:].isnan().any()
    assert yh.flatten()[0].isnan() and not yh.flatten()[1:3].isnan().any()
    assert grads[0].flatten()[:4].isnan().all() and not grads[0].flatten()[4:].isnan().any()


def test_empty(backend):
    backend = mixture_backend(backend)
    y, sc, mu, w = make_inputs(shape=(0, 3, 4), K=2)
    yh, lik, grads = run(backend, y, sc, mu, w, seed=1)
    assert yh.shape == y.shape and lik.shape == y.shape
    assert [g.shape for g in grads] == [t.shape for t in (y, sc, mu, w)]


def test_bad_inputs(backend):
    b = mixture_backend(backend)
    y, sc, mu, w = b.to(*make_inputs(shape=(2, 3), K=3))
    call = lambda *a, **kw: lq.mixture_quantize(*a, backend=b.name, seed=0, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="scales must have 1 <= K <= 8"):
        call(y, sc[:0], mu[:0], w[:0])
    big = b.to(torch.rand(9, 2, 3))
    with pytest.raises(ValueError, match="scales must have 1 <= K <= 8.*K = 9"):
        call(y, big, big, big)
    with pytest.raises(ValueError, match=r"scales must have shape \(K, \*y.shape\)"):
        call(y, sc[:, :1], mu, w)
    with pytest.raises(ValueError, match="means must have the shape of scales"):
        call(y, sc, mu[:2], w)
    with pytest.raises(ValueError, match="weights must have the shape of scales"):
        call(y, sc, mu, w[..., :2])
    with pytest.raises(TypeError, match="weights must have the dtype of y"):
        call(y, sc, mu, w.double())
    with pytest.raises(TypeError, match="weights_are_logits must be a bool"):
        call(y, sc, mu, w, weights_are_logits=1)
    with pytest.raises(ValueError, match="family must be one of"):
        call(y, sc, mu, w, family="cauchy")


def test_unimplemented_backends_raise():
    y, sc, mu, w = make_inputs(shape=(2, 3), K=3)
    for backend in (b for b in ("cuda", "triton") if b not in lq.api.MIXTURE_BACKENDS):
        try:
            lq.mixture_quantize(y, sc, mu, w, backend=backend)
        except NotImplementedError as e:
            assert backend in str(e)
        except (RuntimeError, ValueError):
            pass  # the backend itself is unavailable here: the usual message


def test_op_checks_match_python():
    """The C++ kernels reject what the Python checks reject, with the same wording."""
    needs_extension()
    y, sc, mu, w = make_inputs(shape=(2, 3), K=3)
    seed, temp = torch.tensor(0), torch.tensor(1.0, dtype=torch.float64)
    op = torch.ops.lic_quant.mixture_quantize_forward
    big = torch.rand(9, 2, 3)
    with pytest.raises(ValueError, match="scales must have 1 <= K <= 8.*K = 9"):
        op(y, big, big, big, seed, temp, "noise", 0.11, 1e-9, False, "gaussian", False)
    with pytest.raises(ValueError, match="means must have the shape of scales"):
        op(y, sc, mu[:2], w, seed, temp, "noise", 0.11, 1e-9, False, "gaussian", False)


def test_deterministic(kernel_backend):
    backend = mixture_backend(kernel_backend)
    # Several programs per call on the GPU (and on the CPU threads); one in the interpreter,
    # whose cost is per launch.
    ins = make_inputs(shape=(2, 3, 5, 7) if backend.is_interpreter else (3, 4, 33, 35), K=3,
                      logits=True)
    a = run(backend, *ins, weights_are_logits=True, seed=9)
    b = run(backend, *ins, weights_are_logits=True, seed=9)
    for x, z in zip(a[:2] + tuple(a[2]), b[:2] + tuple(b[2])):
        assert torch.equal(x, z)
    c = run(backend, *ins, grads=False, weights_are_logits=True, seed=10)
    assert not torch.equal(a[0], c[0])
    # The noise is the stream of section 3: y_hat = y + u for mode='noise', zero_center=False.
    assert torch.equal(a[0], ins[0] + lq.uniform_noise(ins[0].shape, 9))


def mixture_ops(b):
    """The forward and backward ops of backend b."""
    if b.is_triton:
        return (torch.ops.lic_quant.triton_mixture_quantize_forward,
                torch.ops.lic_quant.triton_mixture_quantize_backward)
    return (torch.ops.lic_quant.mixture_quantize_forward,
            torch.ops.lic_quant.mixture_quantize_backward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("blocked", [False, True])
def test_opcheck(kernel_backend, dtype, logits, blocked):
    b = mixture_backend(kernel_backend)
    b.need_dtype(dtype)
    if b.is_interpreter and not (logits and blocked):
        pytest.skip("triton-interpreter: the blocked logits case in one mode (each opcheck runs "
                    "the op several times, about a second each)")
    forward, backward = mixture_ops(b)
    y, sc, mu, w = b.to(*make_inputs(shape=(2, 3, 4, 5), K=3, dtype=dtype, logits=logits,
                                     blocked=blocked))
    seed, temp = b.to(torch.tensor(7), torch.tensor(0.5, dtype=torch.float64))
    for mode, zc in (("noise", False), ("sua", True))[b.is_interpreter:]:
        args = (y, sc, mu, w, seed, temp, mode, 0.11, 1e-9, zc, "laplace" if zc else "gaussian",
                logits)
        torch.library.opcheck(forward,
                              tuple(t.requires_grad_() if isinstance(t, torch.Tensor)
                                    and t.is_floating_point() and t.dim() > 0 else t
                                    for t in (x.detach() if isinstance(x, torch.Tensor) else x
                                              for x in args)))
        g_lik = -torch.rand(y.shape, dtype=dtype, device=y.device)
        torch.library.opcheck(backward,
                              (torch.randn_like(y), g_lik, y.detach(), sc.detach(), mu.detach(),
                               w.detach(), seed, temp, mode, 0.11, 1e-9, zc, "gaussian", logits,
                               [True, True, False, True]))


def test_compile_fullgraph(kernel_backend):
    b = mixture_backend(kernel_backend)
    y, sc, mu, w = b.to(*make_inputs(shape=(2, 3, 4, 5), K=3, logits=True, blocked=True))

    def step(y, sc, mu, w, seed):
        y_hat, lik = lq.mixture_quantize(y, sc, mu, w, weights_are_logits=True, seed=seed,
                                         backend=b.name)
        return (y_hat.square().sum() - lik.log2().sum())

    torch._dynamo.reset()
    # aot_eager: the tracing, fake kernels and autograd of the ops without an Inductor build
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    seed = b.to(torch.tensor(3))
    leaves = [t.detach().clone().requires_grad_() for t in (y, sc, mu, w)]
    eager = [t.detach().clone().requires_grad_() for t in (y, sc, mu, w)]
    compiled(*leaves, seed).backward()
    step(*eager, seed).backward()
    for x, z in zip(leaves, eager):
        torch.testing.assert_close(x.grad, z.grad, rtol=0, atol=0)


def test_torch_func_grad(kernel_backend):
    b = mixture_backend(kernel_backend)
    y, sc, mu, w = b.to(*make_inputs(shape=(2, 3), K=3))

    def loss(sc, w):
        return -lq.mixture_quantize(y, sc, mu, w, seed=1, backend=b.name)[1].log().sum()

    g = torch.func.grad(loss, argnums=(0, 1))(sc, w)
    leaves = [sc.clone().requires_grad_(), w.clone().requires_grad_()]
    loss(*leaves).backward()
    torch.testing.assert_close(g[0], leaves[0].grad, rtol=0, atol=0)
    torch.testing.assert_close(g[1], leaves[1].grad, rtol=0, atol=0)


def test_second_derivative_raises(kernel_backend):
    b = mixture_backend(kernel_backend)
    y, sc, mu, w = b.to(*make_inputs(shape=(2, 3), K=2))
    sc.requires_grad_()
    lik = lq.mixture_quantize(y, sc, mu, w, seed=1, backend=b.name)[1]
    (g,) = torch.autograd.grad(lik.sum(), sc, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        g.sum().backward()
