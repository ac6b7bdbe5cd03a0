"""Bit-exact identities, tail values and the sign rule of both lower bounds (docs/spec.md sections 1-2),
on the C++ kernels and the reference."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import DTYPES, make_inputs

BACKENDS = ["reference"] + (["cpu"] if lq.extension_available() else [])


def bits_equal(a, b):
    """Equal as bit patterns (so +0 and -0 differ); NaN equals NaN."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    view = torch.int64 if a.dtype == torch.float64 else torch.int32
    return torch.equal(a.view(view), b.view(view))


def with_ties(shape, dtype):
    y, s, m = make_inputs(shape, dtype, seed=3)
    # exact half-integer residuals: round half to even must decide them
    half = (torch.arange(y.numel()) % 9 - 4).reshape(shape).to(dtype) + 0.5
    y = torch.where(torch.arange(y.numel()).reshape(shape) % 3 == 0, m + half, y)
    m[..., 0] = -0.0  # sign of zero of the centre
    return y, s, m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sua_at_zero_temperature_is_ste_bit_for_bit(backend, dtype):
    y, s, m = with_ties((4, 9, 13), dtype)
    for zc in (True, False):
        a = lq.gaussian_quantize(y, s, m, mode="sua", temperature=0.0, seed=9, backend=backend,
                                 zero_center=zc)
        b = lq.gaussian_quantize(y, s, m, mode="ste", seed=9, backend=backend, zero_center=zc)
        assert bits_equal(a[0], b[0]) and bits_equal(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ste_is_round_half_even_plus_mean(backend, dtype):
    y, s, m = with_ties((5, 7, 11), dtype)
    y_hat, _ = lq.gaussian_quantize(y, s, m, mode="ste", backend=backend)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (torch.round(y.to(cdt) - m.to(cdt)) + m.to(cdt)).to(dtype)
    assert bits_equal(y_hat, expected)
    # ties really went to even
    r = (y.to(cdt) - m.to(cdt))
    ties = r == r.floor() + 0.5
    assert ties.any()
    n = (y_hat.to(cdt) - m.to(cdt))[ties] if dtype in (torch.float32, torch.float64) else None
    if n is not None:
        assert torch.all(torch.remainder(torch.round(n), 2) == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sua_at_unit_temperature_is_noise(backend):
    y, s, m = make_inputs((6, 50), torch.float32)
    a = lq.gaussian_quantize(y, s, m, mode="sua", temperature=1.0, seed=3, backend=backend)
    b = lq.gaussian_quantize(y, s, m, mode="noise", seed=3, backend=backend)
    # n + (e + u) vs r + u: the same real number, two roundings apart at most
    ulp = torch.finfo(torch.float32).eps * (y.abs() + m.abs() + 1)
    assert ((a[0] - b[0]).abs() <= 2 * ulp).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sua_mean_moves_linearly_from_identity_to_rounding(backend):
    # E[r~] = n + T e: average over many noise draws of one latent.
    r = torch.full((400_000,), 0.3)
    s = torch.ones_like(r)
    for t in (0.0, 0.25, 0.5, 1.0):
        y_hat, _ = lq.gaussian_quantize(r, s, mode="sua", temperature=t, seed=11, backend=backend)
        assert abs(y_hat.mean().item() - t * 0.3) < 3e-3
        assert abs(y_hat.std().item() - t / 12**0.5) < 3e-3  # spread T * std(u)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_rate_uses_noise_and_decoder_rounds(backend):
    y, s, m = make_inputs((3, 40), torch.float32)
    mixed = lq.gaussian_quantize(y, s, m, mode="mixed", seed=5, backend=backend)
    noise = lq.gaussian_quantize(y, s, m, mode="noise", seed=5, backend=backend)
    ste = lq.gaussian_quantize(y, s, m, mode="ste", seed=5, backend=backend)
    assert torch.equal(mixed[0], ste[0]) and torch.equal(mixed[1], noise[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v,sigma,expected", [(1.0, 0.11, 2.74084e-06), (2.0, 0.2, 3.19089e-14),
                                                (1.2, 0.11, 9.8516e-11)])
def test_tail_likelihoods(backend, v, sigma, expected):
    for sign in (1.0, -1.0):
        for dtype in (torch.float32, torch.float64):
            # y = 0 rounds to 0 and is not re-centred, so the residual is exactly 0 - mu = v
            y = torch.zeros(1, dtype=dtype)
            mu = torch.tensor([-sign * v], dtype=dtype)
            s = torch.tensor([sigma], dtype=dtype)
            _, p = lq.gaussian_quantize(y, s, mu, mode="ste", zero_center=False,
                                        likelihood_bound=0.0, backend=backend)
            assert abs(p.item() / expected - 1) < 1e-4, (dtype, p.item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_likelihood_bound_passes_or_blocks_by_sign(backend):
    # p(v=2, s=0.2) = 3.2e-14 is below the 1e-9 bound; p(v=0, s=1) = 0.38 is above.
    y = torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.2, 0.2, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    _, p = lq.gaussian_quantize(y, s, mode="ste", backend=backend)
    assert p[0].item() == pytest.approx(1e-9)
    g = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    p.backward(g)
    # below the bound: a positive upstream gradient is blocked, a negative one passes
    assert y.grad[0].item() == 0 and s.grad[0].item() == 0
    assert y.grad[1].item() != 0 and s.grad[1].item() != 0
    # above the bound both pass
    assert s.grad[2].item() != 0 and s.grad[3].item() != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_bound_passes_or_blocks_by_sign(backend):
    # sigma = 0.05 is below the 0.11 bound, 0.5 above it; y = 0.2 rounds to v = 0.
    y = torch.tensor([0.2, 0.2, 0.2, 0.2], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.05, 0.05, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    _, p = lq.gaussian_quantize(y, s, mode="ste", backend=backend)
    p.backward(torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))
    # at s = b_s = 0.11, v = 0 (y = 0.2 rounds to 0): dp/ds < 0, so g_s = g_P * dp/ds
    # is negative for g_P > 0 (passes: a descent step raises sigma) and positive for g_P < 0.
    assert s.grad[0].item() < 0
    assert s.grad[1].item() == 0
    assert s.grad[2].item() != 0 and s.grad[3].item() != 0
    assert torch.sign(s.grad[2]) == -torch.sign(s.grad[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_likelihood_accuracy_at_exact_arguments(backend):
    # Integer v and power-of-two s make (|v| -+ 1/2)/s exact in float32, so what remains is the
    # error of the normal tail itself: ours is within 3.3e-7 of the truth (tools/fit_normal_sf.py),
    # torch's float32 erfc within a few ulps, and the subtraction adds one rounding. 1e-6 of the
    # summed tails is therefore a bound a 1e-5 relative error anywhere in the tail would break.
    import numpy as np
    import scipy.special

    v = torch.arange(0, 9, dtype=torch.float64)
    s = 2.0 ** torch.arange(-4, 4, dtype=torch.float64)
    vv, ss = torch.meshgrid(v, s, indexing="ij")
    vv, ss = vv.flatten(), ss.flatten()
    y = torch.zeros_like(vv, dtype=torch.float32)
    _, p = lq.gaussian_quantize(y, ss.float(), (-vv).float(), mode="ste", zero_center=False,
                                scale_bound=0.0, likelihood_bound=0.0, backend=backend)
    a1, a2 = ((vv - 0.5) / ss).numpy(), ((vv + 0.5) / ss).numpy()
    q1, q2 = scipy.special.ndtr(-a1), scipy.special.ndtr(-a2)
    truth = torch.from_numpy(q1 - q2)
    keep = truth > 1e-37
    err = (p.double() - truth).abs()[keep]
    bound = 1e-6 * torch.from_numpy(q1 + q2)
    if backend == "reference":
        # torch's form rounds the argument x = a/sqrt(2) once more before erfc (and a/s in
        # (1/2 - |v|)/s then -x is exact): a relative argument error of 2 eps moves Q(a) by
        # phi(a) * |a| * 2 eps. Its erfc adds a few ulps of Q.
        phi = lambda a: np.exp(-0.5 * a * a) / np.sqrt(2 * np.pi)  # noqa: E731
        eps32 = 2.0**-24
        extra = 2 * eps32 * (np.abs(a1) * phi(a1) + np.abs(a2) * phi(a2)) + 4 * eps32 * (q1 + q2)
        bound = bound + torch.from_numpy(extra)
    bound = bound[keep]
    assert (err <= bound).all(), (err / bound).max()
