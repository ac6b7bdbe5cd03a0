"""Drop-ins for CompressAI's ``GaussianConditional``, ``GaussianMixtureConditional`` and
``EntropyBottleneck``, and the rate term of its ``RateDistortionLoss``, on lic_quant's fused ops.

``lic_quant.nn.GaussianConditional`` has the constructor, ``forward(inputs, scales, means=None,
training=None) -> (outputs, likelihoods)`` and the attributes of CompressAI's class of that name,
and adds the settings of the fused op: ``family`` (``"gaussian"``, ``"laplace"`` or
``"logistic"`` bins, docs/spec.md section 6), ``mode``, ``temperature``, ``zero_center``,
``likelihood_bound`` and ``backend``.

* Training: one call of :func:`lic_quant.quantize` gives both the decoder's input and the
  likelihoods, e.g. ``mode="mixed"`` (noise for the rate, straight-through rounding for the
  decoder) replaces CompressAI's ``gaussian_conditional(...)`` + ``quantize_ste(y - means) + means``.
* Eval: rounds exactly like CompressAI's ``"dequantize"`` (``round(y - means) + means``, bit for
  bit) and returns the likelihoods of the rounded values.
* With compressai installed the class subclasses ``compressai.entropy_models.GaussianConditional``,
  so ``update()``, ``build_indexes()``, ``compress()``/``decompress()``, the ``CompressionModel``
  helpers (``model.update()``, ``model.load_state_dict``) and CompressAI checkpoints keep working.
  Without compressai it subclasses a small stand-in that trains and evaluates the same way (the
  entropy-coding methods then raise).
* ``family`` also sets the CDF that ``update()`` tabulates for the entropy coder (CompressAI's
  ``_standardized_cumulative`` and ``_standardized_quantile``), so what is coded is the
  distribution that was trained. Changing ``family`` after ``update()`` needs
  ``update(force=True)`` (CompressAI: ``update_scale_table(..., force=True)``).

``lic_quant.nn.GaussianMixtureConditional`` does the same for CompressAI's mixture class on
:func:`lic_quant.mixture_quantize` (CompressAI's channel-blocked parameters read in place as
views). :func:`replace_gaussian_conditionals` swaps every CompressAI ``GaussianConditional`` and
``GaussianMixtureConditional`` of an existing model for these, buffers included.

With ``rate=True`` both modules return per-sample bits (docs/spec.md section 8) in place of the
likelihoods; :func:`bits_per_pixel` and :class:`RateDistortionLoss` (CompressAI's loss) read
likelihoods and bits alike.

``lic_quant.nn.EntropyBottleneck`` (docs/spec.md section 9, needs compressai) is CompressAI's
``EntropyBottleneck`` with the same ``mode``, ``temperature`` and ``backend`` settings: one call of
:func:`lic_quant.entropy_bottleneck` gives the surrogate centred at the channel medians and the
likelihood of the channel's learned CDF, with gradients to z and to every parameter; eval is
CompressAI's ``dequantize`` path bit for bit. :func:`replace_entropy_bottlenecks` swaps the
bottlenecks of an existing model, :func:`replace_entropy_models` both kinds.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn

import math

from ._checks import (BACKENDS, FAMILIES, MAX_COMPONENTS, MODES, check_bool, check_choice,
                      check_host_tensor, check_unit_interval)
from .api import entropy_bottleneck, make_seed, mixture_quantize, quantize

try:  # CompressAI is optional: it prints deprecation warnings of torch.jit on import
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from compressai.entropy_models import EntropyBottleneck as _CompressAIEntropyBottleneck
        from compressai.entropy_models import GaussianConditional as _CompressAIGaussianConditional
        from compressai.entropy_models import (
            GaussianMixtureConditional as _CompressAIGaussianMixtureConditional)
    HAVE_COMPRESSAI = True
except ImportError:  # pragma: no cover - exercised where compressai is absent
    _CompressAIGaussianConditional = _CompressAIGaussianMixtureConditional = None
    _CompressAIEntropyBottleneck = None
    HAVE_COMPRESSAI = False

__all__ = [
    "EntropyBottleneck",
    "GaussianConditional",
    "GaussianMixtureConditional",
    "HAVE_COMPRESSAI",
    "RateDistortionLoss",
    "StandaloneGaussianConditional",
    "StandaloneGaussianMixtureConditional",
    "bits_per_pixel",
    "replace_entropy_bottlenecks",
    "replace_entropy_models",
    "replace_gaussian_conditionals",
]


# --------------------------------------------------------------------------------------------
# Stand-in for CompressAI's classes when compressai is not installed (and for tests of that case)
# --------------------------------------------------------------------------------------------

class _LowerBoundFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad):
        x, bound = ctx.saved_tensors
        return ((x >= bound) | (grad < 0)).to(grad.dtype) * grad, None


class LowerBound(nn.Module):
    """``max(x, bound)`` whose gradient passes where x >= bound or where it points up (as
    ``compressai.ops.LowerBound``, with the same ``bound`` buffer)."""

    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return _LowerBoundFn.apply(x, self.bound)


class _StandaloneEntropyModel(nn.Module):
    """The parts of CompressAI's ``EntropyModel``/``GaussianConditional`` that training and eval
    use: same constructor, buffers and attribute names, so state dicts are interchangeable."""

    def __init__(
        self,
        scale_table=None,
        *args: Any,
        scale_bound: float = 0.11,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        entropy_coder: Optional[str] = None,
        entropy_coder_precision: int = 16,
    ):
        super().__init__()
        if args:
            raise TypeError(f"unexpected positional arguments {args}")
        if not isinstance(scale_table, (type(None), list, tuple)):
            raise ValueError(f'Invalid type for scale_table "{type(scale_table)}"')
        if isinstance(scale_table, (list, tuple)) and len(scale_table) < 1:
            raise ValueError(f'Invalid scale_table length "{len(scale_table)}"')
        if scale_table and (list(scale_table) != sorted(scale_table)
                            or any(s <= 0 for s in scale_table)):
            raise ValueError(f'Invalid scale_table "({scale_table})"')
        if scale_bound is None and scale_table:
            scale_bound = scale_table[0]
        if scale_bound is None or scale_bound <= 0:
            raise ValueError("Invalid parameters")
        self.entropy_coder = entropy_coder  # a name only: no coder without compressai
        self.entropy_coder_precision = int(entropy_coder_precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())
        self.tail_mass = float(tail_mass)
        self.lower_bound_scale = LowerBound(scale_bound)
        self.register_buffer(
            "scale_table",
            torch.Tensor(tuple(float(s) for s in scale_table)) if scale_table else torch.Tensor())
        self.register_buffer("scale_bound", torch.Tensor([float(scale_bound)]))

    @property
    def offset(self):
        return self._offset

    @property
    def quantized_cdf(self):
        return self._quantized_cdf

    @property
    def cdf_length(self):
        return self._cdf_length

    def quantize(self, inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
        if mode not in ("noise", "dequantize", "symbols"):
            raise ValueError(f'Invalid quantization mode: "{mode}"')
        if mode == "noise":
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5)
        outputs = inputs.clone()
        if means is not None:
            outputs -= means
        outputs = torch.round(outputs)
        if mode == "dequantize":
            if means is not None:
                outputs += means
            return outputs
        return outputs.int()

    @staticmethod
    def dequantize(inputs: Tensor, means: Optional[Tensor] = None,
                   dtype: torch.dtype = torch.float) -> Tensor:
        if means is not None:
            outputs = inputs.type_as(means)
            outputs += means
        else:
            outputs = inputs.type(dtype)
        return outputs

    def _standardized_cumulative(self, inputs: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-(2**-0.5) * inputs)

    def _likelihood(self, inputs: Tensor, scales: Tensor, means: Optional[Tensor] = None):
        values = inputs - means if means is not None else inputs
        scales = self.lower_bound_scale(scales)
        values = torch.abs(values)
        upper = self._standardized_cumulative((0.5 - values) / scales)
        lower = self._standardized_cumulative((-0.5 - values) / scales)
        return upper - lower

    def build_indexes(self, scales: Tensor) -> Tensor:
        scales = self.lower_bound_scale(scales)
        indexes = scales.new_full(scales.size(), len(self.scale_table) - 1).int()
        for s in self.scale_table[:-1]:
            indexes -= (scales <= s).int()
        return indexes

    def _needs_compressai(self, *args, **kwargs):
        raise RuntimeError("lic_quant.nn: entropy coding (update, compress, decompress) needs "
                           "compressai; install it with `pip install compressai`")

    update = update_scale_table = compress = decompress = _needs_compressai


# --------------------------------------------------------------------------------------------
# The quantization settings and the fused forward, shared by both bases
# --------------------------------------------------------------------------------------------

def _sync_bounds_after_load(module, _incompatible_keys) -> None:
    module._sync_bounds()  # a module-level function (not a lambda) keeps the module picklable


def _broadcast(inputs: Tensor, scales: Tensor, means: Optional[Tensor]):
    """The three tensors expanded to their common shape, as CompressAI's elementwise math
    broadcasts them (e.g. per-channel scales of shape (1, C, 1, 1)). The fused op wants equal
    shapes; `expand` is a view whose backward sums the gradient over the broadcast dimensions,
    so a per-channel scale gets the sum over its channel, as in CompressAI."""
    if scales.shape == inputs.shape and (means is None or means.shape == inputs.shape):
        return inputs, scales, means  # the usual case, checked first: this runs every step
    tensors = [t for t in (inputs, scales, means) if t is not None]
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError as exc:
        raise ValueError(
            f"lic_quant.nn: scales {tuple(scales.shape)}"
            + (f" and means {tuple(means.shape)}" if means is not None else "")
            + f" do not broadcast against inputs {tuple(inputs.shape)}") from exc
    expand = lambda t: None if t is None else t.expand(shape)  # noqa: E731
    return expand(inputs), expand(scales), expand(means)


def _checked_setting(name: str, check, doc: str) -> property:
    """A setting a training loop may assign between steps, kept in ``_<name>``: ``check`` sees
    every assignment, so a bad value fails where it is made, not at the next forward."""
    attr = "_" + name

    def get(self):
        return getattr(self, attr)

    def set(self, value) -> None:
        check(value)
        setattr(self, attr, value)

    return property(get, set, doc=doc)


class _QuantizationSettings:
    """What every lic_quant entropy model shares: the training surrogate ``mode``, the SUA
    ``temperature`` (in a buffer a schedule updates in place) and the op's ``backend``."""

    def _init_settings(self, mode: str, temperature, backend: str) -> None:
        check_choice("mode", mode, MODES)
        self.mode = mode
        self.backend = backend  # checked by the setter: an unknown name fails here, not later
        # The temperature lives in a 0-dim float64 buffer that is updated in place: the op reads
        # it as a tensor, so a compiled graph (or a CUDA graph) sees each new value without
        # recompiling. It is not saved in state_dict (checkpoints stay loadable by CompressAI's
        # class); the schedule that drives it has its own state_dict.
        self.register_buffer("_temperature", torch.zeros((), dtype=torch.float64),
                             persistent=False)
        self.temperature = temperature

    backend = _checked_setting("backend", lambda v: check_choice("backend", v, BACKENDS),
                               "The op's backend: one of ``lic_quant.api.BACKENDS``.")

    @property
    def temperature(self) -> Tensor:
        """The SUA temperature T in [0, 1] (a 0-dim float64 tensor; assign a float or a tensor)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value) -> None:
        if isinstance(value, Tensor):
            check_host_tensor("temperature", value, value.device, torch.float64,
                              "a float or a one-element float tensor")
            with torch.no_grad():
                self._temperature.copy_(value.detach().reshape(()))
            return
        value = check_unit_interval("temperature", value)
        with torch.no_grad():
            self._temperature.fill_(value)

    def _apply(self, fn, *args, **kwargs):
        # model.half()/.to(bfloat16) cast floating buffers; the temperature keeps float64 (and
        # its exact value) and only follows the device.
        before = self._temperature
        result = super()._apply(fn, *args, **kwargs)
        after = self._buffers["_temperature"]
        if after.dtype != torch.float64:
            self._buffers["_temperature"] = before.to(after.device)
        return result


class _FusedQuantizationMixin(_QuantizationSettings):
    """Settings and forward of lic_quant's GaussianConditional; see the module docstring."""

    def __init__(
        self,
        scale_table=None,
        *args: Any,
        scale_bound: float = 0.11,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        mode: str = "noise",
        temperature: float = 1.0,
        zero_center: bool = True,
        backend: str = "auto",
        family: str = "gaussian",
        rate: bool = False,
        **kwargs: Any,
    ):
        self.family = family  # before CompressAI's constructor, which may tabulate the CDFs
        super().__init__(scale_table, *args, scale_bound=scale_bound, tail_mass=tail_mass,
                         likelihood_bound=likelihood_bound, **kwargs)
        self._init_fused(mode, temperature, zero_center, backend, rate)

    def _init_fused(self, mode, temperature, zero_center, backend, rate) -> None:
        """The settings and buffers of the fused op, set after the CompressAI base's own
        constructor (GaussianMixtureConditional calls it with its own constructor's order)."""
        check_bool("zero_center", zero_center)
        self._init_settings(mode, temperature, backend)
        self.zero_center = zero_center
        self.rate = rate
        self._sync_bounds()
        self.register_load_state_dict_post_hook(_sync_bounds_after_load)
        self._shared_noise = None  # (inputs, seed) between quantize("noise") and forward

    # -- settings ------------------------------------------------------------------------------

    family = _checked_setting("family", lambda v: check_choice("family", v, FAMILIES),
                              "The bins' distribution: one of ``lic_quant.FAMILIES``.")

    # The family's standard CDF and quantile (scale 1), which CompressAI's _likelihood and
    # update() read: the coder's tables follow the family. The Gaussian's are CompressAI's own.
    def _standardized_cumulative(self, inputs: Tensor) -> Tensor:
        if self._family == "laplace":
            half = 0.5 * torch.exp(-inputs.abs())
            return torch.where(inputs < 0, half, 1.0 - half)
        if self._family == "logistic":
            return torch.sigmoid(inputs)
        return super()._standardized_cumulative(inputs)

    def _standardized_quantile(self, quantile: float) -> float:
        if self._family == "laplace":
            return math.log(2.0 * quantile) if quantile <= 0.5 else -math.log(2.0 - 2.0 * quantile)
        if self._family == "logistic":
            return math.log(quantile) - math.log1p(-quantile)
        parent = getattr(super(), "_standardized_quantile", None)
        if parent is not None:
            return parent(quantile)
        return float(torch.special.ndtri(torch.tensor(quantile, dtype=torch.float64)))

    def _sync_bounds(self) -> None:
        """Python floats of the bound buffers, read once (not per call, so compiled graphs do not
        sync on them). The float32 buffer values are what CompressAI's own class applies."""
        self._scale_bound_value = float(self.lower_bound_scale.bound.reshape(-1)[0])
        if self.use_likelihood_bound:
            self._likelihood_bound_value = float(
                self.likelihood_lower_bound.bound.reshape(-1)[0])
        else:
            self._likelihood_bound_value = 0.0

    @property
    def likelihood_bound(self) -> float:
        """The lower bound of the likelihoods (0 when ``use_likelihood_bound`` is False)."""
        return self._likelihood_bound_value

    rate = _checked_setting(
        "rate", lambda v: check_bool("rate", v),
        "False: forward returns ``(outputs, likelihoods)``, as CompressAI's. True: ``(outputs, "
        "bits)`` with ``bits`` of shape ``(inputs.shape[0],)``, the sum of -log2 of the "
        "likelihoods over each sample, computed inside the op without a likelihood tensor "
        "(docs/spec.md section 8); :func:`bits_per_pixel` and :class:`RateDistortionLoss` read "
        "either.")

    def extra_repr(self) -> str:
        return (f"family={self.family!r}, mode={self.mode!r}, "
                f"temperature={float(self._temperature):.4g}, "
                f"zero_center={self.zero_center}, scale_bound={self._scale_bound_value:.4g}, "
                f"likelihood_bound={self._likelihood_bound_value:.3g}, backend={self.backend!r}"
                + (", rate=True" if self._rate else ""))

    # -- the op ----------------------------------------------------------------------------------

    def _op(self, inputs, scales, means, mode, zero_center, seed=None, rate=None):
        inputs, scales, means = _broadcast(inputs, scales, means)
        return quantize(
            inputs, scales, means, family=self.family, mode=mode, temperature=self._temperature,
            scale_bound=self._scale_bound_value, likelihood_bound=self._likelihood_bound_value,
            zero_center=zero_center, seed=seed, backend=self.backend,
            rate=self._rate if rate is None else rate)

    def forward(
        self,
        inputs: Tensor,
        scales: Tensor,
        means: Optional[Tensor] = None,
        training: Optional[bool] = None,
    ) -> tuple[Tensor, Tensor]:
        """``(outputs, likelihoods)``: the quantization surrogate of ``self.mode`` in training,
        CompressAI's rounding (``round(inputs - means) + means``) otherwise.

        Eval values equal CompressAI's (outputs bit for bit); where a caller differentiates
        through eval, the rounding is straight-through (CompressAI's ``torch.round`` gives y a
        zero gradient)."""
        if training is None:
            training = self.training
        shared = self._shared_noise
        if shared is not None:  # (nn.Module's attribute assignment is slow: only when set)
            self._shared_noise = None
        if not training:
            # Rounding needs no noise: a fixed seed leaves torch's generator untouched, as
            # CompressAI's eval does.
            return self._op(inputs, scales, means, "ste", True, seed=0)
        if shared is not None and shared[0] is inputs:
            # quantize(inputs, "noise") already gave the decoder its input on the lattice around
            # 0 with this seed: evaluate the rate with the same noise on the same lattice, so the
            # likelihood belongs to the very value the decoder and context model saw.
            return self._op(inputs, scales, means, self.mode, False, seed=shared[1])
        return self._op(inputs, scales, means, self.mode, self.zero_center)

    def quantize(self, inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
        """CompressAI's ``quantize``; ``"noise"`` gives the decoder-path surrogate of
        ``self.mode`` instead of a fresh noise draw.

        Models such as JointAutoregressiveHierarchicalPriors call ``quantize(y, "noise")`` for the
        context model and decoder, then ``forward(y, scales, means)`` for the rate, which in
        CompressAI draws a second, independent noise. Here the first call remembers its seed and
        the next ``forward`` on the same tensor reuses it (one noise draw per step)."""
        if mode != "noise":
            return super().quantize(inputs, mode, means)
        seed = make_seed(None, inputs.device)  # from torch's generator, as the op's own draw
        ones = torch.ones_like(inputs)
        # Only y_hat is used: rate=True skips writing a likelihood tensor.
        outputs, _ = self._op(inputs, ones, None, self.mode, False, seed=seed,
                              rate=inputs.dim() > 0)
        self._shared_noise = (inputs, seed)
        return outputs


if HAVE_COMPRESSAI:

    class GaussianConditional(_FusedQuantizationMixin, _CompressAIGaussianConditional):
        """CompressAI's GaussianConditional with lic_quant's fused quantization + likelihood.

        Args (beyond CompressAI's ``scale_table, scale_bound=0.11, tail_mass=1e-9,
        likelihood_bound=1e-9, entropy_coder=None, entropy_coder_precision=16``):
            family: the bins' distribution, ``"gaussian"`` (CompressAI's), ``"laplace"`` or
                ``"logistic"`` (s is the family's own scale parameter); ``update()`` tabulates
                the same family for the entropy coder.
            mode: training surrogate, ``"noise"`` (CompressAI's default), ``"ste"``, ``"mixed"``
                (noise for the rate, rounding for the decoder) or ``"sua"`` (annealed).
            temperature: SUA temperature in [0, 1]; usually driven by a lic_quant.schedules
                schedule.
            zero_center: in training, put the rounding lattice at ``means`` (True) or at 0;
                eval always rounds ``y - means``, as CompressAI and its entropy coder do.
            backend: the op's backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``,
                ``"triton"``).
            rate: forward returns ``(outputs, bits)``, per-sample bits of shape (N,) in place
                of the likelihoods (see :func:`bits_per_pixel`).
        """

    class StandaloneGaussianConditional(_FusedQuantizationMixin, _StandaloneEntropyModel):
        """The same module on the compressai-free base (what GaussianConditional is without
        compressai); it trains and evaluates, but cannot entropy-code."""

else:  # pragma: no cover - exercised where compressai is absent

    class GaussianConditional(_FusedQuantizationMixin, _StandaloneEntropyModel):
        __doc__ = _FusedQuantizationMixin.__doc__

    StandaloneGaussianConditional = GaussianConditional


# --------------------------------------------------------------------------------------------
# Mixtures: CompressAI's GaussianMixtureConditional on lic_quant.mixture_quantize
# --------------------------------------------------------------------------------------------

def _component_view(name: str, t: Tensor, n_components: int, inputs: Tensor) -> Tensor:
    """CompressAI's channel-blocked parameter (N, K*M, ...) (component k in channels k*M to
    (k+1)*M - 1) as the (K, N, M, ...) view that mixture_quantize reads in place."""
    channels = n_components * inputs.shape[1]
    if t.dim() != inputs.dim() or t.shape[1] != channels:
        raise ValueError(
            f"lic_quant.nn: {name} must have K*M = {n_components}*{inputs.shape[1]} = {channels} "
            f"channels in dim 1 (CompressAI's channel-blocked layout) and inputs' "
            f"{inputs.dim()} dims; got {tuple(t.shape)} for inputs {tuple(inputs.shape)}")
    shape = (inputs.shape[0], channels, *inputs.shape[2:])
    if t.shape != shape:
        try:  # broadcast as CompressAI's elementwise math does (e.g. per-channel weights)
            t = t.expand(shape)
        except RuntimeError as exc:
            raise ValueError(f"lic_quant.nn: {name} {tuple(t.shape)} does not broadcast to "
                             f"{shape}") from exc
    return t.unflatten(1, (n_components, inputs.shape[1])).movedim(1, 0)


class _FusedMixtureMixin(_FusedQuantizationMixin):
    """Settings and forward of lic_quant's GaussianMixtureConditional (see its docstring)."""

    def __init__(
        self,
        K: int = 3,
        scale_table=None,
        *args: Any,
        mode: str = "noise",
        temperature: float = 1.0,
        zero_center: bool = False,
        backend: str = "auto",
        family: str = "gaussian",
        weights_are_logits: bool = False,
        rate: bool = False,
        **kwargs: Any,
    ):
        if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= MAX_COMPONENTS:
            raise ValueError(f"lic_quant.nn: K must be an int in [1, {MAX_COMPONENTS}] (the "
                             f"mixture kernels' limit); got {K!r}")
        self.family = family
        # The CompressAI base's own constructor, in its own argument order (the single-Gaussian
        # mixin's constructor takes scale_table first).
        if HAVE_COMPRESSAI and isinstance(self, _CompressAIGaussianMixtureConditional):
            _CompressAIGaussianMixtureConditional.__init__(self, K, scale_table, *args, **kwargs)
        else:
            _StandaloneEntropyModel.__init__(self, scale_table, *args, **kwargs)
            self.K = K
        self.weights_are_logits = weights_are_logits
        self._init_fused(mode, temperature, zero_center, backend, rate)

    weights_are_logits = _checked_setting(
        "weights_are_logits", lambda v: check_bool("weights_are_logits", v),
        "False: ``weights`` are probabilities (CompressAI's convention); True: logits, which the "
        "kernel softmaxes over the K components (the model then skips its own softmax).")

    def extra_repr(self) -> str:
        return (f"K={self.K}, " + super().extra_repr()
                + (", weights_are_logits=True" if self._weights_are_logits else ""))

    def _mixture_op(self, inputs, scales, means, weights, mode, zero_center, seed=None):
        K = self.K
        if inputs.dim() < 2:
            raise ValueError(f"lic_quant.nn: GaussianMixtureConditional needs inputs with a "
                             f"channel dim (N, M, ...); got {tuple(inputs.shape)}")
        views = [_component_view(name, t, K, inputs)
                 for name, t in (("scales", scales), ("means", means), ("weights", weights))]
        kwargs = dict(family=self.family, weights_are_logits=self._weights_are_logits, mode=mode,
                      temperature=self._temperature, zero_center=zero_center,
                      scale_bound=self._scale_bound_value,
                      likelihood_bound=self._likelihood_bound_value, seed=seed,
                      backend=self.backend)
        return mixture_quantize(inputs, *views, rate=self._rate, **kwargs)

    def forward(
        self,
        inputs: Tensor,
        scales: Tensor,
        means: Tensor,
        weights: Tensor,
        training: Optional[bool] = None,
    ) -> tuple[Tensor, Tensor]:
        """``(outputs, likelihoods)`` (``(outputs, bits)`` with ``rate``): the surrogate of
        ``self.mode`` in training, CompressAI's rounding ``round(inputs)`` otherwise; scales,
        means and weights in CompressAI's channel-blocked (N, K*M, H, W) layout."""
        if training is None:
            training = self.training
        shared = self._shared_noise
        if shared is not None:
            self._shared_noise = None
        if not training:  # CompressAI's "dequantize" with means=None: round(inputs)
            return self._mixture_op(inputs, scales, means, weights, "ste", False, seed=0)
        if shared is not None and shared[0] is inputs:
            # The noise of the preceding quantize(inputs, "noise"), on its lattice around 0.
            return self._mixture_op(inputs, scales, means, weights, self.mode, False,
                                    seed=shared[1])
        return self._mixture_op(inputs, scales, means, weights, self.mode, self.zero_center)

    # -- entropy coding: CompressAI's, on probabilities; the family's bins in the CDFs ----------

    @torch.no_grad()
    def _build_cdf(self, scales, means, weights, abs_max):
        """One CDF per latent over the symbols 0 .. 2*abs_max (values -abs_max .. abs_max) plus
        the coder's escape symbol. The Gaussian family's are CompressAI's own. The others take
        the family's bin masses at the same clamped scales, and give every symbol at least one
        of the 2**precision - 1 counts, the rest in proportion to its mass (the largest mass
        takes what flooring leaves over) and the escape symbol the last count."""
        if self.family == "gaussian":
            return super()._build_cdf(scales, means, weights, abs_max)
        dtype = torch.float64
        n_symbols = 2 * abs_max + 1
        values = torch.arange(-abs_max, abs_max + 1, device=scales.device, dtype=dtype)
        s = scales.to(dtype).clamp(0.11, 256).unsqueeze(-1)  # (K, L, 1), as CompressAI clamps
        v = values - means.to(dtype).unsqueeze(-1)
        bins = (self._standardized_cumulative((v + 0.5) / s)
                - self._standardized_cumulative((v - 0.5) / s))
        pmf = (weights.to(dtype).unsqueeze(-1) * bins).sum(0).clamp_min(0)  # (L, n_symbols)
        total = 2**self.entropy_coder_precision - 1  # the escape symbol gets the last count
        free = total - n_symbols
        if free < 0:
            raise ValueError(f"lic_quant.nn: {n_symbols} symbols do not fit "
                             f"{self.entropy_coder_precision}-bit CDFs")
        counts = torch.floor(pmf * (free / pmf.sum(1, keepdim=True).clamp_min(1e-300))) + 1
        counts = counts.to(torch.int64)
        left = total - counts.sum(1)
        counts[torch.arange(counts.shape[0], device=counts.device), pmf.argmax(1)] += left
        cdf = torch.nn.functional.pad(torch.cumsum(counts, 1), (1, 0))
        cdf = torch.nn.functional.pad(cdf, (0, 1), value=total + 1)
        return cdf.int()

    def _coding_weights(self, weights: Tensor, scales: Tensor) -> Tensor:
        if not self._weights_are_logits:
            return weights
        K = self.K
        M = scales.size(1) // K
        return weights.unflatten(1, (K, M)).softmax(1).flatten(1, 2)

    def compress(self, y, scales, means, weights):
        return super().compress(y, scales, means, self._coding_weights(weights, scales))

    def decompress(self, strings, abs_max, zero_bitmap, scales, means, weights):
        return super().decompress(strings, abs_max, zero_bitmap, scales, means,
                                  self._coding_weights(weights, scales))


if HAVE_COMPRESSAI:

    class GaussianMixtureConditional(_FusedMixtureMixin, _CompressAIGaussianMixtureConditional):
        """CompressAI's GaussianMixtureConditional with lic_quant's fused mixture op.

        ``GaussianMixtureConditional(K=3, scale_table=None, *, scale_bound=0.11,
        tail_mass=1e-9, likelihood_bound=1e-9, entropy_coder=None, entropy_coder_precision=16,
        mode="noise", temperature=1.0, zero_center=False, backend="auto", family="gaussian",
        weights_are_logits=False, rate=False)``.

        ``forward(inputs, scales, means, weights)`` takes CompressAI's channel-blocked
        (N, K*M, H, W) parameters and hands :func:`lic_quant.mixture_quantize` their
        (K, N, M, H, W) views, which its kernels read in place (no copy, forward or backward).
        With the defaults, training equals CompressAI's forward (``inputs + u``, then the mixture
        likelihood and its bound) given the same noise, and eval rounds ``round(inputs)`` as
        CompressAI's does. Buffers, state dict keys, ``update()`` and ``compress``/
        ``decompress`` are CompressAI's.

        Args beyond CompressAI's: ``mode``, ``temperature``, ``backend``, ``rate`` as for
        :class:`GaussianConditional`; ``zero_center`` (default False, CompressAI's lattice at 0):
        True centres the training lattice at the mixture mean sum_k w_k mu_k;
        ``family``: the components' family (``compress`` builds the CDFs of the same family;
        the Gaussian's are CompressAI's own);
        ``weights_are_logits``: the kernel softmaxes the weights over K (forward and backward),
        and ``compress``/``decompress`` softmax them before CompressAI's CDFs.
        """

    class StandaloneGaussianMixtureConditional(_FusedMixtureMixin, _StandaloneEntropyModel):
        """The mixture module on the compressai-free base: trains and evaluates, cannot code."""

        compress = decompress = _StandaloneEntropyModel._needs_compressai

else:  # pragma: no cover - exercised where compressai is absent

    class GaussianMixtureConditional(_FusedMixtureMixin, _StandaloneEntropyModel):
        __doc__ = _FusedMixtureMixin.__doc__

        compress = decompress = _StandaloneEntropyModel._needs_compressai

    StandaloneGaussianMixtureConditional = GaussianMixtureConditional


# --------------------------------------------------------------------------------------------
# The factorized prior (docs/spec.md section 9)
# --------------------------------------------------------------------------------------------

class _FusedEntropyBottleneckMixin(_QuantizationSettings):
    """Settings and forward of lic_quant's EntropyBottleneck; see its docstring."""

    def __init__(
        self,
        channels: int,
        *args: Any,
        tail_mass: float = 1e-9,
        init_scale: float = 10,
        filters: tuple = (3, 3, 3, 3),
        likelihood_bound: float = 1e-9,
        mode: str = "noise",
        temperature: float = 1.0,
        backend: str = "auto",
        **kwargs: Any,
    ):
        super().__init__(channels, *args, tail_mass=tail_mass, init_scale=init_scale,
                         filters=filters, likelihood_bound=likelihood_bound, **kwargs)
        self._init_settings(mode, temperature, backend)
        if any(f != 3 for f in self.filters):
            # Said once here rather than run slower unannounced on every call.
            warnings.warn(f"lic_quant.nn.EntropyBottleneck: the fused kernels take hidden widths "
                          f"of 3 (CompressAI's default); filters={tuple(self.filters)} runs the "
                          f"reference's torch ops under backend='auto' (backend='cpu', 'cuda' or "
                          f"'triton' raises NotImplementedError)", stacklevel=2)
        self._sync_bounds()
        self.register_load_state_dict_post_hook(_sync_bounds_after_load)

    def _sync_bounds(self) -> None:
        """The likelihood bound as a Python float, read once (compiled graphs do not sync on it)."""
        self._likelihood_bound_value = (
            float(self.likelihood_lower_bound.bound.reshape(-1)[0])
            if self.use_likelihood_bound else 0.0)

    @property
    def likelihood_bound(self) -> float:
        """The lower bound of the likelihoods (0 when ``use_likelihood_bound`` is False)."""
        return self._likelihood_bound_value

    def _op_backend(self) -> str:
        # The kernels take hidden widths of 3 (CompressAI's default); other filters run the
        # reference under "auto".
        if self.backend == "auto" and any(f != 3 for f in self.filters):
            return "reference"
        return self.backend

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, filters={self.filters}, mode={self.mode!r}, "
                f"temperature={float(self._temperature):.4g}, "
                f"likelihood_bound={self._likelihood_bound_value:.3g}, backend={self.backend!r}")

    def forward(self, x: Tensor, training: Optional[bool] = None) -> tuple[Tensor, Tensor]:
        """``(outputs, likelihood)`` of x (N, C, ...): the surrogate of ``self.mode`` centred at
        the medians in training, CompressAI's ``dequantize`` rounding (``round(x - medians) +
        medians``, bit for bit) otherwise; the likelihood is the channel's learned CDF difference
        at the outputs -+ 1/2, from one fused op."""
        if training is None:
            training = self.training
        medians = self.quantiles[:, 0, 1].detach()
        # Rounding needs no noise: a fixed seed leaves torch's generator untouched in eval.
        mode, seed = (self.mode, None) if training else ("ste", 0)
        return entropy_bottleneck(
            x, medians, list(self.matrices), list(self.biases), list(self.factors), mode=mode,
            temperature=self._temperature, likelihood_bound=self._likelihood_bound_value,
            seed=seed, backend=self._op_backend())


