"""The providers every benchmark compares, on one footing: same inputs, same upstream gradients.

- eager:    the reference math in eager PyTorch, with the noise drawn the way CompressAI users do
            (torch.rand_like), i.e. what a training step runs today;
- compiled: the same function under torch.compile (inductor);
- fused:    lic_quant's fused op (C++ on CPU tensors, CUDA on CUDA tensors; or backend=...).
Forward+backward feeds fixed upstream gradients: g_yhat ~ N(0, 1) and g_P = -1/P, the gradient of
the usual rate term -log P (so it is negative everywhere, as in training).
"""
from __future__ import annotations

import torch

import lic_quant as lq
from lic_quant.reference import gaussian_quantize_reference

MODE = "mixed"


def make_case(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
    scales = (torch.rand(shape, generator=g) * 2 + 0.05).to(device=device, dtype=dtype)
    means = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    _, lik = lq.gaussian_quantize(y, scales, means, mode=MODE, seed=1, backend="reference")
    g_yhat = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    g_lik = (-1.0 / lik).detach()
    return y, scales, means, g_yhat, g_lik


def eager_fn(mode=MODE, temperature=0.5):
    def fn(y, scales, means):
        u = torch.rand_like(y, dtype=torch.float32) - 0.5 if mode != "ste" else None
        return gaussian_quantize_reference(y, scales, means, u, mode=mode, temperature=temperature)
    return fn


def fused_fn(mode=MODE, temperature=0.5, backend="auto"):
    def fn(y, scales, means):
        return lq.gaussian_quantize(y, scales, means, mode=mode, temperature=temperature,
                                    backend=backend)
    return fn


def providers(mode=MODE, backends=("auto",)):
    out = {"eager": eager_fn(mode), "compiled": torch.compile(eager_fn(mode))}
    for b in backends:
        out["fused" if b == "auto" else f"fused-{b}"] = fused_fn(mode, backend=b)
    return out


def forward_step(fn, case):
    y, scales, means, _, _ = case
    with torch.no_grad():
        return fn(y, scales, means)


def train_step(fn, case):
    """Forward and backward into all three inputs."""
    y, scales, means, g_yhat, g_lik = case
    leaves = [t.detach().requires_grad_() for t in (y, scales, means)]
    y_hat, lik = fn(*leaves)
    torch.autograd.backward([y_hat, lik], [g_yhat, g_lik])
    return leaves[0].grad
