"""The readable pure-PyTorch implementation of docs/spec.md sections 1-2: the yardstick of every
test.

It takes the noise explicitly (``lic_quant.uniform_noise`` gives the exact u the kernels draw) and
gets its gradients from autograd, with the two straight-through pieces written as small autograd
functions: the quantization offset is a constant (partial stop-gradient), and both lower bounds
pass the gradient where x >= bound or where the gradient points up (CompressAI's LowerBound).
"""
from __future__ import annotations

import math

import torch

from ._checks import FAMILIES, MODES, check_choice, likelihood_dtype


class _StraightThrough(torch.autograd.Function):
    """Forward: `value` (bit for bit). Backward: the gradient goes to `source` unchanged."""

    @staticmethod
    def forward(value, source):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return None, grad


class _LowerBound(torch.autograd.Function):
    """max(x, bound) with CompressAI's identity-if-towards gradient; NaN propagates both ways."""

    @staticmethod
    def forward(x, bound):
        return torch.clamp_min(x, bound)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bound = inputs
        ctx.save_for_backward(x)
        ctx.bound = bound

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return passes.to(grad.dtype) * grad, None


def straight_through(value: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(value.detach(), source)


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def surrogate(mode: str, r: torch.Tensor, u: torch.Tensor | None, temperature):
    """(r~_R, r~_D): the quantization surrogates of docs/spec.md section 1, values only (no
    gradient)."""
    n = torch.round(r)
    if mode == "noise":
        return r + u, r + u
    if mode == "ste":
        return n, n
    if mode == "mixed":
        return r + u, n
    if mode == "sua":
        if isinstance(temperature, torch.Tensor):
            # One value (docs/spec.md section 1): as a 0-dim tensor, so that its own shape
            # (e.g. [[T]]) cannot broadcast the outputs beyond y's shape.
            t = temperature.reshape(())
            annealed = torch.where(t == 0, n, n + t.to(r.dtype) * ((r - n) + u))
        elif temperature == 0:
            annealed = n  # rounding bit for bit, sign of zero included
        else:
            annealed = n + temperature * ((r - n) + u)
        return annealed, annealed
    check_choice("mode", mode, MODES)


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.special.erfc(x * -(1.0 / math.sqrt(2.0)))


compute_dtype = likelihood_dtype  # float32 compute for reduced precision, float64 for float64


def gaussian_quantize_reference(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    *,
    mode: str = "sua",
    temperature=1.0,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
    zero_center: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, likelihoods) of docs/spec.md section 1 for explicit noise u (needed unless
    mode='ste')."""
    check_choice("mode", mode, MODES)
    if mode != "ste" and noise is None:
        raise ValueError(f"lic_quant: noise is required for mode={mode!r}")
    cdt = compute_dtype(y.dtype)
    yc = y.to(cdt)
    s = lower_bound(scales.to(cdt), scale_bound)
    mu = means.to(cdt) if means is not None else None
    u = noise.to(cdt) if noise is not None else None

    c = mu if (zero_center and mu is not None) else None
    r = yc - c if c is not None else yc
    rate_value, dist_value = surrogate(mode, r.detach(), u, temperature)
    rate = straight_through(rate_value, r)
    dist = straight_through(dist_value, r)

    y_hat = c + dist if c is not None else dist
    v = rate - mu if (not zero_center and mu is not None) else rate
    av = v.abs()
    p = standard_normal_cdf((0.5 - av) / s) - standard_normal_cdf((-0.5 - av) / s)
    likelihoods = lower_bound(p, likelihood_bound)
    return y_hat.to(y.dtype), likelihoods


def quantize_reference(y, scales, means=None, noise=None, *, family: str = "gaussian",
                       **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, likelihoods) of docs/spec.md section 6 for a likelihood `family`; settings as
    gaussian_quantize_reference."""
    check_choice("family", family, FAMILIES)
    return gaussian_quantize_reference(y, scales, means, noise, **settings)
