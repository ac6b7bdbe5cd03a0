"""docs/spec.md section 9 on the GPU backends: the CUDA and Triton EntropyBottleneck kernels give
the C++ CPU kernel's bits. They run eb_math.h's per-element float32 math in the same order
(explicit fmas, nothing contracted), take the channel constants softplus(M), tanh(F) in float64
rounded once, and add the parameter-gradient terms in the CPU kernel's order (lanes of 32-element
blocks within 4096-element chunks of a channel, lanes then chunks summed in float64), so z_hat,
the likelihoods and every gradient are equal bit for bit, edge values and the canonical NaN
included, in every mode, dtype and layer count. The channel constants and the chain rule go
through float64 exp/log1p/tanh, whose last bits may differ between glibc, CUDA and torch; rounded
to float32 they agree (they would differ only within 2^-29 of a rounding boundary).

Anchor: the C++ CPU kernels (`cpu_backend`); `other_kernel` is cuda, triton and
triton-interpreter, each skipped where this machine lacks it. Triton's interpreter takes about a
second per 32-element block of the backward with the default five layers: the cases are small,
and the one case with several chunks per channel has a single layer.
"""
from __future__ import annotations

import pytest
import torch

import lic_quant as lq
from helpers import assert_same_bits

MODES = ("noise", "ste", "mixed", "sua")


def eb_params(channels, filters=(3, 3, 3, 3), dtype=torch.float32, seed=0):
    """Parameters of the magnitudes a trained prior has (matrices around softplus^-1 of
    init_scale^(1/L), biases and factors of both signs), plus edge values: a large matrix entry
    (softplus' threshold), a -0 bias, a large factor."""
    g = torch.Generator().manual_seed(seed)
    f = (1, *filters, 1)
    matrices, biases, factors = [], [], []
    for i in range(len(f) - 1):
        matrices.append(torch.randn(channels, f[i + 1], f[i], generator=g, dtype=torch.float64))
        biases.append(torch.randn(channels, f[i + 1], 1, generator=g, dtype=torch.float64) * 2)
        if i < len(f) - 2:
            factors.append(torch.randn(channels, f[i + 1], 1, generator=g, dtype=torch.float64))
    matrices[0][0, 0, 0] = 25.0
    biases[-1][-1, 0, 0] = -0.0
    if factors:
        factors[0][-1, 0, 0] = 30.0
    cast = lambda ts: [t.to(dtype) for t in ts]  # noqa: E731
    return cast(matrices), cast(biases), cast(factors)


