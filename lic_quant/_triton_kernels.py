"""Triton kernels of lic_quant (docs/spec.md sections 1-3, 6-8): one fused pass forward, one fused
pass backward, for one likelihood family and for K-component mixtures of one.

Imported by lic_quant/triton_ops.py, itself imported on the first ``backend="triton"`` call;
``triton.jit`` reads TRITON_INTERPRET when a kernel is decorated: set it before then to run these
kernels on CPU tensors in Triton's interpreter.

Every per-element function below is a line-by-line port of csrc/lic_quant/{philox,normal_dist,
neg_exp,laplace_dist,logistic_dist,quantize_math,mixture_math}.h, float32 only, written with IEEE
operations, explicit fused multiply-adds, bit casts and selects, never libdevice (unavailable in
the interpreter). What keeps the bits equal to
the C++/CUDA kernels:

* Fused multiply-adds. ``_fma`` is ``tl.fma`` (one rounding) on the GPU. The interpreter's fma
  rounds twice (numpy float32 product, then sum), so under it ``_fma`` computes the product exactly
  in float64, rounds the sum to odd with the exact TwoSum error, and rounds that to float32: the
  correctly rounded fma.
* No contraction. Triton contracts a*b + c into an fma on NVIDIA GPUs by default, and
  torch.compile's capture of user kernels cannot be relied on to pass ``enable_fp_fusion=False``.
  So on the GPU every plain product goes through ``_mul``, an inline ``mul.rn.f32`` that LLVM and
  ptxas never fuse; ``tools/check_triton_ptx.py`` checks offline that the PTX has exactly the fmas
  the source asks for (the same count as a build with fusion disabled).
* Negation and zeros. Triton's ``-x`` is ``0 - x``, which turns -0 into +0; ``_neg`` flips the sign
  bit as C++ does. ``x * 0`` on the GPU goes through ``_mul``, so it is never folded to 0.
* Rounding and the reciprocal: ``cvt.rni.f32.f32`` on the GPU (rint), the 2^23 trick in the
  interpreter (the same IEEE result); 1/s is ``rcp.approx.ftz`` plus one Newton step on the GPU,
  the correctly rounded reciprocal for the s the kernels allow, and ``div_rn`` in the interpreter.
* Stores. NaN is written as the one canonical NaN of every backend (0x7FFFFFFF, 0x7FFF in
  float16/bfloat16); bfloat16 rounds to nearest even with integer arithmetic (the interpreter's own
  cast does not).

Noise (version 2): one Philox4x32-10 block per four consecutive elements, ``_noise`` draws a
program's BLOCK/4 blocks and interleaves the four words with join + reshape. Normal tail, float32
method of normal_dist.h: Q(x) = exp(-x^2/2) t R(t), t = 1/(1 + 0.35 x), one formula for x >= 0,
measured max relative error 3.6e-7 over [0, 14] (tests/test_triton.py::test_normal_sf_accuracy).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._checks import FAMILIES, MODES

# The kernels' mode numbers: indices into lic_quant._checks.MODES (the C++ Mode enum's values).
MODE_NOISE = tl.constexpr(MODES.index("noise"))
MODE_STE = tl.constexpr(MODES.index("ste"))
MODE_MIXED = tl.constexpr(MODES.index("mixed"))
MODE_SUA = tl.constexpr(MODES.index("sua"))
# The family numbers: indices into lic_quant._checks.FAMILIES (the C++ Family enum's values).
FAMILY_GAUSSIAN = tl.constexpr(FAMILIES.index("gaussian"))
FAMILY_LAPLACE = tl.constexpr(FAMILIES.index("laplace"))
FAMILY_LOGISTIC = tl.constexpr(FAMILIES.index("logistic"))

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
def _fma(a, b, c, ON_GPU: tl.constexpr):
    """a * b + c rounded once (std::fma / __fmaf_rn)."""
    if ON_GPU:
        return tl.fma(a, b, c)
    else:
        # The interpreter's fma rounds twice. In float64 a * b is exact; the sum is rounded to odd
        # (the exact TwoSum error tells whether it was inexact), and round-to-odd in 53 bits
        # followed by rounding to 24 bits is the correctly rounded result.
        p = tl.cast(a, tl.float64) * tl.cast(b, tl.float64)
        c64 = tl.cast(c, tl.float64)
        t = p + c64
        bb = t - p
        err = (p - (t - bb)) + (c64 - bb)
        tb = t.to(tl.int64, bitcast=True)
        even = (tb & 1) == 0
        finite = (t - t) == 0.0
        # Step to the neighbour with the odd last bit, on the side of the exact value.
        away = (err > 0.0) == (t > 0.0)
        step = tl.where(away, 1, -1).to(tl.int64)
        fix = (err != 0.0) & even & finite
        t = tl.where(fix, tb + step, tb).to(tl.float64, bitcast=True)
        return t.to(tl.float32)


@triton.jit
def _div(a, b):
    return tl.math.div_rn(a, b)


@triton.jit
def _bits(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def _float(b):
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _abs(x):
    return _float(_bits(x) & 0x7FFFFFFF)


@triton.jit
def _lower_bound(x, bound):
    return tl.where(x < bound, bound, x)  # keeps NaN


@triton.jit
def _upper_bound(x, bound):
    return tl.where(x > bound, bound, x)  # keeps NaN


@triton.jit
def _canonical_nan(x):
    """The one NaN of every backend: 0x7FFFFFFF (quantize_math.h, canonical_nan)."""
    return tl.where(x != x, _float(tl.full(x.shape, 0x7FFFFFFF, tl.uint32)), x)


# ---------------------------------------------------------------------------------------------
# Noise (philox.h), version 2: element i takes word i % 4 of the Philox4x32-10 block at counter
# (lo32(i // 4), hi32(i // 4), 0, 0) with key (lo32(seed), hi32(seed)), written out here rather
# than through tl.rand4x, whose splitting of a 64-bit offset and seed differs between Triton
# versions (the tests check the two agree).


@triton.jit
def _word_to_uniform(w, ON_GPU: tl.constexpr):
    # Triton's uint_to_uniform_float, then -1/2, each step rounded on its own.
    x = w.to(tl.int32, bitcast=True)
    x = x ^ (x >> 31)  # x < 0 ? ~x : x
    return _mul(x.to(tl.float32), 4.6566127342e-10, ON_GPU) - 0.5


@triton.jit
def _philox_uniform4(seed, block, ON_GPU: tl.constexpr):
    """u of the four elements 4 * block + j, j = 0..3, for an int64 tensor of block counters."""
    c0 = block.to(tl.uint32)  # int64 -> uint32 truncates: lo32
    c1 = (block >> 32).to(tl.uint32)  # hi32
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
    return (_word_to_uniform(c0, ON_GPU), _word_to_uniform(c1, ON_GPU),
            _word_to_uniform(c2, ON_GPU), _word_to_uniform(c3, ON_GPU))


@triton.jit
def _noise(seed, first, BLOCK: tl.constexpr, ON_GPU: tl.constexpr):
    """u of the BLOCK elements first .. first + BLOCK - 1 (first a multiple of 4), in order."""
    block = first // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    u0, u1, u2, u3 = _philox_uniform4(seed, block, ON_GPU)
    # join stacks along a new last axis: [n, j, k] = (k ? join(u1, u3) : join(u0, u2))[n, j] is
    # word 2 j + k of block n, and flattening puts it at element 4 n + 2 j + k.
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK,))


@triton.jit
def _noise_any(seed, first, BLOCK: tl.constexpr, ON_GPU: tl.constexpr):
    """u of first .. first + BLOCK - 1 for any first (rate=True chunks start where a sample
    starts): each element takes its own word of its own Philox block."""
    i = first + tl.arange(0, BLOCK).to(tl.int64)
    u0, u1, u2, u3 = _philox_uniform4(seed, i // 4, ON_GPU)
    k = i % 4
    return tl.where(k == 0, u0, tl.where(k == 1, u1, tl.where(k == 2, u2, u3)))


# ---------------------------------------------------------------------------------------------
# normal_dist.h


@triton.jit
def _round_half_even(x, ON_GPU: tl.constexpr):
    if ON_GPU:
        return tl.inline_asm_elementwise("cvt.rni.f32.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        ax = _abs(x)
        r = (ax + 8388608.0) - 8388608.0  # 2^23
        r = _float(_bits(r) | (_bits(x) & 0x80000000))
        return tl.where(ax < 8388608.0, r, x)  # NaN -> x


@triton.jit
def _round_half_even_small(x, ON_GPU: tl.constexpr):
    """Round half to even for |x| < 2^22 (normal_dist.h, round_half_even_small)."""
    if ON_GPU:
        return _round_half_even(x, ON_GPU)
    else:
        return (x + 12582912.0) - 12582912.0  # 1.5 * 2^23


@triton.jit
def _scale_by_exp2(x, k):
    return _float(_bits(x) + (k.to(tl.int32) << 23).to(tl.uint32, bitcast=True))


@triton.jit
def _expm1_over_r(r, ON_GPU: tl.constexpr):
    g = _fma(0.00135651138, r, 0.00836574379, ON_GPU)
    g = _fma(g, r, 0.0416714661, ON_GPU)
    g = _fma(g, r, 0.16666539, ON_GPU)
    g = _fma(g, r, 0.499999881, ON_GPU)
    return _fma(g, r, 1.0, ON_GPU)


@triton.jit
def _reduce_ln2(x, ON_GPU: tl.constexpr):
    """(k, r) with x = k ln2 + r, |r| <= ln2/2 (normal_dist.h, reduce_ln2)."""
    k = _round_half_even_small(_mul(x, 1.44269504, ON_GPU), ON_GPU)
    return k, _fma(k, 1.90465421e-9, _fma(k, -0.693147182, x, ON_GPU), ON_GPU)


@triton.jit
def _exp_neg_half_square(x, ON_GPU: tl.constexpr):
    a = _upper_bound(_abs(x), 16.0)
    hi = _mul(a, a, ON_GPU)
    lo = _fma(a, a, _neg(hi), ON_GPU)
    k, r = _reduce_ln2(_mul(-0.5, hi, ON_GPU), ON_GPU)
    r = _fma(-0.5, lo, r, ON_GPU)
    e = _scale_by_exp2(_fma(_expm1_over_r(r, ON_GPU), r, 1.0, ON_GPU), k + 64.0)
    return _mul(e, 5.42101086e-20, ON_GPU)


@triton.jit
def _exp_neg(x, ON_GPU: tl.constexpr):
    k, r = _reduce_ln2(_neg(x), ON_GPU)
    return _scale_by_exp2(_fma(_expm1_over_r(r, ON_GPU), r, 1.0, ON_GPU), k)


@triton.jit
def _exp_and_expm1(x, ON_GPU: tl.constexpr):
    k, r = _reduce_ln2(x, ON_GPU)
    p = _mul(_expm1_over_r(r, ON_GPU), r, ON_GPU)
    s = _scale_by_exp2(tl.full(x.shape, 1.0, tl.float32), k)
    return _fma(s, p, s, ON_GPU), _fma(s, p, s - 1.0, ON_GPU)


@triton.jit
def _reciprocal_1_128(d, ON_GPU: tl.constexpr):
    r = _float(0x7EF311C3 - _bits(d))
    r = _fma(r, _fma(_neg(d), r, 1.0, ON_GPU), r, ON_GPU)
    r = _fma(r, _fma(_neg(d), r, 1.0, ON_GPU), r, ON_GPU)
    return _fma(r, _fma(_neg(d), r, 1.0, ON_GPU), r, ON_GPU)


@triton.jit
def _tail_denominator(ax, ON_GPU: tl.constexpr):
    return _fma(0.35, _upper_bound(ax, 20.0), 1.0, ON_GPU)


@triton.jit
def _mills_scaled(t, ON_GPU: tl.constexpr):
    r = _fma(-0.0297373720, t, 0.146541759, ON_GPU)
    r = _fma(r, t, -0.260379046, ON_GPU)
    r = _fma(r, t, 0.163763821, ON_GPU)
    r = _fma(r, t, -0.0257680006, ON_GPU)
    r = _fma(r, t, 0.106428899, ON_GPU)
    r = _fma(r, t, 0.119647861, ON_GPU)
    r = _fma(r, t, 0.139881462, ON_GPU)
    r = _fma(r, t, 0.139620572, ON_GPU)
    return _mul(t, r, ON_GPU)


@triton.jit
def _normal_sf(x, ON_GPU: tl.constexpr):
    """Q(x) = P(X > x) in float32 (normal_dist.h)."""
    ax = _abs(x)
    t = _reciprocal_1_128(_tail_denominator(ax, ON_GPU), ON_GPU)
    q = _mul(_exp_neg_half_square(ax, ON_GPU), _mills_scaled(t, ON_GPU), ON_GPU)
    return tl.where(x < 0.0, 1.0 - q, q)  # NaN stays NaN


# ---------------------------------------------------------------------------------------------
# neg_exp.h, laplace_dist.h, logistic_dist.h


@triton.jit
def _neg_exp(x, ON_GPU: tl.constexpr):
    """(e^{-x}, e^{-x} - 1) for x >= 0 (neg_exp.h): the exponential gradually underflows to 0
    beyond x = 128; the expm1 is relative-accurate at small x."""
    k, r = _reduce_ln2(_neg(_upper_bound(x, 128.0)), ON_GPU)
    g = _expm1_over_r(r, ON_GPU)
    ex = _mul(_scale_by_exp2(_fma(g, r, 1.0, ON_GPU), k + 64.0), 5.42101086e-20, ON_GPU)
    s = _scale_by_exp2(tl.full(x.shape, 1.0, tl.float32), _lower_bound(k, -30.0))
    return ex, _fma(s, _mul(g, r, ON_GPU), s - 1.0, ON_GPU)


@triton.jit
def _second_exponent(h, a, m, ON_GPU: tl.constexpr):
    """b - |a|: h where a >= 0, 2m where a < 0 (laplace_dist.h)."""
    return tl.where(a < 0.0, _mul(2.0, m, ON_GPU), h)


@triton.jit
def _laplace_bin_probability(h, a, m, ON_GPU: tl.constexpr):
    e_a, em1_a = _neg_exp(_abs(a), ON_GPU)
    e_y, em1_y = _neg_exp(_second_exponent(h, a, m, ON_GPU), ON_GPU)
    return _fma(_mul(-0.5, e_a, ON_GPU), em1_y, tl.where(a < 0.0, _neg(em1_a), 0.0), ON_GPU)


@triton.jit
def _laplace_bin_slopes(h, a, m, ON_GPU: tl.constexpr):
    e_a, em1_a = _neg_exp(_abs(a), ON_GPU)
    e_y, em1_y = _neg_exp(_second_exponent(h, a, m, ON_GPU), ON_GPU)
    ac = _upper_bound(_lower_bound(a, -128.0), 128.0)
    slope = _fma(ac, _neg(em1_y), _neg(_mul(h, e_y, ON_GPU)), ON_GPU)
    half_h = _mul(0.5, h, ON_GPU)
    return (_mul(_mul(e_a, em1_y, ON_GPU), half_h, ON_GPU),
            _mul(_mul(e_a, slope, ON_GPU), half_h, ON_GPU))


@triton.jit
def _logistic_terms(h, a, m, ON_GPU: tl.constexpr):
    """(E, e^{-y}, beta, M, 1/D) of logistic_dist.h's LogisticTerms."""
    e_a, em1_a = _neg_exp(_abs(a), ON_GPU)
    e_y, em1_y = _neg_exp(_second_exponent(h, a, m, ON_GPU), ON_GPU)
    beta = _neg(em1_y)
    one_plus_e = 1.0 + e_a
    m1 = _fma(_neg(em1_a), one_plus_e, _mul(_mul(e_a, e_a, ON_GPU), beta, ON_GPU), ON_GPU)
    rd = _reciprocal_1_128(_mul(one_plus_e, 1.0 + _mul(e_a, e_y, ON_GPU), ON_GPU), ON_GPU)
    return e_a, e_y, beta, m1, rd


