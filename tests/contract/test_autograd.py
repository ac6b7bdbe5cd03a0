"""docs/spec.md section 2, how the gradients are given: once differentiable (a second derivative
raises, for the API and for the backward op itself), only the requested gradients are computed,
the backward saves only the three inputs, the seed and the temperature, y_hat alone gives the
identity gradient, no forward mode on the C++/CUDA op, reverse mode through torch.func.grad, and
no graph under no_grad or inference mode."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import LIKELIHOOD_BOUND as LB, SCALE_BOUND as SB, make_inputs, make_upstream


def _first_gradient(backend, **kw):
    y, s, m = make_inputs((3, 7), torch.float32)
    y, s, m = (t.requires_grad_() for t in (y, s, m))
    y_hat, lik = backend.quantize(y, s, m, mode="noise", seed=5, **kw)
    (g_s,) = torch.autograd.grad(lik.log().sum() + y_hat.square().sum(), s, create_graph=True)
    return s, g_s


def test_second_derivative_raises(kernel_backend):
    """Differentiating a first gradient taken with create_graph=True raises instead of silently
    leaving out the op's part (what a plain autograd function would give: 2 s alone)."""
    s, g_s = _first_gradient(kernel_backend)
    assert g_s.requires_grad  # create_graph=True: the first gradient is part of a graph
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(g_s.pow(2).sum() + s.pow(2).sum(), s)


def test_first_gradient_with_create_graph_is_unchanged(kernel_backend):
    _, g_graph = _first_gradient(kernel_backend)
    _, g_plain = _first_gradient(kernel_backend)
    assert torch.equal(g_graph.detach(), g_plain.detach())


def test_reference_second_derivative_is_defined(reference_backend):
    """The reference is plain autograd: its second derivative exists."""
    s, g_s = _first_gradient(reference_backend)
    (h,) = torch.autograd.grad(g_s.pow(2).sum() + s.pow(2).sum(), s)
    assert torch.isfinite(h).all() and not torch.equal(h, 2 * s.detach())


def _op_args(backend, mode="sua"):
    y, s, m = backend.to(*make_inputs((4, 33), torch.float32))
    seed = lq.make_seed(1, y.device)
    temp = torch.tensor(0.5, dtype=torch.float64, device=y.device)
    g_yhat, g_lik = backend.to(*make_upstream(y.shape, torch.float32, torch.float32))
    return y, s, m, seed, temp, g_yhat, g_lik


def test_backward_op_is_not_differentiable(cpp_backend):
    """The C++ backward op called directly with inputs that require grad: its results carry the
    second-derivative error (the Triton backward op is reached through its forward's autograd
    only, covered by test_second_derivative_raises)."""
    y, s, m, seed, temp, _, _ = _op_args(cpp_backend)
    g_lik = torch.randn(y.shape, device=y.device, requires_grad=True)
    gy, gs, gm = cpp_backend.backward_op(None, g_lik, y, s, m, seed, temp, "sua", SB, LB, True,
                                            [True, True, True])
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(gs.sum(), g_lik)


def test_only_requested_gradients_are_computed(kernel_backend):
    """The backward op's output_mask: the gradients asked for equal the full computation's, the
    others are empty and never written; without g_yhat, grad_y is 0 + g_v = -grad_mu."""
    y, s, m, seed, temp, g_yhat, g_lik = _op_args(kernel_backend)
    bwd = kernel_backend.backward_op
    full = bwd(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, [True, True, True])
    for mask in ([False, True, False], [True, False, False], [False, False, True],
                 [False, False, False]):
        part = bwd(g_yhat, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, mask)
        for need, got, want in zip(mask, part, full):
            if need:
                assert torch.equal(got, want)
            else:
                assert got.numel() == 0 and got.device == y.device
    no_gyh = bwd(None, g_lik, y, s, m, seed, temp, "sua", SB, LB, True, [True, True, True])
    assert torch.equal(no_gyh[0], -full[2])


