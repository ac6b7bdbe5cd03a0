"""backend="triton": the fused kernels of lic_quant/_triton_kernels.py as torch ops.

``torch.ops.lic_quant.triton_quantize_forward`` / ``triton_quantize_backward`` have the C++ ops'
schemas (csrc/ops.cpp); the mixture ops (docs/spec.md section 7)
``triton_mixture_quantize_forward`` / ``triton_mixture_quantize_backward`` the C++ mixture ops'
schemas plus ``rate`` (as the single-family ones). All four share one launch helper, ``_launch``
(and ``_run_forward`` for the likelihoods or the bits), one registration helper,
``_register_ops``, and one autograd.Function factory, ``_autograd_function``. On the GPU they are
``torch.library.triton_op``s: torch.compile traces into the kernels (no graph break), and eager
calls launch them directly. Under Triton's interpreter the kernels are plain Python that a graph
cannot capture, so the same functions are registered as opaque ``torch.library.custom_op``s with a
fake kernel. Autograd (``_setup_context`` and ``_autograd_backward``, and their ``_mixture_``
twins, bound to the op by ``register_autograd`` and to ``TritonQuantize`` /
``TritonMixtureQuantize``, the API's entries): the forward saves only its inputs, the seed and the
temperature, the backward recomputes u (docs/spec.md section 2) and is once differentiable.

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
gradient per sample and forms -g / (P ln 2) from the recomputed P. The mixture kernels do the same.

Mixture parameters are read in place where ``_checks.component_layout`` takes them (contiguous
copies otherwise); their gradients come back in the parameters' strides where those are dense
(``_ops.parameter_grad``), as from the CPU kernel.

The value of a temperature given as a CUDA tensor is not checked (reading it would synchronize the
GPU); float temperatures are checked by the API, and CPU tensors under the interpreter here.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._checks import (FAMILIES, FORWARD_MODE_ERROR, MODES, SECOND_DERIVATIVE_ERROR, check_call,
                      check_eb_call, check_input, check_mixture_call, check_op_tensor,
                      check_unit_interval, component_layout, likelihood_dtype, rate_shape)
from ._ops import parameter_grad

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


def _check_dtype(y: Tensor) -> None:
    if y.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"lic_quant: backend='triton' supports float32, float16 and bfloat16; "
                        f"y is {y.dtype} (use backend='cpu', 'cuda' or 'reference' for float64)")


def _check_scalars(y: Tensor, seed: Tensor, temperature: Tensor) -> None:
    check_op_tensor("seed", seed, y, torch.int64, "a 0-dim int64 tensor")
    check_op_tensor("temperature", temperature, y, torch.float64, "a 0-dim float64 tensor")


def _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate=False) -> None:
    """The op-level checks of the C++ ops (csrc/lic_quant/op_args.h check_inputs)."""
    check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, zero_center, rate)
    _check_dtype(y)
    _check_scalars(y, seed, temperature)


def _check_mixture_op(y, scales, means, weights, seed, temperature, family, weights_are_logits,
                      mode, scale_bound, likelihood_bound, zero_center, rate) -> None:
    """The op-level checks of the C++ mixture ops (csrc/cpu/mixture_cpu.cpp prepare)."""
    check_mixture_call(y, scales, means, weights, family, weights_are_logits, mode, scale_bound,
                       likelihood_bound, zero_center, rate)
    _check_dtype(y)
    _check_scalars(y, seed, temperature)


def _check_grad_likelihoods(grad_likelihoods: Tensor, y: Tensor, rate: bool) -> None:
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


def _raw(t: Tensor) -> Tensor:
    """bfloat16 goes to the kernels as its raw int16 bits (see _triton_kernels)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _launch(name: str, n: int, args: tuple, consts: dict, temperature: Tensor) -> None:
    """Launches kernel `name` (_triton_kernels.KERNELS) over n elements: the plain kernel with one
    large block under the interpreter (after the temperature check the CPU kernels do too); on the
    GPU the autotuned kernel through wrap_triton, which torch.compile captures and eager calls
    launch directly."""
    if INTERPRETED:
        check_unit_interval("temperature", float(temperature))
        block = min(INTERPRETER_BLOCK, max(16, triton.next_power_of_2(n)))
        _k.KERNELS[name][(triton.cdiv(n, block),)](*args, **consts, ON_GPU=False, BLOCK=block)
        return
    kernel = (_k.AUTOTUNED if AUTOTUNE else _k.FIXED)[name]
    torch.library.wrap_triton(kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](
        *args, **consts, ON_GPU=True)