if HAVE_COMPRESSAI:

    class EntropyBottleneck(_FusedEntropyBottleneckMixin, _CompressAIEntropyBottleneck):
        """CompressAI's EntropyBottleneck with lic_quant's fused quantization + likelihood.

        Same constructor (``channels, tail_mass=1e-9, init_scale=10, filters=(3, 3, 3, 3),
        likelihood_bound=1e-9, entropy_coder=None, entropy_coder_precision=16``), parameters,
        ``quantiles``, buffers and state-dict keys as CompressAI's; ``loss()``, ``update()``,
        ``compress()`` and ``decompress()`` are CompressAI's own. Adds:

            mode: training surrogate centred at the medians, ``"noise"`` (CompressAI's),
                ``"ste"``, ``"mixed"`` (noise for the likelihood, ``round(z - medians) +
                medians`` for the decoder, what TCM, STF and MLIC++ write by hand) or ``"sua"``.
            temperature: SUA temperature in [0, 1]; usually driven by a lic_quant.schedules
                schedule.
            backend: the op's backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``,
                ``"triton"``).
        """

else:  # pragma: no cover - exercised where compressai is absent

    class EntropyBottleneck(nn.Module):  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise RuntimeError("lic_quant.nn.EntropyBottleneck needs compressai installed")