@triton.jit
def _logistic_bin_probability(h, a, m, ON_GPU: tl.constexpr):
    e, ey, beta, m1, rd = _logistic_terms(h, a, m, ON_GPU)
    return _mul(tl.where(a < 0.0, m1, _mul(e, beta, ON_GPU)), rd, ON_GPU)


@triton.jit
def _logistic_bin_slopes(h, a, m, ON_GPU: tl.constexpr):
    e, ey, beta, m1, rd = _logistic_terms(h, a, m, ON_GPU)
    ac = _upper_bound(_lower_bound(a, -128.0), 128.0)
    one_plus_e = 1.0 + e
    s = _fma(ac, _mul(beta, m1, ON_GPU),
             _mul(_neg(_mul(h, ey, ON_GPU)), _mul(one_plus_e, one_plus_e, ON_GPU), ON_GPU), ON_GPU)
    w = _mul(_mul(e, rd, ON_GPU), rd, ON_GPU)
    return (_mul(_neg(_mul(w, _mul(beta, m1, ON_GPU), ON_GPU)), h, ON_GPU),
            _mul(_mul(w, s, ON_GPU), h, ON_GPU))


# ---------------------------------------------------------------------------------------------
# quantize_math.h


@triton.jit
def _surrogate(r, u, temperature, MODE: tl.constexpr, ON_GPU: tl.constexpr):
    """(r~_R, r~_D) of docs/spec.md section 1: the one place that defines the surrogates."""
    n = _round_half_even(r, ON_GPU)
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
def _refined_quotient(num, den, inv_den, NONNEGATIVE: tl.constexpr, ON_GPU: tl.constexpr):
    q = _mul(num, inv_den, ON_GPU)
    if not NONNEGATIVE:
        q = _lower_bound(q, -64.0)
    q = _upper_bound(q, 64.0)
    return _fma(_fma(_neg(q), den, num, ON_GPU), inv_den, q, ON_GPU)


