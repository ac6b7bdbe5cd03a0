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
                      check_input, check_mixture_call, check_op_tensor, check_rate,
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
                       likelihood_bound, zero_center)
    check_rate(y, rate)
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
            _launch(name, n, *make_args(lik), temperature)
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