def rate_block(sample_size: int) -> int:
    """Elements per chunk of the rate=True forward: fixed by the device and the sample size alone
    (never autotuned), so the order of the float64 sums, and the bits, depend on the shape only."""
    if INTERPRETED:
        return min(INTERPRETER_BLOCK, max(16, triton.next_power_of_2(sample_size)))
    return _k.RATE_BLOCK


def _run_forward(name: str, y: Tensor, make_args, temperature: Tensor, rate: bool,
                 launch: bool) -> Tensor:
    """Launches forward kernel `name` and returns its second output. make_args(out) gives the
    kernel's arguments, with `out` as its likelihood pointer, and its constexprs; it is called
    only to launch (fake tensors never reach it). rate=False: out is P, y's shape.
    rate=True (docs/spec.md section 8): one program per chunk of a sample, out one float64 sum of
    -log2 P per chunk, whose chunks are then added per sample in index order: the bits."""
    n = y.numel()
    dtype = likelihood_dtype(y.dtype)
    if not rate:
        lik = torch.empty(y.shape, dtype=dtype, device=y.device)
        if n > 0 and launch:
            args, consts = make_args(lik)
            _launch(name, n, args, dict(consts, sample_size=1, chunks=1), temperature)
        return lik
    samples = y.shape[0]
    sample_size = n // samples if samples > 0 else 0
    if not launch or sample_size == 0:
        return torch.zeros(rate_shape(y), dtype=dtype, device=y.device)
    block = rate_block(sample_size)
    chunks = triton.cdiv(sample_size, block)
    partial = torch.empty((samples, chunks), dtype=torch.float64, device=y.device)
    args, consts = make_args(partial)
    consts = dict(consts, RATE=True, ALIGNED=sample_size % 4 == 0, sample_size=sample_size,
                  chunks=chunks)
    kernel = _k.KERNELS[name]
    if INTERPRETED:
        check_unit_interval("temperature", float(temperature))
        kernel[(samples * chunks,)](*args, **consts, ON_GPU=False, BLOCK=block)
    else:
        torch.library.wrap_triton(kernel)[(samples * chunks,)](
            *args, **consts, ON_GPU=True, BLOCK=block, num_warps=_k.RATE_WARPS)
    # Chunk sums in index order: a sequential left fold, the same whatever the thread count.
    bits = partial[:, 0].clone()
    for c in range(1, chunks):
        bits += partial[:, c]
    return bits.to(dtype)


def _forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
             temperature: Tensor, mode: str, scale_bound: float, likelihood_bound: float,
             zero_center: bool, family: str = "gaussian", rate: bool = False,
             launch: bool = True) -> tuple[Tensor, Tensor]:
    _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate)
    y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    # The noise index is the logical row-major index: strided inputs are made contiguous.
    y_c = y.contiguous()
    m_c = means.contiguous() if means is not None else None
    lik = _run_forward(
        "quantize_forward", y,
        lambda out: ((_raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()),
                      seed, temperature, _raw(y_hat), out, y.numel(), 0, float(scale_bound),
                      float(likelihood_bound)),
                     dict(MODE=MODES.index(mode), ZERO_CENTER=bool(zero_center),
                          HAS_MEANS=m_c is not None, IS_BF16=y.dtype == torch.bfloat16,
                          FAMILY=FAMILIES.index(family))),
        temperature, rate, launch)
    return y_hat, lik


def _backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor, scales: Tensor,
              means: Optional[Tensor], seed: Tensor, temperature: Tensor, mode: str,
              scale_bound: float, likelihood_bound: float, zero_center: bool,
              output_mask: Sequence[bool], family: str = "gaussian", rate: bool = False,
              launch: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    _check_op(y, scales, means, seed, temperature, family, mode, scale_bound, likelihood_bound,
              zero_center, rate)
    _check_grad_likelihoods(grad_likelihoods, y, rate)
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


# ---------------------------------------------------------------------------------------------
# Mixtures (docs/spec.md section 7).


def _in_place_or_copy(t: Tensor) -> Tensor:
    """A mixture parameter as the kernels read it: in place where component_layout takes it,
    else a contiguous copy (csrc/cpu/mixture_cpu.cpp, in_place_or_copy)."""
    return t if component_layout(t) is not None else t.contiguous()