# --------------------------------------------------------------------------------------------
# Swapping the modules of an existing model
# --------------------------------------------------------------------------------------------

_SETTINGS = ("family", "mode", "temperature", "zero_center", "backend", "rate")
# The settings an EntropyBottleneck takes (it has no family, lattice-centre or rate choice).
_EB_SETTINGS = ("mode", "temperature", "backend")


def _convert(old: nn.Module, settings: dict) -> nn.Module:
    if isinstance(old, _FusedQuantizationMixin):
        for key, value in settings.items():
            setattr(old, key, value)
        return old
    likelihood_bound = (float(old.likelihood_lower_bound.bound.reshape(-1)[0])
                        if old.use_likelihood_bound else 0.0)
    coder = old.entropy_coder.name if hasattr(old.entropy_coder, "name") else old.entropy_coder
    common = dict(scale_bound=float(old.lower_bound_scale.bound.reshape(-1)[0]),
                  tail_mass=old.tail_mass, likelihood_bound=likelihood_bound,
                  entropy_coder=coder, entropy_coder_precision=old.entropy_coder_precision,
                  **settings)
    if isinstance(old, _CompressAIGaussianMixtureConditional):
        new = GaussianMixtureConditional(old.K, None, **common)
    else:
        new = GaussianConditional(None, **common)
    _copy_buffers(old, new)  # scale table, CDFs, offsets, bounds
    new._sync_bounds()
    new.to(device=old.lower_bound_scale.bound.device)
    new.train(old.training)
    return new


