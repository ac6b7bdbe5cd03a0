// Float32 building blocks of the Gaussian bin mass: exact rounding, exp(-x^2/2), a small-argument
// exp with its expm1, a division-free reciprocal and the normal tail Q(x) = P(X > x).
//
// Every function is written with IEEE operations, explicit fused multiply-adds, bit casts and
// selects only. A correctly rounded fma is the same operation on every backend (std::fma on the
// host, __fmaf_rn on the device, tl.fma in Triton), so these functions give the same bits
// everywhere as long as nothing else is contracted (setup.py builds with contraction off; the
// Triton port rounds its plain products explicitly). lic_quant/_triton_kernels.py ports this file
// line by line; tools/fit_normal_sf.py fits the coefficients and measures the accuracy.
//
// Normal tail, one formula for every x >= 0 (no centre piece):
//   Q(x) = exp(-x^2/2) * t * R(t),   t = 1 / (1 + 0.35 x),   R a degree-8 polynomial;
// exp(-x^2/2) comes from an exact split of x^2 (an fma gives the rounding error of x*x), so Q keeps
// its relative accuracy down to the float32 underflow. Max relative error of the float32
// evaluation over x in [0, 14] against float64: 3.6e-7.
#pragma once

#include <cmath>

#include "host_device.h"

namespace lic_quant {

LQ_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
LQ_HD double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return __builtin_fma(a, b, c);
#endif
}

// min / max that keep a NaN x (fminf / fmaxf would drop it).
template <typename T>
LQ_HD T lower_bound(T x, T bound) {
  return x < bound ? bound : x;
}
template <typename T>
LQ_HD T upper_bound(T x, T bound) {
  return x > bound ? bound : x;
}

// The limits of the float32 clamps of the per-element math (upper_bound / lower_bound against a
// constant), read through LQ_LIMIT. GCC 12 compiles a clamp against a constant it can see into a
// compare and a blend (a nested pair into four compares and two blends, their masks competing for
// the eight mask registers), and a clamp against a value it cannot see into one vminps / vmaxps,
// the same IEEE operation. So on the host the clamps read copies of the limits defined in another
// translation unit (csrc/cpu/clamp_limits.cpp); on the device they are immediates.
constexpr float kQuotientMax = 64.0f;      // refined quotients and the slopes' a and b
constexpr float kHalfSquareArgMax = 16.0f;  // exp(-x^2/2) is 0 beyond
constexpr float kTailXMax = 20.0f;          // every Q(x) is 0 beyond
// Beyond this argument e^{-x} is below 4.5e-38 and only its being tiny matters to the callers: the
// clamp keeps 2^k normal so that scale_by_exp2 is exact.
constexpr float kExpNegMaxArg = 86.0f;  // exp(-86) = 4.5e-38
#if defined(__CUDA_ARCH__)
#define LQ_LIMIT(name) (::lic_quant::name)
#else
namespace host_limits {
extern const float kQuotientMax, kHalfSquareArgMax, kTailXMax, kExpNegMaxArg;
}  // namespace host_limits
#define LQ_LIMIT(name) (::lic_quant::host_limits::name)
#endif

LQ_HD float abs_bits(float x) { return bits_float(float_bits(x) & 0x7fffffffu); }
LQ_HD double abs_bits(double x) { return bits_double(double_bits(x) & 0x7fffffffffffffffull); }

// Round half to even (torch.round, rint) at every magnitude. On the host and in Triton: adding and
// subtracting 2^23 rounds |x| < 2^23 to an integer in the current (nearest-even) mode; |x| >= 2^23
// is an integer already. The sign is put back so that rint(-0.3) = -0.
LQ_HD float round_half_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);  // one FRND, the same IEEE operation
#else
  const float ax = abs_bits(x);
  float r = (ax + 8388608.0f) - 8388608.0f;
  r = bits_float(float_bits(r) | (float_bits(x) & 0x80000000u));
  return ax < 8388608.0f ? r : x;  // NaN falls through to x
#endif
}
LQ_HD double round_half_even(double x) {
#if defined(__CUDA_ARCH__)
  return rint(x);
#else
  const double ax = abs_bits(x);
  double r = (ax + 4503599627370496.0) - 4503599627370496.0;  // 2^52
  r = bits_double(double_bits(r) | (double_bits(x) & 0x8000000000000000ull));
  return ax < 4503599627370496.0 ? r : x;
#endif
}

// Round half to even for |x| < 2^22 and NaN, the arguments reduce_ln2 rounds: adding and
// subtracting 1.5 * 2^23 puts the sum in [2^23, 2^24), where the float spacing is 1, so the
// addition rounds to an integer in the current (nearest-even) mode. Two operations where
// round_half_even needs six on the host; it differs from it only in giving +0 for x in [-1/2, -0],
// which reduce_ln2 does not see (see there).
LQ_HD float round_half_even_small(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return (x + 12582912.0f) - 12582912.0f;
#endif
}

// x * 2^k for integer-valued float k, by adding k to x's exponent bits: exact where x * 2^k is a
// normal number, which the callers guarantee by clamping their arguments.
LQ_HD float scale_by_exp2(float x, float k) {
  return bits_float(float_bits(x) + (static_cast<uint32_t>(static_cast<int32_t>(k)) << 23));
}
LQ_HD float exp2_int(float k) { return scale_by_exp2(1.0f, k); }

