"""docs/spec.md sections 1 and 7: the mixture kernels of every backend give the C++ CPU kernel's
bits. The Triton kernels run mixture_math.h's per-element float32 math with the sums over k in
the order k = 0 .. K-1 from +0, the softmax and the per-component slopes as the CPU kernel's
component loops do, so y_hat, the likelihoods and the four gradients are equal bit for bit (edge
values and the canonical NaN included) in every family, mode, dtype, K, weight convention, lattice
centre and parameter layout; and rate=True is the likelihoods path with g_P = -g / (P ln 2).

Anchor: the C++ CPU kernel (`cpu_backend`); the other kernel backends with mixture kernels
(lic_quant.api.MIXTURE_BACKENDS) through `other_kernel`. Triton's interpreter costs about a second
per launch whatever the size: the cases are small, and every family x mode runs once, with the
four (weights_are_logits, zero_center) settings spread over them.
"""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import assert_same_bits, make_upstream, special_inputs
from lic_quant._checks import FAMILIES, MODES

SHAPE = (3, 5, 7)  # 105 elements: room for every edge value below, three samples for rate
NAMES = ("y_hat", "likelihoods", "grad_y", "grad_scales", "grad_means", "grad_weights")
SETTINGS = [(False, False), (True, False), (False, True), (True, True)]  # (logits, zero_center)


def mixture_kernel(b):
    if b.name not in lq.api.MIXTURE_BACKENDS:
        pytest.skip(f"backend {b.id}: no mixture kernels")
    return b


def special_mixture_inputs(K, dtype, logits, seed=0):
    """y with the edge values of helpers.special_inputs (NaN, infinities, huge, ties, signed
    zeros) and component 0's scales and means with theirs; the other components random, with
    edge scales, means and weights of their own in elements 40 .. 59 (zero, tiny, huge and NaN
    weights; with logits -inf, +inf, huge and NaN)."""
    y, s0, m0 = special_inputs(SHAPE, torch.float64)
    g = torch.Generator().manual_seed(seed)
    shape = (K, *SHAPE)
    sc = torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.01
    mu = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    w = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    sc[0], mu[0] = s0, m0
    flat = [t.view(K, -1) for t in (sc, mu, w)]
    if K > 1:
        flat[0][K - 1, 40:44] = torch.tensor([float("nan"), 0.0, 1e30, 1e-3])
        flat[1][K - 1, 44:48] = torch.tensor([float("inf"), -0.0, 0.5, -1e30])
    if not logits:
        w = torch.softmax(w, 0)
        flat[2] = w.view(K, -1)
        flat[2][:, 48:52] = torch.tensor([0.0, 1.0, 1e-30, float("nan")])
    else:
        flat[2][0, 48:52] = torch.tensor([-float("inf"), float("inf"), 1e30, float("nan")])
        flat[2][-1, 49:53] = torch.tensor([float("inf"), -1e30, 88.0, -float("inf")])
    return tuple(t.to(dtype) for t in (y, sc, mu, w))


def run(b, y, sc, mu, w, g_yhat, g_lik, requires=(True,) * 4, **kw):
    """(y_hat, likelihoods, grad_y, grad_scales, grad_means, grad_weights) of backend b for the
    upstream gradients, on the CPU; None for a gradient not required."""
    # detach, not clone: a clone of a layout that is not dense would be contiguous
    leaves = [t.detach().requires_grad_(r) for t, r in zip((y, sc, mu, w), requires)]
    y_hat, lik = lq.mixture_quantize(*b.to(*leaves), backend=b.name, **kw)
    outs, grads = ([y_hat, lik], [g_yhat, g_lik]) if g_yhat is not None else ([lik], [g_lik])
    torch.autograd.backward(outs, [g.to(b.device) for g in grads])
    return [y_hat.detach().cpu(), lik.detach().cpu()] + [t.grad for t in leaves]


def assert_both(cpu, other, *args, **kw):
    a = run(cpu, *args, **kw)
    b = run(other, *args, **kw)
    for name, x, z in zip(NAMES, a, b):
        assert_same_bits(z, x, name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_same_bits_as_the_cpu_kernel(other_kernel, cpu_backend, family, mode):
    other = mixture_kernel(other_kernel)
    logits, zero_center = SETTINGS[(MODES.index(mode) + FAMILIES.index(family)) % 4]
    ins = special_mixture_inputs(3, torch.float32, logits)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=3)
    assert_both(cpu_backend, other, *ins, g_yhat, g_lik, family=family, mode=mode,
                weights_are_logits=logits, zero_center=zero_center, temperature=0.37,
                seed=-123456789012345)


