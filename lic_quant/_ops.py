"""Loads the compiled ops (lic_quant._C) and registers their fake kernels.

The ops themselves (schemas in csrc/ops.cpp) take the seed and the temperature as 0-dim tensors
on y's device, so a CUDA graph or a compiled graph can be fed fresh values without recompiling.
Their autograd is C++ (csrc/autograd.cpp, registered for the Autograd key).
"""
from __future__ import annotations

import importlib
import warnings

import torch

from ._checks import (check_call, check_eb_call, check_mixture_call, component_layout,
                      likelihood_dtype, rate_shape)

try:
    # import_module, not `from . import _C`: when the .so is missing, the latter reports
    # "cannot import name '_C' from partially initialized module (circular import)", which hides
    # the real reason (no compiled module in this directory, or one that fails to load).
    _C = importlib.import_module("._C", __package__)  # registers torch.ops.lic_quant.*

    EXTENSION_ERROR: Exception | None = None
    # The eager forward entered once from Python (csrc/ops.cpp), used by lic_quant.api.
    EAGER_ENTRY = _C.quantize_eager
except ImportError as exc:  # the package still works with backend="reference"
    _C = None
    EXTENSION_ERROR = exc
    EAGER_ENTRY = None

BUILD_HINT = ("build it with `pip install --no-build-isolation .` (or, in a checkout, "
              "`python setup.py build_ext --inplace`)")


def extension_available() -> bool:
    return EXTENSION_ERROR is None


def missing_extension_message() -> str:
    """Why the C++/CUDA kernels are unavailable, and how to get them."""
    return (f"lic_quant's compiled extension lic_quant._C did not load "
            f"({type(EXTENSION_ERROR).__name__}: {EXTENSION_ERROR}); {BUILD_HINT}")


_WARNED_FALLBACK = False


def warn_reference_fallback() -> None:
    """backend="auto" without the extension runs the pure-PyTorch reference: say so, once."""
    global _WARNED_FALLBACK
    if not _WARNED_FALLBACK:
        _WARNED_FALLBACK = True
        warnings.warn(f"{missing_extension_message()}. backend='auto' runs the slow pure-PyTorch "
                      f"reference instead (pass backend='reference' to silence this).",
                      RuntimeWarning, stacklevel=3)


# Read once at import: a plain bool, so torch.compile traces the API's backend choice without a
# graph break (the dispatcher query itself is not traceable).
_CUDA_KERNELS_BUILT = EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "lic_quant::quantize_forward", "CUDA")


def cuda_kernels_built() -> bool:
    """True when the extension was compiled with the CUDA sources (independent of a GPU present)."""
    return _CUDA_KERNELS_BUILT


def parameter_grad(t: torch.Tensor, needed: bool) -> torch.Tensor:
    """The gradient buffer of mixture parameter t, as csrc/cpu/mixture_cpu.cpp's grad_like and the
    Triton mixture op allocate it: t's strides where the kernels read t in place and t is dense
    (the gradient of a view flows back through the view's backward without a copy), contiguous
    otherwise; empty when not needed."""
    if not needed:
        return torch.empty((0,), dtype=t.dtype, device=t.device)
    from torch._prims_common import is_non_overlapping_and_dense_or_false as dense

    if component_layout(t) is not None and dense(t):
        return torch.empty_like(t)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


if extension_available():

    @torch.library.register_fake("lic_quant::quantize_forward")
    def _quantize_forward_fake(y, scales, means, seed, temperature, mode, scale_bound,
                               likelihood_bound, zero_center, family="gaussian", rate=False):
        check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, zero_center,
                   rate)
        y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        lik = torch.empty(rate_shape(y) if rate else y.shape, dtype=likelihood_dtype(y.dtype),
                          device=y.device)
        return y_hat, lik

    @torch.library.register_fake("lic_quant::quantize_backward")
    def _quantize_backward_fake(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature,
                                mode, scale_bound, likelihood_bound, zero_center, output_mask,
                                family="gaussian", rate=False):
        def grad(needed):
            shape = y.shape if needed else (0,)
            return torch.empty(shape, dtype=y.dtype, device=y.device)

        return grad(output_mask[0]), grad(output_mask[1]), grad(output_mask[2])

    @torch.library.register_fake("lic_quant::uniform_noise")
    def _uniform_noise_fake(seed, size):
        return torch.empty(size, dtype=torch.float32, device=seed.device)

    @torch.library.register_fake("lic_quant::mixture_quantize_forward")
    def _mixture_forward_fake(y, scales, means, weights, seed, temperature, mode, scale_bound,
                              likelihood_bound, zero_center, family, weights_are_logits):
        check_mixture_call(y, scales, means, weights, family, weights_are_logits, mode,
                           scale_bound, likelihood_bound, zero_center)
        return (torch.empty(y.shape, dtype=y.dtype, device=y.device),
                torch.empty(y.shape, dtype=likelihood_dtype(y.dtype), device=y.device))

    @torch.library.register_fake("lic_quant::mixture_quantize_backward")
    def _mixture_backward_fake(grad_y_hat, grad_likelihoods, y, scales, means, weights, seed,
                               temperature, mode, scale_bound, likelihood_bound, zero_center,
                               family, weights_are_logits, output_mask):
        grad_y = torch.empty(y.shape if output_mask[0] else (0,), dtype=y.dtype, device=y.device)
        return (grad_y, parameter_grad(scales, output_mask[1]),
                parameter_grad(means, output_mask[2]), parameter_grad(weights, output_mask[3]))

    @torch.library.register_fake("lic_quant::entropy_bottleneck_forward")
    def _eb_forward_fake(z, medians, matrices, biases, factors, seed, temperature, mode,
                         likelihood_bound):
        check_eb_call(z, medians, matrices, biases, factors, mode, likelihood_bound)
        return (torch.empty(z.shape, dtype=z.dtype, device=z.device),
                torch.empty(z.shape, dtype=likelihood_dtype(z.dtype), device=z.device))

    @torch.library.register_fake("lic_quant::entropy_bottleneck_backward")
    def _eb_backward_fake(grad_z_hat, grad_likelihoods, z, medians, matrices, biases, factors,
                          seed, temperature, mode, likelihood_bound, output_mask):
        grad_z = torch.empty(z.shape if output_mask[0] else (0,), dtype=z.dtype, device=z.device)

        def grads(params, needed):
            return [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params] \
                if needed else []

        return (grad_z, grads(matrices, output_mask[1]), grads(biases, output_mask[2]),
                grads(factors, output_mask[3]))