def _copy_buffers(old: nn.Module, new: nn.Module) -> None:
    """Copies of old's buffers into new wherever new has a buffer of that name. Assigned, not
    loaded: after update() the CDF tables' sizes differ from a fresh module's empty ones."""
    new_buffers = dict(new.named_buffers())
    for name, buf in old.named_buffers():
        if name not in new_buffers:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        owner._buffers[leaf] = buf.clone()


def _convert_entropy_bottleneck(old: nn.Module, settings: dict) -> nn.Module:
    settings = {k: v for k, v in settings.items() if k in _EB_SETTINGS}
    if isinstance(old, _FusedEntropyBottleneckMixin):
        for key, value in settings.items():
            setattr(old, key, value)
        return old
    likelihood_bound = (float(old.likelihood_lower_bound.bound.reshape(-1)[0])
                        if old.use_likelihood_bound else 0.0)
    coder = old.entropy_coder.name if hasattr(old.entropy_coder, "name") else old.entropy_coder
    with torch.random.fork_rng(devices=[]):  # the fresh module's initialization draws
        new = EntropyBottleneck(
            old.channels, tail_mass=old.tail_mass, init_scale=old.init_scale,
            filters=old.filters, likelihood_bound=likelihood_bound, entropy_coder=coder,
            entropy_coder_precision=old.entropy_coder_precision, **settings)
    # The very Parameter objects (an optimizer built before the swap keeps training them) and
    # copies of every buffer (target, bound, and the CDFs/offsets of update()).
    new.matrices, new.biases, new.factors = old.matrices, old.biases, old.factors
    new.quantiles = old.quantiles
    _copy_buffers(old, new)
    new._sync_bounds()
    new._buffers["_temperature"] = new._temperature.to(old.quantiles.device)
    new.train(old.training)
    return new


