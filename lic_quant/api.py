"""The public functions of docs/spec.md section 4: argument checks, seed handling and backend
choice."""
from __future__ import annotations

import torch

from . import _ops, noise as _noise
from .reference import MODES, gaussian_quantize_reference

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_tensor(name: str, t, y: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"lic_quant: {name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"lic_quant: {name} must be a dense (strided) tensor; got {t.layout}")
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


def _check_bounds(scale_bound, likelihood_bound) -> None:
    """docs/spec.md section 4: a finite scale bound >= 0, a likelihood bound in [0, 1) (a bound
    of 1 or more would make likelihoods of 1 or more: zero or negative bits)."""
    _check_scalar("scale_bound", scale_bound, 0.0)
    if scale_bound == float("inf"):
        raise ValueError(f"lic_quant: scale_bound must be finite; got {scale_bound}")
    _check_scalar("likelihood_bound", likelihood_bound, 0.0)
    if not likelihood_bound < 1.0:
        raise ValueError(f"lic_quant: likelihood_bound must lie in [0, 1); got {likelihood_bound}")


def _check_host_tensor(name: str, t: torch.Tensor, device: torch.device) -> None:
    """A seed or temperature tensor lives on y's device, or on the CPU (copied over)."""
    if t.layout != torch.strided:
        raise TypeError(f"lic_quant: {name} must be a dense (strided) tensor; got {t.layout}")
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"lic_quant: {name} must be on the device of y ({device}) or on the "
                         f"CPU; got {t.device}")