def test_each_leaf_gets_its_gradient(backend):
    """Through the API: y_hat alone gives the identity into y and nothing into mu and sigma (the
    kernels give no gradient at all, the reference's autograd a zero one); the likelihoods alone
    give finite gradients into all three; one leaf at a time gets what it gets with all three."""
    y, s, m = make_inputs((3, 4), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, lik = backend.quantize(*leaves, mode="sua", temperature=0.5, seed=1)
    g = torch.randn_like(y)
    gy, gs, gm = torch.autograd.grad(y_hat, leaves, g, allow_unused=True, retain_graph=True)
    assert torch.equal(gy, g)
    if backend.is_kernel:
        assert gs is None and gm is None
    else:
        assert all(t is None or not t.any() for t in (gs, gm))
    full = torch.autograd.grad((-lik.log()).sum(), leaves, retain_graph=True)
    assert all(torch.isfinite(t).all() for t in full)
    for i in range(3):
        (part,) = torch.autograd.grad((-lik.log()).sum(), leaves[i], retain_graph=True)
        assert torch.equal(part, full[i])
    # only some inputs require grad: the others get none, and nothing fails
    yy = y.clone().requires_grad_()
    y_hat, lik = backend.quantize(yy, s, m, mode="mixed", seed=1)
    (y_hat.sum() + lik.sum()).backward()
    assert yy.grad is not None and torch.isfinite(yy.grad).all()


def test_backward_saves_only_the_inputs(kernel_backend):
    """y, scales, means, the seed and the temperature, nothing else (the noise is regenerated),
    and the backward writes nothing into them."""
    y, s, m = make_inputs((3, 4), torch.float32)
    leaves = [kernel_backend.to(t.clone()).requires_grad_() for t in (y, s, m)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y_hat, lik = lq.gaussian_quantize(*leaves, mode="noise", seed=1,
                                          backend=kernel_backend.name)
    assert len(saved) == 5
    assert [t.shape for t in saved[:3]] == [y.shape] * 3 and saved[3].dim() == saved[4].dim() == 0
    assert saved[3].dtype == torch.int64 and saved[4].dtype == torch.float64
    before = [t.detach().clone() for t in leaves]
    (y_hat.sum() + lik.sum()).backward()
    for t, b in zip(leaves, before):
        assert torch.equal(t.detach(), b)


def test_forward_mode_ad_raises(kernel_backend):
    """No forward-mode formula: a dual input to a kernel backend raises the op's message instead
    of giving outputs without tangents."""
    import torch.autograd.forward_ad as fwAD

    y, s = kernel_backend.to(*make_inputs((2, 5), torch.float32, with_means=False)[:2])
    q = lambda y, s: lq.gaussian_quantize(y, s, seed=1, backend=kernel_backend.name)  # noqa: E731
    with fwAD.dual_level():
        for args in ((fwAD.make_dual(y, torch.ones_like(y)), s),
                     (y, fwAD.make_dual(s, torch.ones_like(s)))):
            with pytest.raises(NotImplementedError, match="forward-mode"):
                q(*args)
    with pytest.raises(NotImplementedError, match="forward-mode"):
        torch.func.jvp(lambda t: q(t, s)[1], (y,), (torch.ones_like(y),))


def test_torch_func_grad_and_its_second_derivative(kernel_backend):
    """torch.func.grad runs the backward with grad mode on: its gradients equal the ordinary
    ones, and a gradient of that gradient raises the second-derivative error."""
    y, s, m = kernel_backend.to(*make_inputs((3, 5), torch.float32))

    def rate(y, s, m):
        return lq.gaussian_quantize(y, s, m, mode="mixed", seed=2,
                                    backend=kernel_backend.name)[1].log().sum()

    got = torch.func.grad(rate, argnums=(0, 1, 2))(y, s, m)
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    rate(*leaves).backward()
    for a, b in zip(got, leaves):
        assert torch.equal(a, b.grad)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.func.grad(lambda s: torch.func.grad(rate)(y, s, m).sum())(s)


def test_no_grad_and_inference_mode(backend):
    y, s, m = (t.requires_grad_() for t in make_inputs((3, 4), torch.float32))
    want = backend.quantize(y, s, m, seed=3)
    with torch.no_grad():
        a = backend.quantize(y, s, m, seed=3)
    with torch.inference_mode():
        b = backend.quantize(y.detach(), s.detach(), m.detach(), seed=3)
    for got in (a, b):
        assert got[0].grad_fn is None and not got[1].requires_grad
        assert torch.equal(got[0], want[0].detach()) and torch.equal(got[1], want[1].detach())