constexpr float kLog2e = 1.44269504f;
constexpr float kLn2Hi = 0.693147182f;     // float(ln 2)
constexpr float kLn2Lo = -1.90465421e-9f;  // ln 2 - kLn2Hi

// (e^r - 1) / r on |r| <= ln2 / 2, relative error 1.3e-7 (degree 5; tools/fit_normal_sf.py).
LQ_HD float expm1_over_r(float r) {
  float g = 0.00135651138f;
  g = fma_rn(g, r, 0.00836574379f);
  g = fma_rn(g, r, 0.0416714661f);
  g = fma_rn(g, r, 0.16666539f);
  g = fma_rn(g, r, 0.499999881f);
  return fma_rn(g, r, 1.0f);
}

// Cody-Waite reduction: x = k ln2 + r with integer-valued k and |r| <= ln2 / 2 (to a few ulps of
// r), so that e^x = 2^k e^r. Every caller passes |x| <= 128. Where k is a zero its sign does not
// reach the results: r is then x itself for x != 0 and +0 for x = +-0 with either zero, and the
// callers use k only through its integer value.
struct Ln2Reduced {
  float k;
  float r;
};
LQ_HD Ln2Reduced reduce_ln2(float x) {
  const float k = round_half_even_small(x * kLog2e);
  return {k, fma_rn(k, -kLn2Lo, fma_rn(k, -kLn2Hi, x))};
}

// exp(-x^2 / 2) to a few ulps for any float x, gradually underflowing to 0 like the true value;
// NaN -> NaN.
LQ_HD float exp_neg_half_square(float x) {
  // exp(-128) is below the smallest subnormal: the clamp keeps 2^k in the range handled below.
  const float a = upper_bound(abs_bits(x), LQ_LIMIT(kHalfSquareArgMax));
  const float hi = a * a;
  const float lo = fma_rn(a, a, -hi);  // a^2 = hi + lo exactly
  const Ln2Reduced e = reduce_ln2(-0.5f * hi);  // -hi/2 is exact
  const float r = fma_rn(-0.5f, lo, e.r);
  // k >= -185: e^r 2^(k + 64) is a normal number, and the product by 2^-64 rounds once into the
  // subnormals.
  return scale_by_exp2(fma_rn(expm1_over_r(r), r, 1.0f), e.k + 64.0f) * 5.42101086e-20f;
}

// e^{-x} for x in [0, 86] (NaN -> NaN).
LQ_HD float exp_neg(float x) {
  const Ln2Reduced e = reduce_ln2(-x);
  return scale_by_exp2(fma_rn(expm1_over_r(e.r), e.r, 1.0f), e.k);
}

// e^x and e^x - 1, both to a few ulps in relative terms, for x in [-86, 0.5] (NaN -> NaN).
struct ExpM1 {
  float exp;
  float expm1;
};
LQ_HD ExpM1 exp_and_expm1(float x) {
  const Ln2Reduced e = reduce_ln2(x);
  const float p = expm1_over_r(e.r) * e.r;  // e^r - 1
  const float s = exp2_int(e.k);
  return {fma_rn(s, p, s), fma_rn(s, p, s - 1.0f)};
}

// 1 / d for d in [1, 128] without a division: a bit-pattern estimate (relative error < 12.5 %)
// and three Newton steps, each squaring the error: 12.5 % -> 1.6e-2 -> 2.4e-4 -> 6e-8.
LQ_HD float reciprocal_1_128(float d) {
  float r = bits_float(0x7ef311c3u - float_bits(d));
  r = fma_rn(r, fma_rn(-d, r, 1.0f), r);
  r = fma_rn(r, fma_rn(-d, r, 1.0f), r);
  return fma_rn(r, fma_rn(-d, r, 1.0f), r);
}

// The tail argument t = 1 / (1 + 0.35 x) is used through 1 + 0.35 x.
constexpr float kTailC = 0.35f;

LQ_HD float tail_denominator(float ax) {
  return fma_rn(kTailC, upper_bound(ax, LQ_LIMIT(kTailXMax)), 1.0f);
}

// t * R(t) = Q(x) * exp(x^2 / 2) for t = 1 / (1 + 0.35 x), x >= 0 (degree 8).
LQ_HD float mills_scaled(float t) {
  float r = -0.0297373720f;
  r = fma_rn(r, t, 0.146541759f);
  r = fma_rn(r, t, -0.260379046f);
  r = fma_rn(r, t, 0.163763821f);
  r = fma_rn(r, t, -0.0257680006f);
  r = fma_rn(r, t, 0.106428899f);
  r = fma_rn(r, t, 0.119647861f);
  r = fma_rn(r, t, 0.139881462f);
  r = fma_rn(r, t, 0.139620572f);
  return t * r;
}

// Q(x) = P(X > x) = erfc(x / sqrt 2) / 2 in float32 (tests and docs; the bin mass in
// quantize_math.h shares the pieces without calling it).
LQ_HD float normal_sf(float x) {
  const float ax = abs_bits(x);
  const float q = exp_neg_half_square(ax) * mills_scaled(reciprocal_1_128(tail_denominator(ax)));
  return x < 0.0f ? 1.0f - q : q;  // NaN stays NaN
}
LQ_HD double normal_sf(double x) { return 0.5 * ::erfc(x * 0.7071067811865476); }

constexpr float kInvSqrt2Pi = 0.398942280f;

}  // namespace lic_quant
