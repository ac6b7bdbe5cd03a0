"""Triton kernels of lic_quant (SPEC sections 1-3): one fused pass forward, one fused pass backward.

Imported lazily by lic_quant/triton_ops.py on the first Triton launch, because ``triton.jit``
reads TRITON_INTERPRET when a kernel is decorated: set it before the first ``backend="triton"``
call to run these kernels on CPU tensors in Triton's interpreter.

Every per-element function below is a line-by-line port of csrc/lic_quant/{philox,normal_dist,
quantize_math}.h, float32 only. They use IEEE operations, bit casts and selects, never libdevice
(unavailable in the interpreter), so in float32 they give the C++ kernels' bits:

* Contraction. The C++/CUDA kernels are built without FMA contraction. Triton contracts a*b + c
  into an fma on NVIDIA GPUs by default (LLVM AllowFPOpFusion=Fast, ptxas --fmad=true). Triton
  has a launch option for that, ``enable_fp_fusion=False``, but torch.compile's capture of user
  kernels (torch/_higher_order_ops/triton_kernel_wrap.py) only moves num_warps, num_stages and
  the like out of the kernel arguments, so it cannot be relied on through ``wrap_triton``. So on
  GPU every float product goes through ``_mul``, an inline ``mul.rn.f32``: explicitly rounded, it
  is opaque to LLVM and never fused by ptxas. Under the interpreter (numpy) nothing is fused and
  ``_mul`` is a plain product.
* Division. Triton's ``/`` on float32 is the approximate ``div.full.f32`` on NVIDIA GPUs;
  ``tl.math.div_rn`` is the IEEE division the C++/CUDA kernels use.
  Checked without a GPU by compiling the kernels for sm_90 (triton.compile with a GPUTarget, the
  bundled ptxas/nvdisasm): the PTX has no fma, no div.full and no .ftz arithmetic; the only FFMA in
  the SASS are those of the IEEE division sequence (the noise kernel, which divides nothing, has
  none).
* bfloat16. Loads widen the raw 16 bits (exact); stores round to nearest even with integer
  arithmetic exactly as c10::BFloat16 does (NaN -> 0x7FC0), because the interpreter's own
  float32 -> bfloat16 cast does not round to nearest even.

Normal tail Q(a) = P(X > a) = erfc(a / sqrt 2) / 2 (``_normal_sf``), float32 method of
normal_dist.h: a < 0.75: 1/2 - a S(a^2) (odd series of erf); a >= 0.75: exp(-a^2/2) t R(t) with
t = 1/(1 + a/2) (t R(t) = erfcx(a/sqrt2)/2); exp(-a^2/2) from an exact split of a^2 fed to a
Cody-Waite exponential, so the tail keeps its relative accuracy down to the float32 underflow.
Measured under TRITON_INTERPRET=1 over 2,000,001 float32 points a in [0, 14] (all a with
Q(a) > 1e-37) against scipy.special.ndtr(-a) in float64: max relative error 3.5e-7 (3.46e-7 at
a = 2.2253; the negative side, Q = 1 - Q(-a), 1.1e-7)
(tests/test_triton.py::test_normal_sf_accuracy asserts <= 1e-6 and the bitwise match with the
C++ kernels' likelihoods). erfc(x) = 2 Q(x sqrt 2) inherits the same relative error.
"""
from __future__ import annotations

import triton
import triton.language as tl

# The mode values of lic_quant.reference.MODES (and of the C++ Mode enum).
MODE_NOISE = tl.constexpr(0)
MODE_STE = tl.constexpr(1)
MODE_MIXED = tl.constexpr(2)
MODE_SUA = tl.constexpr(3)

# ---------------------------------------------------------------------------------------------
# Exactly rounded float32 primitives (see the module docstring).


@triton.jit
def _mul(a, b, ON_GPU: tl.constexpr):
    if ON_GPU:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return a * b


@triton.jit
def _div(a, b):
    return tl.math.div_rn(a, b)


