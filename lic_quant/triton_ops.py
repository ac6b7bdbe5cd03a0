"""backend="triton": the fused kernels of lic_quant/_triton_kernels.py as one pair of torch ops.

``torch.ops.lic_quant.triton_quantize_forward`` / ``triton_quantize_backward`` have the C++ ops'
schemas (csrc/ops.cpp) and one launch helper, ``_launch``. On the GPU they are
``torch.library.triton_op``s: torch.compile traces into the kernels (no graph break), and eager
calls launch them directly. Under Triton's interpreter the kernels are plain Python that a graph
cannot capture, so the same functions are registered as opaque ``torch.library.custom_op``s with a
fake kernel. Autograd (``_setup_context`` and ``_autograd_backward``, bound to the op by
``register_autograd`` and to ``TritonQuantize``, the API's entry): the forward saves only y, scales, means, the seed
and the temperature, the backward recomputes u (docs/spec.md section 2) and is once
differentiable.

Devices. CUDA tensors run the compiled kernels, autotuned over BLOCK x num_warps in (512, 4),
(1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8) (4096 x 4 spills registers);
LIC_QUANT_TRITON_AUTOTUNE=0 picks the single config (1024, 8) instead. CPU tensors run in
Triton's interpreter when TRITON_INTERPRET=1 is set before this module is imported (triton.jit
reads it when the kernels are decorated, which happens here); there the kernels take one large
block per program instance, as the interpreter pays a fixed cost per instance.

dtypes. float32, float16 and bfloat16, computed in float32 with the C++ kernels' per-element math,
so values and gradients match the C++ kernels bit for bit. float64 would need a float64 erfc
written in Triton; it raises a TypeError naming the dtype.

rate=True (docs/spec.md section 8): the forward launches one program per chunk of a sample
(``rate_block``: a fixed chunk size, never autotuned, so the order of the float64 sums depends on
the shape alone) that writes y_hat and its chunk's sum of -log2 P; the chunks of each sample are
then added in index order. The backward is the same kernel with RATE set: it reads one bits'
gradient per sample and forms -g / (P ln 2) from the recomputed P.

The value of a temperature given as a CUDA tensor is not checked (reading it would synchronize the
GPU); float temperatures are checked by the API, and CPU tensors under the interpreter here.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._checks import (FAMILIES, FORWARD_MODE_ERROR, MODES, SECOND_DERIVATIVE_ERROR, check_call,
                      check_input, check_op_tensor, check_unit_interval, likelihood_dtype,
                      rate_shape)

try:
    import triton

    TRITON_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    TRITON_ERROR = exc

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Under the interpreter: one program instance per up to this many elements (each instance costs a
# fixed ~0.5 ms; numpy work grows with the block: small inputs get smaller ones).
INTERPRETER_BLOCK = 1 << 16
# GPU: autotune over block size x warps (default), or one fixed config when
# LIC_QUANT_TRITON_AUTOTUNE=0 (test suites: no six-fold compilation of every variant).
AUTOTUNE = os.environ.get("LIC_QUANT_TRITON_AUTOTUNE", "1") != "0"

if TRITON_ERROR is None:
    from . import _triton_kernels as _k

    INTERPRETED = _k.INTERPRETED
else:
    _k = None
    INTERPRETED = False


def _interpret_requested() -> bool:
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # older Triton reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreted() -> bool:
    """True when the kernels run in Triton's interpreter (decided when this module loads)."""
    return INTERPRETED


_DRIVER_ERRORS: dict = {}


def _gpu_driver_error() -> str | None:
    """Why the compiled kernels cannot run on this machine, or None; probed once per process."""
    if "cuda" not in _DRIVER_ERRORS:
        err = None
        if not torch.cuda.is_available():
            err = "torch sees no CUDA device"
        elif torch.version.hip is not None:
            err = "the Triton kernels use NVIDIA PTX (inline mul.rn.f32); ROCm is not supported"
        else:
            try:
                from triton.runtime import driver

                driver.active.get_current_device()
            except Exception as exc:  # noqa: BLE001 - any driver failure means "not available"
                err = f"Triton has no working GPU driver ({type(exc).__name__}: {exc})"
        _DRIVER_ERRORS["cuda"] = err
    return _DRIVER_ERRORS["cuda"]


