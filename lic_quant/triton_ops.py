"""backend="triton": the fused kernels of lic_quant/_triton_kernels.py as torch ops.

``torch.ops.lic_quant.triton_quantize_forward`` / ``triton_quantize_backward`` are registered with
``torch.library.triton_op`` (so torch.compile sees the kernels and needs no graph break; the
implementation doubles as the fake kernel) and autograd with ``register_autograd``: the forward
saves only y, scales, means, the seed and the temperature, and the backward recomputes u.
Schemas are the C++ ops' (csrc/ops.cpp).

Devices. CUDA tensors run the compiled kernels, autotuned over BLOCK x num_warps in (512, 4),
(1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8) (4096 x 4 spills registers);
LIC_QUANT_TRITON_AUTOTUNE=0 picks the single config (1024, 8) instead. CPU tensors run in
Triton's interpreter when TRITON_INTERPRET=1 was set before the first Triton launch of the
process (triton.jit reads it when the kernels are decorated); there the kernels take one large
block per program instance, as the interpreter pays a fixed cost per instance.

dtypes. float32, float16 and bfloat16, computed in float32 with the C++ kernels' per-element math,
so values and gradients match the C++ kernels bit for bit. float64 is not supported by this
backend (it would need a float64 erfc written in Triton); it raises a TypeError naming the dtype:
use backend="cpu", "cuda" or "reference" for float64.

Not checked on CUDA, unlike the C++ ops: the value of a temperature given as a CUDA tensor
(reading it would synchronize the GPU; float temperatures are checked by
lic_quant.gaussian_quantize, and CPU tensors under the interpreter are checked here).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._ops import autograd_for
from .reference import MODES

try:
    import triton  # noqa: F401

    TRITON_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    TRITON_ERROR = exc

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Under the interpreter: one config, one program instance per up to this many elements (each
# instance costs a fixed ~0.5 ms; numpy work grows with the block: small inputs get smaller ones).
INTERPRETER_BLOCK = 1 << 16
_kernels = None
# GPU: autotune over block size x warps (default), or one fixed config when
# LIC_QUANT_TRITON_AUTOTUNE=0 (test suites: no six-fold compilation of every variant).
AUTOTUNE = os.environ.get("LIC_QUANT_TRITON_AUTOTUNE", "1") != "0"


def _interpret_requested() -> bool:
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # older Triton reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _get_kernels():
    """Imports (and thereby decorates) the kernels on first use; see the module docstring."""
    global _kernels
    if _kernels is None:
        from . import _triton_kernels

        _kernels = _triton_kernels
    return _kernels


def interpreted() -> bool:
    """True when the kernels run in Triton's interpreter (decided when they are first loaded)."""
    if TRITON_ERROR is not None:
        return False
    if _kernels is None:
        return _interpret_requested()
    return _kernels.INTERPRETED


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
            if _kernels is not None and _interpret_requested():
                raise RuntimeError(
                    "lic_quant: backend='triton' got CPU tensors, but the Triton kernels were "
                    "compiled for the GPU: TRITON_INTERPRET=1 was set after their first use")
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


def _mode_index(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"lic_quant: mode must be one of {MODES}; got {mode!r}")
    return MODES.index(mode)


