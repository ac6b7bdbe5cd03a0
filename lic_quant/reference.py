"""The readable pure-PyTorch implementation of docs/spec.md sections 1-2 and 6-9: the yardstick of
every test.

It takes the noise explicitly (``lic_quant.uniform_noise`` gives the exact u the kernels draw) and
gets its gradients from autograd, with the two straight-through pieces written as small autograd
functions: the quantization offset is a constant (partial stop-gradient), and both lower bounds
pass the gradient where x >= bound or where the gradient points up (CompressAI's LowerBound).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import FAMILIES, MODES, check_choice, check_rate, likelihood_dtype


class _StraightThrough(torch.autograd.Function):
    """Forward: `value` (bit for bit). Backward: the gradient goes to `source` unchanged."""

    @staticmethod
    def forward(value, source):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return None, grad


class _LowerBound(torch.autograd.Function):
    """max(x, bound) with CompressAI's identity-if-towards gradient; NaN propagates both ways."""

    @staticmethod
    def forward(x, bound):
        return torch.clamp_min(x, bound)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bound = inputs
        ctx.save_for_backward(x)
        ctx.bound = bound

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return passes.to(grad.dtype) * grad, None


def straight_through(value: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(value.detach(), source)


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def surrogate(mode: str, r: torch.Tensor, u: torch.Tensor | None, temperature):
    """(r~_R, r~_D): the quantization surrogates of docs/spec.md section 1, values only (no
    gradient)."""
    n = torch.round(r)
    if mode == "noise":
        return r + u, r + u
    if mode == "ste":
        return n, n
    if mode == "mixed":
        return r + u, n
    if mode == "sua":
        if isinstance(temperature, torch.Tensor):
            # One value (docs/spec.md section 1): as a 0-dim tensor, so that its own shape
            # (e.g. [[T]]) cannot broadcast the outputs beyond y's shape.
            t = temperature.reshape(())
            annealed = torch.where(t == 0, n, n + t.to(r.dtype) * ((r - n) + u))
        elif temperature == 0:
            annealed = n  # rounding bit for bit, sign of zero included
        else:
            annealed = n + temperature * ((r - n) + u)
        return annealed, annealed
    check_choice("mode", mode, MODES)


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.special.erfc(x * -(1.0 / math.sqrt(2.0)))


def gaussian_bin_mass(av: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Phi((1/2 - |v|)/s) - Phi((-1/2 - |v|)/s): both arguments <= 1/(2s), the reflected form."""
    return standard_normal_cdf((0.5 - av) / s) - standard_normal_cdf((-0.5 - av) / s)


# The Laplace and logistic masses below are written as products and sums of non-negative terms,
# with a = (|v| - 1/2)/s, b = (|v| + 1/2)/s and h = 1/s (= b - a), so neither the tails nor large s
# cancel. Each branch of a where() sees its own side of a (a >= 0 or a < 0, else 0), so the
# branch not taken stays finite and contributes a zero gradient; at a = 0 the branch taken
# (a >= 0) has the one-sided slope, equal on both sides for these continuous densities. (where()
# rather than clamp: clamp's gradient is 0 at the bound itself.)


class _Expm1(torch.autograd.Function):
    """torch.expm1 with the derivative e^x computed as exp(x): torch's own backward forms
    expm1(x) + 1, which loses every digit where e^x is small (x = -20: 2e-9 +- 1e-16)."""

    @staticmethod
    def forward(x):
        return torch.expm1(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x)


def _expm1(x: torch.Tensor) -> torch.Tensor:
    return _Expm1.apply(x)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a where a >= 0 else 0, a where a < 0 else 0), each with gradient 1 where it is a."""
    zero = torch.zeros_like(a)
    return torch.where(a >= 0, a, zero), torch.where(a < 0, a, zero)

def laplace_bin_mass(av: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """S(a) - S(b) with S(x) = 1/2 e^-x (x >= 0), 1 - 1/2 e^x (x < 0)."""
    a, b, h = (av - 0.5) / s, (av + 0.5) / s, 1.0 / s
    a_pos, a_neg = _split(a)
    tail = -0.5 * torch.exp(-a_pos) * _expm1(-h)  # 1/2 (e^-a - e^-b)
    core = -0.5 * (_expm1(a_neg) + _expm1(-b))  # 1 - 1/2 e^a - 1/2 e^-b
    return torch.where(a >= 0, tail, core)


def logistic_bin_mass(av: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """S(a) - S(b) with S(x) = 1/(1 + e^x): (e^-a - e^-b) / ((1 + e^-a)(1 + e^-b)) for a >= 0,
    (1 - e^a e^-b) / ((1 + e^a)(1 + e^-b)) for a < 0; both numerators are -expm1(-h) times
    e^-a or 1."""
    a, b, h = (av - 0.5) / s, (av + 0.5) / s, 1.0 / s
    a_pos, a_neg = _split(a)
    e_b = torch.exp(-b)
    e_pos = torch.exp(-a_pos)
    e_neg = torch.exp(a_neg)
    tail = -e_pos * _expm1(-h) / ((1.0 + e_pos) * (1.0 + e_b))
    core = -_expm1(-h) / ((1.0 + e_neg) * (1.0 + e_b))
    return torch.where(a >= 0, tail, core)


BIN_MASSES = {"gaussian": gaussian_bin_mass, "laplace": laplace_bin_mass,
              "logistic": logistic_bin_mass}


compute_dtype = likelihood_dtype  # float32 compute for reduced precision, float64 for float64


def gaussian_quantize_reference(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    *,
    mode: str = "sua",
    temperature=1.0,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
    zero_center: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, likelihoods) of docs/spec.md section 1 for explicit noise u (needed unless
    mode='ste')."""
    return _quantize_reference(y, scales, means, noise, gaussian_bin_mass, mode=mode,
                               temperature=temperature, scale_bound=scale_bound,
                               likelihood_bound=likelihood_bound, zero_center=zero_center)


def _computed_inputs(y, scales, noise, mode, scale_bound):
    """The mode checked, then (compute dtype, y, the bounded scales, u) in the compute dtype."""
    check_choice("mode", mode, MODES)
    if mode != "ste" and noise is None:
        raise ValueError(f"lic_quant: noise is required for mode={mode!r}")
    cdt = compute_dtype(y.dtype)
    u = noise.to(cdt) if noise is not None else None
    return cdt, y.to(cdt), lower_bound(scales.to(cdt), scale_bound), u


def _quantize_reference(y, scales, means, noise, bin_mass, *, mode, temperature, scale_bound,
                        likelihood_bound, zero_center):
    cdt, yc, s, u = _computed_inputs(y, scales, noise, mode, scale_bound)
    mu = means.to(cdt) if means is not None else None

    c = mu if (zero_center and mu is not None) else None
    r = yc - c if c is not None else yc
    rate_value, dist_value = surrogate(mode, r.detach(), u, temperature)
    rate = straight_through(rate_value, r)
    dist = straight_through(dist_value, r)

    y_hat = c + dist if c is not None else dist
    v = rate - mu if (not zero_center and mu is not None) else rate
    p = bin_mass(v.abs(), s)
    likelihoods = lower_bound(p, likelihood_bound)
    return y_hat.to(y.dtype), likelihoods


def rate_bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """bits[n] = sum over sample n of -log2 P (docs/spec.md section 8): log2 and the sum in
    float64, the result (and the gradient into P) in the likelihoods' dtype."""
    check_rate(likelihoods, True)  # P has y's shape
    bits = -torch.log2(likelihoods.double()).reshape(likelihoods.shape[0], -1).sum(1)
    return bits.to(likelihoods.dtype)


def quantize_reference(y, scales, means=None, noise=None, *, family: str = "gaussian",
                       rate: bool = False, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, likelihoods) of docs/spec.md section 6 for a likelihood `family`; settings (mode,
    temperature, scale_bound, likelihood_bound, zero_center) as gaussian_quantize_reference.
    rate=True: (y_hat, bits) of section 8, bits = rate_bits(likelihoods)."""
    check_choice("family", family, FAMILIES)
    check_rate(y, rate)
    settings = {"mode": "sua", "temperature": 1.0, "scale_bound": 0.11, "likelihood_bound": 1e-9,
                "zero_center": True, **settings}
    y_hat, lik = _quantize_reference(y, scales, means, noise, BIN_MASSES[family], **settings)
    return (y_hat, rate_bits(lik)) if rate else (y_hat, lik)


def mixture_quantize_reference(
    y: torch.Tensor,
    scales: torch.Tensor,
    means: torch.Tensor,
    weights: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    family: str = "gaussian",
    weights_are_logits: bool = False,
    mode: str = "noise",
    temperature=1.0,
    zero_center: bool = False,
    scale_bound: float = 0.11,
    likelihood_bound: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, likelihoods) of the K-component mixture of docs/spec.md section 7; scales, means and
    weights have shape (K, *y.shape). The sums over k run in the order k = 0 .. K-1 from 0, as
    CompressAI's GaussianMixtureConditional and the kernels accumulate them."""
    check_choice("family", family, FAMILIES)
    cdt, yc, s, u = _computed_inputs(y, scales, noise, mode, scale_bound)
    mu = means.to(cdt)
    w = weights.to(cdt)
    if weights_are_logits:
        w = torch.softmax(w, dim=0)
    n_components = scales.shape[0]

    # The centre only places the lattice: a constant in the backward (its gradient would cancel
    # in v_k = c + (y - c) + delta - mu_k anyway).
    c = torch.zeros_like(yc)
    if zero_center:
        for k in range(n_components):
            c = c + w[k].detach() * mu[k].detach()
    r = yc - c
    rate_value, dist_value = surrogate(mode, r.detach(), u, temperature)
    rate = straight_through(rate_value, r)
    y_hat = c + straight_through(dist_value, r)

    bin_mass = BIN_MASSES[family]
    p = torch.zeros_like(yc)
    for k in range(n_components):
        v = (c - mu[k]) + rate
        p = p + w[k] * bin_mass(v.abs(), s[k])
    return y_hat.to(y.dtype), lower_bound(p, likelihood_bound)


# ---------------------------------------------------------------------------------------------
# The factorized prior (docs/spec.md section 9)

def channel_logits(x: torch.Tensor, matrices, biases, factors) -> torch.Tensor:
    """The learned cumulative's logits of every channel at x of shape (C, 1, L): CompressAI's
    ``EntropyBottleneck._logits_cumulative`` (softplus matrices, biases, tanh factors)."""
    logits = x
    for i, matrix in enumerate(matrices):
        logits = torch.matmul(F.softplus(matrix), logits) + biases[i]
        if i < len(factors):
            logits = logits + torch.tanh(factors[i]) * torch.tanh(logits)
    return logits


def sigmoid_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """sigma(upper) - sigma(lower), taken where both sigmoids are far from 1: where
    upper + lower > 0 it is sigma(-lower) - sigma(-upper), so two logits of 30 and 31 give
    6e-14 rather than 1 - 1 = 0."""
    flip = (upper + lower) > 0
    return torch.where(flip, torch.sigmoid(-lower) - torch.sigmoid(-upper),
                       torch.sigmoid(upper) - torch.sigmoid(lower))


def entropy_bottleneck_reference(
    z: torch.Tensor,
    medians: torch.Tensor,
    matrices,
    biases,
    factors,
    noise: torch.Tensor | None = None,
    *,
    mode: str = "noise",
    temperature=1.0,
    likelihood_bound: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_hat, likelihoods) of docs/spec.md section 9 for z of shape (N, C, ...), medians (C,)
    and CompressAI's parameter lists, with explicit noise u of z's shape (needed unless
    mode='ste').

    The lattice is centred at the channel's median: r = z - median, the surrogates of section 1,
    z_hat = median + r~_D, and the density is evaluated at v = median + r~_R, at v -+ 1/2. The
    medians get no gradient here (in CompressAI they learn through ``loss()`` only)."""
    check_choice("mode", mode, MODES)
    if mode != "ste" and noise is None:
        raise ValueError(f"lic_quant: noise is required for mode={mode!r}")
    cdt = compute_dtype(z.dtype)
    channels = z.shape[1]
    view = (1, channels) + (1,) * (z.dim() - 2)
    zc = z.to(cdt)
    m = medians.detach().to(cdt).reshape(view)
    r = zc - m
    u = noise.to(cdt) if noise is not None else None
    rate_value, dist_value = surrogate(mode, r.detach(), u, temperature)
    z_hat = m + straight_through(dist_value, r)
    v = m + straight_through(rate_value, r)

    # Contiguous parameters: matmul's summation order follows the layout.
    params = [[t.to(cdt).contiguous() for t in group] for group in (matrices, biases, factors)]
    by_channel = v.transpose(0, 1)  # (C, N, ...)
    values = by_channel.reshape(channels, 1, -1)
    lower = channel_logits(values - 0.5, *params)
    upper = channel_logits(values + 0.5, *params)
    p = sigmoid_difference(upper, lower).reshape(by_channel.shape).transpose(0, 1)
    likelihoods = lower_bound(p.contiguous(), likelihood_bound)
    return z_hat.to(z.dtype), likelihoods