@triton.jit
def _bits(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def _float(b):
    return b.to(tl.float32, bitcast=True)


# ---------------------------------------------------------------------------------------------
# Noise (philox.h): Philox4x32-10 on counter (lo32(i), hi32(i), 0, 0), key (lo32(seed),
# hi32(seed)), written out here rather than through tl.rand, whose splitting of a 64-bit offset
# and seed differs between Triton versions.


@triton.jit
def _philox_uniform(seed, index, ON_GPU: tl.constexpr):
    c0 = index.to(tl.uint32)  # int64 -> uint32 truncates: lo32(i)
    c1 = (index >> 32).to(tl.uint32)  # hi32(i)
    zero = c0 * 0
    c2 = zero
    c3 = zero
    k0 = zero + seed.to(tl.uint32)
    k1 = zero + (seed >> 32).to(tl.uint32)
    for _ in tl.static_range(10):
        n0 = tl.umulhi(c2, 0xCD9E8D57) ^ c1 ^ k0
        n2 = tl.umulhi(c0, 0xD2511F53) ^ c3 ^ k1
        c1 = c2 * 0xCD9E8D57
        c3 = c0 * 0xD2511F53
        c0 = n0
        c2 = n2
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    # Triton's uint_to_uniform_float, then -1/2, each step rounded on its own.
    x = c0.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    rand = _mul(x.to(tl.float32), 4.6566127342e-10, ON_GPU)
    return rand - 0.5


# ---------------------------------------------------------------------------------------------
# normal_dist.h


@triton.jit
def _round_half_even(x):
    magic = 12582912.0  # 1.5 * 2^23
    ax = _float(_bits(x) & 0x7FFFFFFF)
    r = (ax + magic) - magic
    r = _float((_bits(r) & 0x7FFFFFFF) | (_bits(x) & 0x80000000))
    return tl.where(ax < 4194304.0, r, x)  # |x| >= 2^22 is an integer already; NaN -> x


@triton.jit
def _exp_neg_half_square(x, ON_GPU: tl.constexpr):
    a = _float(_bits(x) & 0x7FFFFFFF)
    a = tl.where(a > 18.0, 18.0, a)  # NaN passes
    ah = _float(_bits(a) & 0xFFFFF000)
    hi = _mul(-0.5, _mul(ah, ah, ON_GPU), ON_GPU)  # exact
    lo = _mul(-0.5, _mul(a - ah, a + ah, ON_GPU), ON_GPU)
    magic = 12582912.0
    k = (_mul(hi, 1.44269504, ON_GPU) + magic) - magic
    r = ((hi - _mul(k, 0.693359375, ON_GPU)) - _mul(k, -2.12194440e-4, ON_GPU)) + lo
    p = _mul(1.98412698e-4, r, ON_GPU) + 1.38888889e-3
    p = _mul(p, r, ON_GPU) + 8.33333333e-3
    p = _mul(p, r, ON_GPU) + 4.16666667e-2
    p = _mul(p, r, ON_GPU) + 1.66666667e-1
    p = _mul(p, r, ON_GPU) + 0.5
    p = _mul(p, r, ON_GPU) + 1.0
    p = _mul(p, r, ON_GPU) + 1.0
    # 2^k as two normal factors; k <= 0, so k1 = trunc(k / 2) = -((-k) >> 1) as C's k / 2.
    ki = k.to(tl.int32)
    k1 = -((-ki) >> 1)
    k2 = ki - k1
    s1 = _float(((k1 + 127) << 23).to(tl.uint32, bitcast=True))
    s2 = _float(((k2 + 127) << 23).to(tl.uint32, bitcast=True))
    return _mul(_mul(p, s1, ON_GPU), s2, ON_GPU)


@triton.jit
def _normal_pdf(x, ON_GPU: tl.constexpr):
    return _mul(0.398942280, _exp_neg_half_square(x, ON_GPU), ON_GPU)


@triton.jit
def _normal_sf(x, ON_GPU: tl.constexpr):
    """Q(x) = P(X > x) in float32 (normal_dist.h)."""
    a = _float(_bits(x) & 0x7FFFFFFF)
    z = _mul(a, a, ON_GPU)
    s = _mul(-8.387869e-06, z, ON_GPU) + 0.000114777606
    s = _mul(s, z, ON_GPU) + -0.0011871376
    s = _mul(s, z, ON_GPU) + 0.009973532
    s = _mul(s, z, ON_GPU) + -0.06649038
    s = _mul(s, z, ON_GPU) + 0.3989423
    q_center = 0.5 - _mul(a, s, ON_GPU)
    t = _div(1.0, 1.0 + _mul(0.5, a, ON_GPU))
    r = _mul(0.15522534, t, ON_GPU) + -0.5068108
    r = _mul(r, t, ON_GPU) + 0.5729058
    r = _mul(r, t, ON_GPU) + -0.15902445
    r = _mul(r, t, ON_GPU) + -0.09846008
    r = _mul(r, t, ON_GPU) + -0.06132348
    r = _mul(r, t, ON_GPU) + 0.049468946
    r = _mul(r, t, ON_GPU) + 0.1496368
    r = _mul(r, t, ON_GPU) + 0.19947025
    r = _mul(r, t, ON_GPU) + 0.19947115
    q_tail = _mul(_exp_neg_half_square(a, ON_GPU), _mul(t, r, ON_GPU), ON_GPU)
    q = tl.where(a < 0.75, q_center, q_tail)  # NaN takes the tail and stays NaN
    return tl.where(x < 0.0, 1.0 - q, q)


# ---------------------------------------------------------------------------------------------
# quantize_math.h


@triton.jit
def _surrogate(r, u, temperature, MODE: tl.constexpr, ON_GPU: tl.constexpr):
    """(r~_R, r~_D) of SPEC section 1: the one place that defines the surrogates."""
    n = _round_half_even(r)
    if MODE == MODE_NOISE:
        rate = r + u
        dist = rate
    elif MODE == MODE_STE:
        rate = n
        dist = n
    elif MODE == MODE_MIXED:
        rate = r + u
        dist = n
    else:  # MODE_SUA: n + T (e + u); T = 0 gives rounding bit for bit
        rate = tl.where(temperature == 0.0, n, n + _mul(temperature, (r - n) + u, ON_GPU))
        dist = rate
    return rate, dist


@triton.jit
def _lower_bound(x, bound):
    return tl.where(x < bound, bound, x)  # keeps NaN


@triton.jit
def _bin_probability(v, s, ON_GPU: tl.constexpr):
    av = tl.where(v < 0.0, -v, v)
    return _normal_sf(_div(av - 0.5, s), ON_GPU) - _normal_sf(_div(av + 0.5, s), ON_GPU)


@triton.jit
def _load_f32(ptr, offs, mask, IS_BF16: tl.constexpr):
    if IS_BF16:  # raw 16 bits through an int16 view: widening is exact
        h = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16, bitcast=True)
        return _float(h.to(tl.uint32) << 16)
    else:
        return tl.load(ptr + offs, mask=mask, other=0).to(tl.float32)