def _layout_args(tensors: Sequence[Tensor], n: int) -> tuple[int, int, list]:
    """(LAYOUT, inner, strides) of the mixture kernels for tensors in component layouts:
    strides holds (stride_k, stride_outer, inner) of each. A plain layout (component k's element
    i at k * stride_k + i: stride_outer == inner, or one run of n) takes any inner, so where the
    others share one, all take it and the kernel divides once per element (LAYOUT 1); all plain
    needs no division (LAYOUT 0); several inners, one division per tensor (LAYOUT 2)."""
    layouts = [component_layout(t) for t in tensors]
    plain = [outer == inner or inner >= n for _, outer, inner in layouts]
    inners = []  # a list, not a set: traced sizes (SymInts) do not hash
    for (_, _, inner), p in zip(layouts, plain):
        if not p and not any(inner == i for i in inners):
            inners.append(inner)
    if not inners:
        return 0, 1, [(k, 0, 1) for k, _, _ in layouts]
    if len(inners) == 1:
        shared = inners[0]
        return 1, shared, [(k, shared if p else outer, shared)
                           for (k, outer, _), p in zip(layouts, plain)]
    return 2, 1, list(layouts)


def _mixture_consts(y, mode, zero_center, family, weights_are_logits, layout) -> dict:
    return dict(MODE=MODES.index(mode), ZERO_CENTER=bool(zero_center),
                LOGITS=bool(weights_are_logits), IS_BF16=y.dtype == torch.bfloat16,
                FAMILY=FAMILIES.index(family), LAYOUT=layout)


def _mixture_forward(y: Tensor, scales: Tensor, means: Tensor, weights: Tensor, seed: Tensor,
                     temperature: Tensor, mode: str, scale_bound: float, likelihood_bound: float,
                     zero_center: bool, family: str, weights_are_logits: bool,
                     rate: bool = False, launch: bool = True) -> tuple[Tensor, Tensor]:
    _check_mixture_op(y, scales, means, weights, seed, temperature, family, weights_are_logits,
                      mode, scale_bound, likelihood_bound, zero_center, rate)
    y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)

    def make_args(out):
        mu, sigma, w = (_in_place_or_copy(t) for t in (means, scales, weights))
        layout, inner, strides = _layout_args((mu, sigma, w), y.numel())
        return ((_raw(y.contiguous()), _raw(mu), _raw(sigma), _raw(w), seed, temperature,
                 _raw(y_hat), out, y.numel(), 0, float(scale_bound), float(likelihood_bound),
                 scales.shape[0], inner, *(s for triple in strides for s in triple)),
                _mixture_consts(y, mode, zero_center, family, weights_are_logits, layout))

    return y_hat, _run_forward("mixture_forward", y, make_args, temperature, rate, launch)


