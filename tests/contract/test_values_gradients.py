"""docs/spec.md sections 1-2 on every backend: values and the three gradients against the
reference, for every mode x zero_center x dtype on odd shapes, with the same inputs, noise and
upstream gradients; the sign rules of both lower bounds; gradcheck on the smooth part.

The tolerance model is tests/helpers.py's (assert_matches_reference): y_hat bit for bit, the
likelihoods and gradients within a per-element first-order rounding bound of the float64
reference.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import lic_quant as lq
from helpers import (DTYPES, LIKELIHOOD_BOUND, ODD_SHAPES, SCALE_BOUND, assert_matches_reference,
                     lik_dtype, make_inputs, make_upstream, run)

CASES = list(itertools.product(lq.MODES, [True, False], DTYPES))


def _check(backend, shape, dtype, mode, zero_center, *, with_means=True, temperature=0.37,
           seed=1234, inputs_seed=7):
    backend.need_dtype(dtype)
    y, s, m = make_inputs(shape, dtype, seed=inputs_seed, with_means=with_means)
    g_yhat, g_lik = make_upstream(shape, dtype, lik_dtype(dtype))
    fn = backend.fn(mode=mode, zero_center=zero_center, seed=seed, temperature=temperature,
                    scale_bound=SCALE_BOUND, likelihood_bound=LIKELIHOOD_BOUND)
    got = run(fn, y, s, m, g_yhat, g_lik)
    assert_matches_reference(got, y, s, m, g_yhat, g_lik, mode=mode, zero_center=zero_center,
                             seed=seed, temperature=temperature)


@pytest.mark.parametrize("mode,zero_center,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("shape", ODD_SHAPES[:2], ids=str)
def test_values_and_gradients_match_reference(backend, mode, zero_center, dtype, shape):
    _check(backend, shape, dtype, mode, zero_center)


@pytest.mark.parametrize("shape", ODD_SHAPES[1:], ids=str)
@pytest.mark.parametrize("mode", ["noise", "sua"])
def test_without_means_on_odd_shapes(backend, mode, shape):
    _check(backend, shape, torch.float32, mode, True, with_means=False)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sua_at_the_temperature_ends(backend, temperature):
    _check(backend, ODD_SHAPES[0], torch.float32, "sua", True, temperature=temperature)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_without_means_y_hat_is_the_references(backend, dtype):
    """No means: mu = 0 and c = 0; y_hat bit for bit the reference's in every mode."""
    backend.need_dtype(dtype)
    shape = (2, 3, 9, 5)
    y, s, _ = make_inputs(shape, dtype, with_means=False, seed=3)
    u = lq.uniform_noise(shape, 99)
    for mode in lq.MODES:
        k = backend.quantize(y, s, mode=mode, seed=99)
        r = lq.gaussian_quantize_reference(y, s, None, u, mode=mode, temperature=1.0)
        assert torch.equal(k[0], r[0]), mode


# ---------------------------------------------------------------------------------------------
# the two lower bounds (section 2): the gradient passes at or above the bound, or where the
# incoming gradient is negative


def test_likelihood_bound_passes_or_blocks_by_sign(backend):
    dtype = torch.float64 if backend.takes(torch.float64) else torch.float32
    # p(v=2, s=0.2) = 3.2e-14 is below the 1e-9 bound; p(v=0, s=1) = 0.38 is above.
    y = torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=dtype, requires_grad=True)
    s = torch.tensor([0.2, 0.2, 1.0, 1.0], dtype=dtype, requires_grad=True)
    _, p = backend.quantize(y, s, mode="ste")
    assert p[0].item() == pytest.approx(1e-9)
    p.backward(torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=p.dtype))
    # below the bound: a positive upstream gradient is blocked, a negative one passes
    assert y.grad[0].item() == 0 and s.grad[0].item() == 0
    assert y.grad[1].item() != 0 and s.grad[1].item() != 0
    # above the bound both pass
    assert s.grad[2].item() != 0 and s.grad[3].item() != 0


def test_scale_bound_passes_or_blocks_by_sign(backend):
    dtype = torch.float64 if backend.takes(torch.float64) else torch.float32
    # sigma = 0.05 is below the 0.11 bound, 0.5 above it; y = 0.2 rounds to v = 0.
    y = torch.tensor([0.2, 0.2, 0.2, 0.2], dtype=dtype, requires_grad=True)
    s = torch.tensor([0.05, 0.05, 0.5, 0.5], dtype=dtype, requires_grad=True)
    _, p = backend.quantize(y, s, mode="ste")
    p.backward(torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=p.dtype))
    # at s = b_s = 0.11, v = 0: dp/ds < 0, so g_s = g_P * dp/ds is negative for g_P > 0 (passes:
    # a descent step raises sigma) and positive for g_P < 0 (blocked).
    assert s.grad[0].item() < 0
    assert s.grad[1].item() == 0
    assert s.grad[2].item() != 0 and s.grad[3].item() != 0
    assert torch.sign(s.grad[2]) == -torch.sign(s.grad[3])


# ---------------------------------------------------------------------------------------------
# gradcheck


@pytest.mark.parametrize("zero_center", [True, False])
def test_gradcheck_smooth_part(backend, zero_center):
    """noise mode: the surrogate is y + u exactly, so finite differences see the same function.
    Scales above the scale bound and likelihoods above the likelihood bound: the smooth part.
    float64 (finite differences need it): the backends that take it."""
    backend.need_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    s = (torch.rand(3, 7, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    m = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    def fn(y, s, m):
        return backend.quantize(y, s, m, mode="noise", seed=17, zero_center=zero_center)

    assert (fn(y, s, m)[1] > 1e-6).all()
    torch.autograd.gradcheck(fn, (y, s, m))