def check_available(y: Tensor) -> None:
    """Raises a clear error when backend="triton" cannot run on y."""
    if TRITON_ERROR is not None:
        raise RuntimeError(f"lic_quant: backend='triton' is not available: triton did not import "
                           f"({TRITON_ERROR})")
    if y.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"lic_quant: backend='triton' supports float32, float16 and bfloat16; "
                        f"y is {y.dtype} (use backend='cpu', 'cuda' or 'reference' for float64)")
    if torch.compiler.is_compiling():
        return  # the device probes below are eager-only; a compiled graph fails at launch instead
    if y.device.type == "cpu":
        if not interpreted():
            if _interpret_requested():
                raise RuntimeError(
                    "lic_quant: backend='triton' got CPU tensors, but the Triton kernels were "
                    "compiled for the GPU: TRITON_INTERPRET=1 was set after lic_quant.triton_ops "
                    "was imported")
            raise RuntimeError(
                "lic_quant: backend='triton' needs CUDA tensors, or CPU tensors with "
                "TRITON_INTERPRET=1 set (before the first Triton call) to run Triton's "
                "interpreter; y is on cpu")
    elif y.device.type == "cuda":
        if not interpreted():
            err = _gpu_driver_error()
            if err is not None:
                raise RuntimeError(f"lic_quant: backend='triton' is not available for {y.device}: "
                                   f"{err}")
    else:
        raise RuntimeError(f"lic_quant: backend='triton' runs on CUDA devices (or on CPU under "
                           f"TRITON_INTERPRET=1); y is on {y.device}")


def _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate=False) -> None:
    """The op-level checks of the C++ ops (csrc/lic_quant/op_args.h check_inputs)."""
    check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, zero_center, rate)
    if y.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"lic_quant: backend='triton' supports float32, float16 and bfloat16; "
                        f"y is {y.dtype} (use backend='cpu', 'cuda' or 'reference' for float64)")
    check_op_tensor("seed", seed, y, torch.int64, "a 0-dim int64 tensor")
    check_op_tensor("temperature", temperature, y, torch.float64, "a 0-dim float64 tensor")