def _replace(model: nn.Module, settings: dict, *, conditionals: bool, bottlenecks: bool,
             caller: str) -> nn.Module:
    allowed = _SETTINGS if conditionals else _EB_SETTINGS
    unknown = set(settings) - set(allowed)
    if unknown:
        raise TypeError(f"{caller}: unknown settings {sorted(unknown)}; "
                        f"expected some of {allowed}")
    if not HAVE_COMPRESSAI:
        raise RuntimeError(f"{caller} needs compressai installed")

    def converter(m: nn.Module):
        if conditionals and (isinstance(m, _FusedQuantizationMixin) or type(m) in (
                _CompressAIGaussianConditional, _CompressAIGaussianMixtureConditional)):
            return _convert
        if bottlenecks and (isinstance(m, _FusedEntropyBottleneckMixin)
                            or type(m) is _CompressAIEntropyBottleneck):
            return _convert_entropy_bottleneck
        return None

    memo: dict[int, nn.Module] = {}

    def convert(m: nn.Module, fn) -> nn.Module:
        if id(m) not in memo:
            memo[id(m)] = fn(m, settings)
        return memo[id(m)]

    fn = converter(model)
    if fn is not None:
        return convert(model, fn)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            fn = converter(child)
            if fn is not None:
                parent._modules[name] = convert(child, fn)
                continue
            other = ((conditionals and isinstance(child, _CompressAIGaussianConditional))
                     or (bottlenecks and isinstance(child, _CompressAIEntropyBottleneck)))
            if other and id(child) not in memo:
                memo[id(child)] = child
                warnings.warn(f"{caller}: left {type(child).__name__} '{name}' as is (its "
                              f"forward differs from the class it derives from)")
    return model


