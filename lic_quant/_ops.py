"""Loads the compiled ops (lic_quant._C) and registers their fake kernels and autograd.

The ops themselves (schemas in csrc/ops.cpp) take the seed and the temperature as 0-dim tensors
on y's device, so a CUDA graph or a compiled graph can be fed fresh values without recompiling.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.lic_quant.* for CPU and, if built, CUDA)

    EXTENSION_ERROR: Exception | None = None
except ImportError as exc:  # the package still works with backend="reference"
    EXTENSION_ERROR = exc


def extension_available() -> bool:
    return EXTENSION_ERROR is None


# Read once at import: a plain bool, so torch.compile traces the API's backend choice without a
# graph break (the dispatcher query itself is not traceable).
_CUDA_KERNELS_BUILT = EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "lic_quant::quantize_forward", "CUDA")


def cuda_kernels_built() -> bool:
    """True when the extension was compiled with the CUDA sources (independent of a GPU present)."""
    return _CUDA_KERNELS_BUILT


def _likelihood_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def autograd_for(backward_op):
    """(backward, setup_context) for a forward op with the quantize_forward schema whose backward
    op (a callable returning it, resolved at call time) has the quantize_backward schema."""

    def setup_context(ctx, inputs, output):
        y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound, zero_center = inputs
        # Only the inputs, the seed and the temperature are kept: the backward recomputes the
        # noise (SPEC section 2).
        ctx.save_for_backward(y, scales, means, seed, temperature)
        ctx.has_means = means is not None
        ctx.args = (mode, scale_bound, likelihood_bound, zero_center)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y_hat, grad_likelihoods):
        y, scales, means, seed, temperature = ctx.saved_tensors
        need_y, need_scales = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_means = ctx.has_means and ctx.needs_input_grad[2]
        if grad_likelihoods is None:
            # Only y_hat was used: its gradient is the identity, and mu and sigma get none.
            grad_y = grad_y_hat if (need_y and grad_y_hat is not None) else None
            return grad_y, None, None, None, None, None, None, None, None
        gy, gs, gm = backward_op()(
            grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, *ctx.args,
            [need_y, need_scales, need_means])
        return (gy if need_y else None, gs if need_scales else None, gm if need_means else None,
                None, None, None, None, None, None)

    return backward, setup_context


if extension_available():

    @torch.library.register_fake("lic_quant::quantize_forward")
    def _quantize_forward_fake(y, scales, means, seed, temperature, mode, scale_bound,
                               likelihood_bound, zero_center):
        torch._check(scales.shape == y.shape, lambda: "lic_quant: scales must have the shape of y")
        y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        lik = torch.empty(y.shape, dtype=_likelihood_dtype(y.dtype), device=y.device)
        return y_hat, lik

    @torch.library.register_fake("lic_quant::quantize_backward")
    def _quantize_backward_fake(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature,
                                mode, scale_bound, likelihood_bound, zero_center, output_mask):
        def grad(needed):
            shape = y.shape if needed else (0,)
            return torch.empty(shape, dtype=y.dtype, device=y.device)

        return grad(output_mask[0]), grad(output_mask[1]), grad(output_mask[2])

    @torch.library.register_fake("lic_quant::uniform_noise")
    def _uniform_noise_fake(seed, size):
        return torch.empty(size, dtype=torch.float32, device=seed.device)

    _backward, _setup_context = autograd_for(lambda: torch.ops.lic_quant.quantize_backward)
    torch.library.register_autograd("lic_quant::quantize_forward", _backward,
                                    setup_context=_setup_context)