def _raw(t: Tensor) -> Tensor:
    """bfloat16 goes to the kernels as its raw int16 bits (see _triton_kernels)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _launch(name: str, n: int, args: tuple, consts: dict, temperature: Tensor) -> None:
    """Launches kernel `name` over n elements: the plain kernel with one large block under the
    interpreter (after the temperature check the CPU kernels do too); on the GPU the autotuned
    kernel through wrap_triton, which torch.compile captures and eager calls launch directly."""
    if INTERPRETED:
        check_unit_interval("temperature", float(temperature))
        block = min(INTERPRETER_BLOCK, max(16, triton.next_power_of_2(n)))
        getattr(_k, f"{name}_kernel")[(triton.cdiv(n, block),)](*args, **consts, ON_GPU=False,
                                                                 BLOCK=block)
        return
    kernel = getattr(_k, f"{name}_autotuned" if AUTOTUNE else f"{name}_fixed")
    torch.library.wrap_triton(kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](
        *args, **consts, ON_GPU=True)


def rate_block(sample_size: int) -> int:
    """Elements per chunk of the rate=True forward: fixed by the device and the sample size alone
    (never autotuned), so the order of the float64 sums, and the bits, depend on the shape only."""
    if INTERPRETED:
        return min(INTERPRETER_BLOCK, max(16, triton.next_power_of_2(sample_size)))
    return _k.RATE_BLOCK


def _launch_rate_forward(samples: int, sample_size: int, args: tuple, consts: dict,
                         temperature: Tensor) -> None:
    """The rate=True forward: one program per chunk of a sample (see _triton_kernels)."""
    block = rate_block(sample_size)
    chunks = triton.cdiv(sample_size, block)
    consts = dict(consts, RATE=True, ALIGNED=sample_size % 4 == 0, sample_size=sample_size,
                  chunks=chunks)
    if INTERPRETED:
        check_unit_interval("temperature", float(temperature))
        _k.quantize_forward_kernel[(samples * chunks,)](*args, **consts, ON_GPU=False, BLOCK=block)
        return
    torch.library.wrap_triton(_k.quantize_forward_kernel)[(samples * chunks,)](
        *args, **consts, ON_GPU=True, BLOCK=block, num_warps=_k.RATE_WARPS)


def _forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
             temperature: Tensor, mode: str, scale_bound: float, likelihood_bound: float,
             zero_center: bool, family: str = "gaussian", rate: bool = False,
             launch: bool = True) -> tuple[Tensor, Tensor]:
    _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate)
    y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if rate:
        return y_hat, _rate_forward(y, scales, means, seed, temperature, mode, scale_bound,
                                    likelihood_bound, zero_center, family, y_hat, launch)
    lik = torch.empty(y.shape, dtype=likelihood_dtype(y.dtype), device=y.device)
    n = y.numel()
    if n > 0 and launch:
        # The noise index is the logical row-major index: strided inputs are made contiguous.
        y_c = y.contiguous()
        m_c = means.contiguous() if means is not None else None
        _launch("quantize_forward", n,
                (_raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()),
                 seed, temperature, _raw(y_hat), lik, n, 0, float(scale_bound),
                 float(likelihood_bound)),
                dict(MODE=MODES.index(mode), ZERO_CENTER=bool(zero_center),
                     HAS_MEANS=m_c is not None, IS_BF16=y.dtype == torch.bfloat16,
                     FAMILY=FAMILIES.index(family), sample_size=1, chunks=1), temperature)
    return y_hat, lik


def _rate_forward(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                  zero_center, family, y_hat, launch) -> Tensor:
    """Writes y_hat and returns the bits (docs/spec.md section 8): per-chunk float64 sums from
    the kernel, added per sample in chunk order."""
    samples = y.shape[0]
    sample_size = y.numel() // samples if samples > 0 else 0
    dtype = likelihood_dtype(y.dtype)
    if not launch or sample_size == 0:
        return torch.zeros(rate_shape(y), dtype=dtype, device=y.device)
    chunks = triton.cdiv(sample_size, rate_block(sample_size))
    partial = torch.empty((samples, chunks), dtype=torch.float64, device=y.device)
    y_c = y.contiguous()
    m_c = means.contiguous() if means is not None else None
    _launch_rate_forward(
        samples, sample_size,
        (_raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()), seed,
         temperature, _raw(y_hat), partial, y.numel(), 0, float(scale_bound),
         float(likelihood_bound)),
        dict(MODE=MODES.index(mode), ZERO_CENTER=bool(zero_center), HAS_MEANS=m_c is not None,
             IS_BF16=y.dtype == torch.bfloat16, FAMILY=FAMILIES.index(family)),
        temperature)
    # Chunk sums in index order: a sequential left fold, the same whatever the thread count.
    bits = partial[:, 0].clone()
    for c in range(1, chunks):
        bits += partial[:, c]
    return bits.to(dtype)


def _backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor, scales: Tensor,
              means: Optional[Tensor], seed: Tensor, temperature: Tensor, mode: str,
              scale_bound: float, likelihood_bound: float, zero_center: bool,
              output_mask: Sequence[bool], family: str = "gaussian", rate: bool = False,
              launch: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate)
    lik_dtype = likelihood_dtype(y.dtype)
    if rate:
        if grad_likelihoods.shape != rate_shape(y) or grad_likelihoods.dtype != lik_dtype or \
                grad_likelihoods.device != y.device:
            raise ValueError(f"lic_quant: with rate=True, grad_likelihoods (the bits' gradient) "
                             f"must be {lik_dtype} of shape {rate_shape(y)} on the device of y")
    elif grad_likelihoods.shape != y.shape or grad_likelihoods.dtype != lik_dtype or \
            grad_likelihoods.device != y.device:
        raise ValueError(f"lic_quant: grad_likelihoods must be {lik_dtype} with the shape and "
                         f"device of y")
    if grad_y_hat is not None:
        check_input("grad_y_hat", grad_y_hat, y)
    need_y, need_s, need_m = (bool(b) for b in output_mask)
    if need_m and means is None:
        raise ValueError("lic_quant: grad of means requested without means")

    def grad(needed: bool) -> Tensor:  # outputs not asked for are empty and never written
        return torch.empty(y.shape if needed else (0,), dtype=y.dtype, device=y.device)

    gy, gs, gm = grad(need_y), grad(need_s), grad(need_m)
    n = y.numel()
    if n > 0 and launch and (need_y or need_s or need_m):
        y_c = y.contiguous()
        m_c = means.contiguous() if means is not None else None
        gyh = grad_y_hat.contiguous() if grad_y_hat is not None else None
        _launch("quantize_backward", n,
                (_raw(gyh if gyh is not None else y_c), grad_likelihoods.contiguous(),
                 _raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()),
                 seed, temperature, _raw(gy if need_y else y_c), _raw(gm if need_m else y_c),
                 _raw(gs if need_s else y_c), n, 0, float(scale_bound), float(likelihood_bound)),
                dict(MODE=MODES.index(mode), ZERO_CENTER=bool(zero_center),
                     HAS_MEANS=m_c is not None, HAS_GYHAT=gyh is not None, NEED_GY=need_y,
                     NEED_GMU=need_m, NEED_GS=need_s, IS_BF16=y.dtype == torch.bfloat16,
                     FAMILY=FAMILIES.index(family),
                     RATE=rate, sample_size=n // y.shape[0] if rate else 1),
                temperature)
    return gy, gs, gm


class _OnceDifferentiable(torch.autograd.Function):
    """Runs the backward op; differentiating its results raises SECOND_DERIVATIVE_ERROR, as the C++
    route's node does. forward without ctx plus setup_context: the form functorch transforms
    accept (torch.func.grad runs the backward with grad mode on, so it comes through here)."""

    @staticmethod
    def forward(op, *args):
        return op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(SECOND_DERIVATIVE_ERROR)


def _direct(y: Tensor) -> bool:
    """Whether an eager call may run the op's body without the dispatcher: a plain tensor, no
    dispatch mode (fake tensors, tracing) and no compilation, where the op must be recorded."""
    return (type(y) is Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0)


def _setup_context(ctx, inputs, output):
    y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound, zero_center, \
        family, rate = inputs
    # Only the inputs, the seed and the temperature: the backward recomputes the noise.
    ctx.save_for_backward(y, scales, means, seed, temperature)
    ctx.has_means = means is not None
    ctx.args = (mode, scale_bound, likelihood_bound, zero_center)
    ctx.family = family
    ctx.rate = rate
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx, grad_y_hat, grad_likelihoods):
    y, scales, means, seed, temperature = ctx.saved_tensors
    need_y, need_scales = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_means = ctx.has_means and ctx.needs_input_grad[2]
    none = (None,) * 8  # seed, temperature and the non-tensor arguments
    if grad_likelihoods is None:
        # Only y_hat was used: its gradient is the identity, and mu and sigma get none.
        return (grad_y_hat if need_y else None), None, None, *none
    op = _backward if _direct(y) else torch.ops.lic_quant.triton_quantize_backward
    args = (grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, *ctx.args,
            [need_y, need_scales, need_means], ctx.family, ctx.rate)
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (grad_y_hat, grad_likelihoods, y, scales, means)):
        gy, gs, gm = _OnceDifferentiable.apply(op, *args)
    else:
        gy, gs, gm = op(*args)
    return (gy if need_y else None), (gs if need_scales else None), \
        (gm if need_means else None), *none


if TRITON_ERROR is None:
    _register = torch.library.custom_op if INTERPRETED else torch.library.triton_op

    @_register("lic_quant::triton_quantize_forward", mutates_args=())
    def triton_quantize_forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                                temperature: Tensor, mode: str, scale_bound: float,
                                likelihood_bound: float, zero_center: bool,
                                family: str = "gaussian", rate: bool = False
                                ) -> tuple[Tensor, Tensor]:
        return _forward(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                        zero_center, family, rate)

    @_register("lic_quant::triton_quantize_backward", mutates_args=())
    def triton_quantize_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                                 scales: Tensor, means: Optional[Tensor], seed: Tensor,
                                 temperature: Tensor, mode: str, scale_bound: float,
                                 likelihood_bound: float, zero_center: bool,
                                 output_mask: Sequence[bool], family: str = "gaussian",
                                 rate: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        return _backward(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, mode,
                         scale_bound, likelihood_bound, zero_center, output_mask, family, rate)

    if INTERPRETED:  # a triton_op's fake kernel is its own body; an opaque op needs one
        @triton_quantize_forward.register_fake
        def _(*args):
            return _forward(*args, launch=False)

        @triton_quantize_backward.register_fake
        def _(*args):
            return _backward(*args, launch=False)

    # torch.ops callers differentiate through the op itself (torch.library's generated
    # autograd.Function, which functorch transforms refuse).
    triton_quantize_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


class TritonQuantize(torch.autograd.Function):
    """The API's entry for backend="triton": the forward op with the same setup_context and
    backward as the op's registration above, in the form (forward without ctx, setup_context)
    that torch.func transforms accept and torch.compile traces."""

    @staticmethod
    def forward(*args):
        # Eager calls skip the custom op's Python dispatch (tens of microseconds per call).
        if _direct(args[0]):
            return _forward(*args)
        return torch.ops.lic_quant.triton_quantize_forward(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_autograd_backward)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(FORWARD_MODE_ERROR)
