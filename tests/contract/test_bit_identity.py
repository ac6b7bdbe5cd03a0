"""docs/spec.md section 1: the kernel backends agree bit for bit. The CUDA and Triton kernels run
the C++ CPU kernels' per-element float32 math with only IEEE +, -, *, / and selects, uncontracted
(csrc/lic_quant/normal_dist.h), and the same noise (section 3), so for float16, bfloat16 and
float32 inputs y_hat, the likelihoods and all gradients equal the CPU kernels' bit for bit, edge
values and NaN (one canonical pattern) included. float64 uses each platform's erfc/exp (glibc vs
CUDA's libdevice, both within a few ulps): there y_hat is bit for bit and the rest within the
float64 rounding bound of tests/helpers.py.
"""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import (EPS, LIKELIHOOD_BOUND as LB, SCALE_BOUND as SB, assert_same_bits,
                     error_bounds, fuzz_inputs, fuzz_seed, lik_dtype, make_inputs, make_upstream,
                     rate_residual64, run, special_inputs)

SHAPE = (3, 5, 7, 11)
NAMES = ("y_hat", "likelihoods", "grad_y", "grad_scales", "grad_means")


def _both(cpu, other, y, s, m, g_yhat, g_lik, **kw):
    kw = dict(dict(scale_bound=SB, likelihood_bound=LB), **kw)
    a = run(cpu.fn(**kw), y, s, m, g_yhat, g_lik)
    b = run(other.fn(**kw), y, s, m, g_yhat, g_lik)
    return [a[0], a[1], *a[2]], [b[0], b[1], *b[2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=str)
@pytest.mark.parametrize("with_means", [True, False])
@pytest.mark.parametrize("zero_center", [True, False])
@pytest.mark.parametrize("mode", lq.MODES)
def test_same_bits_as_the_cpu_kernels(other_kernel, cpu_backend, mode, zero_center, with_means,
                                      dtype):
    other_kernel.need_dtype(dtype)
    kw = dict(mode=mode, zero_center=zero_center, seed=-123456789012345, temperature=0.37)
    if dtype != torch.float64:
        y, s, m = special_inputs(SHAPE, dtype, with_means)
        g_yhat, g_lik = make_upstream(SHAPE, dtype, lik_dtype(dtype), seed=3)
        a, b = _both(cpu_backend, other_kernel, y, s, m, g_yhat, g_lik, **kw)
        for name, x, z in zip(NAMES, a, b):
            assert_same_bits(z, x, name)
        return
    # float64: libm differs by a few ulps between glibc and CUDA; y_hat is still bit for bit
    y, s, m = make_inputs(SHAPE, dtype, seed=21, with_means=with_means)
    g_yhat, g_lik = make_upstream(SHAPE, dtype, dtype, seed=22)
    a, b = _both(cpu_backend, other_kernel, y, s, m, g_yhat, g_lik, **kw)
    assert_same_bits(b[0], a[0], "y_hat")
    u = lq.uniform_noise(SHAPE, kw["seed"]).double() if mode != "ste" else None
    v = rate_residual64(y, m, u, mode, zero_center, kw["temperature"])
    err_p, err_gv, err_gs, ambiguous = error_bounds(y, s, m, u, v, g_lik, EPS[dtype],
                                                    scale_bound=SB, likelihood_bound=LB)
    ambiguous &= g_lik >= 0
    assert ((a[1] - b[1]).abs() <= err_p).all(), "likelihoods"
    gabs = EPS[dtype] * g_yhat.abs()
    for name, x, z, tol in zip(NAMES[2:], a[2:], b[2:], (err_gv + gabs, err_gs, err_gv + gabs)):
        if x is None:
            assert z is None, name
            continue
        assert (((x - z).abs() <= tol) | ambiguous).all(), name


@pytest.mark.parametrize("mode", lq.MODES)
def test_same_bits_with_all_negative_upstream(other_kernel, cpu_backend, mode):
    """g_P < 0 everywhere (loss = -log P): the kernels skip recomputing p for the bound."""
    y, s, m = special_inputs(SHAPE, torch.float32)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=5)
    g_lik = -g_lik.abs() - 1e-3
    a, b = _both(cpu_backend, other_kernel, y, s, m, g_yhat, g_lik, mode=mode, seed=17)
    for name, x, z in zip(NAMES, a, b):
        assert_same_bits(z, x, name)


def test_same_bits_for_partial_gradients(other_kernel, cpu_backend):
    """Only some gradients requested, no gradient for y_hat, and a likelihood bound of 0."""
    y, s, m = special_inputs(SHAPE, torch.float32)
    _, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=4)
    for requires in ((True, False, False), (False, True, False), (False, False, True)):
        res = []
        for be in (cpu_backend, other_kernel):
            # fresh leaves per backend: gradients must not accumulate across the two
            leaves = [t.detach().clone().requires_grad_(r) for t, r in zip((y, s, m), requires)]
            _, lik = be.quantize(*leaves, mode="mixed", seed=8, likelihood_bound=0.0)
            lik.backward(g_lik)
            res.append([t.grad for t in leaves])
        for name, x, z in zip(NAMES[2:], *res):
            assert_same_bits(z, x, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", lq.MODES)
def test_same_bits_on_the_fuzz_inputs(other_kernel, cpu_backend, mode, dtype):
    """The extreme inputs of test_accuracy.py's fuzz (magnitudes to the float maximum,
    subnormals, ties, scales below the bound and to the maximum), gradients included. The
    interpreter takes a slice (numpy is slow)."""
    n = 4096 if other_kernel.is_interpreter else 25_000
    y, s, m = fuzz_inputs(n, dtype, seed=fuzz_seed(mode, dtype))
    g_yhat = torch.ones_like(y)
    _, g_lik = make_upstream(y.shape, dtype, torch.float32, seed=9)
    a, b = _both(cpu_backend, other_kernel, y, s, m, g_yhat, g_lik, mode=mode, seed=77,
                 temperature=0.375)
    for name, x, z in zip(NAMES, a, b):
        assert_same_bits(z, x, name)


def test_cuda_and_triton_same_bits(cuda_and_triton):
    """The two GPU backends against each other on the same CUDA tensors."""
    cuda, triton = cuda_and_triton
    y, s, m = special_inputs(SHAPE, torch.float32)
    g_yhat, g_lik = make_upstream(SHAPE, torch.float32, torch.float32, seed=3)
    for mode in lq.MODES:
        a, b = _both(cuda, triton, y, s, m, g_yhat, g_lik, mode=mode, seed=5)
        for name, x, z in zip(NAMES, a, b):
            assert_same_bits(z, x, f"{mode} {name}")