@triton.jit
def _store_from_f32(ptr, offs, x, mask, IS_BF16: tl.constexpr):
    if IS_BF16:  # c10::BFloat16's round to nearest even, NaN -> 0x7FC0
        b = _bits(x)
        rounded = (b + (0x7FFF + ((b >> 16) & 1))) >> 16
        h = tl.where(x != x, 0x7FC0, rounded).to(tl.uint16).to(tl.int16, bitcast=True)
        tl.store(ptr + offs, h, mask=mask)
    else:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rate_residual(y, mu, u, temperature, MODE: tl.constexpr, ZERO_CENTER: tl.constexpr,
                   ON_GPU: tl.constexpr):
    if ZERO_CENTER:
        c = mu
    else:
        c = tl.zeros_like(mu)  # +0 everywhere, as the C++ T(0)
    r = y - c
    rate, dist = _surrogate(r, u, temperature, MODE, ON_GPU)
    if ZERO_CENTER:
        v = rate
    else:
        v = rate - mu
    return c, v, dist


@triton.jit
def _load_residual(y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, index_base,
                   scale_bound, MODE: tl.constexpr, ZERO_CENTER: tl.constexpr,
                   HAS_MEANS: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """The part forward and backward share: load y, mu, sigma, draw u, and return the lattice
    centre c, the rate residual v, the decoder surrogate r~_D, sigma and the bounded scale s."""
    y = _load_f32(y_ptr, offs, mask, IS_BF16)
    sigma = _load_f32(sigma_ptr, offs, mask, IS_BF16)
    if HAS_MEANS:
        mu = _load_f32(mu_ptr, offs, mask, IS_BF16)
    else:
        mu = tl.zeros_like(y)  # +0, as the C++ kernels' zero-filled means
    temperature = tl.load(temp_ptr).to(tl.float32)
    if MODE != MODE_STE:
        u = _philox_uniform(tl.load(seed_ptr), offs + index_base, ON_GPU)
    else:
        u = tl.zeros_like(y)
    c, v, dist = _rate_residual(y, mu, u, temperature, MODE, ZERO_CENTER, ON_GPU)
    return c, v, dist, sigma, _lower_bound(sigma, scale_bound)


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def quantize_forward_kernel(
    y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, y_hat_ptr, lik_ptr,
    n_elements, index_base, scale_bound, likelihood_bound,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, HAS_MEANS: tl.constexpr,
    IS_BF16: tl.constexpr, ON_GPU: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # 64-bit offsets
    mask = offs < n_elements
    c, v, dist, sigma, s = _load_residual(
        y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, index_base, scale_bound,
        MODE, ZERO_CENTER, HAS_MEANS, IS_BF16, ON_GPU)
    lik = _lower_bound(_bin_probability(v, s, ON_GPU), likelihood_bound)
    _store_from_f32(y_hat_ptr, offs, c + dist, mask, IS_BF16)
    tl.store(lik_ptr + offs, lik, mask=mask)


@triton.jit
def quantize_backward_kernel(
    g_yhat_ptr, g_lik_ptr, y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr,
    gy_ptr, gmu_ptr, gs_ptr,
    n_elements, index_base, scale_bound, likelihood_bound,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, HAS_MEANS: tl.constexpr,
    HAS_GYHAT: tl.constexpr, NEED_GY: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GS: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elements
    g_lik = tl.load(g_lik_ptr + offs, mask=mask, other=-1.0)
    c, v, dist, sigma, s = _load_residual(
        y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, index_base, scale_bound,
        MODE, ZERO_CENTER, HAS_MEANS, IS_BF16, ON_GPU)
    # Likelihood bound (CompressAI's LowerBound): g_P passes where p >= b_p or g_P < 0. Where the
    # whole block has g_P < 0 (loss = -log P) p is not recomputed; masked lanes count as negative.
    upward = g_lik < 0.0
    n_upward = tl.sum(upward.to(tl.int32), axis=0)
    if n_upward == BLOCK:
        g_p = g_lik
    else:
        p = _bin_probability(v, s, ON_GPU)
        g_p = tl.where((p >= likelihood_bound) | upward, g_lik, g_lik * 0.0)
    inv_s = _div(1.0, s)
    u1 = _mul(v + 0.5, inv_s, ON_GPU)
    u2 = _mul(v - 0.5, inv_s, ON_GPU)
    phi1 = _normal_pdf(u1, ON_GPU)
    phi2 = _normal_pdf(u2, ON_GPU)
    g_v = _mul(g_p, _mul(phi1 - phi2, inv_s, ON_GPU), ON_GPU)
    g_s = _mul(-g_p, _mul(_mul(u1, phi1, ON_GPU) - _mul(u2, phi2, ON_GPU), inv_s, ON_GPU), ON_GPU)
    if NEED_GY:
        if HAS_GYHAT:
            g_yhat = _load_f32(g_yhat_ptr, offs, mask, IS_BF16)
        else:
            g_yhat = tl.zeros_like(v)
        _store_from_f32(gy_ptr, offs, g_yhat + g_v, mask, IS_BF16)
    if NEED_GMU:
        _store_from_f32(gmu_ptr, offs, -g_v, mask, IS_BF16)
    if NEED_GS:
        g_sigma = tl.where((sigma >= scale_bound) | (g_s < 0.0), g_s, g_s * 0.0)
        _store_from_f32(gs_ptr, offs, g_sigma, mask, IS_BF16)


@triton.jit
def uniform_noise_kernel(seed_ptr, out_ptr, n_elements, index_base, ON_GPU: tl.constexpr,
                         BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elements
    u = _philox_uniform(tl.load(seed_ptr), offs + index_base, ON_GPU)
    tl.store(out_ptr + offs, u, mask=mask)


@triton.jit
def normal_sf_kernel(x_ptr, out_ptr, n_elements, ON_GPU: tl.constexpr, BLOCK: tl.constexpr):
    """Q(x) elementwise: the erfc of these kernels, exposed for the accuracy test."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, _normal_sf(x, ON_GPU), mask=mask)


# On GPU: autotuned over block size and warps. Under the interpreter triton.autotune with several
# configs needs a driver, so triton_ops launches the plain kernels with one large block instead.
# The kernels do ~250 float/int instructions per element, so fewer elements per thread (more
# warps in flight) tend to win: offline sm_90 builds use 46 (forward) / 52 (backward) registers at
# 1024 x 8 warps, 168 / 224 at 2048 x 4, and spill at 4096 x 4, which is therefore left out.
_GPU_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w)
                for b, w in ((512, 4), (1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8))]


def _interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(quantize_forward_kernel, InterpretedFunction)


INTERPRETED = _interpreted()
if INTERPRETED:
    quantize_forward_autotuned = quantize_forward_fixed = quantize_forward_kernel
    quantize_backward_autotuned = quantize_backward_fixed = quantize_backward_kernel
else:
    quantize_forward_autotuned = triton.autotune(configs=_GPU_CONFIGS, key=["n_elements"])(
        quantize_forward_kernel)
    quantize_backward_autotuned = triton.autotune(configs=_GPU_CONFIGS, key=["n_elements"])(
        quantize_backward_kernel)
    # One config, no tuning runs (LIC_QUANT_TRITON_AUTOTUNE=0): for test suites, where every
    # constexpr variant would otherwise compile six times.
    _FIXED = [triton.Config({"BLOCK": 1024}, num_warps=8)]
    quantize_forward_fixed = triton.autotune(configs=_FIXED, key=[])(quantize_forward_kernel)
    quantize_backward_fixed = triton.autotune(configs=_FIXED, key=[])(quantize_backward_kernel)