def eb_inputs(shape, dtype, seed=1):
    """z with edge values (NaN, infinities, huge, half-integers about the median, signed zeros),
    medians, and upstream gradients of both signs."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    # in channel 0 only, so that the other channels' parameter gradients stay finite
    edges = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 2.5, -0.5, 0.5, -0.0,
                          0.0, 60.0, -60.0, 7.5], dtype=torch.float64)
    channel0 = z[:, 0].reshape(-1)
    channel0[:len(edges)] = edges[:channel0.numel()]
    z[:, 0] = channel0.view(z[:, 0].shape)
    medians = torch.randn(shape[1], generator=g, dtype=torch.float64) * 0.5
    medians[0] = 0.0
    g_zhat = torch.randn(shape, generator=g, dtype=torch.float64)
    g_lik = torch.randn(shape, generator=g, dtype=torch.float64)
    lik_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return z.to(dtype), medians.to(dtype), g_zhat.to(dtype), g_lik.to(lik_dtype)


def eb_ops(backend):
    if backend.is_triton:
        return (torch.ops.lic_quant.triton_entropy_bottleneck_forward,
                torch.ops.lic_quant.triton_entropy_bottleneck_backward)
    return (torch.ops.lic_quant.entropy_bottleneck_forward,
            torch.ops.lic_quant.entropy_bottleneck_backward)


def run_ops(backend, z, medians, params, g_zhat, g_lik, *, mode, seed=3, temperature=0.7,
            likelihood_bound=1e-9, mask=(True, True, True, True)):
    """The forward and backward ops of `backend` on its device; every output back on the CPU."""
    fwd, bwd = eb_ops(backend)
    dev = backend.device
    m, b, f = ([t.to(dev) for t in ts] for ts in params)
    seed_t = torch.tensor(seed, dtype=torch.int64, device=dev)
    temp_t = torch.tensor(temperature, dtype=torch.float64, device=dev)
    z, medians, g_lik = z.to(dev), medians.to(dev), g_lik.to(dev)
    g_zhat = g_zhat.to(dev) if g_zhat is not None else None
    z_hat, lik = fwd(z, medians, m, b, f, seed_t, temp_t, mode, likelihood_bound)
    g_z, g_m, g_b, g_f = bwd(g_zhat, g_lik, z, medians, m, b, f, seed_t, temp_t, mode,
                             likelihood_bound, list(mask))
    out = {"z_hat": z_hat, "likelihoods": lik, "grad_z": g_z}
    for name, grads in (("matrices", g_m), ("biases", g_b), ("factors", g_f)):
        for i, g in enumerate(grads):
            out[f"grad_{name}[{i}]"] = g
    return {k: v.cpu() for k, v in out.items()}


def assert_same(cpu_out, other_out, label):
    assert cpu_out.keys() == other_out.keys(), (label, cpu_out.keys(), other_out.keys())
    for name in cpu_out:
        assert_same_bits(other_out[name], cpu_out[name], f"{label}: {name}")


def compare(cpu, other, shape, dtype, *, filters=(3, 3, 3, 3), with_gzhat=True, **kw):
    other.need_dtype(dtype)
    z, medians, g_zhat, g_lik = eb_inputs(shape, dtype)
    params = eb_params(shape[1], filters, dtype)
    g_zhat = g_zhat if with_gzhat else None
    want = run_ops(cpu, z, medians, params, g_zhat, g_lik, **kw)
    got = run_ops(other, z, medians, params, g_zhat, g_lik, **kw)
    assert_same(want, got, f"{other.id} {dtype} {shape} filters={filters} {kw}")


@pytest.mark.parametrize("mode", MODES)
def test_modes_float32(cpu_backend, other_kernel, mode):
    """Five layers (CompressAI's default filters), 2 channels, a partial block per channel."""
    compare(cpu_backend, other_kernel, (2, 2, 3, 5), torch.float32, mode=mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(cpu_backend, other_kernel, dtype):
    compare(cpu_backend, other_kernel, (2, 2, 4, 3), dtype, mode="mixed")


@pytest.mark.parametrize("filters", [(), (3,), (3, 3)])
def test_layer_counts(cpu_backend, other_kernel, filters):
    compare(cpu_backend, other_kernel, (3, 2, 5), torch.float32, filters=filters, mode="sua",
            temperature=0.0 if filters == (3,) else 0.4)


def test_output_masks_and_bound(cpu_backend, other_kernel):
    """No g_zhat, only some gradients asked for, a likelihood bound that clips."""
    compare(cpu_backend, other_kernel, (2, 2, 9), torch.float32, filters=(3, 3), mode="noise",
            with_gzhat=False, likelihood_bound=0.05, mask=(True, False, True, False))
    compare(cpu_backend, other_kernel, (2, 2, 9), torch.float32, filters=(3, 3), mode="noise",
            mask=(False, True, False, True))


def test_several_chunks(cpu_backend, other_kernel):
    """A channel of more than 4096 elements: three chunks, the last one partial, and samples
    that end inside a block; one layer keeps the interpreter's time down."""
    compare(cpu_backend, other_kernel, (3, 2, 2900), torch.float32, filters=(), mode="mixed")


def test_api_and_module(cpu_backend, other_kernel):
    """lq.entropy_bottleneck(backend=...) and lic_quant.nn.EntropyBottleneck give the CPU
    kernels' values and gradients through autograd (the Triton route flattens the parameter lists
    for its autograd.Function)."""
    z, medians, g_zhat, g_lik = eb_inputs((2, 3, 2, 2), torch.float32)
    z = z.nan_to_num(posinf=9.0, neginf=-9.0, nan=0.5)
    params = eb_params(3, (3, 3), torch.float32)

    def run(b):
        leaves = [t.detach().clone().to(b.device).requires_grad_() for ts in params for t in ts]
        zz = z.to(b.device).requires_grad_()
        m, bb, f = leaves[:3], leaves[3:6], leaves[6:]
        z_hat, lik = lq.entropy_bottleneck(zz, medians.to(b.device), m, bb, f, mode="mixed",
                                           seed=5, temperature=1.0, backend=b.name)
        loss = (z_hat * g_zhat.to(b.device)).sum() + (lik * g_lik.to(b.device)).sum()
        grads = torch.autograd.grad(loss, [zz, *leaves])
        return [t.detach().cpu() for t in (z_hat, lik, *grads)]

    for i, (w, g) in enumerate(zip(run(cpu_backend), run(other_kernel))):
        assert_same_bits(g, w, f"{other_kernel.id} output {i}")

    nn = pytest.importorskip("lic_quant.nn")
    try:
        module = nn.EntropyBottleneck(3, filters=(3, 3), backend=other_kernel.name)
    except RuntimeError as exc:  # no compressai
        pytest.skip(str(exc))
    module = module.to(other_kernel.device).train()
    zz = z.to(other_kernel.device).requires_grad_()
    z_hat, lik = module(zz)
    (-torch.log2(lik).sum() + z_hat.square().sum()).backward()
    assert zz.grad is not None and torch.isfinite(zz.grad).all()
    assert all(p.grad is not None for n_, p in module.named_parameters() if "quantiles" not in n_)


def test_deterministic(other_kernel):
    """Two runs give the same bits (no atomics: ordered per-channel sums)."""
    z, medians, g_zhat, g_lik = eb_inputs((2, 2, 40), torch.float32)
    params = eb_params(2, (3,), torch.float32)
    a = run_ops(other_kernel, z, medians, params, g_zhat, g_lik, mode="noise")
    b = run_ops(other_kernel, z, medians, params, g_zhat, g_lik, mode="noise")
    assert_same(a, b, f"{other_kernel.id} run twice")