def replace_gaussian_conditionals(model: nn.Module, **settings: Any) -> nn.Module:
    """Swap every CompressAI ``GaussianConditional`` inside ``model`` for lic_quant's, in place.

    Also swaps every CompressAI ``GaussianMixtureConditional`` for lic_quant's (same K).
    ``settings`` are the quantization settings (``family``, ``mode``, ``temperature``,
    ``zero_center``, ``backend``, ``rate``); those not given keep each class's default (for
    mixtures, ``zero_center=False`` as CompressAI's lattice). The buffers (scale table, bounds,
    and the CDFs/offsets of ``update()``) are copied, so an updated model still compresses.
    Modules that are already lic_quant's get the settings applied. Other subclasses of
    CompressAI's classes are left alone, with a warning. Returns ``model`` (or the
    replacement, when ``model`` is one itself).
    """
    return _replace(model, settings, conditionals=True, bottlenecks=False,
                    caller="replace_gaussian_conditionals")


def replace_entropy_bottlenecks(model: nn.Module, **settings: Any) -> nn.Module:
    """Swap every CompressAI ``EntropyBottleneck`` inside ``model`` for lic_quant's, in place.

    ``settings``: ``mode``, ``temperature``, ``backend``. The replacement holds the same
    Parameter objects (matrices, biases, factors, quantiles: an optimizer built before keeps
    training them) and copies of the buffers, so an updated model still compresses. Returns
    ``model`` (or the replacement, when ``model`` is one itself).
    """
    return _replace(model, settings, conditionals=False, bottlenecks=True,
                    caller="replace_entropy_bottlenecks")


