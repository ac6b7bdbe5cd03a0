"""The public functions of docs/spec.md section 4: one route per backend.

- cpu / cuda: the C++ eager entry ``lic_quant._C.quantize_eager`` (checks, seed and temperature
  tensors, dispatch, autograd node, all in C++), or ``torch.ops.lic_quant.quantize_forward`` where
  the entry declines (torch.compile, fake tensors, tensor subclasses, torch function modes, seed or
  temperature tensors it cannot take as they are).
- triton: ``lic_quant.triton_ops.TritonQuantize`` around ``torch.ops.lic_quant.triton_quantize_forward``
  (mixtures: ``TritonMixtureQuantize`` around ``triton_mixture_quantize_forward``).
- reference: lic_quant/reference.py on the same noise.
Argument rules and messages: lic_quant/_checks.py.
"""
from __future__ import annotations

import torch

from . import _ops, noise as _noise
from ._checks import (BACKENDS, check_call, check_choice, check_eb_call, check_host_tensor,
                      check_mixture_call, check_seed, check_unit_interval, INT64_MAX, INT64_MIN)
from .reference import (entropy_bottleneck_reference, mixture_quantize_reference,
                        quantize_reference)

_EAGER = _ops.EAGER_ENTRY
_is_compiling = torch.compiler.is_compiling
_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled


def _draws_on_host(device: torch.device) -> bool:
    """Whether lic_quant::draw_seed and scalar_tensors can make the seed and temperature for
    `device` eagerly, without a kernel."""
    if not _ops.extension_available() or _is_compiling():
        return False
    if device.type == "cpu":
        return True
    return (device.type == "cuda" and _ops.cuda_kernels_built()
            and not torch.cuda.is_current_stream_capturing())


def make_seed(seed, device: torch.device) -> torch.Tensor:
    """The 0-dim int64 seed tensor on `device`. For seed=None it is drawn from torch's generator of
    that device (on the host where the extension is built, by a randint kernel while compiling or
    capturing a CUDA graph), so torch.manual_seed governs reproducibility: after the same
    torch.manual_seed, make_seed(None, device) returns the seed the op would draw."""
    device = torch.device(device)
    if isinstance(seed, torch.Tensor):
        check_host_tensor("seed", seed, device, torch.int64, "a 0-dim int64 tensor")
        return seed.to(device, non_blocking=True)
    value = check_seed(seed)
    if value is None:
        if not _draws_on_host(device):
            return torch.randint(INT64_MIN, INT64_MAX, (), dtype=torch.int64, device=device)
        value = torch.ops.lic_quant.draw_seed(device)
    return torch.tensor(value, dtype=torch.int64, device=device)


def _temperature_tensor(temperature, device: torch.device) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        check_host_tensor("temperature", temperature, device, torch.float64,
                            "a float or a one-element float tensor")
        # A CPU value is checked here (cheap); reading a CUDA one would synchronize, and a traced
        # one has no value yet: those are the caller's to keep in [0, 1].
        if temperature.device.type == "cpu" and not _is_compiling():
            check_unit_interval("temperature", float(temperature.detach()))
        return temperature.reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
    return torch.full((), check_unit_interval("temperature", temperature), dtype=torch.float64,
                      device=device)


def _scalar_tensors(seed, temperature, device: torch.device):
    """The seed and temperature tensors of one call (one host-to-device copy where it can)."""
    if not isinstance(seed, torch.Tensor) and not isinstance(temperature, torch.Tensor) \
            and _draws_on_host(device):
        return torch.ops.lic_quant.scalar_tensors(device, check_seed(seed),
                                                  check_unit_interval("temperature", temperature))
    return make_seed(seed, device), _temperature_tensor(temperature, device)


def _resolve_backend(backend: str, y: torch.Tensor) -> str:
    check_choice("backend", backend, BACKENDS)
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


