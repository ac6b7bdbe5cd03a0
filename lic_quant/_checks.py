"""The argument rules of docs/spec.md section 4, once for Python: the lists of modes, families and
backends, the dtype rules, and every check with its message. The API, the Triton backend, the
modules and the schedules use these; csrc/lic_quant/checks.h holds the same rules for C++, with the
same messages, and tests/contract/test_errors.py checks that both lists agree.
"""
from __future__ import annotations

import math

import torch

# The order is the kernels' numbering (csrc/lic_quant/quantize_math.h, _triton_kernels.py).
MODES = ("noise", "ste", "mixed", "sua")
FAMILIES = ("gaussian", "laplace", "logistic")
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
MAX_COMPONENTS = 8  # mixtures (docs/spec.md section 7): 1 <= K <= 8
# EntropyBottleneck (section 9): at most this many layers (CompressAI's default has 5)
MAX_EB_LAYERS = 8
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

SECOND_DERIVATIVE_ERROR = (
    "lic_quant: the second derivative of the quantize ops is not implemented (docs/spec.md "
    "section 4): a gradient computed with create_graph=True through lic_quant's backward cannot "
    "be differentiated again")


FORWARD_MODE_ERROR = (
    "lic_quant: the quantize ops have no forward-mode derivative (torch.autograd.forward_ad, "
    "torch.func.jvp); use reverse mode (backward, torch.autograd.grad, torch.func.grad)")


def likelihood_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 likelihoods for reduced and single precision (1e-9 does not exist in float16),
    float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"lic_quant: {name} must be one of {choices}; got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"lic_quant: {name} must be a bool; got {type(value).__name__}")


def check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"lic_quant: {name} must be a real number; got {type(value).__name__}")
    return float(value)


def check_unit_interval(name: str, value) -> float:
    """A real number in [0, 1] (temperatures)."""
    value = check_real(name, value)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"lic_quant: {name} must lie in [0, 1]; got {value}")
    return value


def check_bounds(scale_bound, likelihood_bound) -> None:
    """A finite scale bound >= 0; a likelihood bound in [0, 1) (a bound of 1 or more would give
    likelihoods of 1 or more: zero or negative bits)."""
    if not 0.0 <= check_real("scale_bound", scale_bound) < math.inf:
        raise ValueError(f"lic_quant: scale_bound must be finite and >= 0; got {scale_bound}")
    if not 0.0 <= check_real("likelihood_bound", likelihood_bound) < 1.0:
        raise ValueError(f"lic_quant: likelihood_bound must lie in [0, 1); got {likelihood_bound}")


def check_dense(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"lic_quant: {name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"lic_quant: {name} must be a dense (strided) tensor; got {t.layout}")


def check_input(name: str, t, y: torch.Tensor | None = None) -> None:
    """y itself (y=None): a dense floating tensor of a supported dtype. Any other input: a dense
    tensor with y's shape, dtype and device."""
    check_dense(name, t)
    if y is None:
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"lic_quant: {name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
        return
    if t.shape != y.shape:
        raise ValueError(
            f"lic_quant: {name} must have the shape of y {tuple(y.shape)}; got {tuple(t.shape)}")
    _check_dtype_device(name, t, y)


def _check_dtype_device(name: str, t: torch.Tensor, y: torch.Tensor) -> None:
    if t.dtype != y.dtype:
        raise TypeError(f"lic_quant: {name} must have the dtype of y ({y.dtype}); got {t.dtype}")
    if t.device != y.device:
        raise ValueError(f"lic_quant: {name} must be on the device of y ({y.device}); got {t.device}")


def _kind_error(name: str, t: torch.Tensor, kind: str) -> TypeError:
    return TypeError(f"lic_quant: {name} must be {kind}; got {t.dtype} with shape {tuple(t.shape)}")


def check_host_tensor(name: str, t, device: torch.device, dtype: torch.dtype, kind: str) -> None:
    """A seed (int64, 0-dim) or temperature (floating, one element) tensor given to the API: on
    y's device or on the CPU (then copied over)."""
    check_dense(name, t)
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"lic_quant: {name} must be on the device of y ({device}) or on the "
                         f"CPU; got {t.device}")
    if dtype == torch.int64:
        if t.dim() != 0 or t.dtype != torch.int64:
            raise _kind_error(name, t, kind)
    elif t.numel() != 1 or not t.dtype.is_floating_point:
        raise _kind_error(name, t, kind)