def _seed_int(seed) -> int | None:
    """None or the seed as a signed 64-bit int (the same 64 bits)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"lic_quant: seed must be None, an int or a 0-dim int64 tensor; "
                        f"got {type(seed).__name__}")
    if not _INT64_MIN <= seed < 2**64:
        raise ValueError(f"lic_quant: seed must fit in 64 bits; got {seed}")
    return seed - 2**64 if seed > _INT64_MAX else seed


def _draws_on_host(device: torch.device) -> bool:
    """Whether lic_quant::draw_seed can draw for `device` (eagerly, without a kernel)."""
    if not _ops.extension_available() or torch.compiler.is_compiling():
        return False
    if device.type == "cpu":
        return True
    return (device.type == "cuda" and _ops.cuda_kernels_built()
            and not torch.cuda.is_current_stream_capturing())


def make_seed(seed, device: torch.device) -> torch.Tensor:
    """The 0-dim int64 seed tensor on `device`. For seed=None it is drawn from torch's generator of
    that device (on the host where the extension is built, by a randint kernel while compiling or
    capturing a CUDA graph), so torch.manual_seed governs reproducibility: after the same
    torch.manual_seed, make_seed(None, device) returns the seed gaussian_quantize would draw."""
    device = torch.device(device)
    if isinstance(seed, torch.Tensor):
        _check_host_tensor("seed", seed, device)
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError(f"lic_quant: seed must be a 0-dim int64 tensor; got {seed.dtype} "
                            f"with shape {tuple(seed.shape)}")
        return seed.to(device, non_blocking=True)
    value = _seed_int(seed)
    if value is None:
        if not _draws_on_host(device):
            return torch.randint(_INT64_MIN, _INT64_MAX, (), dtype=torch.int64, device=device)
        value = torch.ops.lic_quant.draw_seed(device)
    return torch.tensor(value, dtype=torch.int64, device=device)


def _temperature_tensor(temperature, device: torch.device) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        _check_host_tensor("temperature", temperature, device)
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise TypeError("lic_quant: temperature must be a float or a one-element float tensor")
        # A CPU value is checked here (cheap); reading a CUDA one would synchronize, and a traced
        # one has no value yet: those are the caller's to keep in [0, 1].
        if temperature.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_scalar("temperature", float(temperature.detach()), 0.0, 1.0)
        return temperature.reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
    _check_scalar("temperature", temperature, 0.0, 1.0)
    return torch.full((), float(temperature), dtype=torch.float64, device=device)


_EAGER = _ops.EAGER_ENTRY
_EAGER_ARGUMENTS = _ops.EAGER_ARGUMENTS
_is_compiling = torch.compiler.is_compiling
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled


def _resolve_backend(backend: str, y: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"lic_quant: backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        if not _ops.extension_available():
            _ops.warn_reference_fallback()
            return "reference"
        backend = "cuda" if y.device.type == "cuda" else "cpu"
        if backend == "cpu" and y.device.type != "cpu":
            return "reference"
    if backend == "cpu":
        if not _ops.extension_available():
            raise RuntimeError(f"lic_quant: backend='cpu' is not available: "
                               f"{_ops.missing_extension_message()}")
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

    Returns ``(y_hat, likelihoods)`` as CompressAI's GaussianConditional does. See docs/spec.md.
    """
    # The eager path of the C++/CUDA kernels, entered once: plain tensors and Python values are
    # checked in C++ (with the messages below) and the seed and temperature tensors are made there
    # without a kernel. Anything else (the reference and Triton backends, subclasses, seed or
    # temperature tensors the ops cannot take as they are, torch.compile, torch function modes)
    # returns NotImplemented there or skips it, and takes the path below.
    if _EAGER is not None and not _is_compiling() and not _torch_function_mode_enabled():
        if backend != "triton":
            out = _EAGER(y, scales, means, seed, temperature, mode, scale_bound,
                         likelihood_bound, zero_center, backend)
            if out is not NotImplemented:
                return out
        elif isinstance(y, torch.Tensor):
            # Triton launches from Python: the same checks, seed and temperature in C, then the
            # launch (availability first, so an unavailable backend draws no seed).
            from . import triton_ops

            triton_ops.check_available(y)
            args = _EAGER_ARGUMENTS(y, scales, means, seed, temperature, mode, scale_bound,
                                    likelihood_bound, zero_center)
            if args is not NotImplemented:
                return triton_ops.gaussian_quantize_triton(
                    y, scales, means, args[0], args[1], mode, float(scale_bound),
                    float(likelihood_bound), zero_center, checked=True)
    _check_tensor("y", y)
    _check_tensor("scales", scales, y)
    if means is not None:
        _check_tensor("means", means, y)
    if mode not in MODES:
        raise ValueError(f"lic_quant: mode must be one of {MODES}; got {mode!r}")
    _check_bounds(scale_bound, likelihood_bound)
    if not isinstance(zero_center, bool):
        raise TypeError(f"lic_quant: zero_center must be a bool; got {type(zero_center).__name__}")
    backend = _resolve_backend(backend, y)

    if backend == "triton" and not isinstance(seed, torch.Tensor) \
            and not isinstance(temperature, torch.Tensor) and _draws_on_host(y.device):
        _check_scalar("temperature", temperature, 0.0, 1.0)
        seed_t, temp_t = torch.ops.lic_quant.scalar_tensors(y.device, _seed_int(seed),
                                                            float(temperature))
    else:
        seed_t = make_seed(seed, y.device)
        temp_t = _temperature_tensor(temperature, y.device)

    if backend == "reference":
        u = uniform_noise(y.shape, seed_t, device=y.device) if mode != "ste" else None
        # A tensor temperature goes in as the 0-dim temp_t: its own shape must not broadcast
        # the outputs (they always have y's shape).
        t = temp_t if isinstance(temperature, torch.Tensor) else temperature
        return gaussian_quantize_reference(
            y, scales, means, u, mode=mode, temperature=t, scale_bound=scale_bound,
            likelihood_bound=likelihood_bound, zero_center=zero_center)
    if backend == "triton":
        from . import triton_ops

        return triton_ops.gaussian_quantize_triton(
            y, scales, means, seed_t, temp_t, mode, float(scale_bound), float(likelihood_bound),
            zero_center, checked=True)
    return torch.ops.lic_quant.quantize_forward(
        y, scales, means, seed_t, temp_t, mode, float(scale_bound), float(likelihood_bound),
        zero_center)


def uniform_noise(shape, seed, *, device=None) -> torch.Tensor:
    """Exactly the u in [-1/2, 1/2) the kernels draw for `seed`, as float32 of `shape` (a tuple,
    a torch.Size or an int, as torch.rand takes)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = torch.Size(shape)
    except TypeError:
        raise TypeError(f"lic_quant: shape must be an int or a sequence of ints; got "
                        f"{shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"lic_quant: shape must not have negative sizes; got {tuple(shape)}")
    if seed is None:
        raise TypeError("lic_quant: uniform_noise needs a seed (int or 0-dim int64 tensor)")
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    seed_t = make_seed(seed, device)
    if _ops.extension_available() and (device.type == "cpu" or _ops.cuda_kernels_built()):
        return torch.ops.lic_quant.uniform_noise(seed_t, list(shape))
    return _noise.philox_uniform(shape, seed_t, device=device)