@pytest.mark.parametrize("dtype,K,family", [(torch.float16, 2, "gaussian"),
                                            (torch.bfloat16, 5, "laplace"),
                                            (torch.float32, 1, "logistic"),
                                            (torch.float32, 8, "gaussian")],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_same_bits_for_dtypes_and_K(other_kernel, cpu_backend, dtype, K, family):
    other = mixture_kernel(other_kernel)
    other.need_dtype(dtype)
    ins = special_mixture_inputs(K, dtype, logits=True, seed=K)
    g_yhat, g_lik = make_upstream(SHAPE, dtype, torch.float32, seed=4)
    assert_both(cpu_backend, other, *ins, g_yhat, g_lik, family=family, mode="sua",
                weights_are_logits=True, zero_center=True, temperature=0.8, seed=5)


def _layout(name, K, M=5):
    """y (2, M, 4, 3) and parameters read in place in layout `name`: CompressAI's
    channel-blocked view (one shared inner), a mix of inners, weights broadcast over the batch
    (not dense: their gradient comes back contiguous)."""
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, M, 4, 3, generator=g) * 3
    flat = [torch.randn(2, K * M, 4, 3, generator=g) for _ in range(3)]
    flat[0] = flat[0].abs() + 0.05
    sc, mu, w = (t.unflatten(1, (K, M)).movedim(1, 0) for t in flat)
    if name == "inners":  # rows of a taller tensor: inner 3, against the blocked M * 4 * 3
        mu = torch.randn(K, 2, M, 8, 3, generator=g)[..., :4, :]
    elif name == "broadcast":
        w = torch.randn(K, 1, M, 4, 3, generator=g).expand(K, 2, M, 4, 3)
    return y, sc, mu, w


@pytest.mark.parametrize("layout", ["blocked", "inners", "broadcast"])
def test_same_bits_in_the_component_layouts(other_kernel, cpu_backend, layout):
    other = mixture_kernel(other_kernel)
    y, sc, mu, w = _layout(layout, K=3)
    g_yhat, g_lik = make_upstream(y.shape, torch.float32, torch.float32, seed=6)
    kw = dict(weights_are_logits=True, zero_center=True, mode="mixed", seed=12)
    a = run(cpu_backend, y, sc, mu, w, g_yhat, g_lik, **kw)
    b = run(other, y, sc, mu, w, g_yhat, g_lik, **kw)
    for name, x, z in zip(NAMES, a, b):
        assert_same_bits(z, x, name)
        assert z.stride() == x.stride(), name


def test_same_bits_for_partial_gradients(other_kernel, cpu_backend):
    """Some gradients only, no gradient for y_hat, and a likelihood bound of 0."""
    other = mixture_kernel(other_kernel)
    ins = special_mixture_inputs(3, torch.float32, logits=False)
    _, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=8)
    for requires in ((True, False, True, False), (False, True, False, True)):
        assert_both(cpu_backend, other, *ins, None, g_lik, requires=requires,
                    family="logistic", mode="noise", likelihood_bound=0.0, seed=8)


def test_same_bits_with_all_negative_upstream(other_kernel, cpu_backend):
    """g_P < 0 everywhere with probabilities as weights: the kernels may skip p."""
    other = mixture_kernel(other_kernel)
    ins = special_mixture_inputs(3, torch.float32, logits=False)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=5)
    assert_both(cpu_backend, other, *ins, g_yhat, -g_lik.abs() - 1e-3, family="gaussian",
                mode="ste", seed=17)


def _ln2_grad(g_bits, lik):
    """The likelihoods' gradient that the bits' gradient g becomes in the kernels, float32 as
    there: -g / (P ln 2) (section 8)."""
    per_element = g_bits.view(-1, *(1,) * (lik.dim() - 1)).expand_as(lik)
    return -per_element / (lik * torch.tensor(0.693147182464599609375, dtype=torch.float32))


@pytest.mark.parametrize("family,mode,logits", [("laplace", "noise", True),
                                                ("gaussian", "sua", False)])
def test_rate_is_the_likelihoods_path(kernel_backend, family, mode, logits):
    """rate=True (section 8) on the mixture op: y_hat bit for bit the likelihoods path's, the bits
    -log2 P of that path summed per sample within 1e-6 relative, and the gradients those of the
    likelihoods path fed g_P = -g / (P ln 2), bit for bit."""
    b = mixture_kernel(kernel_backend)
    if not b.is_triton:
        pytest.skip("the rate output of the mixture op: the Triton kernels")
    ins = special_mixture_inputs(3, torch.float32, logits)
    y, sc, mu, w = (t.nan_to_num(0.5, 1e4, -1e4) for t in ins)  # finite bits per sample
    seed, temp = b.to(torch.tensor(9), torch.tensor(0.5, dtype=torch.float64))
    forward = torch.ops.lic_quant.triton_mixture_quantize_forward
    backward = torch.ops.lic_quant.triton_mixture_quantize_backward
    args = (*b.to(y, sc, mu, w), seed, temp, mode, 0.11, 1e-9, True, family, logits)
    y_hat, lik = forward(*args, False)
    y_hat_r, bits = forward(*args, True)
    assert_same_bits(y_hat_r, y_hat, "y_hat")
    want = -torch.log2(lik.double()).sum((1, 2)).float()
    torch.testing.assert_close(bits, want, rtol=1e-6, atol=0)
    g_yhat = b.to(torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)))
    g_bits = b.to(torch.tensor([1.0, -2.0, 0.5]))
    mask = [True, True, True, True]
    got = backward(g_yhat, g_bits, *args, mask, True)
    ref = backward(g_yhat, _ln2_grad(g_bits, lik), *args, mask, False)
    for name, x, z in zip(NAMES[2:], ref, got):
        assert_same_bits(z, x, name)