def _check_args(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                temperature: Tensor, scale_bound: float, likelihood_bound: float) -> None:
    if y.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"lic_quant: the Triton kernels support float32, float16 and bfloat16; "
                        f"y is {y.dtype}")
    for name, t in (("scales", scales), ("means", means)):
        if t is None:
            continue
        if t.shape != y.shape:
            raise ValueError(f"lic_quant: {name} must have the shape of y {tuple(y.shape)}; "
                             f"got {tuple(t.shape)}")
        if t.dtype != y.dtype:
            raise TypeError(f"lic_quant: {name} must have the dtype of y ({y.dtype}); "
                            f"got {t.dtype}")
        if t.device != y.device:
            raise ValueError(f"lic_quant: {name} must be on the device of y ({y.device}); "
                             f"got {t.device}")
    if seed.dtype != torch.int64 or seed.dim() != 0 or seed.device != y.device:
        raise TypeError(f"lic_quant: seed must be a 0-dim int64 tensor on {y.device}; got "
                        f"{seed.dtype} with shape {tuple(seed.shape)} on {seed.device}")
    if temperature.dtype != torch.float64 or temperature.dim() != 0 or \
            temperature.device != y.device:
        raise TypeError(f"lic_quant: temperature must be a 0-dim float64 tensor on {y.device}; "
                        f"got {temperature.dtype} with shape {tuple(temperature.shape)} on "
                        f"{temperature.device}")
    if not scale_bound >= 0.0:
        raise ValueError(f"lic_quant: scale_bound must be >= 0; got {scale_bound}")
    if not likelihood_bound >= 0.0:
        raise ValueError(f"lic_quant: likelihood_bound must be >= 0; got {likelihood_bound}")


def _check_temperature_value(temperature: Tensor) -> None:
    """The C++ ops' check of T in [0, 1], done where reading T costs no GPU synchronization: on
    CPU tensors (the interpreter), eagerly. CUDA tensor temperatures are not read (see above)."""
    if temperature.device.type == "cpu" and not torch.compiler.is_compiling():
        t = float(temperature.detach())
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"lic_quant: temperature must lie in [0, 1]; got {t}")


def _likelihood_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _raw(t: Tensor) -> Tensor:
    """bfloat16 goes to the kernels as its raw int16 bits (see _triton_kernels)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _interpreter_block(n: int) -> int:
    return min(INTERPRETER_BLOCK, max(16, triton.next_power_of_2(n)))


def _launch(name: str, n: int, args: tuple, consts: dict, eager: bool = False,
            dtype: Optional[torch.dtype] = None) -> None:
    """Launches kernel `name` over n elements: the plain kernel with one large block under the
    interpreter; on GPU autotuned through wrap_triton (so torch.compile captures it), or, for an
    eager call, through the cached launch of _launch_eager_gpu."""
    k = _get_kernels()
    if k.INTERPRETED:
        block = _interpreter_block(n)
        getattr(k, f"{name}_kernel")[(triton.cdiv(n, block),)](*args, **consts, ON_GPU=False,
                                                                BLOCK=block)
        return
    if eager:
        _launch_eager_gpu(k, name, n, dtype, args, consts)
        return

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK"]),)

    kernel = getattr(k, f"{name}_autotuned" if AUTOTUNE else f"{name}_fixed")
    torch.library.wrap_triton(kernel)[grid](*args, **consts, ON_GPU=True)


# (kernel name, AUTOTUNE, n, y's dtype) -> (jit kernel, grid, config kwargs). The autotuner keys
# its choice on n_elements and the tensor dtypes (all fixed by y's dtype here), so after its first
# run for a key the chosen config is fixed: later eager calls launch the jit kernel with it
# directly, skipping the autotuner's per-call argument dicts and key building (host time).
_EAGER_LAUNCHES: dict = {}


def _launch_eager_gpu(k, name: str, n: int, dtype: torch.dtype, args: tuple,
                      consts: dict) -> None:
    key = (name, AUTOTUNE, n, dtype)
    hit = _EAGER_LAUNCHES.get(key)
    if hit is not None:
        kernel, grid, config = hit
        kernel[grid](*args, **consts, ON_GPU=True, **config)
        return
    tuner = getattr(k, f"{name}_autotuned" if AUTOTUNE else f"{name}_fixed")
    tuner[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](*args, **consts, ON_GPU=True)
    config = tuner.best_config.all_kwargs()
    _EAGER_LAUNCHES[key] = (getattr(k, f"{name}_kernel"),
                            (triton.cdiv(n, config["BLOCK"]),), config)


def _forward_body(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                  temperature: Tensor, mode: str, scale_bound: float, likelihood_bound: float,
                  zero_center: bool, launch: bool = True, eager: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """`eager`: called by _EagerQuantize after lic_quant.gaussian_quantize checked the arguments
    (the op's own checks are skipped), launching through _launch_eager_gpu."""
    if not eager:
        _check_args(y, scales, means, seed, temperature, scale_bound, likelihood_bound)
    mode_i = _mode_index(mode)
    y_hat = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    lik = torch.empty(y.shape, dtype=_likelihood_dtype(y.dtype), device=y.device)
    n = y.numel()
    if n > 0 and launch:
        _check_temperature_value(temperature)
        # The noise index is the logical row-major index: strided inputs are made contiguous.
        y_c = y.contiguous()
        m_c = means.contiguous() if means is not None else None
        _launch("quantize_forward", n,
                (_raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()),
                 seed, temperature, _raw(y_hat), lik, n, 0, float(scale_bound),
                 float(likelihood_bound)),
                dict(MODE=mode_i, ZERO_CENTER=bool(zero_center), HAS_MEANS=m_c is not None,
                     IS_BF16=y.dtype == torch.bfloat16), eager, y.dtype)
    return y_hat, lik


