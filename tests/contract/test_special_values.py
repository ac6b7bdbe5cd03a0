"""docs/spec.md section 1, numerical guarantees at the edges: NaN propagates with one bit pattern,
huge residuals keep the likelihoods and gradients finite, very large and very small scales
(including sigma = inf and sigma = 0) give finite gradients instead of NaN."""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import DTYPES, make_inputs

MODES = lq.MODES


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates(backend, mode, dtype):
    """A NaN in y, scales or means gives NaN in the likelihood, y_hat (where y or the lattice
    centre mu is NaN) and the gradient of that input, and leaves every other element finite."""
    backend.need_dtype(dtype)
    y, s, m = make_inputs((3, 8), dtype, seed=2)
    nan = float("nan")
    y[0, 1], s[1, 2], m[2, 3] = nan, nan, nan
    leaves = [t.clone().requires_grad_() for t in (y, s, m)]
    y_hat, lik = backend.quantize(*leaves, mode=mode, seed=4, temperature=0.3)
    gy, gs, gm = torch.autograd.grad((y_hat.double().sum(), lik.double().sum()), leaves)
    for t in (lik[0, 1], lik[1, 2], lik[2, 3], y_hat[0, 1], y_hat[2, 3]):
        assert torch.isnan(t)
    for g, (i, j) in zip((gy, gs, gm), ((0, 1), (1, 2), (2, 3))):
        assert torch.isnan(g[i, j])
    finite = torch.ones(y.shape, dtype=torch.bool)
    finite[0, 1] = finite[1, 2] = finite[2, 3] = False
    for t in (lik, y_hat, gy, gs, gm):
        assert torch.isfinite(t[finite]).all()


def nan_bits(t):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return set(t.detach().view(ints)[torch.isnan(t)].tolist())


CANONICAL = {torch.float32: {0x7FFFFFFF}, torch.float64: {0x7FFFFFFFFFFFFFFF},
             torch.float16: {0x7FFF}, torch.bfloat16: {0x7FFF}}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_outputs_have_one_bit_pattern(kernel_backend, dtype):
    """Whatever the sign or payload of the input NaN, the kernels write the canonical NaN (the
    reference writes whatever torch's operators produce, so it is not held to this)."""
    kernel_backend.need_dtype(dtype)
    neg_nan = torch.tensor([-float("nan")]).to(dtype)
    payload = torch.tensor([0x7FC00123], dtype=torch.int32).view(torch.float32).to(dtype)
    y = torch.tensor([float("nan"), 1.0, 0.5, 2.0, float("inf"), 1.0]).to(dtype)
    y[1], y[3] = neg_nan[0], payload[0]
    s = torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0]).to(dtype)
    m = torch.tensor([0.0, 0.0, 0.0, 0.0, float("inf"), -float("nan")]).to(dtype)
    leaves = [t.clone().requires_grad_(True) for t in (y, s, m)]
    for mode in MODES:
        y_hat, lik = kernel_backend.quantize(*leaves, mode=mode, seed=2)
        gy, gs, gm = torch.autograd.grad((y_hat.double().sum(), lik.double().sum()), leaves)
        for out in (y_hat, lik, gy, gs, gm):
            assert torch.isnan(out).any()
            assert nan_bits(out) == CANONICAL[out.dtype], (mode, out.dtype, nan_bits(out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_finite_likelihoods_and_gradients_up_to_the_float_maximum(kernel_backend, dtype):
    """For finite inputs the likelihoods lie in [b_p, 1] and all gradients are finite, however
    large |v| and s are (a product u phi(u) is 0 where phi underflows, never inf * 0). The
    reference is the readable formula, not hardened: only the kernels promise this."""
    kernel_backend.need_dtype(dtype)
    fmax = torch.finfo(dtype).max
    mags = [0.0, 0.3, 0.5, 1.0, 7.0, 1e4, 1e10, 1e30, 1e38, fmax / 2, fmax]
    scales = [0.11, 0.5, 3.0, 1e3, 1e10, 1e30, 1e38, fmax]
    yy, ss = torch.meshgrid(torch.tensor(mags, dtype=torch.float64),
                            torch.tensor(scales, dtype=torch.float64), indexing="ij")
    y = torch.cat([yy.flatten(), -yy.flatten()]).to(dtype)
    s = torch.cat([ss.flatten(), ss.flatten()]).to(dtype)
    for mode in MODES:
        leaves = [y.clone().requires_grad_(True), s.clone().requires_grad_(True)]
        y_hat, lik = kernel_backend.quantize(*leaves, mode=mode, seed=11, temperature=0.5)
        assert torch.isfinite(lik).all() and (lik >= 1e-9).all() and (lik <= 1).all()
        loss = -lik.log2().sum() + y_hat.double().sum()
        gy, gs = torch.autograd.grad(loss, leaves)
        assert torch.isfinite(gy).all() and torch.isfinite(gs).all(), mode


def test_huge_negative_latent_has_zero_gradients(kernel_backend):
    """(|v| +- 1/2) / s overflows float32 here: u phi(u) must be 0, not inf * 0."""
    y = torch.tensor([-1e38], requires_grad=True)
    s = torch.tensor([0.11], requires_grad=True)
    _, lik = kernel_backend.quantize(y, s, mode="ste")
    (-lik.log2().sum()).backward()
    assert s.grad.item() == 0.0 and y.grad.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_infinite_and_zero_scales(kernel_backend, dtype):
    """sigma = inf: p below 1e-37, so P = b_p, and finite gradients. sigma = 0 and sigma below
    2^-125 with scale_bound = 0: s is held at the smallest scale whose reciprocal is exact, so
    the bin around v = 0 holds all the mass (p = 1), one bin away none, gradients finite."""
    kernel_backend.need_dtype(dtype)
    b_p = 1e-9
    y = torch.tensor([0.3, 2.0, 0.3, 0.3, 1.3, -0.2], dtype=dtype, requires_grad=True)
    s = torch.tensor([float("inf"), float("inf"), 0.0, 1e-42, 0.0, 1e-42], dtype=dtype,
                     requires_grad=True)
    _, lik = kernel_backend.quantize(y, s, mode="ste", scale_bound=0.0, likelihood_bound=b_p)
    want_bp = torch.tensor(b_p, dtype=lik.dtype)
    assert lik[0] == want_bp and lik[1] == want_bp
    assert lik[2] == 1 and lik[3] == 1 and lik[5] == 1
    assert lik[4] == want_bp  # v = 1, s tiny: the bin holds nothing
    gy, gs = torch.autograd.grad(-lik.log2().sum(), (y, s))
    assert torch.isfinite(gy).all() and torch.isfinite(gs).all()