@triton.jit
def _reciprocal_rn(s, ON_GPU: tl.constexpr):
    """1/s correctly rounded for s in [2^-125, 2^125] (quantize_math.h, reciprocal_rn)."""
    if ON_GPU:
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [s],
                                      dtype=tl.float32, is_pure=True, pack=1)
        return _fma(r, _fma(_neg(s), r, 1.0, ON_GPU), r, ON_GPU)
    else:
        return _div(1.0, s)


@triton.jit
def _bin_args(av, s, ON_GPU: tl.constexpr):
    """(h, a, b, x) of quantize_math.h's BinArgs."""
    h = _reciprocal_rn(s, ON_GPU)
    a = _refined_quotient(av - 0.5, s, h, False, ON_GPU)
    b = _refined_quotient(av + 0.5, s, h, True, ON_GPU)
    x = _mul(h, _mul(av, h, ON_GPU), ON_GPU)
    return h, a, b, x


@triton.jit
def _bin_probability(h, a, b, x, ON_GPU: tl.constexpr):
    series = (h < 0.5) & (x < 0.5)
    w = _mul(h, h, ON_GPU)
    e_a = _exp_neg_half_square(a, ON_GPU)
    e = _exp_neg(tl.where(series, _fma(w, -0.125, _mul(0.5, x, ON_GPU), ON_GPU),
                          _upper_bound(x, 86.0)), ON_GPU)
    da = _tail_denominator(_abs(a), ON_GPU)
    db = _tail_denominator(b, ON_GPU)
    rd = _reciprocal_1_128(_mul(da, db, ON_GPU), ON_GPU)
    qa = _mul(e_a, _mills_scaled(_mul(db, rd, ON_GPU), ON_GPU), ON_GPU)
    qb = _mul(_mul(e_a, e, ON_GPU), _mills_scaled(_mul(da, rd, ON_GPU), ON_GPU), ON_GPU)
    p_diff = tl.where(a < 0.0, 1.0 - qa, qa) - qb
    q = _mul(x, x, ON_GPU)
    c0 = _fma(w, _fma(w, 1.5625e-3, -4.16666679e-2, ON_GPU), 1.0, ON_GPU)
    c1 = _fma(w, -3.125e-3, 4.16666679e-2, ON_GPU)
    poly = _fma(q, _fma(q, 5.20833346e-4, c1, ON_GPU), c0, ON_GPU)
    p_series = _mul(_mul(_mul(h, 0.398942280, ON_GPU), _mul(e_a, e, ON_GPU), ON_GPU), poly, ON_GPU)
    return tl.where(series, p_series, p_diff)


@triton.jit
def _bin_slopes(h, a, b, x, ON_GPU: tl.constexpr):
    """(dp/d|v|, dp/ds) of quantize_math.h's bin_slopes."""
    phi_a = _mul(0.398942280, _exp_neg_half_square(a, ON_GPU), ON_GPU)
    ac = _upper_bound(_lower_bound(a, -64.0), 64.0)
    bc = _upper_bound(b, 64.0)
    e, em1 = _exp_and_expm1(_neg(_upper_bound(x, 86.0)), ON_GPU)
    slope = tl.where(x < 1.0, _fma(_neg(bc), em1, _neg(h), ON_GPU), _fma(_neg(bc), e, ac, ON_GPU))
    return (_mul(_mul(phi_a, em1, ON_GPU), h, ON_GPU),
            _mul(_mul(phi_a, slope, ON_GPU), h, ON_GPU))


@triton.jit
def _family_bin_probability(av, h, a, b, x, FAMILY: tl.constexpr, ON_GPU: tl.constexpr):
    """quantize_math.h's family_bin_probability: the family's mass from the shared BinArgs."""
    if FAMILY == FAMILY_LAPLACE:
        return _laplace_bin_probability(h, a, _mul(av, h, ON_GPU), ON_GPU)
    elif FAMILY == FAMILY_LOGISTIC:
        return _logistic_bin_probability(h, a, _mul(av, h, ON_GPU), ON_GPU)
    else:
        return _bin_probability(h, a, b, x, ON_GPU)


@triton.jit
def _family_bin_slopes(av, h, a, b, x, FAMILY: tl.constexpr, ON_GPU: tl.constexpr):
    if FAMILY == FAMILY_LAPLACE:
        return _laplace_bin_slopes(h, a, _mul(av, h, ON_GPU), ON_GPU)
    elif FAMILY == FAMILY_LOGISTIC:
        return _logistic_bin_slopes(h, a, _mul(av, h, ON_GPU), ON_GPU)
    else:
        return _bin_slopes(h, a, b, x, ON_GPU)


@triton.jit
def _load_f32(ptr, offs, mask, IS_BF16: tl.constexpr):
    if IS_BF16:  # raw 16 bits through an int16 view: widening is exact
        h = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16, bitcast=True)
        return _float(h.to(tl.uint32) << 16)
    else:
        return tl.load(ptr + offs, mask=mask, other=0).to(tl.float32)