def check_op_tensor(name: str, t, y: torch.Tensor, dtype: torch.dtype, kind: str) -> None:
    """The ops' seed and temperature: 0-dim, of the schema's dtype, on y's device."""
    if t.dtype != dtype or t.dim() != 0:
        raise _kind_error(name, t, kind)
    if t.device != y.device:
        raise ValueError(f"lic_quant: {name} must be on the device of y ({y.device}); got {t.device}")


def check_seed(seed) -> int | None:
    """None, or an int seed as a signed 64-bit int (the same 64 bits)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"lic_quant: seed must be None, an int or a 0-dim int64 tensor; "
                        f"got {type(seed).__name__}")
    if not INT64_MIN <= seed < 2**64:
        raise ValueError(f"lic_quant: seed must fit in 64 bits; got {seed}")
    return seed - 2**64 if seed > INT64_MAX else seed


def check_rate(y, rate) -> None:
    """rate=True sums per sample along y's dim 0: y needs one."""
    check_bool("rate", rate)
    if rate and y.dim() == 0:
        raise ValueError("lic_quant: rate=True needs y with at least 1 dimension (bits are per "
                         "sample along y's dim 0); got a 0-dim y")


def rate_shape(y: torch.Tensor) -> tuple:
    """The shape of the bits output: one value per sample along y's dim 0."""
    return (y.shape[0],)


def check_call(y, scales, means, family: str, mode: str, scale_bound, likelihood_bound,
               zero_center, rate=False) -> None:
    """Everything of one call that does not depend on the backend, in the order of the
    arguments."""
    check_input("y", y)
    check_input("scales", scales, y)
    if means is not None:
        check_input("means", means, y)
    check_choice("family", family, FAMILIES)
    check_choice("mode", mode, MODES)
    check_bounds(scale_bound, likelihood_bound)
    check_bool("zero_center", zero_center)
    check_rate(y, rate)


def check_component_input(name: str, t, y: torch.Tensor, first: torch.Tensor | None = None) -> int:
    """A mixture parameter (docs/spec.md section 7): shape (K, *y.shape) with 1 <= K <=
    MAX_COMPONENTS, the shape of `first` (the scales) when given, y's dtype and device. Returns K."""
    check_dense(name, t)
    if first is not None:
        if t.shape != first.shape:
            raise ValueError(f"lic_quant: {name} must have the shape of scales "
                             f"{tuple(first.shape)}; got {tuple(t.shape)}")
    elif t.dim() != y.dim() + 1 or t.shape[1:] != y.shape:
        raise ValueError(f"lic_quant: {name} must have shape (K, *y.shape) with y of shape "
                         f"{tuple(y.shape)}; got {tuple(t.shape)}")
    elif not 1 <= t.shape[0] <= MAX_COMPONENTS:
        raise ValueError(f"lic_quant: {name} must have 1 <= K <= {MAX_COMPONENTS} mixture "
                         f"components (its first dimension); got K = {t.shape[0]}")
    _check_dtype_device(name, t, y)
    return t.shape[0]


def check_mixture_call(y, scales, means, weights, family: str, weights_are_logits, mode: str,
                       scale_bound, likelihood_bound, zero_center, rate=False) -> None:
    """check_call for mixture_quantize, in the order of its arguments."""
    check_input("y", y)
    check_component_input("scales", scales, y)
    check_component_input("means", means, y, scales)
    check_component_input("weights", weights, y, scales)
    check_choice("family", family, FAMILIES)
    check_bool("weights_are_logits", weights_are_logits)
    check_choice("mode", mode, MODES)
    check_bounds(scale_bound, likelihood_bound)
    check_bool("zero_center", zero_center)
    check_rate(y, rate)


