"""The public functions of SPEC section 4: argument checks, seed handling and backend choice."""
from __future__ import annotations

import torch

from . import _ops, noise as _noise
from .reference import MODES, gaussian_quantize_reference

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t, y: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"lic_quant: {name} must be a torch.Tensor; got {type(t).__name__}")
    if y is None:
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"lic_quant: {name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
        return
    if t.shape != y.shape:
        raise ValueError(
            f"lic_quant: {name} must have the shape of y {tuple(y.shape)}; got {tuple(t.shape)}")
    if t.dtype != y.dtype:
        raise TypeError(f"lic_quant: {name} must have the dtype of y ({y.dtype}); got {t.dtype}")
    if t.device != y.device:
        raise ValueError(f"lic_quant: {name} must be on the device of y ({y.device}); got {t.device}")


def _check_scalar(name: str, value, low: float, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"lic_quant: {name} must be a real number; got {type(value).__name__}")
    if not (value >= low and (high is None or value <= high)):  # NaN fails too
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"lic_quant: {name} must be {bounds}; got {value}")


def make_seed(seed, device: torch.device) -> torch.Tensor:
    """The 0-dim int64 seed tensor on `device`: drawn from torch's generator of that device when
    `seed` is None, so torch.manual_seed governs reproducibility."""
    if seed is None:
        return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError(f"lic_quant: seed must be a 0-dim int64 tensor; got {seed.dtype} "
                            f"with shape {tuple(seed.shape)}")
        return seed.to(device, non_blocking=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"lic_quant: seed must be None, an int or a 0-dim int64 tensor; "
                        f"got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"lic_quant: seed must fit in 64 bits; got {seed}")
    if seed >= 2**63:
        seed -= 2**64  # same 64 bits, as a signed int64
    return torch.tensor(seed, dtype=torch.int64, device=device)


def _temperature_tensor(temperature, device: torch.device) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise TypeError("lic_quant: temperature must be a float or a one-element float tensor")
        # A CPU value is checked here (cheap); reading a CUDA one would synchronize, and a traced
        # one has no value yet: those are the caller's to keep in [0, 1].
        if temperature.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_scalar("temperature", float(temperature), 0.0, 1.0)
        return temperature.reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
    _check_scalar("temperature", temperature, 0.0, 1.0)
    return torch.full((), float(temperature), dtype=torch.float64, device=device)


def _resolve_backend(backend: str, y: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"lic_quant: backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        if not _ops.extension_available():
            return "reference"
        backend = "cuda" if y.device.type == "cuda" else "cpu"
        if backend == "cpu" and y.device.type != "cpu":
            return "reference"
    if backend == "cpu":
        if not _ops.extension_available():
            raise RuntimeError(f"lic_quant: backend='cpu' is not available: the C++ extension did "
                               f"not load ({_ops.EXTENSION_ERROR})")
        if y.device.type != "cpu":
            raise ValueError(f"lic_quant: backend='cpu' needs CPU tensors; y is on {y.device}")
    elif backend == "cuda":
        if not _ops.cuda_kernels_built():
            raise RuntimeError("lic_quant: backend='cuda' is not available: the extension was "
                               "built without its CUDA kernels")
        if y.device.type != "cuda":
            raise ValueError(f"lic_quant: backend='cuda' needs CUDA tensors; y is on {y.device}")
    elif backend == "triton":
        from . import triton_ops

        triton_ops.check_available(y)
    return backend


def gaussian_quantize(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor | None = None,
    *,
    mode: str = "sua",
    temperature=1.0,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
    zero_center: bool = True,
    seed=None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization surrogate and discretized-Gaussian likelihood in one fused op.

    Returns ``(y_hat, likelihoods)`` as CompressAI's GaussianConditional does. See SPEC.md.
    """
    _check_tensor("y", y)
    _check_tensor("scales", scales, y)
    if means is not None:
        _check_tensor("means", means, y)
    if mode not in MODES:
        raise ValueError(f"lic_quant: mode must be one of {MODES}; got {mode!r}")
    _check_scalar("scale_bound", scale_bound, 0.0)
    _check_scalar("likelihood_bound", likelihood_bound, 0.0)
    if not isinstance(zero_center, bool):
        raise TypeError(f"lic_quant: zero_center must be a bool; got {type(zero_center).__name__}")
    backend = _resolve_backend(backend, y)
    seed_t = make_seed(seed, y.device)
    temp_t = _temperature_tensor(temperature, y.device)

    if backend == "reference":
        u = uniform_noise(y.shape, seed_t, device=y.device) if mode != "ste" else None
        return gaussian_quantize_reference(
            y, scales, means, u, mode=mode, temperature=temperature, scale_bound=scale_bound,
            likelihood_bound=likelihood_bound, zero_center=zero_center)
    if backend == "triton":
        from . import triton_ops

        return triton_ops.gaussian_quantize_triton(
            y, scales, means, seed_t, temp_t, mode, float(scale_bound), float(likelihood_bound),
            zero_center)
    return torch.ops.lic_quant.quantize_forward(
        y, scales, means, seed_t, temp_t, mode, float(scale_bound), float(likelihood_bound),
        zero_center)


def uniform_noise(shape, seed, *, device=None) -> torch.Tensor:
    """Exactly the u in [-1/2, 1/2) the kernels draw for `seed`, as float32 of `shape`."""
    shape = torch.Size(shape)
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    seed_t = make_seed(seed, device) if seed is not None else None
    if seed_t is None:
        raise TypeError("lic_quant: uniform_noise needs a seed (int or 0-dim int64 tensor)")
    if _ops.extension_available() and (device.type == "cpu" or _ops.cuda_kernels_built()):
        return torch.ops.lic_quant.uniform_noise(seed_t, list(shape))
    return _noise.philox_uniform(shape, seed_t, device=device)