def _mixture_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                      scales: Tensor, means: Tensor, weights: Tensor, seed: Tensor,
                      temperature: Tensor, mode: str, scale_bound: float,
                      likelihood_bound: float, zero_center: bool, family: str,
                      weights_are_logits: bool, output_mask: Sequence[bool], rate: bool = False,
                      launch: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_mixture_op(y, scales, means, weights, seed, temperature, family, weights_are_logits,
                      mode, scale_bound, likelihood_bound, zero_center, rate)
    _check_grad_likelihoods(grad_likelihoods, y, rate)
    if grad_y_hat is not None:
        check_input("grad_y_hat", grad_y_hat, y)
    need = [bool(b) for b in output_mask]
    gy = torch.empty(y.shape if need[0] else (0,), dtype=y.dtype, device=y.device)
    gs, gm, gw = (parameter_grad(t, needed)
                  for t, needed in zip((scales, means, weights), need[1:]))
    n = y.numel()
    if n > 0 and launch and any(need):
        mu, sigma, w = (_in_place_or_copy(t) for t in (means, scales, weights))
        y_c = y.contiguous()
        gyh = grad_y_hat.contiguous() if grad_y_hat is not None else None
        # A gradient not asked for is never written: its parameter stands in for it (pointer and
        # layout).
        outs = [g if needed else t
                for g, t, needed in ((gm, mu, need[2]), (gs, sigma, need[1]), (gw, w, need[3]))]
        layout, inner, strides = _layout_args((mu, sigma, w, *outs), n)
        _launch("mixture_backward", n,
                (_raw(gyh if gyh is not None else y_c), grad_likelihoods.contiguous(), _raw(y_c),
                 _raw(mu), _raw(sigma), _raw(w), seed, temperature, _raw(gy if need[0] else y_c),
                 *(_raw(t) for t in outs), n, 0, float(scale_bound), float(likelihood_bound),
                 scales.shape[0], inner, *(s for triple in strides for s in triple)),
                dict(_mixture_consts(y, mode, zero_center, family, weights_are_logits, layout),
                     HAS_GYHAT=gyh is not None, NEED_GY=need[0], NEED_GMU=need[2],
                     NEED_GS=need[1], NEED_GW=need[3], RATE=rate,
                     sample_size=n // y.shape[0] if rate else 1),
                temperature)
    return gy, gs, gm, gw


# ---------------------------------------------------------------------------------------------
# Autograd and registration, shared by the single-family and the mixture ops.


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


def _run_backward(body, op_name: str, args: tuple, tensors: Sequence[Optional[Tensor]]):
    """The backward op (its body directly where _direct allows), once differentiable when
    autograd records it."""
    op = body if _direct(args[2]) else getattr(torch.ops.lic_quant, op_name)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _OnceDifferentiable.apply(op, *args)
    return op(*args)


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
    gy, gs, gm = _run_backward(
        _backward, "triton_quantize_backward",
        (grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, *ctx.args,
         [need_y, need_scales, need_means], ctx.family, ctx.rate),
        (grad_y_hat, grad_likelihoods, y, scales, means))
    return (gy if need_y else None), (gs if need_scales else None), \
        (gm if need_means else None), *none


def _mixture_setup_context(ctx, inputs, output):
    y, scales, means, weights, seed, temperature, *settings = inputs
    # Only the inputs, the seed and the temperature: the backward recomputes the noise.
    ctx.save_for_backward(y, scales, means, weights, seed, temperature)
    ctx.settings = tuple(settings[:6])  # mode .. weights_are_logits
    ctx.rate = settings[6] if len(settings) > 6 else False
    ctx.set_materialize_grads(False)


def _mixture_autograd_backward(ctx, grad_y_hat, grad_likelihoods):
    y, scales, means, weights, seed, temperature = ctx.saved_tensors
    need = list(ctx.needs_input_grad[:4])
    none = (None,) * 9  # seed, temperature and the non-tensor arguments
    if grad_likelihoods is None:
        return (grad_y_hat if need[0] else None), None, None, None, *none
    grads = _run_backward(
        _mixture_backward, "triton_mixture_quantize_backward",
        (grad_y_hat, grad_likelihoods, y, scales, means, weights, seed, temperature,
         *ctx.settings, need, ctx.rate),
        (grad_y_hat, grad_likelihoods, y, scales, means, weights))
    return (*(g if needed else None for g, needed in zip(grads, need)), *none)


def _register_ops(forward_def, backward_def, forward_body, backward_body, setup_context,
                  autograd_backward) -> None:
    """Registers lic_quant::<name of forward_def> and <name of backward_def> (their signatures
    are the schemas; they call the bodies): triton_ops on the GPU; under the interpreter opaque
    custom ops with the bodies as fake kernels (launch=False). torch.ops callers differentiate
    through the forward op itself (torch.library's generated autograd.Function, which functorch
    transforms refuse; the API takes _autograd_function's instead)."""
    register = torch.library.custom_op if INTERPRETED else torch.library.triton_op
    fwd = register(f"lic_quant::{forward_def.__name__}", mutates_args=())(forward_def)
    bwd = register(f"lic_quant::{backward_def.__name__}", mutates_args=())(backward_def)
    if INTERPRETED:  # a triton_op's fake kernel is its own body; an opaque op needs one
        fwd.register_fake(lambda *args: forward_body(*args, launch=False))
        bwd.register_fake(lambda *args: backward_body(*args, launch=False))
    fwd.register_autograd(autograd_backward, setup_context=setup_context)


def _autograd_function(name: str, forward_body, op_name: str, setup_context, backward):
    """The API's entry for one forward op: the op's setup_context and backward in the form
    (forward without ctx, setup_context) that torch.func transforms accept and torch.compile
    traces."""

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(*args):
            # Eager calls skip the custom op's Python dispatch (tens of microseconds per call).
            if _direct(args[0]):
                return forward_body(*args)
            return getattr(torch.ops.lic_quant, op_name)(*args)

        @staticmethod
        def jvp(ctx, *tangents):
            raise NotImplementedError(FORWARD_MODE_ERROR)

    Function.setup_context = staticmethod(setup_context)
    Function.backward = staticmethod(backward)
    Function.__name__ = Function.__qualname__ = name
    Function.__doc__ = f"backend='triton': torch.ops.lic_quant.{op_name} and its autograd."
    return Function


def triton_quantize_forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                            temperature: Tensor, mode: str, scale_bound: float,
                            likelihood_bound: float, zero_center: bool, family: str = "gaussian",
                            rate: bool = False) -> tuple[Tensor, Tensor]:
    return _forward(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                    zero_center, family, rate)


