// The Laplace bin mass and its slopes (docs/spec.md section 6), for host and device code, float32
// and float64; lic_quant/_triton_kernels.py ports it line by line.
//
// F(x) = 1/2 e^x (x < 0), 1 - 1/2 e^-x (x >= 0); density f(x) = 1/2 e^{-|x|}. Reflected form with
// a = (|v| - 1/2)/s, b = (|v| + 1/2)/s = a + h (h = 1/s), m = |v|/s:
//   p = S(a) - S(b),  S(x) = 1 - F(x).
// Two exponentials serve the mass and both slopes: E = e^{-|a|} and e^{-y} with
// y = b - |a| (h where a >= 0, 2m where a < 0), so that e^{-b} = E e^{-y}:
//   a >= 0:  p = 1/2 (e^{-a} - e^{-b})        = -1/2 E expm1(-h)
//   a <  0:  p = 1 - 1/2 e^{a} - 1/2 e^{-b}  = -expm1(-|a|) - 1/2 E expm1(-2m)
// Every term is non-negative: no cancellation at any s (large s makes every exponent small, and
// the expm1 keep their relative accuracy there), and e^{-a} keeps it down to the underflow.
// Slopes (dp/d|v| = h (f(b) - f(a)), dp/ds = h (a f(a) - b f(b))):
//   f(b) - f(a) = 1/2 E expm1(-y)
//   a f(a) - b f(b) = 1/2 E (a - b e^{-y}) = 1/2 E (a (1 - e^{-y}) - h e^{-y})
// (b = a + h); the last form has two terms of one sign for a < 0 and only the true zero of dp/ds
// for a >= 0, where a - b e^{-h} would cancel when h is small.
#pragma once

#include "host_device.h"
#include "neg_exp.h"
#include "normal_dist.h"

namespace lic_quant {

// The exponent of the second exponential, b - |a| (0 <= y; huge or inf y gives e^{-y} = 0).
template <typename T>
LQ_HD T laplace_logistic_second_exponent(T a, T h, T m) {
  return a < T(0) ? T(2) * m : h;
}

// The two exponentials of the mass and of its slopes: E = e^{-|a|} and e^{-y}.
template <typename T>
struct LaplaceExps {
  NegExp<T> ea, ey;
};

template <typename T>
LQ_HD LaplaceExps<T> laplace_exps(T h, T a, T m) {
  return {neg_exp(abs_bits(a)), neg_exp(laplace_logistic_second_exponent(a, h, m))};
}

template <typename T>
LQ_HD T laplace_bin_probability(T a, const LaplaceExps<T>& e) {
  return fma_rn(T(-0.5) * e.ea.exp, e.ey.expm1, a < T(0) ? -e.ea.expm1 : T(0));
}

template <typename T>
LQ_HD T laplace_bin_probability(T h, T a, T m) {
  return laplace_bin_probability(a, laplace_exps(h, a, m));
}

template <typename T>
struct FamilySlopes {
  T d_av;  // dp/d|v| (<= 0)
  T d_s;   // dp/ds
};

template <typename T>
LQ_HD FamilySlopes<T> laplace_bin_slopes(T h, T a, const LaplaceExps<T>& e) {
  // a enters a product with E = e^{-|a|}, which is 0 beyond the clamp.
  const T ac = upper_bound(lower_bound(a, -ExpClamp<T>::limit()), ExpClamp<T>::limit());
  const T slope = fma_rn(ac, -e.ey.expm1, -(h * e.ey.exp));
  // E times each factor first: E (a - b e^{-y}) is at most 2/e, so the product by h/2 stays
  // finite where h is huge.
  const T half_h = T(0.5) * h;
  return {(e.ea.exp * e.ey.expm1) * half_h, (e.ea.exp * slope) * half_h};
}

template <typename T>
LQ_HD FamilySlopes<T> laplace_bin_slopes(T h, T a, T m) {
  return laplace_bin_slopes(h, a, laplace_exps(h, a, m));
}

}  // namespace lic_quant