def _backward_body(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                   scales: Tensor, means: Optional[Tensor], seed: Tensor, temperature: Tensor,
                   mode: str, scale_bound: float, likelihood_bound: float, zero_center: bool,
                   output_mask: Sequence[bool], launch: bool = True, eager: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor]:
    if not eager:
        _check_args(y, scales, means, seed, temperature, scale_bound, likelihood_bound)
    mode_i = _mode_index(mode)
    lik_dtype = _likelihood_dtype(y.dtype)
    if grad_likelihoods.shape != y.shape or grad_likelihoods.dtype != lik_dtype or \
            grad_likelihoods.device != y.device:
        raise ValueError(f"lic_quant: grad_likelihoods must be {lik_dtype} with the shape and "
                         f"device of y")
    if grad_y_hat is not None and (grad_y_hat.shape != y.shape or grad_y_hat.dtype != y.dtype
                                   or grad_y_hat.device != y.device):
        raise ValueError("lic_quant: grad_y_hat must have the shape, dtype and device of y")
    need_y, need_s, need_m = (bool(b) for b in output_mask)
    if need_m and means is None:
        raise ValueError("lic_quant: grad of means requested without means")

    def grad(needed: bool) -> Tensor:  # outputs not asked for are empty and never written
        return torch.empty(y.shape if needed else (0,), dtype=y.dtype, device=y.device)

    gy, gs, gm = grad(need_y), grad(need_s), grad(need_m)
    n = y.numel()
    if n > 0 and launch and (need_y or need_s or need_m):
        _check_temperature_value(temperature)
        y_c = y.contiguous()
        m_c = means.contiguous() if means is not None else None
        gyh = grad_y_hat.contiguous() if grad_y_hat is not None else None
        _launch("quantize_backward", n,
                (_raw(gyh if gyh is not None else y_c), grad_likelihoods.contiguous(),
                 _raw(y_c), _raw(m_c if m_c is not None else y_c), _raw(scales.contiguous()),
                 seed, temperature, _raw(gy if need_y else y_c), _raw(gm if need_m else y_c),
                 _raw(gs if need_s else y_c), n, 0, float(scale_bound), float(likelihood_bound)),
                dict(MODE=mode_i, ZERO_CENTER=bool(zero_center), HAS_MEANS=m_c is not None,
                     HAS_GYHAT=gyh is not None, NEED_GY=need_y, NEED_GMU=need_m, NEED_GS=need_s,
                     IS_BF16=y.dtype == torch.bfloat16), eager, y.dtype)
    return gy, gs, gm


