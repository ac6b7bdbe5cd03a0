// Standard-normal tail Q(a) = P(X > a) and density phi(a), accurate to a few float32 ulps in
// relative terms all the way into the tails (the discretized Gaussian needs p ~ 1e-10 exactly
// where 1 - erf(x) and the direct CDF difference underflow). Written with plain IEEE operations
// and selects only, so that host compilers vectorize it, CUDA runs the same code, and the Triton
// kernels port it line by line: the three backends agree bit for bit in float32 when compiled
// without contraction. float64 uses the C library.
//
// float32 method (coefficients from tools/fit_normal_sf.py):
//   a <  0.75 : Q(a) = 1/2 - a * S(a^2)                       (odd series of erf)
//   a >= 0.75 : Q(a) = exp(-a^2/2) * t * R(t), t = 1/(1 + a/2) (t*R(t) = erfcx(a/sqrt2)/2)
//   a < 0     : Q(a) = 1 - Q(-a)
// exp(-a^2/2) splits a^2 exactly (a = ah + al, ah holding 12 significant bits so ah^2 is exact) and
// feeds the pair to a Cody-Waite exponential, so a large argument costs no relative accuracy.
// Measured over a in [0, 14] against scipy's ndtr in float64: max relative error 3.3e-7.
#pragma once

#include <cmath>

#include "host_device.h"

namespace lic_quant {

// Round half to even, as torch.round / rint. The magic-number add is exact IEEE arithmetic (no
// libm call), so it vectorizes on every ISA; copysign keeps rint's sign of zero (rint(-0.3) = -0).
LQ_HD float round_half_even(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float ax = bits_float(float_bits(x) & 0x7fffffffu);
  float r = (ax + magic) - magic;
  r = bits_float((float_bits(r) & 0x7fffffffu) | (float_bits(x) & 0x80000000u));
  return ax < 4194304.0f ? r : x;  // |x| >= 2^22 is already an integer; NaN falls through to x
}
LQ_HD double round_half_even(double x) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double ax = bits_double(double_bits(x) & 0x7fffffffffffffffull);
  double r = (ax + magic) - magic;
  r = bits_double((double_bits(r) & 0x7fffffffffffffffull) | (double_bits(x) & 0x8000000000000000ull));
  return ax < 2251799813685248.0 ? r : x;
}

// exp(-x^2 / 2) with the relative accuracy of exp itself, for any float x (NaN -> NaN).
LQ_HD float exp_neg_half_square(float x) {
  float a = bits_float(float_bits(x) & 0x7fffffffu);
  a = a > 18.0f ? 18.0f : a;  // exp(-162) is 0 in float32; keeps 2^k in range. NaN passes.
  const float ah = bits_float(float_bits(a) & 0xfffff000u);
  const float hi = -0.5f * (ah * ah);            // exact
  const float lo = -0.5f * ((a - ah) * (a + ah));  // a^2 - ah^2, one rounding
  // Cody-Waite: hi + lo = k ln2 + r, |r| <= ln2/2. ln2_hi has 9 significant bits so k*ln2_hi is exact.
  const float magic = 12582912.0f;
  const float k = (hi * 1.44269504f + magic) - magic;
  const float r = ((hi - k * 0.693359375f) - k * -2.12194440e-4f) + lo;
  float p = 1.98412698e-4f;  // Taylor to degree 7: truncation 6e-9 on |r| <= ln2/2
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^k in two normal factors: k >= -234 here, so each half stays above 2^-126.
  const int32_t ki = static_cast<int32_t>(k);
  const int32_t k1 = ki / 2;
  const int32_t k2 = ki - k1;
  const float s1 = bits_float(static_cast<uint32_t>(k1 + 127) << 23);
  const float s2 = bits_float(static_cast<uint32_t>(k2 + 127) << 23);
  return (p * s1) * s2;
}

LQ_HD float normal_pdf(float x) { return 0.398942280f * exp_neg_half_square(x); }
LQ_HD double normal_pdf(double x) { return 0.3989422804014327 * ::exp(-0.5 * x * x); }

// The two pieces of Q for a = |x| (see the top of this file).
LQ_HD float normal_sf_center(float a) {
  const float z = a * a;
  float s = -8.387869e-06f;
  s = s * z + 0.000114777606f;
  s = s * z + -0.0011871376f;
  s = s * z + 0.009973532f;
  s = s * z + -0.06649038f;
  s = s * z + 0.3989423f;
  return 0.5f - a * s;
}
LQ_HD float normal_sf_tail(float a) {
  const float t = 1.0f / (1.0f + 0.5f * a);
  float r = 0.15522534f;
  r = r * t + -0.5068108f;
  r = r * t + 0.5729058f;
  r = r * t + -0.15902445f;
  r = r * t + -0.09846008f;
  r = r * t + -0.06132348f;
  r = r * t + 0.049468946f;
  r = r * t + 0.1496368f;
  r = r * t + 0.19947025f;
  r = r * t + 0.19947115f;
  return exp_neg_half_square(a) * (t * r);
}

// Q(a) = P(X > a) = erfc(a / sqrt 2) / 2.
LQ_HD float normal_sf(float x) {
  const float a = bits_float(float_bits(x) & 0x7fffffffu);
#if defined(__CUDA_ARCH__)
  // A branch: a warp whose lanes agree evaluates one piece only. Same bits as the select below.
  const float q = a < 0.75f ? normal_sf_center(a) : normal_sf_tail(a);
#else
  // Both pieces, then a select: straight-line code for the vectorizer.
  const float q_center = normal_sf_center(a);
  const float q_tail = normal_sf_tail(a);
  const float q = a < 0.75f ? q_center : q_tail;
#endif
  // NaN takes the tail piece and stays NaN.
  return x < 0.0f ? 1.0f - q : q;
}
LQ_HD double normal_sf(double x) { return 0.5 * ::erfc(x * 0.7071067811865476); }

}  // namespace lic_quant