@triton.jit
def _store_from_f32(ptr, offs, x, mask, IS_BF16: tl.constexpr):
    """Rounds to the storage type and writes NaN as the canonical NaN of every backend:
    0x7FFFFFFF in float32, 0x7FFF in bfloat16 and float16."""
    if IS_BF16:  # round to nearest even with integer arithmetic (the interpreter's cast does not)
        b = _bits(x)
        rounded = (b + (0x7FFF + ((b >> 16) & 1))) >> 16
        h = tl.where(x != x, 0x7FFF, rounded).to(tl.uint16).to(tl.int16, bitcast=True)
        tl.store(ptr + offs, h, mask=mask)
    elif ptr.dtype.element_ty == tl.float16:
        h = x.to(tl.float16).to(tl.uint16, bitcast=True)
        h = tl.where(x != x, 0x7FFF, h).to(tl.uint16).to(tl.float16, bitcast=True)
        tl.store(ptr + offs, h, mask=mask)
    else:
        tl.store(ptr + offs, _canonical_nan(x).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _neg(x):
    """-x as a sign flip, as C++'s unary minus (Triton's -x is 0 - x, which loses -0)."""
    return _float(_bits(x) ^ 0x80000000)


@triton.jit
def _draw_noise(seed_ptr, first, like, MODE: tl.constexpr, ON_GPU: tl.constexpr,
                BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """u of the logical indices first .. first + BLOCK - 1 (ALIGNED: first is a multiple of 4);
    zeros (never read) for mode 'ste'."""
    if MODE != MODE_STE:
        if ALIGNED:
            u = _noise(tl.load(seed_ptr), first, BLOCK, ON_GPU)
        else:
            u = _noise_any(tl.load(seed_ptr), first, BLOCK, ON_GPU)
    else:
        u = tl.zeros_like(like)
    return u


@triton.jit
def _bounded_scale(sigma, scale_bound):
    """max(sigma, b_sigma) held in [2^-125, 2^125] (quantize_math.h, bounded_scale)."""
    return _upper_bound(_lower_bound(_lower_bound(sigma, scale_bound), 2.35098870e-38),
                        4.25352958e37)


@triton.jit
def _load_residual(y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, first, scale_bound,
                   MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, HAS_MEANS: tl.constexpr,
                   IS_BF16: tl.constexpr, ON_GPU: tl.constexpr, BLOCK: tl.constexpr,
                   ALIGNED: tl.constexpr):
    """The part forward and backward share (quantize_math.h, forward_element / backward_element):
    load y, mu, sigma, draw u for the logical indices first .. first + BLOCK - 1 (ALIGNED: first
    is a multiple of 4), and return the lattice centre c, the rate residual v, the decoder
    surrogate r~_D, sigma and the bounded s."""
    y = _load_f32(y_ptr, offs, mask, IS_BF16)
    sigma = _load_f32(sigma_ptr, offs, mask, IS_BF16)
    if HAS_MEANS:
        mu = _load_f32(mu_ptr, offs, mask, IS_BF16)
    else:
        mu = tl.zeros_like(y)  # +0, as the C++ kernels' zero-filled means
    temperature = tl.load(temp_ptr).to(tl.float32)
    u = _draw_noise(seed_ptr, first, y, MODE, ON_GPU, BLOCK, ALIGNED)
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
    return c, v, dist, sigma, _bounded_scale(sigma, scale_bound)


@triton.jit
def _elements(n_elements, index_base, BLOCK: tl.constexpr, RATE: tl.constexpr, sample_size,
              chunks):
    """(pid, offs, mask, first) of this program: BLOCK consecutive elements from offs[0] (64-bit
    offsets), the first logical index. RATE: program pid is chunk pid % chunks of sample
    pid // chunks (see the kernels' comment)."""
    pid = tl.program_id(0).to(tl.int64)
    if RATE:
        within = (pid % chunks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        start = (pid // chunks) * sample_size
        offs = start + within
        mask = within < sample_size
        first = start + (pid % chunks) * BLOCK + index_base
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n_elements
        first = pid * BLOCK + index_base
    return pid, offs, mask, first


@triton.jit
def _store_likelihoods(lik_ptr, pid, offs, lik, mask, RATE: tl.constexpr):
    """P, or with RATE this chunk's float64 sum of -log2 P to lik_ptr[pid]."""
    if RATE:
        neg_log2 = tl.where(mask, -tl.log2(lik.to(tl.float64)), 0.0)
        tl.store(lik_ptr + pid, tl.sum(neg_log2, axis=0))
    else:
        tl.store(lik_ptr + offs, _canonical_nan(lik), mask=mask)


@triton.jit
def _rate_likelihood_grad(g_bits, p, likelihood_bound, ON_GPU: tl.constexpr):
    """g_p from the bits' gradient: g_P = -g / (P ln 2) from the recomputed p, then the likelihood
    bound's rule (quantize_math.h, backward_element<kRate>)."""
    g_lik = _div(_neg(g_bits), _mul(_lower_bound(p, likelihood_bound),
                                    0.693147182464599609375, ON_GPU))
    return tl.where((p >= likelihood_bound) | (g_lik < 0.0), g_lik, _mul(g_lik, 0.0, ON_GPU))


# ---------------------------------------------------------------------------------------------
# Kernels. Each program handles BLOCK consecutive elements (BLOCK a multiple of 4, so its noise
# is whole Philox blocks); index_base shifts the logical indices (tests of indices >= 2^32) and
# must be a multiple of 4.
#
# RATE (rate=True, docs/spec.md section 8): the forward's programs are chunks of samples: program
# k handles elements [c BLOCK, (c + 1) BLOCK) of sample k // chunks (c = k % chunks, a sample being
# sample_size consecutive elements) and writes the float64 sum of -log2 P over them to
# lik_ptr[k]; the caller adds each sample's chunks in order. ALIGNED: sample_size is a multiple
# of 4, so every chunk starts on a Philox block. The backward keeps its flat programs and reads
# the bits' gradient of each element's sample.


@triton.jit
def quantize_forward_kernel(
    y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, y_hat_ptr, lik_ptr,
    n_elements, index_base, scale_bound, likelihood_bound,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, HAS_MEANS: tl.constexpr,
    IS_BF16: tl.constexpr, ON_GPU: tl.constexpr, BLOCK: tl.constexpr,
    FAMILY: tl.constexpr = 0, RATE: tl.constexpr = False, ALIGNED: tl.constexpr = True,
    sample_size=1, chunks=1,
):
    pid, offs, mask, first = _elements(n_elements, index_base, BLOCK, RATE, sample_size, chunks)
    if ON_GPU:  # Inductor passes Python floats as fp64, Triton's launcher packs them as fp32:
        scale_bound = scale_bound.to(tl.float32)  # both round to nearest, the same float32
        likelihood_bound = likelihood_bound.to(tl.float32)
    c, v, dist, sigma, s = _load_residual(
        y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, first,
        scale_bound, MODE, ZERO_CENTER, HAS_MEANS, IS_BF16, ON_GPU, BLOCK, ALIGNED)
    av = _abs(v)
    h, a, b, x = _bin_args(av, s, ON_GPU)
    lik = _lower_bound(_family_bin_probability(av, h, a, b, x, FAMILY, ON_GPU), likelihood_bound)
    _store_from_f32(y_hat_ptr, offs, c + dist, mask, IS_BF16)
    _store_likelihoods(lik_ptr, pid, offs, lik, mask, RATE)


@triton.jit
def quantize_backward_kernel(
    g_yhat_ptr, g_lik_ptr, y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr,
    gy_ptr, gmu_ptr, gs_ptr,
    n_elements, index_base, scale_bound, likelihood_bound,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, HAS_MEANS: tl.constexpr,
    HAS_GYHAT: tl.constexpr, NEED_GY: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GS: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr, BLOCK: tl.constexpr,
    FAMILY: tl.constexpr = 0, RATE: tl.constexpr = False, sample_size=1,
):
    pid, offs, mask, first = _elements(n_elements, index_base, BLOCK, False, 1, 1)
    if ON_GPU:  # fp64 from Inductor (see the forward kernel)
        scale_bound = scale_bound.to(tl.float32)
        likelihood_bound = likelihood_bound.to(tl.float32)
    if RATE:
        g_bits = tl.load(g_lik_ptr + offs // sample_size, mask=mask, other=0.0)
    else:
        g_lik = tl.load(g_lik_ptr + offs, mask=mask, other=-1.0)
    c, v, dist, sigma, s = _load_residual(
        y_ptr, mu_ptr, sigma_ptr, seed_ptr, temp_ptr, offs, mask, first, scale_bound, MODE,
        ZERO_CENTER, HAS_MEANS, IS_BF16, ON_GPU, BLOCK, True)
    av = _abs(v)
    h, a, b, x = _bin_args(av, s, ON_GPU)
    if RATE:
        p = _family_bin_probability(av, h, a, b, x, FAMILY, ON_GPU)
        g_p = _rate_likelihood_grad(g_bits, p, likelihood_bound, ON_GPU)
    else:
        # Likelihood bound (CompressAI's LowerBound): g_P passes where p >= b_p or g_P < 0. Where
        # the whole block has g_P < 0 (loss = -log P) p is not recomputed; masked lanes count as
        # negative.
        upward = g_lik < 0.0
        n_upward = tl.sum(upward.to(tl.int32), axis=0)
        if n_upward == BLOCK:
            g_p = g_lik
        else:
            p = _family_bin_probability(av, h, a, b, x, FAMILY, ON_GPU)
            g_p = tl.where((p >= likelihood_bound) | upward, g_lik, _mul(g_lik, 0.0, ON_GPU))
    d_av, d_s = _family_bin_slopes(av, h, a, b, x, FAMILY, ON_GPU)
    dv = _float(_bits(d_av) ^ (_bits(v) & 0x80000000))  # d|v|/dv = sign(v)
    g_v = _mul(g_p, dv, ON_GPU)
    g_s = _mul(g_p, d_s, ON_GPU)
    if NEED_GY:
        if HAS_GYHAT:
            g_yhat = _load_f32(g_yhat_ptr, offs, mask, IS_BF16)
        else:
            g_yhat = tl.zeros_like(v)
        _store_from_f32(gy_ptr, offs, g_yhat + g_v, mask, IS_BF16)
    if NEED_GMU:
        _store_from_f32(gmu_ptr, offs, _mul(_neg(g_p), dv, ON_GPU), mask, IS_BF16)
    if NEED_GS:
        g_sigma = tl.where((sigma >= scale_bound) | (g_s < 0.0), g_s, _mul(g_s, 0.0, ON_GPU))
        _store_from_f32(gs_ptr, offs, g_sigma, mask, IS_BF16)


# ---------------------------------------------------------------------------------------------
# Mixtures (docs/spec.md section 7; csrc/lic_quant/mixture_math.h). Each program handles BLOCK
# consecutive elements of y as the single-family kernels (RATE included) and loops over the K
# components per element, every sum over k running k = 0 .. K-1 from +0 as the CPU kernel's
# component loops, so the bits are the CPU kernel's. Nothing is kept per component: a
# component's parameters are loaded again (from cache) and its weight and mass recomputed, the
# same bits each time, wherever a later sum needs them, so registers do not grow with K.
#
# Parameter layouts: component k's element i lies at k * stride_k + (i // inner) * stride_outer +
# i % inner (lic_quant._checks.component_layout). LAYOUT 0: every parameter and gradient is
# plain (at k * stride_k + i), no division; 1: they share one `inner` (the host rewrites a plain
# one to it), one division per element; 2: each its own.


@triton.jit
def _position(offs, outer, rem, stride_outer, inner, LAYOUT: tl.constexpr):
    """Offset of element offs within component 0 of a parameter laid out with (stride_outer,
    inner); outer, rem = offs // inner, offs % inner of the shared inner (LAYOUT 1)."""
    if LAYOUT == 0:
        return offs
    elif LAYOUT == 1:
        return outer * stride_outer + rem
    else:
        return (offs // inner) * stride_outer + offs % inner


@triton.jit
def _softmax_terms(w_ptr, wpos, w_stride, K, mask, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """(max_k l_k, 1 / sum_k e^{l_k - max}) of the logits (mixture_math.h): the max propagates a
    NaN of any logit (max_nan), the normalizer in [1, K] takes the division-free reciprocal."""
    m = _load_f32(w_ptr, wpos, mask, IS_BF16)
    ptr = w_ptr
    for _ in range(1, K):
        ptr += w_stride
        logit = _load_f32(ptr, wpos, mask, IS_BF16)
        m = tl.where((m != m) | (m > logit), m, logit)
    z = tl.zeros_like(m)
    ptr = w_ptr
    for _ in range(K):
        e, em1 = _neg_exp(m - _load_f32(ptr, wpos, mask, IS_BF16), ON_GPU)
        z = z + e
        ptr += w_stride
    return m, _reciprocal_1_128(z, ON_GPU)


@triton.jit
def _component_weight(w_ptr, wpos, mask, max_logit, inv_norm, LOGITS: tl.constexpr,
                      IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """w_k: the stored probability, or the softmax of the logits e^{l_k - max} / sum."""
    w = _load_f32(w_ptr, wpos, mask, IS_BF16)
    if LOGITS:
        e, em1 = _neg_exp(max_logit - w, ON_GPU)
        w = _mul(e, inv_norm, ON_GPU)
    return w


@triton.jit
def _mixture_center(y, mu_ptr, mpos, mu_stride, w_ptr, wpos, w_stride, K, mask, max_logit,
                    inv_norm, ZERO_CENTER: tl.constexpr, LOGITS: tl.constexpr,
                    IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """c = sum_k w_k mu_k with zero_center, else +0 (the C++ T(0))."""
    c = tl.zeros_like(y)
    if ZERO_CENTER:
        for _ in range(K):
            w = _component_weight(w_ptr, wpos, mask, max_logit, inv_norm, LOGITS, IS_BF16, ON_GPU)
            c = c + _mul(w, _load_f32(mu_ptr, mpos, mask, IS_BF16), ON_GPU)
            mu_ptr += mu_stride
            w_ptr += w_stride
    return c


@triton.jit
def _component_args(mu_ptr, mpos, sigma_ptr, spos, mask, c, rate, scale_bound,
                    IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """sigma_k, v_k = (c - mu_k) + r~_R and the bin arguments (h, a, b, x) of |v_k| with
    s_k = max(sigma_k, b_sigma) (mixture_math.h, component_residual / component_mass)."""
    sigma = _load_f32(sigma_ptr, spos, mask, IS_BF16)
    v = (c - _load_f32(mu_ptr, mpos, mask, IS_BF16)) + rate
    av = _abs(v)
    h, a, b, x = _bin_args(av, _bounded_scale(sigma, scale_bound), ON_GPU)
    return sigma, v, av, h, a, b, x


@triton.jit
def _mixture_probability(c, rate, mu_ptr, mpos, mu_stride, sigma_ptr, spos, sigma_stride, w_ptr,
                         wpos, w_stride, K, mask, max_logit, inv_norm, scale_bound,
                         FAMILY: tl.constexpr, LOGITS: tl.constexpr, IS_BF16: tl.constexpr,
                         ON_GPU: tl.constexpr):
    """p = sum_k w_k mass_k(|v_k|, s_k)."""
    p = tl.zeros_like(rate)
    for _ in range(K):
        sigma, v, av, h, a, b, x = _component_args(mu_ptr, mpos, sigma_ptr, spos, mask, c, rate,
                                                   scale_bound, IS_BF16, ON_GPU)
        w = _component_weight(w_ptr, wpos, mask, max_logit, inv_norm, LOGITS, IS_BF16, ON_GPU)
        p = p + _mul(w, _family_bin_probability(av, h, a, b, x, FAMILY, ON_GPU), ON_GPU)
        mu_ptr += mu_stride
        sigma_ptr += sigma_stride
        w_ptr += w_stride
    return p


@triton.jit
def _mixture_residual(y_ptr, w_ptr, mu_ptr, seed_ptr, temp_ptr, offs, mask, first, wpos, w_stride,
                      mpos, mu_stride, K, MODE: tl.constexpr, ZERO_CENTER: tl.constexpr,
                      LOGITS: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr,
                      BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """What forward and backward share (mixture_cpu.cpp's load): the softmax terms, the centre
    c and the surrogates (r~_R, r~_D) of r = y - c."""
    y = _load_f32(y_ptr, offs, mask, IS_BF16)
    u = _draw_noise(seed_ptr, first, y, MODE, ON_GPU, BLOCK, ALIGNED)
    if LOGITS:
        max_logit, inv_norm = _softmax_terms(w_ptr, wpos, w_stride, K, mask, IS_BF16, ON_GPU)
    else:
        max_logit = y  # unused
        inv_norm = y
    c = _mixture_center(y, mu_ptr, mpos, mu_stride, w_ptr, wpos, w_stride, K, mask, max_logit,
                        inv_norm, ZERO_CENTER, LOGITS, IS_BF16, ON_GPU)
    rate, dist = _surrogate(y - c, u, tl.load(temp_ptr).to(tl.float32), MODE, ON_GPU)
    return max_logit, inv_norm, c, rate, dist


@triton.jit
def _f32_bounds(scale_bound, likelihood_bound, ON_GPU: tl.constexpr):
    """The bounds as float32: Inductor passes Python floats as fp64 (see quantize_forward_kernel)."""
    if ON_GPU:
        scale_bound = scale_bound.to(tl.float32)
        likelihood_bound = likelihood_bound.to(tl.float32)
    return scale_bound, likelihood_bound


@triton.jit
def _parameter_positions(offs, inner, mu_outer, mu_inner, sigma_outer, sigma_inner, w_outer,
                         w_inner, LAYOUT: tl.constexpr):
    """(outer, rem) of y's index over the common inner size, and where the element sits in each
    parameter's component 0 (the backward places its gradients with the same outer and rem)."""
    if LAYOUT == 1:
        outer = offs // inner
        rem = offs - outer * inner
    else:
        outer = offs
        rem = offs
    mpos = _position(offs, outer, rem, mu_outer, mu_inner, LAYOUT)
    spos = _position(offs, outer, rem, sigma_outer, sigma_inner, LAYOUT)
    wpos = _position(offs, outer, rem, w_outer, w_inner, LAYOUT)
    return outer, rem, mpos, spos, wpos


@triton.jit
def mixture_forward_kernel(
    y_ptr, mu_ptr, sigma_ptr, w_ptr, seed_ptr, temp_ptr, y_hat_ptr, lik_ptr,
    n_elements, index_base, scale_bound, likelihood_bound, K, inner,
    mu_stride, mu_outer, mu_inner, sigma_stride, sigma_outer, sigma_inner,
    w_stride, w_outer, w_inner,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, LOGITS: tl.constexpr, IS_BF16: tl.constexpr,
    ON_GPU: tl.constexpr, BLOCK: tl.constexpr, FAMILY: tl.constexpr = 0,
    LAYOUT: tl.constexpr = 0, RATE: tl.constexpr = False, ALIGNED: tl.constexpr = True,
    sample_size=1, chunks=1,
):
    pid, offs, mask, first = _elements(n_elements, index_base, BLOCK, RATE, sample_size, chunks)
    scale_bound, likelihood_bound = _f32_bounds(scale_bound, likelihood_bound, ON_GPU)
    outer, rem, mpos, spos, wpos = _parameter_positions(
        offs, inner, mu_outer, mu_inner, sigma_outer, sigma_inner, w_outer, w_inner, LAYOUT)
    max_logit, inv_norm, c, rate, dist = _mixture_residual(
        y_ptr, w_ptr, mu_ptr, seed_ptr, temp_ptr, offs, mask, first, wpos, w_stride, mpos,
        mu_stride, K, MODE, ZERO_CENTER, LOGITS, IS_BF16, ON_GPU, BLOCK, ALIGNED)
    p = _mixture_probability(c, rate, mu_ptr, mpos, mu_stride, sigma_ptr, spos, sigma_stride,
                             w_ptr, wpos, w_stride, K, mask, max_logit, inv_norm, scale_bound,
                             FAMILY, LOGITS, IS_BF16, ON_GPU)
    _store_from_f32(y_hat_ptr, offs, c + dist, mask, IS_BF16)
    _store_likelihoods(lik_ptr, pid, offs, _lower_bound(p, likelihood_bound), mask, RATE)


@triton.jit
def mixture_backward_kernel(
    g_yhat_ptr, g_lik_ptr, y_ptr, mu_ptr, sigma_ptr, w_ptr, seed_ptr, temp_ptr,
    gy_ptr, gmu_ptr, gs_ptr, gw_ptr,
    n_elements, index_base, scale_bound, likelihood_bound, K, inner,
    mu_stride, mu_outer, mu_inner, sigma_stride, sigma_outer, sigma_inner,
    w_stride, w_outer, w_inner, gmu_stride, gmu_outer, gmu_inner,
    gs_stride, gs_outer, gs_inner, gw_stride, gw_outer, gw_inner,
    MODE: tl.constexpr, ZERO_CENTER: tl.constexpr, LOGITS: tl.constexpr,
    HAS_GYHAT: tl.constexpr, NEED_GY: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GS: tl.constexpr, NEED_GW: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr,
    BLOCK: tl.constexpr, FAMILY: tl.constexpr = 0, LAYOUT: tl.constexpr = 0,
    RATE: tl.constexpr = False, sample_size=1,
):
    pid, offs, mask, first = _elements(n_elements, index_base, BLOCK, False, 1, 1)
    scale_bound, likelihood_bound = _f32_bounds(scale_bound, likelihood_bound, ON_GPU)
    outer, rem, mpos, spos, wpos = _parameter_positions(
        offs, inner, mu_outer, mu_inner, sigma_outer, sigma_inner, w_outer, w_inner, LAYOUT)
    max_logit, inv_norm, c, rate, dist = _mixture_residual(
        y_ptr, w_ptr, mu_ptr, seed_ptr, temp_ptr, offs, mask, first, wpos, w_stride, mpos,
        mu_stride, K, MODE, ZERO_CENTER, LOGITS, IS_BF16, ON_GPU, BLOCK, True)
    # g_p, the gradient of p (mixture_math.h): the likelihood bound's rule, or with RATE the bits'
    # gradient through P first. p itself is needed there and by the logits' gradient; otherwise,
    # where the whole block has g_P < 0 (loss = -log P), it is not computed (masked lanes count
    # as negative).
    if RATE:
        g_bits = tl.load(g_lik_ptr + offs // sample_size, mask=mask, other=0.0)
        p = _mixture_probability(c, rate, mu_ptr, mpos, mu_stride, sigma_ptr, spos, sigma_stride,
                                 w_ptr, wpos, w_stride, K, mask, max_logit, inv_norm,
                                 scale_bound, FAMILY, LOGITS, IS_BF16, ON_GPU)
        g_p = _rate_likelihood_grad(g_bits, p, likelihood_bound, ON_GPU)
    else:
        g_lik = tl.load(g_lik_ptr + offs, mask=mask, other=-1.0)
        upward = g_lik < 0.0
        if LOGITS:
            p = _mixture_probability(c, rate, mu_ptr, mpos, mu_stride, sigma_ptr, spos,
                                     sigma_stride, w_ptr, wpos, w_stride, K, mask, max_logit,
                                     inv_norm, scale_bound, FAMILY, LOGITS, IS_BF16, ON_GPU)
            g_p = tl.where((p >= likelihood_bound) | upward, g_lik, _mul(g_lik, 0.0, ON_GPU))
        elif tl.sum(upward.to(tl.int32), axis=0) == BLOCK:
            g_p = g_lik
        else:
            p = _mixture_probability(c, rate, mu_ptr, mpos, mu_stride, sigma_ptr, spos,
                                     sigma_stride, w_ptr, wpos, w_stride, K, mask, max_logit,
                                     inv_norm, scale_bound, FAMILY, LOGITS, IS_BF16, ON_GPU)
            g_p = tl.where((p >= likelihood_bound) | upward, g_lik, _mul(g_lik, 0.0, ON_GPU))
    gmpos = _position(offs, outer, rem, gmu_outer, gmu_inner, LAYOUT)
    gspos = _position(offs, outer, rem, gs_outer, gs_inner, LAYOUT)
    gwpos = _position(offs, outer, rem, gw_outer, gw_inner, LAYOUT)
    g_v = tl.zeros_like(g_p)
    for _ in range(K):
        sigma, v, av, h, a, b, x = _component_args(mu_ptr, mpos, sigma_ptr, spos, mask, c, rate,
                                                   scale_bound, IS_BF16, ON_GPU)
        w = _component_weight(w_ptr, wpos, mask, max_logit, inv_norm, LOGITS, IS_BF16, ON_GPU)
        gw = _mul(g_p, w, ON_GPU)
        if NEED_GY or NEED_GMU or NEED_GS:
            d_av, d_s = _family_bin_slopes(av, h, a, b, x, FAMILY, ON_GPU)
            dv = _float(_bits(d_av) ^ (_bits(v) & 0x80000000))  # d|v|/dv = sign(v)
            g_v = g_v + _mul(gw, dv, ON_GPU)
            if NEED_GMU:
                _store_from_f32(gmu_ptr, gmpos, _mul(_neg(gw), dv, ON_GPU), mask, IS_BF16)
            if NEED_GS:
                g_s = _mul(gw, d_s, ON_GPU)
                g_s = tl.where((sigma >= scale_bound) | (g_s < 0.0), g_s, _mul(g_s, 0.0, ON_GPU))
                _store_from_f32(gs_ptr, gspos, g_s, mask, IS_BF16)
        if NEED_GW:
            mass = _family_bin_probability(av, h, a, b, x, FAMILY, ON_GPU)
            if LOGITS:  # the softmax Jacobian: w_k (g_p mass_k - sum_j w_j g_p mass_j)
                g_w = _mul(gw, mass - p, ON_GPU)
            else:
                g_w = _mul(g_p, mass, ON_GPU)
            _store_from_f32(gw_ptr, gwpos, g_w, mask, IS_BF16)
        mu_ptr += mu_stride
        sigma_ptr += sigma_stride
        w_ptr += w_stride
        gmu_ptr += gmu_stride
        gs_ptr += gs_stride
        gw_ptr += gw_stride
    if NEED_GY:
        if HAS_GYHAT:
            g_yhat = _load_f32(g_yhat_ptr, offs, mask, IS_BF16)
        else:
            g_yhat = tl.zeros_like(g_v)
        _store_from_f32(gy_ptr, offs, g_yhat + g_v, mask, IS_BF16)


@triton.jit
def uniform_noise_kernel(seed_ptr, out_ptr, n_elements, index_base, ON_GPU: tl.constexpr,
                         BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elements
    u = _noise(tl.load(seed_ptr), pid * BLOCK + index_base, BLOCK, ON_GPU)
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


# rate=True forward on the GPU: one fixed chunk size (autotuning it would change the order of the
# sums from run to run).
RATE_BLOCK = 1024
RATE_WARPS = 8


# ---------------------------------------------------------------------------------------------
# eb_math.h: the factorized prior (docs/spec.md section 9). Each channel's MLP has L layers of
# hidden width 3; its constants (softplus(M_i), b_i, tanh(F_i), evaluated once per channel in
# float64 by the caller and rounded to float32) and its parameter-gradient sums are numbered in
# slots as in the C++ kernels: layer i's matrix (out x in, row-major), then its bias (out), then
# its factor (out, hidden layers only). Values travel as tuples indexed by constants, so every
# layer unrolls into straight-line code.


@triton.jit
def _eb_tanh(x, ON_GPU: tl.constexpr):
    """a P(a^2) / Q(a^2) for a = |x| held at 9.02000237, at most 1, with x's sign (eb_math.h,
    eb_tanh; tools/fit_eb_tanh.py)."""
    c = _upper_bound(_abs(x), 9.02000237)
    s = _mul(c, c, ON_GPU)
    p = _fma(-7.97609998e-14, s, 5.07903407e-11, ON_GPU)
    p = _fma(p, s, -1.98139301e-08, ON_GPU)
    p = _fma(p, s, 1.1053342e-05, ON_GPU)
    p = _fma(p, s, 0.00309432787, ON_GPU)
    p = _fma(p, s, 0.130753964, ON_GPU)
    p = _fma(p, s, 1.0, ON_GPU)
    q = _fma(0.000253210979, s, 0.0244568568, ON_GPU)
    q = _fma(q, s, 0.464087218, ON_GPU)
    q = _fma(q, s, 1.0, ON_GPU)
    t = _upper_bound(_div(_mul(c, p, ON_GPU), q), 1.0)
    return _float(_bits(t) ^ (_bits(x) & 0x80000000))


@triton.jit
def _eb_exp_neg_abs(x, ON_GPU: tl.constexpr):
    ex, em1 = _neg_exp(_upper_bound(_abs(x), 87.0), ON_GPU)
    return ex


@triton.jit
def _eb_sigmoid(sx, e):
    """sigma(sx) given e = e^{-|x|}."""
    return _div(tl.where(sx >= 0.0, 1.0, e), 1.0 + e)


@triton.jit
def _eb_mass(up, lo, e_up, e_lo):
    """sigma(up) - sigma(lo), as sigma(-lo) - sigma(-up) where up + lo > 0 (no cancellation)."""
    flip = up + lo > 0.0
    a = tl.where(flip, _neg(lo), up)
    b = tl.where(flip, _neg(up), lo)
    return tl.where(flip, _eb_sigmoid(a, e_lo) - _eb_sigmoid(b, e_up),
                    _eb_sigmoid(a, e_up) - _eb_sigmoid(b, e_lo))


@triton.jit
def _eb_sigmoid_slope(e, ON_GPU: tl.constexpr):
    d = _div(tl.full(e.shape, 1.0, tl.float32), 1.0 + e)
    return _mul(_mul(e, d, ON_GPU), d, ON_GPU)


@triton.jit
def _eb_layer_forward(h, cst, W_OFF: tl.constexpr, IN: tl.constexpr, OUT: tl.constexpr,
                      HIDDEN: tl.constexpr, ON_GPU: tl.constexpr):
    """One layer (eb_layer_forward): its outputs and tanh(pre) (empty for the last layer)."""
    out = ()
    tt = ()
    for k in tl.static_range(OUT):
        acc = _mul(cst[W_OFF + k * IN], h[0], ON_GPU)
        for q in tl.static_range(1, IN):
            acc = _fma(cst[W_OFF + k * IN + q], h[q], acc, ON_GPU)
        pre = acc + cst[W_OFF + OUT * IN + k]
        if HIDDEN:
            t = _eb_tanh(pre, ON_GPU)
            out = out + (_fma(cst[W_OFF + OUT * IN + OUT + k], t, pre, ON_GPU),)
            tt = tt + (t,)
        else:
            out = out + (pre,)
    return out, tt


@triton.jit
def _eb_mlp_forward(x, cst, L: tl.constexpr, ON_GPU: tl.constexpr):
    """The logit at x, and every layer's input and tanh(pre) for the backward."""
    hs = ()
    ts = ()
    h = (x,)
    for i in tl.static_range(L):
        hs = hs + (h,)
        h, t = _eb_layer_forward(h, cst, 0 if i == 0 else 9 + 15 * (i - 1), 1 if i == 0 else 3,
                                 1 if i == L - 1 else 3, i + 1 < L, ON_GPU)
        ts = ts + (t,)
    return h[0], hs, ts


@triton.jit
def _eb_layer_backward(h, t, g, cst, acc, W_OFF: tl.constexpr, IN: tl.constexpr,
                       OUT: tl.constexpr, HIDDEN: tl.constexpr, SLOTS: tl.constexpr,
                       ON_GPU: tl.constexpr):
    """One layer's backward (eb_layer_backward): the input's gradient, and acc with this
    element's parameter terms added to the layer's slots."""
    gpre = ()
    gf = ()
    for k in tl.static_range(OUT):
        if HIDDEN:
            f = cst[W_OFF + OUT * IN + OUT + k]
            gpre = gpre + (_mul(g[k], _fma(f, _fma(_neg(t[k]), t[k], 1.0, ON_GPU), 1.0, ON_GPU),
                                ON_GPU),)
            gf = gf + (_mul(g[k], t[k], ON_GPU),)
        else:
            gpre = gpre + (g[k],)
    new = ()
    for s in tl.static_range(SLOTS):
        if s < W_OFF:
            new = new + (acc[s],)
        elif s < W_OFF + OUT * IN:
            new = new + (acc[s] + _mul(gpre[(s - W_OFF) // IN], h[(s - W_OFF) % IN], ON_GPU),)
        elif s < W_OFF + OUT * IN + OUT:
            new = new + (acc[s] + gpre[s - W_OFF - OUT * IN],)
        elif HIDDEN and s < W_OFF + OUT * IN + 2 * OUT:
            new = new + (acc[s] + gf[s - W_OFF - OUT * IN - OUT],)
        else:
            new = new + (acc[s],)
    gin = ()
    for q in tl.static_range(IN):
        a = _mul(cst[W_OFF + q], gpre[0], ON_GPU)
        for k in tl.static_range(1, OUT):
            a = _fma(cst[W_OFF + k * IN + q], gpre[k], a, ON_GPU)
        gin = gin + (a,)
    return gin, new


@triton.jit
def _eb_mlp_backward(g, hs, ts, cst, acc, L: tl.constexpr, SLOTS: tl.constexpr,
                     ON_GPU: tl.constexpr):
    """From the logit's gradient g back to the input's; acc gains the element's terms."""
    gg = (g,)
    for i in tl.static_range(L - 1, -1, -1):
        gg, acc = _eb_layer_backward(hs[i], ts[i], gg, cst, acc,
                                     0 if i == 0 else 9 + 15 * (i - 1), 1 if i == 0 else 3,
                                     1 if i == L - 1 else 3, i + 1 < L, SLOTS, ON_GPU)
    return gg[0], acc


@triton.jit
def _eb_constants(c_ptr, mask, SLOTS: tl.constexpr):
    """The SLOTS constants of each element's channel (c_ptr: a tensor of channel bases)."""
    cst = ()
    for s in tl.static_range(SLOTS):
        cst = cst + (tl.load(c_ptr + s, mask=mask, other=0.0),)
    return cst


@triton.jit
def _eb_edges(z_ptr, med_ptr, seed_ptr, temp_ptr, offs, ch, mask, MODE: tl.constexpr,
              IS_BF16: tl.constexpr, ON_GPU: tl.constexpr):
    """The median, v (the density's argument) and the decoder's z_hat of elements offs (global
    row-major indices; masked lanes are z = u = 0, as the C++ kernels' padding)."""
    z = _load_f32(z_ptr, offs, mask, IS_BF16)
    median = _load_f32(med_ptr, ch, mask, IS_BF16)
    temperature = tl.load(temp_ptr).to(tl.float32)
    if MODE != MODE_STE:
        u0, u1, u2, u3 = _philox_uniform4(tl.load(seed_ptr), offs // 4, ON_GPU)
        k = offs % 4
        u = tl.where(k == 0, u0, tl.where(k == 1, u1, tl.where(k == 2, u2, u3)))
        u = tl.where(mask, u, 0.0)
    else:
        u = tl.zeros_like(z)
    rate, dist = _surrogate(z - median, u, temperature, MODE, ON_GPU)
    return median, median + rate, median + dist


@triton.jit
def eb_forward_kernel(z_ptr, med_ptr, cst_ptr, seed_ptr, temp_ptr, z_hat_ptr, lik_ptr,
                      n_elements, C, S, likelihood_bound, L: tl.constexpr, SLOTS: tl.constexpr,
                      MODE: tl.constexpr, IS_BF16: tl.constexpr, ON_GPU: tl.constexpr,
                      BLOCK: tl.constexpr):
    """z_hat and P of BLOCK consecutive elements (eb_math.h per element)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elements
    if ON_GPU:
        likelihood_bound = likelihood_bound.to(tl.float32)
    ch = (offs // S) % C
    median, v, z_hat = _eb_edges(z_ptr, med_ptr, seed_ptr, temp_ptr, offs, ch, mask, MODE,
                                 IS_BF16, ON_GPU)
    cst = _eb_constants(cst_ptr + ch * SLOTS, mask, SLOTS)
    lo, hs, ts = _eb_mlp_forward(v - 0.5, cst, L, ON_GPU)
    up, hs, ts = _eb_mlp_forward(v + 0.5, cst, L, ON_GPU)
    p = _eb_mass(up, lo, _eb_exp_neg_abs(up, ON_GPU), _eb_exp_neg_abs(lo, ON_GPU))
    _store_from_f32(z_hat_ptr, offs, z_hat, mask, IS_BF16)
    tl.store(lik_ptr + offs, _canonical_nan(_lower_bound(p, likelihood_bound)), mask=mask)


# The C++ kernels' task geometry (csrc/cpu/entropy_bottleneck_cpu.cpp): the order of the
# parameter gradients' additions depends on it, so it is the same on every backend.
EB_CHUNK = tl.constexpr(4096)
EB_BLOCK = tl.constexpr(32)
EB_LANES = tl.constexpr(64)


@triton.jit
def eb_backward_kernel(g_zhat_ptr, g_lik_ptr, z_ptr, med_ptr, cst_ptr, seed_ptr, temp_ptr,
                       g_z_ptr, partial_ptr, C, S, per_channel, chunks, n_tasks, blocks,
                       likelihood_bound, L: tl.constexpr, SLOTS: tl.constexpr,
                       MODE: tl.constexpr, IS_BF16: tl.constexpr, HAS_GZHAT: tl.constexpr,
                       NEED_GZ: tl.constexpr, NEED_PARAMS: tl.constexpr, ON_GPU: tl.constexpr,
                       TASKS: tl.constexpr):
    """TASKS tasks side by side, a task being EB_CHUNK elements of one channel in blocks of
    EB_BLOCK, with the C++ kernels' lanes (element j of each block: its lower edge in lane j, its
    upper edge in lane 32 + j). Each lane adds its terms to one float32 accumulator per parameter
    slot, block after block (blocks: the most any task has; a task's lanes add nothing in the
    blocks it lacks), and the accumulators go to partial[task, slot, lane]. Tasks never mix, so
    TASKS changes no bits: the GPU takes one per program (one warp), the interpreter all at once
    (its cost is per operation, not per element)."""
    i = tl.arange(0, TASKS * EB_BLOCK).to(tl.int64)
    task = tl.program_id(0).to(tl.int64) * TASKS + i // EB_BLOCK
    j = i % EB_BLOCK
    valid = task < n_tasks
    ch = tl.where(valid, task // chunks, 0)
    t_begin = (task % chunks) * EB_CHUNK
    t_end = tl.where(valid, tl.minimum(per_channel, t_begin + EB_CHUNK), t_begin)
    if ON_GPU:
        likelihood_bound = likelihood_bound.to(tl.float32)
    zero = tl.zeros([TASKS * EB_BLOCK], tl.float32)
    acc_lo = ()
    acc_up = ()
    for s in tl.static_range(SLOTS):
        acc_lo = acc_lo + (zero,)
        acc_up = acc_up + (zero,)
    cst = _eb_constants(cst_ptr + ch * SLOTS, valid, SLOTS)
    for b in range(0, blocks):
        t0 = t_begin + b * EB_BLOCK
        in_task = t0 < t_end  # the block exists in this lane's task
        t = t0 + j
        live = t < t_end
        offs = tl.where(live, ((t // S) * C + ch) * S + t % S, 0)
        median, v, z_hat = _eb_edges(z_ptr, med_ptr, seed_ptr, temp_ptr, offs, ch, live, MODE,
                                     IS_BF16, ON_GPU)
        x_lo = tl.where(live, v - 0.5, 0.0)
        x_up = tl.where(live, v + 0.5, 0.0)
        lo, hs_lo, ts_lo = _eb_mlp_forward(x_lo, cst, L, ON_GPU)
        up, hs_up, ts_up = _eb_mlp_forward(x_up, cst, L, ON_GPU)
        e_up = _eb_exp_neg_abs(up, ON_GPU)
        e_lo = _eb_exp_neg_abs(lo, ON_GPU)
        p = _eb_mass(up, lo, e_up, e_lo)
        g_lik = tl.load(g_lik_ptr + offs, mask=live, other=0.0)
        g_p = tl.where((p >= likelihood_bound) | (g_lik < 0.0), g_lik, _mul(g_lik, 0.0, ON_GPU))
        g_p = tl.where(live, g_p, 0.0)
        g_lo = _mul(_neg(g_p), _eb_sigmoid_slope(e_lo, ON_GPU), ON_GPU)
        g_up = _mul(g_p, _eb_sigmoid_slope(e_up, ON_GPU), ON_GPU)
        gx_lo, new_lo = _eb_mlp_backward(g_lo, hs_lo, ts_lo, cst, acc_lo, L, SLOTS, ON_GPU)
        gx_up, new_up = _eb_mlp_backward(g_up, hs_up, ts_up, cst, acc_up, L, SLOTS, ON_GPU)
        if TASKS == 1:
            acc_lo = new_lo
            acc_up = new_up
        else:
            kept_lo = ()
            kept_up = ()
            for s in tl.static_range(SLOTS):
                kept_lo = kept_lo + (tl.where(in_task, new_lo[s], acc_lo[s]),)
                kept_up = kept_up + (tl.where(in_task, new_up[s], acc_up[s]),)
            acc_lo = kept_lo
            acc_up = kept_up
        if NEED_GZ:
            if HAS_GZHAT:
                g_zh = _load_f32(g_zhat_ptr, offs, live, IS_BF16)
            else:
                g_zh = zero
            _store_from_f32(g_z_ptr, offs, g_zh + (gx_lo + gx_up), live, IS_BF16)
    if NEED_PARAMS:
        base = partial_ptr + task * SLOTS * EB_LANES + j
        for s in tl.static_range(SLOTS):
            tl.store(base + s * EB_LANES, acc_lo[s], mask=valid)
            tl.store(base + s * EB_LANES + EB_BLOCK, acc_up[s], mask=valid)


@triton.jit
def eb_reduce_kernel(partial_ptr, sums_ptr, chunks, SLOTS: tl.constexpr,
                     SLOTS_P2: tl.constexpr):
    """Per channel and slot: each task's lanes summed in float64 in lane order, the channel's
    tasks in chunk order (the C++ kernels' order)."""
    ch = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SLOTS_P2)
    mask = s < SLOTS
    total = tl.zeros([SLOTS_P2], tl.float64)
    for k in range(0, chunks):
        base = partial_ptr + ((ch * chunks + k) * SLOTS + s) * EB_LANES
        part = tl.zeros([SLOTS_P2], tl.float64)
        for lane in range(0, EB_LANES):
            part += tl.load(base + lane, mask=mask, other=0.0).to(tl.float64)
        total += part
    tl.store(sums_ptr + ch * SLOTS + s, total, mask=mask)


def _interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(quantize_forward_kernel, InterpretedFunction)


INTERPRETED = _interpreted()
# The launchable kernels by name (triton_ops._launch): on the GPU autotuned over _GPU_CONFIGS,
# keyed on the sizes, or (FIXED, LIC_QUANT_TRITON_AUTOTUNE=0) one config and no tuning runs, for
# test suites, where every constexpr variant would otherwise compile six times. Under the
# interpreter the plain kernels.
_TUNING_KEYS = {"quantize_forward": ["n_elements"], "quantize_backward": ["n_elements"],
                "mixture_forward": ["n_elements", "K"], "mixture_backward": ["n_elements", "K"]}
KERNELS = {name: globals()[f"{name}_kernel"] for name in _TUNING_KEYS}
if INTERPRETED:
    AUTOTUNED = FIXED = KERNELS
else:
    _FIXED = [triton.Config({"BLOCK": 1024}, num_warps=8)]
    AUTOTUNED = {name: triton.autotune(configs=_GPU_CONFIGS, key=key)(KERNELS[name])
                 for name, key in _TUNING_KEYS.items()}
    FIXED = {name: triton.autotune(configs=_FIXED, key=[])(kernel)
             for name, kernel in KERNELS.items()}
