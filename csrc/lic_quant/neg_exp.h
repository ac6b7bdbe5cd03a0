// e^{-x} and e^{-x} - 1 together for x >= 0, the one exponential of the Laplace and logistic bin
// masses (laplace_dist.h, logistic_dist.h). float32: the portable pieces of normal_dist.h (IEEE
// operations, explicit fmas, bit casts), so CPU, CUDA and Triton give the same bits; float64:
// libm, as the Gaussian's float64 path.
#pragma once

#include <cmath>

#include "host_device.h"
#include "normal_dist.h"

namespace lic_quant {

template <typename T>
struct NegExp {
  T exp;    // e^{-x}, relative accuracy down to the underflow, then gradually 0
  T expm1;  // e^{-x} - 1, relative accuracy for every x (no cancellation at small x)
};

// The float32 clamp limits of this file, as LQ_LIMIT reads them (normal_dist.h).
constexpr float kNegExpArgMax = 128.0f;    // ExpClamp<float>::limit()
constexpr float kNegExpScaleMin = -30.0f;  // the expm1's 2^max(k, -30), see neg_exp
#if !defined(__CUDA_ARCH__)
namespace host_limits {
extern const float kNegExpArgMax, kNegExpScaleMin;
}  // namespace host_limits
#endif

// Beyond these arguments e^{-x} is 0 in the type (float32: e^-128 = 2.6e-56 is below the
// smallest subnormal 1.4e-45; float64: e^-800 below 4.9e-324): the family headers clamp their
// exponents and the factors multiplying an e^{-x} there, so a product of 0 and a huge or infinite
// argument is 0, never inf * 0.
template <typename T>
struct ExpClamp;
template <>
struct ExpClamp<float> {
  LQ_HD static float limit() { return LQ_LIMIT(kNegExpArgMax); }
};
template <>
struct ExpClamp<double> {
  LQ_HD static double limit() { return 800.0; }
};

// x = k ln2 + r, e^{-x} = 2^k e^r. The exponential is scaled by 2^(k + 64) first, a normal number
// for k >= -185 (x <= 128), and then by 2^-64, which rounds once into the subnormals (as
// exp_neg_half_square). The expm1 takes 2^max(k, -30): below, 2^k (1 + p) - 1 rounds to -1 either
// way. NaN -> NaN.
LQ_HD NegExp<float> neg_exp(float x) {
  const Ln2Reduced e = reduce_ln2(-upper_bound(x, ExpClamp<float>::limit()));
  const float g = expm1_over_r(e.r);
  const float ex = scale_by_exp2(fma_rn(g, e.r, 1.0f), e.k + 64.0f) * 5.42101086e-20f;
  const float s = exp2_int(lower_bound(e.k, LQ_LIMIT(kNegExpScaleMin)));
  return {ex, fma_rn(s, g * e.r, s - 1.0f)};
}

LQ_HD NegExp<double> neg_exp(double x) {
  const double c = upper_bound(x, ExpClamp<double>::limit());
  return {::exp(-c), ::expm1(-c)};
}

// 1 / d for d in [1, 4] (the logistic's denominators): division-free in float32 (normal_dist.h),
// a division in float64.
LQ_HD float reciprocal_1_4(float d) { return reciprocal_1_128(d); }
LQ_HD double reciprocal_1_4(double d) { return 1.0 / d; }

}  // namespace lic_quant
