"""Contract gaps of issue 9 (docs/spec.md section 4), each closed here with a test that failed
before: second derivatives, the reference's output shape with a tensor temperature, the range of
the bounds, arguments on the meta device or sparse, and uniform_noise with an int shape."""
from __future__ import annotations

import math

import pytest
import torch

import lic_quant as lq
from helpers import make_inputs

HAVE_CPP = lq.extension_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpp)]


# ---------------------------------------------------------------------------------------------
# second derivative


def _first_gradient(backend, **kw):
    y, s, m = make_inputs((3, 7), torch.float32)
    y, s, m = (t.requires_grad_() for t in (y, s, m))
    y_hat, lik = lq.gaussian_quantize(y, s, m, mode="noise", seed=5, backend=backend, **kw)
    (g_s,) = torch.autograd.grad(lik.log().sum() + y_hat.square().sum(), s, create_graph=True)
    return s, g_s


@needs_cpp
def test_second_derivative_raises_cpp():
    # The reproduction: before, this returned 2*s alone (the op's part silently zero).
    s, g_s = _first_gradient("cpu")
    assert g_s.requires_grad  # create_graph=True: the first gradient is part of a graph
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(g_s.pow(2).sum() + s.pow(2).sum(), s)


@needs_cpp
def test_second_derivative_raises_for_the_backward_op_itself():
    y, s, m = make_inputs((2, 5), torch.float32)
    g_lik = torch.randn(2, 5, requires_grad=True)
    seed, temp = torch.tensor(3), torch.tensor(0.5, dtype=torch.float64)
    gy, gs, gm = torch.ops.lic_quant.quantize_backward(
        None, g_lik, y, s, m, seed, temp, "sua", 0.11, 1e-9, True, [True, True, True])
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(gs.sum(), g_lik)


@needs_cpp
def test_first_gradient_with_create_graph_is_unchanged():
    # The once-differentiable wrapping changes nothing in the values of the first gradient.
    s, g_graph = _first_gradient("cpu")
    _, g_plain = _first_gradient("cpu")
    assert torch.equal(g_graph.detach(), g_plain.detach())


def test_reference_second_derivative_is_defined():
    # The reference is plain autograd: its second derivative exists (not an error).
    s, g_s = _first_gradient("reference")
    (h,) = torch.autograd.grad(g_s.pow(2).sum() + s.pow(2).sum(), s)
    assert torch.isfinite(h).all() and not torch.equal(h, 2 * s.detach())


# ---------------------------------------------------------------------------------------------
# shapes, bounds, devices, layouts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temp_shape", [(1, 1), (1,), ()])
def test_tensor_temperature_does_not_broadcast_outputs(backend, temp_shape):
    y, s, m = make_inputs((4,), torch.float32)
    t = torch.full(temp_shape, 0.5, dtype=torch.float64)
    y_hat, lik = lq.gaussian_quantize(y, s, m, mode="sua", temperature=t, seed=3, backend=backend)
    assert y_hat.shape == lik.shape == y.shape
    want = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.5, seed=3, backend=backend)
    assert torch.equal(y_hat, want[0]) and torch.equal(lik, want[1])


def test_reference_function_takes_one_temperature_value():
    y, s, _ = make_inputs((4,), torch.float32)
    u = lq.uniform_noise(y.shape, 1)
    out = lq.gaussian_quantize_reference(y, s, None, u, temperature=torch.tensor([[0.5]]))
    assert out[0].shape == out[1].shape == y.shape
    with pytest.raises(RuntimeError):  # several values are not one temperature
        lq.gaussian_quantize_reference(y, s, None, u, temperature=torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bound", [1.0, 2.0, math.inf, 1])
def test_likelihood_bound_below_one(backend, bound):
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="likelihood_bound"):
        lq.gaussian_quantize(y, s, likelihood_bound=bound, seed=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_bound_finite(backend):
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="scale_bound"):
        lq.gaussian_quantize(y, s, scale_bound=math.inf, seed=1, backend=backend)
    # the edges of the valid ranges still work
    y_hat, lik = lq.gaussian_quantize(y, s, scale_bound=0.0, likelihood_bound=0.0, seed=1,
                                      backend=backend)
    assert bool((lik < 1).all())
    lq.gaussian_quantize(y, s, likelihood_bound=1.0 - 1e-12, seed=1, backend=backend)


@needs_cpp
def test_bounds_checked_in_inference_mode():
    y, s, _ = make_inputs((2, 3), torch.float32)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="likelihood_bound"):
            lq.gaussian_quantize(y, s, likelihood_bound=2.0, seed=1, backend="cpu")
        with pytest.raises(ValueError, match="scale_bound"):
            lq.gaussian_quantize(y, s, scale_bound=math.inf, seed=1, backend="cpu")


@needs_cpp
@pytest.mark.parametrize("scale_bound,likelihood_bound", [(math.inf, 1e-9), (0.11, 1.0),
                                                          (0.11, math.inf), (math.nan, 1e-9)])
def test_op_level_bounds(scale_bound, likelihood_bound):
    y, s, m = make_inputs((2, 3), torch.float32)
    seed, temp = torch.tensor(3), torch.tensor(0.5, dtype=torch.float64)
    name = "scale_bound" if scale_bound != 0.11 else "likelihood_bound"
    with pytest.raises(ValueError, match=name):
        torch.ops.lic_quant.quantize_forward(y, s, m, seed, temp, "sua", scale_bound,
                                             likelihood_bound, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_seed_and_temperature_name_the_argument(backend):
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="seed"):
        lq.gaussian_quantize(y, s, seed=torch.tensor(1, device="meta"), backend=backend)
    with pytest.raises(ValueError, match="temperature"):
        lq.gaussian_quantize(y, s, temperature=torch.tensor(0.5, device="meta"), seed=1,
                             backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["y", "scales", "means"])
def test_sparse_inputs_name_the_argument(backend, name):
    args = dict(zip(("y", "scales", "means"), make_inputs((2, 3), torch.float32)))
    args[name] = args[name].to_sparse()
    with pytest.raises(TypeError, match=name):
        lq.gaussian_quantize(args["y"], args["scales"], args["means"], seed=1, backend=backend)


def test_sparse_seed_and_temperature_name_the_argument():
    y, s, _ = make_inputs((2, 3), torch.float32)
    with pytest.raises(TypeError, match="temperature"):
        lq.gaussian_quantize(y, s, temperature=torch.tensor([0.5]).to_sparse(), seed=1)


def test_uniform_noise_takes_an_int_shape():
    a = lq.uniform_noise(5, 17)
    assert a.shape == (5,)
    assert torch.equal(a, lq.uniform_noise((5,), 17))
    assert torch.equal(a, lq.uniform_noise(torch.Size([5]), torch.tensor(17)))
    with pytest.raises(TypeError, match="shape"):
        lq.uniform_noise("5", 17)
    with pytest.raises(ValueError, match="shape"):
        lq.uniform_noise(-1, 17)