if TRITON_ERROR is None:
    # Opaque custom ops that graphs and fake tensors see as one node with a fake kernel; the
    # triton ops below call them (so torch.compile does not trace into the kernels)
    # - under the interpreter: there the kernels cannot be captured into a graph (wrap_triton
    #   hands back the raw interpreted kernel);
    # - on GPU while the kernels take their scalar bounds only as float32 (see
    #   _inductor_traces_kernels).

    @torch.library.custom_op("lic_quant::triton_interpret_forward", mutates_args=())
    def _interpret_forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                           temperature: Tensor, mode: str, scale_bound: float,
                           likelihood_bound: float, zero_center: bool) -> tuple[Tensor, Tensor]:
        return _forward_body(y, scales, means, seed, temperature, mode, scale_bound,
                             likelihood_bound, zero_center)

    @_interpret_forward.register_fake
    def _(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound, zero_center):
        return _forward_body(y, scales, means, seed, temperature, mode, scale_bound,
                             likelihood_bound, zero_center, launch=False)

    @torch.library.custom_op("lic_quant::triton_interpret_backward", mutates_args=())
    def _interpret_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                            scales: Tensor, means: Optional[Tensor], seed: Tensor,
                            temperature: Tensor, mode: str, scale_bound: float,
                            likelihood_bound: float, zero_center: bool,
                            output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
        return _backward_body(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature,
                              mode, scale_bound, likelihood_bound, zero_center, output_mask)

    @_interpret_backward.register_fake
    def _(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, mode, scale_bound,
          likelihood_bound, zero_center, output_mask):
        return _backward_body(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature,
                              mode, scale_bound, likelihood_bound, zero_center, output_mask,
                              launch=False)

    @torch.library.triton_op("lic_quant::triton_quantize_forward", mutates_args=())
    def triton_quantize_forward(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                                temperature: Tensor, mode: str, scale_bound: float,
                                likelihood_bound: float, zero_center: bool
                                ) -> tuple[Tensor, Tensor]:
        if interpreted() or not _inductor_traces_kernels():
            return torch.ops.lic_quant.triton_interpret_forward(
                y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                zero_center)
        return _forward_body(y, scales, means, seed, temperature, mode, scale_bound,
                             likelihood_bound, zero_center)

    @torch.library.triton_op("lic_quant::triton_quantize_backward", mutates_args=())
    def triton_quantize_backward(grad_y_hat: Optional[Tensor], grad_likelihoods: Tensor, y: Tensor,
                                 scales: Tensor, means: Optional[Tensor], seed: Tensor,
                                 temperature: Tensor, mode: str, scale_bound: float,
                                 likelihood_bound: float, zero_center: bool,
                                 output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
        if interpreted() or not _inductor_traces_kernels():
            return torch.ops.lic_quant.triton_interpret_backward(
                grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, mode,
                scale_bound, likelihood_bound, zero_center, output_mask)
        return _backward_body(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature,
                              mode, scale_bound, likelihood_bound, zero_center, output_mask)

    _backward, _setup_context = autograd_for(lambda: torch.ops.lic_quant.triton_quantize_backward)
    triton_quantize_forward.register_autograd(_backward, setup_context=_setup_context)

    def _eager_backward_body(*args):
        return _backward_body(*args, eager=True)

    _eager_backward, _eager_setup_context = autograd_for(lambda: _eager_backward_body)

    class _EagerQuantize(torch.autograd.Function):
        """The eager twin of triton_quantize_forward + its autograd: the same bodies and the same
        saved tensors, without the custom-op dispatch (Python dispatcher, schema checks, the
        register_autograd wrapper), which costs far more host time than a launch."""

        @staticmethod
        def forward(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                    zero_center):
            return _forward_body(y, scales, means, seed, temperature, mode, scale_bound,
                                 likelihood_bound, zero_center, eager=True)

        setup_context = staticmethod(_eager_setup_context)
        backward = staticmethod(_eager_backward)


def _inductor_traces_kernels() -> bool:
    """Whether torch.compile may trace into the kernels (wrap_triton) on GPU. Inductor passes
    Python float arguments of user kernels as fp64 (torch._inductor.codegen.triton_utils
    .signature_of, config._use_fp64_for_unbacked_floats), and the kernels' scale_bound and
    likelihood_bound must be fp32 there (`Expected dtype ['fp32'] but got fp64` in div_rn).
    Kernels that convert them (`.to(tl.float32)`: the same rounding as Triton's host-side
    float32 packing, so the same bits) say so with SCALAR_BOUNDS_ANY_FLOAT = True; until then
    compiled graphs call the opaque ops, which launch the kernels eagerly."""
    return bool(getattr(_get_kernels(), "SCALAR_BOUNDS_ANY_FLOAT", False))


def gaussian_quantize_triton(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                             temperature: Tensor, mode: str, scale_bound: float,
                             likelihood_bound: float, zero_center: bool,
                             checked: bool = False) -> tuple[Tensor, Tensor]:
    """(y_hat, likelihoods) through the Triton op; arguments as lic_quant::quantize_forward.
    `checked`: lic_quant.gaussian_quantize has checked the arguments and the backend's
    availability and made the seed and the temperature tensors (then an eager call skips the op's
    own checks)."""
    if not checked:
        check_available(y)
    if torch.compiler.is_compiling() or not checked:
        return torch.ops.lic_quant.triton_quantize_forward(
            y, scales, means, seed, temperature, mode, float(scale_bound),
            float(likelihood_bound), bool(zero_center))
    if temperature.device.type == "cpu" and y.device.type == "cpu":
        _check_temperature_value(temperature)  # the interpreter: as the op does
    return _EagerQuantize.apply(y, scales, means, seed, temperature, mode, float(scale_bound),
                                float(likelihood_bound), bool(zero_center))


# ---------------------------------------------------------------------------------------------
# Test and diagnostic entry points (not part of the public API).

def _launch_simple(name: str, x_like: Tensor, n: int, args: tuple) -> None:
    k = _get_kernels()
    on_gpu = not interpreted()
    block = _interpreter_block(n) if not on_gpu else 1024
    getattr(k, f"{name}_kernel")[(triton.cdiv(n, block),)](*args, ON_GPU=on_gpu, BLOCK=block)


def uniform_noise_triton(numel: int, seed: Tensor, *, start: int = 0) -> Tensor:
    """u for logical indices start .. start + numel - 1 (float32), drawn by the Triton kernels'
    noise function; `start` reaches indices >= 2^32 without allocating them. It must be a
    multiple of 4: the kernels draw whole Philox blocks (noise stream v2)."""
    if start % 4:
        raise ValueError(f"lic_quant: start must be a multiple of 4; got {start}")
    out = torch.empty(numel, dtype=torch.float32, device=seed.device)
    if numel:
        _launch_simple("uniform_noise", out, numel, (seed, out, numel, start))
    return out


def normal_sf_triton(x: Tensor) -> Tensor:
    """Q(x) = P(X > x) for a float32 tensor, by the kernels' float32 normal tail."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _launch_simple("normal_sf", x, x.numel(), (x, out, x.numel()))
    return out


def _quantize_forward_at(y: Tensor, scales: Tensor, means: Optional[Tensor], seed: Tensor,
                         temperature: Tensor, mode: str, scale_bound: float,
                         likelihood_bound: float, zero_center: bool, index_base: int):
    """The forward kernel with logical indices shifted by index_base (tests of indices >= 2^32), a
    multiple of 4 (whole Philox blocks)."""
    if index_base % 4:
        raise ValueError(f"lic_quant: index_base must be a multiple of 4; got {index_base}")
    k = _get_kernels()
    on_gpu = not interpreted()
    y_hat = torch.empty_like(y)
    lik = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    n = y.numel()
    block = _interpreter_block(n) if not on_gpu else 1024
    k.quantize_forward_kernel[(triton.cdiv(n, block),)](
        _raw(y), _raw(means if means is not None else y), _raw(scales), seed, temperature,
        _raw(y_hat), lik, n, index_base, float(scale_bound), float(likelihood_bound),
        MODE=_mode_index(mode), ZERO_CENTER=zero_center, HAS_MEANS=means is not None,
        IS_BF16=y.dtype == torch.bfloat16, ON_GPU=on_gpu, BLOCK=block)
    return y_hat, lik