def component_layout(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_k, stride_outer, inner) when element i of component k of a (K, *shape) tensor lies
    at k * stride_k + (i // inner) * stride_outer + i % inner (the contiguous layout and CompressAI's
    channel-blocked view (N, K*M, H, W).unflatten(1, (K, M)).movedim(1, 0) among others: the
    kernels read these in place); None otherwise (the kernels read a contiguous copy). The same
    rule as component_layout in csrc/lic_quant/checks.h."""
    sizes, strides = t.shape, t.stride()
    d, inner = len(sizes) - 1, 1
    while d >= 1 and (sizes[d] == 1 or strides[d] == inner):
        inner *= max(sizes[d], 1)  # torch's contiguous strides treat a size 0 as 1
        d -= 1
    outer_stride, expected = 0, None
    for dd in range(d, 0, -1):
        if sizes[dd] == 1:
            continue
        if expected is None:
            outer_stride = strides[dd]
        elif strides[dd] != expected:
            return None
        expected = strides[dd] * max(sizes[dd], 1)
    return strides[0], outer_stride, inner


# ---------------------------------------------------------------------------------------------
# The factorized prior (docs/spec.md section 9). csrc/lic_quant/checks.h's check_eb_call has the
# same rules and messages.

def check_eb_parameter(name: str, t, z: torch.Tensor, shape: tuple) -> None:
    """One parameter of the channel MLP: exactly `shape`, z's dtype and device."""
    check_dense(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"lic_quant: {name} must have shape {shape}; got {tuple(t.shape)}")
    _check_dtype_device(name, t, z)


def check_eb_list(name: str, t, length: int) -> None:
    if not isinstance(t, (list, tuple)):
        raise TypeError(f"lic_quant: {name} must be a list of tensors; got {type(t).__name__}")
    if len(t) != length:
        raise ValueError(f"lic_quant: {name} must hold {length} tensors (one per layer); got "
                         f"{len(t)}")


def eb_filters(matrices) -> tuple:
    """The hidden widths of the MLP whose matrices these are: (matrices[i].shape[1] for every
    layer but the last)."""
    return tuple(int(m.shape[1]) for m in matrices[:-1])


def check_eb_call(z, medians, matrices, biases, factors, mode: str, likelihood_bound) -> None:
    """The arguments of the EntropyBottleneck op, in their order: z of shape (N, C, ...); medians
    (C,); matrices[i] (C, f[i+1], f[i]) with f = (1, *filters, 1), biases[i] (C, f[i+1], 1),
    factors[i] (C, f[i+1], 1) for the hidden layers; all of z's dtype and device."""
    check_input("z", z)
    if z.dim() < 2:
        raise ValueError(f"lic_quant: z must have shape (N, C, ...) with at least 2 dimensions; "
                         f"got {tuple(z.shape)}")
    channels = z.shape[1]
    check_eb_parameter("medians", medians, z, (channels,))
    if not isinstance(matrices, (list, tuple)):
        raise TypeError(f"lic_quant: matrices must be a list of tensors; got "
                        f"{type(matrices).__name__}")
    if not 1 <= len(matrices) <= MAX_EB_LAYERS:
        raise ValueError(f"lic_quant: matrices must hold 1 to {MAX_EB_LAYERS} tensors (one per "
                         f"layer); got {len(matrices)}")
    layers = len(matrices)
    check_eb_list("biases", biases, layers)
    check_eb_list("factors", factors, layers - 1)
    width_in = 1
    for i in range(layers):
        name = f"matrices[{i}]"
        check_dense(name, matrices[i])
        if matrices[i].dim() != 3:
            raise ValueError(f"lic_quant: {name} must have shape (C, out, in); got "
                             f"{tuple(matrices[i].shape)}")
        width_out = 1 if i == layers - 1 else int(matrices[i].shape[1])
        check_eb_parameter(name, matrices[i], z, (channels, width_out, width_in))
        check_eb_parameter(f"biases[{i}]", biases[i], z, (channels, width_out, 1))
        if i < layers - 1:
            check_eb_parameter(f"factors[{i}]", factors[i], z, (channels, width_out, 1))
        width_in = width_out
    check_choice("mode", mode, MODES)
    if not 0.0 <= check_real("likelihood_bound", likelihood_bound) < 1.0:
        raise ValueError(f"lic_quant: likelihood_bound must lie in [0, 1); got {likelihood_bound}")
