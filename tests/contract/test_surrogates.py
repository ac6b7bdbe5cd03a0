"""docs/spec.md section 1, the surrogates of each mode and the rounding: ste is round half to even
plus the mean, bit for bit, exact at every binade; SUA at T = 0 is ste bit for bit and at T = 1 is
noise up to float rounding, its mean slides linearly from r to round(r); mixed rounds for the
decoder and adds noise for the rate; zero_center=False with noise is CompressAI's y + u."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import DTYPES, make_inputs, same_bits


def with_ties(shape, dtype):
    y, s, m = make_inputs(shape, dtype, seed=3)
    # exact half-integer residuals: round half to even must decide them
    half = (torch.arange(y.numel()) % 9 - 4).reshape(shape).to(dtype) + 0.5
    y = torch.where(torch.arange(y.numel()).reshape(shape) % 3 == 0, m + half, y)
    m[..., 0] = -0.0  # sign of zero of the centre
    return y, s, m


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ste_is_round_half_even_plus_mean(backend, dtype):
    backend.need_dtype(dtype)
    y, s, m = with_ties((5, 7, 11), dtype)
    y_hat, _ = backend.quantize(y, s, m, mode="ste")
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (torch.round(y.to(cdt) - m.to(cdt)) + m.to(cdt)).to(dtype)
    assert same_bits(y_hat, expected)
    # ties occur, and went to even
    r = y.to(cdt) - m.to(cdt)
    ties = r == r.floor() + 0.5
    assert ties.any()
    if dtype in (torch.float32, torch.float64):
        n = torch.round(y_hat.to(cdt) - m.to(cdt))[ties]  # c + n - c is n up to rounding
        assert torch.all(torch.remainder(n, 2) == 0)


def binade_values(dtype):
    """Ties, near-ties and plain values in every binade [2^k, 2^(k+1)) up to 2^24 (float32) or
    2^53 (float64), both signs, plus exact integers above."""
    top = 53 if dtype == torch.float64 else 24
    vals = []
    for k in range(-2, top):
        base = 2.0**k
        ulp = 2.0 ** (k - (52 if dtype == torch.float64 else 23))
        for x in (base, base + 0.5, base + 1.5, base + 2.5, 2 * base - 0.5, 2 * base - ulp,
                  base + ulp, base + 0.5 - ulp, base + 0.5 + ulp):
            vals += [x, -x]
    vals += [0.0, -0.0, 2.0**top + 2, -(2.0**top) - 2, 3.0 * 2.0**top]
    t = torch.tensor(vals, dtype=torch.float64).to(dtype)
    return t[torch.isfinite(t)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rounding_is_exact_at_every_binade(backend, dtype):
    """rint at every magnitude: float32 in [2^22, 2^23) and float64 in [2^51, 2^52) still end in
    .5 and round half to even (floor(x + 0.5) gets them wrong)."""
    backend.need_dtype(dtype)
    y = binade_values(dtype)
    s = torch.ones_like(y)
    for mode in ("ste", "mixed"):
        y_hat, _ = backend.quantize(y, s, mode=mode, seed=3)
        expected = torch.round(y) + 0.0  # y_hat = c + n with c = +0 (no means)
        if backend.is_kernel:
            assert same_bits(y_hat, expected), mode
        else:  # the reference skips the + 0 without means: -0 stays -0
            assert torch.equal(y_hat, expected), mode
    # 2^22 + 1/2 rounds to 2^22 (even), 2^22 + 3/2 to 2^22 + 2
    big = torch.tensor([4194304.5, 4194305.5, -4194304.5], dtype=dtype)
    y_hat, _ = backend.quantize(big, torch.ones_like(big), mode="ste")
    assert y_hat.tolist() == [4194304.0, 4194306.0, -4194304.0]
    # the likelihood sees the rounded residual: exactly 1/2 rounds to 0, a centred bin
    mu = big - 0.5
    _, lik = backend.quantize(big, torch.ones_like(big), mu, mode="ste", likelihood_bound=0.0)
    assert torch.allclose(lik.double(), torch.full((3,), 0.3829249225480262, dtype=torch.float64),
                          rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sua_at_zero_temperature_is_ste_bit_for_bit(backend, dtype):
    backend.need_dtype(dtype)
    y, s, m = with_ties((4, 9, 13), dtype)
    for zc in (True, False):
        a = backend.quantize(y, s, m, mode="sua", temperature=0.0, seed=9, zero_center=zc)
        b = backend.quantize(y, s, m, mode="ste", seed=9, zero_center=zc)
        assert same_bits(a[0], b[0]) and same_bits(a[1], b[1]), zc


def test_sua_at_unit_temperature_is_noise(backend):
    y, s, m = make_inputs((6, 50), torch.float32)
    a = backend.quantize(y, s, m, mode="sua", temperature=1.0, seed=3)
    b = backend.quantize(y, s, m, mode="noise", seed=3)
    # n + (e + u) vs r + u: the same real number, two roundings apart at most
    ulp = torch.finfo(torch.float32).eps * (y.abs() + m.abs() + 1)
    assert ((a[0] - b[0]).abs() <= 2 * ulp).all()


def test_sua_mean_moves_linearly_from_identity_to_rounding(backend):
    """E[r~] = n + T e and spread T std(u), over many noise draws of one latent r = 0.3. The
    seed is fixed, so the draws are too; 3e-3 is 6.5 standard errors of the mean at 400 000 draws
    (std(u) / sqrt(n) = 4.6e-4) and 3.3 at the interpreter's 100 000 (numpy is slow), while a
    surrogate without the T factor on e, or without the noise, is off by 0.07 or more."""
    n, tol = (100_000, 3e-3) if backend.is_interpreter else (400_000, 3e-3)
    r = torch.full((n,), 0.3)
    s = torch.ones_like(r)
    for t in (0.0, 0.25, 0.5, 1.0):
        y_hat, _ = backend.quantize(r, s, mode="sua", temperature=t, seed=11)
        assert abs(y_hat.mean().item() - t * 0.3) < tol
        assert abs(y_hat.std().item() - t / 12**0.5) < tol


def test_mixed_rate_uses_noise_and_decoder_rounds(backend):
    y, s, m = make_inputs((3, 40), torch.float32)
    mixed = backend.quantize(y, s, m, mode="mixed", seed=5)
    noise = backend.quantize(y, s, m, mode="noise", seed=5)
    ste = backend.quantize(y, s, m, mode="ste", seed=5)
    assert torch.equal(mixed[0], ste[0]) and torch.equal(mixed[1], noise[1])


def test_noise_without_zero_center_is_y_plus_u(backend):
    """CompressAI's quantize(y, "noise"): y_hat = y + u, one float32 addition."""
    y, s, m = make_inputs((4, 33), torch.float32)
    y_hat, _ = backend.quantize(y, s, m, mode="noise", zero_center=False, seed=21)
    assert same_bits(y_hat, y + lq.uniform_noise(y.shape, 21))
