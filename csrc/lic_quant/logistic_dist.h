// The logistic bin mass and its slopes (docs/spec.md section 6), for host and device code, float32
// and float64; lic_quant/_triton_kernels.py ports it line by line.
//
// F(x) = 1 / (1 + e^-x); density f(x) = e^{-|x|} / (1 + e^{-|x|})^2. Reflected form as in
// laplace_dist.h: a = (|v| - 1/2)/s, b = a + h, m = |v|/s, p = S(a) - S(b) with S(x) = 1/(1 + e^x).
// The same two exponentials: E = e^{-|a|} and e^{-y}, y = b - |a| (h where a >= 0, 2m where a < 0),
// B = e^{-b} = E e^{-y}, D = (1 + E)(1 + B) in [1, 4]:
//   a >= 0:  p = (e^{-a} - e^{-b}) / D = E beta / D,     beta = -expm1(-y) = 1 - e^{-y}
//   a <  0:  p = (1 - e^{-|a|} e^{-b}) / D = M / D,
//            M = 1 - B E = (1 - E)(1 + E) + E^2 beta     (both cases; here 1 - e^{-h})
// so p is a product of non-negative factors (1 - E = -expm1(-|a|)): no cancellation, at large s
// as in the tails. Slopes (h (f(b) - f(a)) and h (a f(a) - b f(b))), from
//   f(b) - f(a) = (B - E)(1 - B E) / D^2 = -E beta M / D^2
//   a f(a) - b f(b) = E (a (1 + B)^2 - b e^{-y} (1 + E)^2) / D^2
//                   = E (a beta M - h e^{-y} (1 + E)^2) / D^2        (b = a + h)
// where the last form has two terms of one sign for a < 0 and only the true zero of dp/ds for
// a >= 0 (a (1 + B)^2 - b e^{-y} (1 + E)^2 would cancel at large s).
#pragma once

#include "host_device.h"
#include "laplace_dist.h"
#include "neg_exp.h"
#include "normal_dist.h"

namespace lic_quant {

// The pieces shared by the mass and the slopes.
template <typename T>
struct LogisticTerms {
  T e;     // E = e^{-|a|}
  T ey;    // e^{-y}
  T beta;  // 1 - e^{-y}
  T m1;    // M = 1 - B E
  T rd;    // 1 / D
};

template <typename T>
LQ_HD LogisticTerms<T> logistic_terms(T h, T a, T m) {
  const NegExp<T> ea = neg_exp(abs_bits(a));
  const NegExp<T> ey = neg_exp(laplace_logistic_second_exponent(a, h, m));
  LogisticTerms<T> t;
  t.e = ea.exp;
  t.ey = ey.exp;
  t.beta = -ey.expm1;
  const T one_plus_e = T(1) + ea.exp;
  t.m1 = fma_rn(-ea.expm1, one_plus_e, (ea.exp * ea.exp) * t.beta);
  t.rd = reciprocal_1_4(one_plus_e * (T(1) + ea.exp * ey.exp));
  return t;
}

template <typename T>
LQ_HD T logistic_bin_probability(T a, const LogisticTerms<T>& t) {
  return (a < T(0) ? t.m1 : t.e * t.beta) * t.rd;
}

template <typename T>
LQ_HD T logistic_bin_probability(T h, T a, T m) {
  return logistic_bin_probability(a, logistic_terms(h, a, m));
}

template <typename T>
LQ_HD FamilySlopes<T> logistic_bin_slopes(T h, T a, const LogisticTerms<T>& t) {
  // a enters a product with E = e^{-|a|}, which is 0 beyond the clamp.
  const T ac = upper_bound(lower_bound(a, -ExpClamp<T>::limit()), ExpClamp<T>::limit());
  const T one_plus_e = T(1) + t.e;
  const T s = fma_rn(ac, t.beta * t.m1, -(h * t.ey) * (one_plus_e * one_plus_e));
  // E / D^2 times each factor first (at most ~1), then h: finite where h is huge.
  const T w = (t.e * t.rd) * t.rd;
  return {-(w * (t.beta * t.m1)) * h, (w * s) * h};
}

template <typename T>
LQ_HD FamilySlopes<T> logistic_bin_slopes(T h, T a, T m) {
  return logistic_bin_slopes(h, a, logistic_terms(h, a, m));
}

}  // namespace lic_quant