def replace_entropy_models(model: nn.Module, **settings: Any) -> nn.Module:
    """Both swaps at once: every ``GaussianConditional`` and every ``EntropyBottleneck``.
    ``settings`` as replace_gaussian_conditionals; the EntropyBottlenecks take ``mode``,
    ``temperature`` and ``backend`` of them (``family``, ``zero_center`` and ``rate`` concern the
    conditionals only)."""
    return _replace(model, settings, conditionals=True, bottlenecks=True,
                    caller="replace_entropy_models")


# --------------------------------------------------------------------------------------------
# The rate term of a rate-distortion loss
# --------------------------------------------------------------------------------------------

def _rate_entries(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _rate_entries(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _rate_entries(value)
    elif obj is not None:
        raise TypeError(f"bits_per_pixel: expected tensors in dicts, lists or tuples; got "
                        f"{type(obj).__name__}")


def bits_per_pixel(likelihoods, num_pixels: int) -> Tensor:
    """The rate term of CompressAI's ``RateDistortionLoss``: the bits of every entry of
    ``likelihoods`` (a tensor, or a dict such as a model's ``output["likelihoods"]``, nested
    dicts and lists included) divided by ``num_pixels`` (N * H * W of the input images).

    An entry is either likelihoods (any shape but one-dimensional; it costs
    ``-log2(P).sum()``, computed as CompressAI's ``log(P).sum() / (-ln 2 * num_pixels)``) or
    per-sample bits of shape (N,), what a module with ``rate=True`` returns in their place (it
    costs ``bits.sum()``). The result is a 0-dim tensor, as CompressAI's ``bpp_loss``.
    """
    total = 0
    for entry in _rate_entries(likelihoods):
        if entry.dim() == 1:
            total = total + entry.sum() / num_pixels
        else:
            total = total + torch.log(entry).sum() / (-math.log(2) * num_pixels)
    if isinstance(total, int):
        raise ValueError("bits_per_pixel: no likelihoods or bits given")
    return total


class RateDistortionLoss(nn.Module):
    """CompressAI's ``RateDistortionLoss`` (same constructor, same output dict) whose rate term
    also reads the per-sample bits of modules with ``rate=True`` (:func:`bits_per_pixel`).

    Swapping ``from compressai.losses import RateDistortionLoss`` for ``from lic_quant.nn import
    RateDistortionLoss`` changes nothing for likelihoods; then
    ``replace_gaussian_conditionals(model, rate=True)`` makes the conditionals return bits,
    summed inside the op (no likelihood tensor written, read back, summed or saved for the
    backward), and the loss adds them as they are.

    ``forward(output, target)`` returns ``{"bpp_loss", "mse_loss" (or "ms_ssim_loss"),
    "loss"}`` with ``loss = lmbda * distortion + bpp_loss`` and distortion ``255**2 * MSE`` or
    ``1 - MS-SSIM``; with ``return_type`` other than ``"all"``, that entry only.
    """

    def __init__(self, lmbda: float = 0.01, metric: str = "mse", return_type: str = "all"):
        super().__init__()
        if metric == "mse":
            self.metric = nn.MSELoss()
        elif metric == "ms-ssim":
            from pytorch_msssim import ms_ssim  # a dependency of compressai

            self.metric = ms_ssim
        else:
            raise NotImplementedError(f"{metric} is not implemented!")
        self.lmbda = lmbda
        self.return_type = return_type

    def forward(self, output: dict, target: Tensor):
        N, _, H, W = target.size()
        out = {"bpp_loss": bits_per_pixel(output["likelihoods"], N * H * W)}
        if isinstance(self.metric, nn.MSELoss):
            out["mse_loss"] = self.metric(output["x_hat"], target)
            distortion = 255**2 * out["mse_loss"]
        else:
            out["ms_ssim_loss"] = self.metric(output["x_hat"], target, data_range=1)
            distortion = 1 - out["ms_ssim_loss"]
        out["loss"] = self.lmbda * distortion + out["bpp_loss"]
        if self.return_type == "all":
            return out
        return out[self.return_type]