def _quantize(y, scales, means, family, mode, temperature, scale_bound, likelihood_bound,
              zero_center, seed, backend, rate):
    """Every call the C++ eager entry does not take: Python checks, then the backend's op."""
    check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, zero_center, rate)
    backend = _resolve_backend(backend, y)
    seed_t, temp_t = _scalar_tensors(seed, temperature, y.device)
    if backend == "reference":
        u = uniform_noise(y.shape, seed_t, device=y.device) if mode != "ste" else None
        # A tensor temperature goes in as the 0-dim temp_t: its own shape must not broadcast
        # the outputs (they always have y's shape).
        t = temp_t if isinstance(temperature, torch.Tensor) else temperature
        return quantize_reference(y, scales, means, u, family=family, mode=mode,
                                  temperature=t, scale_bound=scale_bound,
                                  likelihood_bound=likelihood_bound, zero_center=zero_center,
                                  rate=rate)
    if backend == "triton":  # _resolve_backend has imported lic_quant.triton_ops
        from .triton_ops import TritonQuantize

        # Dynamo traces the op (autograd by register_autograd) but not every use of an
        # autograd.Function (it fails on one whose inputs need no grad); eager calls take the
        # Function, which torch.func transforms accept.
        op = (torch.ops.lic_quant.triton_quantize_forward if _is_compiling()
              else TritonQuantize.apply)
    else:
        op = torch.ops.lic_quant.quantize_forward
    return op(y, scales, means, seed_t, temp_t, mode, float(scale_bound), float(likelihood_bound),
              zero_center, family, rate)