def triton_quantize_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                             scales: Tensor, means: Optional[Tensor], seed: Tensor,
                             temperature: Tensor, mode: str, scale_bound: float,
                             likelihood_bound: float, zero_center: bool,
                             output_mask: Sequence[bool], family: str = "gaussian",
                             rate: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, mode,
                     scale_bound, likelihood_bound, zero_center, output_mask, family, rate)


def triton_mixture_quantize_forward(y: Tensor, scales: Tensor, means: Tensor, weights: Tensor,
                                    seed: Tensor, temperature: Tensor, mode: str,
                                    scale_bound: float, likelihood_bound: float,
                                    zero_center: bool, family: str, weights_are_logits: bool,
                                    rate: bool = False) -> tuple[Tensor, Tensor]:
    return _mixture_forward(y, scales, means, weights, seed, temperature, mode, scale_bound,
                            likelihood_bound, zero_center, family, weights_are_logits, rate)


def triton_mixture_quantize_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor,
                                     y: Tensor, scales: Tensor, means: Tensor, weights: Tensor,
                                     seed: Tensor, temperature: Tensor, mode: str,
                                     scale_bound: float, likelihood_bound: float,
                                     zero_center: bool, family: str, weights_are_logits: bool,
                                     output_mask: Sequence[bool], rate: bool = False
                                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _mixture_backward(grad_y_hat, grad_likelihoods, y, scales, means, weights, seed,
                             temperature, mode, scale_bound, likelihood_bound, zero_center,
                             family, weights_are_logits, output_mask, rate)


if TRITON_ERROR is None:
    _register_ops(triton_quantize_forward, triton_quantize_backward, _forward, _backward,
                  _setup_context, _autograd_backward)
    _register_ops(triton_mixture_quantize_forward, triton_mixture_quantize_backward,
                  _mixture_forward, _mixture_backward, _mixture_setup_context,
                  _mixture_autograd_backward)

TritonQuantize = _autograd_function("TritonQuantize", _forward, "triton_quantize_forward",
                                    _setup_context, _autograd_backward)
TritonMixtureQuantize = _autograd_function(
    "TritonMixtureQuantize", _mixture_forward, "triton_mixture_quantize_forward",
    _mixture_setup_context, _mixture_autograd_backward)


# ---------------------------------------------------------------------------------------------
# The factorized prior (docs/spec.md section 9): triton_entropy_bottleneck_forward / _backward,
# the C++ ops' schemas. The per-channel constants (softplus(M_i), b_i, tanh(F_i)) and the chain
# rule of the parameter gradients are float64 torch ops here, rounded once, as the C++ kernels
# evaluate them (libm in float64); the kernels do the per-element work and the ordered sums.

EB_INTERPRETER_BLOCK = 4096  # forward elements per program instance under the interpreter
EB_INTERPRETER_TASKS = 256  # backward tasks side by side under the interpreter
EB_GPU_BLOCK, EB_GPU_WARPS = 256, 4  # forward on the GPU; the backward: one warp per task


def _eb_slots(layers: int) -> int:
    """Parameter slots of a channel: 9 for the first layer, 15 per hidden layer, 4 for the last."""
    return 2 if layers == 1 else 15 * layers - 17


def _check_eb_op(z, medians, matrices, biases, factors, seed, temperature, mode,
                 likelihood_bound) -> None:
    check_eb_call(z, medians, matrices, biases, factors, mode, likelihood_bound)
    _check_dtype(z)
    _check_scalars(z, seed, temperature)
    for i, m in enumerate(matrices[:-1]):
        if m.shape[1] != 3:
            raise NotImplementedError(
                f"lic_quant: the Triton EntropyBottleneck kernels take hidden widths of 3 "
                f"(filters=(3, 3, ...)); matrices[{i}] has {m.shape[1]} outputs (use "
                f"backend='reference')")


