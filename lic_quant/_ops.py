"""Loads the compiled ops (lic_quant._C) and registers their fake kernels.

The ops themselves (schemas in csrc/ops.cpp) take the seed and the temperature as 0-dim tensors
on y's device, so a CUDA graph or a compiled graph can be fed fresh values without recompiling.
Their autograd is C++ (csrc/autograd.cpp, registered for the Autograd key); ``autograd_for``
below is the Python twin the Triton ops use.
"""
from __future__ import annotations

import importlib
import warnings

import torch

try:
    # import_module, not `from . import _C`: when the .so is missing, the latter reports
    # "cannot import name '_C' from partially initialized module (circular import)", which hides
    # the real reason (no compiled module in this directory, or one that fails to load).
    _C = importlib.import_module("._C", __package__)  # registers torch.ops.lic_quant.*

    EXTENSION_ERROR: Exception | None = None
    # The eager forward entered once from Python (csrc/ops.cpp), used by lic_quant.api.
    EAGER_ENTRY = _C.quantize_eager
    # Its checks and seed/temperature tensors alone, for the Triton backend's eager calls.
    EAGER_ARGUMENTS = _C.eager_arguments
except ImportError as exc:  # the package still works with backend="reference"
    EXTENSION_ERROR = exc
    EAGER_ENTRY = EAGER_ARGUMENTS = None

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


def _likelihood_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


SECOND_DERIVATIVE_ERROR = (
    "lic_quant: the second derivative of gaussian_quantize is not implemented (docs/spec.md "
    "section 4): a gradient computed with create_graph=True through lic_quant's backward cannot "
    "be differentiated again")


class _OnceDifferentiable(torch.autograd.Function):
    """Runs a backward op; differentiating its results raises SECOND_DERIVATIVE_ERROR. Its node
    is linked to the backward's inputs, so any second derivative that reaches them raises.
    forward without ctx plus setup_context: the form functorch transforms accept (torch.func.grad
    runs the backward with grad mode on, so it comes through here)."""

    @staticmethod
    def forward(op, *args):
        return op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(SECOND_DERIVATIVE_ERROR)


def autograd_for(backward_op):
    """(backward, setup_context) for a forward op with the quantize_forward schema whose backward
    op (a callable returning it, resolved at call time) has the quantize_backward schema. As the
    C++ autograd (csrc/autograd.cpp), the backward is once differentiable: with create_graph=True
    its results carry a node that raises when differentiated."""

    def setup_context(ctx, inputs, output):
        y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound, zero_center = inputs
        # Only the inputs, the seed and the temperature are kept: the backward recomputes
        # the noise (docs/spec.md section 2).
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
        args = (grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, *ctx.args,
                [need_y, need_scales, need_means])
        if torch.is_grad_enabled() and any(
                t is not None and t.requires_grad
                for t in (grad_y_hat, grad_likelihoods, y, scales, means)):
            gy, gs, gm = _OnceDifferentiable.apply(backward_op(), *args)
        else:
            gy, gs, gm = backward_op()(*args)
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