def quantize(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor | None = None,
    *,
    family: str = "gaussian",
    mode: str = "sua",
    temperature=1.0,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
    zero_center: bool = True,
    seed=None,
    backend: str = "auto",
    rate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization surrogate and discretized likelihood of a location-scale `family` in one
    fused op (docs/spec.md sections 1-4, 6). Returns ``(y_hat, likelihoods)`` as CompressAI's
    GaussianConditional does. rate=True returns ``(y_hat, bits)`` instead (section 8): bits of
    shape (y.shape[0],), the sum of -log2 P over each sample, without a likelihood tensor."""
    if _EAGER is not None and not _is_compiling() and not _torch_function_mode_enabled():
        out = _EAGER(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
                     zero_center, family, backend, rate)
        if out is not NotImplemented:
            return out
    return _quantize(y, scales, means, family, mode, temperature, scale_bound, likelihood_bound,
                     zero_center, seed, backend, rate)


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
    rate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize(..., family="gaussian")``: the mean-scale Gaussian conditional."""
    return quantize(y, scales, means, family="gaussian", mode=mode, temperature=temperature,
                    scale_bound=scale_bound, likelihood_bound=likelihood_bound,
                    zero_center=zero_center, seed=seed, backend=backend, rate=rate)


# The backends with mixture kernels; the others raise NotImplementedError rather than run
# something slower than the caller asked for.
MIXTURE_BACKENDS = ("reference", "cpu", "cuda", "triton")


def mixture_quantize(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor,
    weights: torch.Tensor,
    *,
    family: str = "gaussian",
    weights_are_logits: bool = False,
    mode: str = "noise",
    temperature=1.0,
    zero_center: bool = False,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
    seed=None,
    backend: str = "auto",
    rate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization surrogate and discretized likelihood of a K-component mixture of a
    location-scale `family` in one fused op (docs/spec.md section 7). Returns
    ``(y_hat, likelihoods)``; with the defaults it is CompressAI's
    ``GaussianMixtureConditional.forward`` in training. rate=True returns ``(y_hat, bits)``
    instead (section 8): bits of shape (y.shape[0],), the sum of -log2 P over each sample,
    without a likelihood tensor.

    scales, means and weights have shape (K, *y.shape), 1 <= K <= 8. The kernels read them in
    place where component k's element i lies at k * stride_k + (i // inner) * stride_outer +
    i % inner: the contiguous layout, and CompressAI's channel-blocked (N, K*M, H, W) tensors
    viewed as ``t.unflatten(1, (K, M)).movedim(1, 0)``, which costs no copy. Other layouts are
    copied to contiguous first (one extra read and write of that tensor). The gradients of the
    parameters come back in the parameters' own layout where they are read in place.
    weights are probabilities, or logits softmaxed over K inside the kernel with
    weights_are_logits=True.
    """
    check_mixture_call(y, scales, means, weights, family, weights_are_logits, mode, scale_bound,
                       likelihood_bound, zero_center, rate)
    backend = _resolve_backend(backend, y)
    if backend not in MIXTURE_BACKENDS:
        raise NotImplementedError(
            f"lic_quant: mixture_quantize has no {backend!r} kernels yet (backend={backend!r}); "
            f"use one of {MIXTURE_BACKENDS}")
    seed_t, temp_t = _scalar_tensors(seed, temperature, y.device)
    settings = dict(family=family, weights_are_logits=weights_are_logits, mode=mode,
                    zero_center=zero_center, scale_bound=float(scale_bound),
                    likelihood_bound=float(likelihood_bound))
    if backend == "reference":
        u = uniform_noise(y.shape, seed_t, device=y.device) if mode != "ste" else None
        t = temp_t if isinstance(temperature, torch.Tensor) else temperature
        return mixture_quantize_reference(y, scales, means, weights, u, temperature=t, rate=rate,
                                          **settings)
    args = (y, scales, means, weights, seed_t, temp_t, mode, float(scale_bound),
            float(likelihood_bound), zero_center, family, weights_are_logits, rate)
    if backend == "triton":  # as in _quantize
        from .triton_ops import TritonMixtureQuantize

        if _is_compiling():
            return torch.ops.lic_quant.triton_mixture_quantize_forward(*args)
        return TritonMixtureQuantize.apply(*args)
    return torch.ops.lic_quant.mixture_quantize_forward(*args)


# The backends with EntropyBottleneck kernels (docs/spec.md section 9).
EB_BACKENDS = ("reference", "cpu", "cuda", "triton")


def entropy_bottleneck(
    z: torch.Tensor,
    medians: torch.Tensor,
    matrices,
    biases,
    factors,
    *,
    mode: str = "noise",
    temperature=1.0,
    likelihood_bound: float = 1e-9,
    seed=None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization surrogate and likelihood of the factorized prior (docs/spec.md section 9) in
    one fused op: ``(z_hat, likelihoods)`` for z of shape (N, C, ...), the channels' medians (C,)
    and CompressAI's ``EntropyBottleneck`` parameter lists (``matrices``, ``biases``,
    ``factors``). The lattice is centred at the medians; the likelihood is the channel's learned
    CDF difference at v -+ 1/2. Gradients reach z and every parameter; the medians get none (they
    learn through ``EntropyBottleneck.loss()``)."""
    matrices, biases, factors = list(matrices), list(biases), list(factors)
    check_eb_call(z, medians, matrices, biases, factors, mode, likelihood_bound)
    backend = _resolve_backend(backend, z)
    if backend not in EB_BACKENDS:
        raise NotImplementedError(
            f"lic_quant: entropy_bottleneck has no {backend!r} kernels yet (backend={backend!r}); "
            f"use one of {EB_BACKENDS}")
    seed_t, temp_t = _scalar_tensors(seed, temperature, z.device)
    if backend == "reference":
        u = uniform_noise(z.shape, seed_t, device=z.device) if mode != "ste" else None
        t = temp_t if isinstance(temperature, torch.Tensor) else temperature
        return entropy_bottleneck_reference(z, medians, matrices, biases, factors, u, mode=mode,
                                            temperature=t, likelihood_bound=likelihood_bound)
    if backend == "triton":  # as in _quantize: the op when compiling, else the Function
        from .triton_ops import TritonEntropyBottleneck

        if _is_compiling():
            return torch.ops.lic_quant.triton_entropy_bottleneck_forward(
                z, medians, matrices, biases, factors, seed_t, temp_t, mode,
                float(likelihood_bound))
        return TritonEntropyBottleneck.apply(z, medians, seed_t, temp_t, mode,
                                             float(likelihood_bound), len(matrices), *matrices,
                                             *biases, *factors)
    return torch.ops.lic_quant.entropy_bottleneck_forward(
        z, medians, matrices, biases, factors, seed_t, temp_t, mode, float(likelihood_bound))


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
        raise TypeError("lic_quant: seed must be an int or a 0-dim int64 tensor for "
                        "uniform_noise; got None")
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    seed_t = make_seed(seed, device)
    if _ops.extension_available() and (device.type == "cpu" or _ops.cuda_kernels_built()):
        return torch.ops.lic_quant.uniform_noise(seed_t, list(shape))
    return _noise.philox_uniform(shape, seed_t, device=device)