def _eb_parts(matrices, biases, factors, channels: int):
    """(kind, tensor as (C, width)) per slot range, in slot order; kind: 'm', 'b' or 'f'."""
    for i, m in enumerate(matrices):
        yield "m", m.reshape(channels, -1)
        yield "b", biases[i].reshape(channels, -1)
        if i < len(factors):
            yield "f", factors[i].reshape(channels, -1)


def _eb_constants(matrices, biases, factors, channels: int) -> Tensor:
    """(C, slots) float32: softplus(M) (torch's threshold 20), b, tanh(F), in float64 first."""
    cols = []
    for kind, t in _eb_parts(matrices, biases, factors, channels):
        x = t.double()
        if kind == "m":
            x = torch.where(x > 20.0, x, torch.log1p(torch.exp(x)))
        elif kind == "f":
            x = torch.tanh(x)
        cols.append(x)
    return torch.cat(cols, dim=1).float().contiguous()


def _eb_narrow(x: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 -> float32 -> dtype (the C++ static_casts), NaN as the canonical NaN."""
    y = x.float().to(dtype)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    canon = torch.full(y.shape, 0x7FFFFFFF if dtype == torch.float32 else 0x7FFF, dtype=bits,
                       device=y.device).view(dtype)
    return torch.where(torch.isnan(x), canon, y)


def _eb_forward(z: Tensor, medians: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor],
                factors: Sequence[Tensor], seed: Tensor, temperature: Tensor, mode: str,
                likelihood_bound: float, launch: bool = True) -> tuple[Tensor, Tensor]:
    _check_eb_op(z, medians, matrices, biases, factors, seed, temperature, mode, likelihood_bound)
    z_hat = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    lik = torch.empty(z.shape, dtype=likelihood_dtype(z.dtype), device=z.device)
    n = z.numel()
    if n == 0 or not launch:
        return z_hat, lik
    channels = z.shape[1]
    layers = len(matrices)
    args = (_raw(z.contiguous()), _raw(medians.contiguous()),
            _eb_constants(matrices, biases, factors, channels), seed, temperature, _raw(z_hat),
            lik, n, channels, n // (z.shape[0] * channels), float(likelihood_bound))
    consts = dict(L=layers, SLOTS=_eb_slots(layers), MODE=MODES.index(mode),
                  IS_BF16=z.dtype == torch.bfloat16)
    if INTERPRETED:
        check_unit_interval("temperature", float(temperature))
        block = min(EB_INTERPRETER_BLOCK, max(16, triton.next_power_of_2(n)))
        _k.eb_forward_kernel[(triton.cdiv(n, block),)](*args, **consts, ON_GPU=False,
                                                       BLOCK=block)
    else:
        torch.library.wrap_triton(_k.eb_forward_kernel)[(triton.cdiv(n, EB_GPU_BLOCK),)](
            *args, **consts, ON_GPU=True, BLOCK=EB_GPU_BLOCK, num_warps=EB_GPU_WARPS)
    return z_hat, lik


def _eb_backward(grad_z_hat: Optional[Tensor], grad_likelihoods: Tensor, z: Tensor,
                 medians: Tensor, matrices: Sequence[Tensor], biases: Sequence[Tensor],
                 factors: Sequence[Tensor], seed: Tensor, temperature: Tensor, mode: str,
                 likelihood_bound: float, output_mask: Sequence[bool], launch: bool = True
                 ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    _check_eb_op(z, medians, matrices, biases, factors, seed, temperature, mode, likelihood_bound)
    lik_dtype = likelihood_dtype(z.dtype)
    if grad_likelihoods.shape != z.shape or grad_likelihoods.dtype != lik_dtype or \
            grad_likelihoods.device != z.device:
        raise ValueError(f"lic_quant: grad_likelihoods must be {lik_dtype} with the shape and "
                         f"device of z")
    if grad_z_hat is not None:
        check_input("grad_z_hat", grad_z_hat, z)
    mask = [bool(b) for b in output_mask]
    g_z = torch.empty(z.shape if mask[0] else (0,), dtype=z.dtype, device=z.device)
    n, channels, layers = z.numel(), z.shape[1], len(matrices)
    params = any(mask[1:])
    slots = _eb_slots(layers)
    sums = None
    if n > 0 and launch and (mask[0] or params):
        chunks = triton.cdiv(n // channels, _k.EB_CHUNK.value)
        cst = _eb_constants(matrices, biases, factors, channels)
        partial = torch.empty(channels * chunks * slots * _k.EB_LANES.value if params else 0,
                              dtype=torch.float32, device=z.device)
        z_c = z.contiguous()
        g_zh = grad_z_hat.contiguous() if grad_z_hat is not None else None
        args = (_raw(g_zh if g_zh is not None else z_c), grad_likelihoods.contiguous(), _raw(z_c),
                _raw(medians.contiguous()), cst, seed, temperature,
                _raw(g_z if mask[0] else z_c), partial if params else cst, channels,
                n // (z.shape[0] * channels), n // channels, chunks, channels * chunks,
                triton.cdiv(min(n // channels, _k.EB_CHUNK.value), _k.EB_BLOCK.value),
                float(likelihood_bound))
        consts = dict(L=layers, SLOTS=slots, MODE=MODES.index(mode),
                      IS_BF16=z.dtype == torch.bfloat16, HAS_GZHAT=g_zh is not None,
                      NEED_GZ=mask[0], NEED_PARAMS=params)
        tasks = channels * chunks
        if INTERPRETED:  # every task side by side: the interpreter's cost is per operation
            check_unit_interval("temperature", float(temperature))
            group = min(triton.next_power_of_2(tasks), EB_INTERPRETER_TASKS)
            _k.eb_backward_kernel[(triton.cdiv(tasks, group),)](*args, **consts, ON_GPU=False,
                                                               TASKS=group)
        else:
            torch.library.wrap_triton(_k.eb_backward_kernel)[(tasks,)](
                *args, **consts, ON_GPU=True, TASKS=1, num_warps=1)
        if params:
            sums = torch.empty((channels, slots), dtype=torch.float64, device=z.device)
            reduce_args = (partial, sums, chunks)
            reduce_consts = dict(SLOTS=slots, SLOTS_P2=triton.next_power_of_2(slots))
            if INTERPRETED:
                _k.eb_reduce_kernel[(channels,)](*reduce_args, **reduce_consts)
            else:
                torch.library.wrap_triton(_k.eb_reduce_kernel)[(channels,)](
                    *reduce_args, **reduce_consts, num_warps=1)
    grads = {"m": [], "b": [], "f": []}
    wanted = {"m": mask[1], "b": mask[2], "f": mask[3]}
    shapes = {"m": [m.shape for m in matrices], "b": [b.shape for b in biases],
              "f": [f.shape for f in factors]}
    col = 0
    for kind, raw in _eb_parts(matrices, biases, factors, channels):
        width = raw.shape[1]
        if wanted[kind]:
            shape = shapes[kind][len(grads[kind])]
            if sums is None:  # nothing to sum (no elements), or a fake call
                grads[kind].append((torch.zeros if n == 0 else torch.empty)(
                    shape, dtype=z.dtype, device=z.device))
            else:
                g = sums[:, col:col + width]
                x = raw.double()
                if kind == "m":  # softplus' slope, as torch's softplus_backward forms it
                    e = torch.exp(x)
                    g = g * torch.where(x > 20.0, 1.0, e / (e + 1.0))
                elif kind == "f":
                    t = torch.tanh(x)
                    g = g * (1.0 - t * t)
                grads[kind].append(_eb_narrow(g, z.dtype).reshape(shape))
        col += width
    return g_z, grads["m"], grads["b"], grads["f"]


def triton_entropy_bottleneck_forward(z: Tensor, medians: Tensor, matrices: list[Tensor],
                                      biases: list[Tensor], factors: list[Tensor], seed: Tensor,
                                      temperature: Tensor, mode: str, likelihood_bound: float
                                      ) -> tuple[Tensor, Tensor]:
    return _eb_forward(z, medians, matrices, biases, factors, seed, temperature, mode,
                       likelihood_bound)


def triton_entropy_bottleneck_backward(
        grad_z_hat: Optional[Tensor], grad_likelihoods: Tensor, z: Tensor, medians: Tensor,
        matrices: list[Tensor], biases: list[Tensor], factors: list[Tensor], seed: Tensor,
        temperature: Tensor, mode: str, likelihood_bound: float, output_mask: Sequence[bool]
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    return _eb_backward(grad_z_hat, grad_likelihoods, z, medians, matrices, biases, factors,
                        seed, temperature, mode, likelihood_bound, output_mask)


class TritonEntropyBottleneck(torch.autograd.Function):
    """backend='triton' of lic_quant.entropy_bottleneck: the parameter lists come flattened
    (autograd tracks only tensors passed as arguments): apply(z, medians, seed, temperature,
    mode, likelihood_bound, layers, *matrices, *biases, *factors). The backward recomputes the
    noise from the seed and is once differentiable."""

    @staticmethod
    def forward(z, medians, seed, temperature, mode, likelihood_bound, layers, *params):
        m, b, f = params[:layers], params[layers:2 * layers], params[2 * layers:]
        args = (z, medians, list(m), list(b), list(f), seed, temperature, mode,
                likelihood_bound)
        if _direct(z):
            return _eb_forward(*args)
        return torch.ops.lic_quant.triton_entropy_bottleneck_forward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, medians, seed, temperature, mode, likelihood_bound, layers, *params = inputs
        ctx.save_for_backward(z, medians, seed, temperature, *params)
        ctx.settings = (mode, likelihood_bound)
        ctx.layers = layers
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_z_hat, grad_likelihoods):
        z, medians, seed, temperature, *params = ctx.saved_tensors
        layers = ctx.layers
        need = ctx.needs_input_grad
        need_z = need[0]
        need_p = [any(need[7 + k * layers + i] for i in range(layers - (k == 2)))
                  for k in range(3)]
        none = (None,) * (6 + len(params))
        if grad_likelihoods is None:  # only z_hat was used: the identity to z
            return (grad_z_hat if need_z else None), *none
        m, b, f = params[:layers], params[layers:2 * layers], params[2 * layers:]
        g_z, g_m, g_b, g_f = _run_backward(
            _eb_backward, "triton_entropy_bottleneck_backward",
            (grad_z_hat, grad_likelihoods, z, medians, list(m), list(b), list(f), seed,
             temperature, *ctx.settings, [need_z, *need_p]),
            (grad_z_hat, grad_likelihoods, z, *params))
        flat = [*(g_m or [None] * layers), *(g_b or [None] * layers),
                *(g_f or [None] * (layers - 1))]
        return (g_z if need_z else None), None, None, None, None, None, None, *flat

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(FORWARD_MODE_ERROR)


if TRITON_ERROR is None:
    _register = torch.library.custom_op if INTERPRETED else torch.library.triton_op
    _eb_fwd_op = _register("lic_quant::triton_entropy_bottleneck_forward", mutates_args=())(
        triton_entropy_bottleneck_forward)
    _eb_bwd_op = _register("lic_quant::triton_entropy_bottleneck_backward", mutates_args=())(
        triton_entropy_bottleneck_backward)
    if INTERPRETED:  # an opaque op needs a fake kernel
        _eb_fwd_op.register_fake(lambda *args: _eb_forward(*args, launch=False))
        _eb_bwd_op.register_fake(lambda *args: _eb_backward(*args, launch=False))

    def _eb_op_setup_context(ctx, inputs, output):
        z, medians, matrices, biases, factors, seed, temperature, mode, likelihood_bound = inputs
        ctx.save_for_backward(z, medians, seed, temperature, *matrices, *biases, *factors)
        ctx.settings = (mode, likelihood_bound)
        ctx.layers = len(matrices)
        ctx.set_materialize_grads(False)

    def _eb_op_backward(ctx, grad_z_hat, grad_likelihoods):
        """torch.ops callers (torch.compile): the lists' gradients as lists."""
        z, medians, seed, temperature, *params = ctx.saved_tensors
        layers = ctx.layers
        need = ctx.needs_input_grad
        lists = (params[:layers], params[layers:2 * layers], params[2 * layers:])
        if grad_likelihoods is None:
            return (grad_z_hat if need[0] else None), None, *([None] * len(p) for p in lists), \
                None, None, None, None
        need_p = [any(n) if isinstance(n, (list, tuple)) else bool(n) for n in need[2:5]]
        g_z, g_m, g_b, g_f = _run_backward(
            _eb_backward, "triton_entropy_bottleneck_backward",
            (grad_z_hat, grad_likelihoods, z, medians, *(list(p) for p in lists), seed,
             temperature, *ctx.settings, [bool(need[0]), *need_p]),
            (grad_z_hat, grad_likelihoods, z, *params))
        out = [g if g else [None] * len(p) for g, p in zip((g_m, g_b, g_f), lists)]
        return (g_z if need[0] else None), None, *out, None, None, None, None

    _eb_fwd_op.register_autograd(_eb_op_backward, setup_context=_eb_op_setup_context)
