// The per-element math of docs/spec.md sections 1-2, shared by the CPU and CUDA kernels (the
// Triton kernels in lic_quant/_triton_kernels.py port these functions line by line). T is the
// compute type: float for float16/bfloat16/float32 inputs, double for float64.
//
// The bin mass p = Q(a) - Q(b), a = (|v| - 1/2)/s, b = (|v| + 1/2)/s, is evaluated in one of two
// ways, both relative-accurate:
// * difference form, where the bin is wide relative to s: exp(-b^2/2) = exp(-a^2/2) * e^{-x} with
//   x = h m (h = 1/s, m = |v|/s), so the two tails share one exp(-a^2/2) and one small exp;
// * midpoint series, where the bin is narrow relative to s (there Q(a) - Q(b) cancels):
//   p = h phi(m) (1 + (m^2 - 1) h^2 / 24 + (m^4 - 6 m^2 + 3) h^4 / 1920 + ...), with
//   phi(m) = phi(a) exp(h^2/8 - x/2).
// The gradients use the same two exponentials: phi(b) = phi(a) e^{-x}, so phi(a) - phi(b) is
// phi(a) (1 - e^{-x}) with an expm1 and never cancels.
// The Laplace and logistic families (docs/spec.md section 6) share BinArgs and everything around
// the mass; their masses and slopes are laplace_dist.h and logistic_dist.h, chosen at compile
// time by the kFamily template constant of forward_element / backward_element.
#pragma once

#include "host_device.h"
#include "laplace_dist.h"
#include "logistic_dist.h"
#include "normal_dist.h"
#include "philox.h"

namespace lic_quant {

// Values match the mode order of lic_quant/reference.py (MODES).
enum Mode : int32_t { kNoise = 0, kSte = 1, kMixed = 2, kSua = 3 };

LQ_HD bool mode_uses_noise(int32_t mode) { return mode != kSte; }

// Values match the family order of lic_quant/_checks.py (FAMILIES) and checks.h (kFamilyNames).
// The kernels take the family as a template constant: each family is its own instantiation, and
// the Gaussian's is the code it was before families existed.
enum Family : int32_t { kGaussian = 0, kLaplace = 1, kLogistic = 2 };

template <typename T>
struct QuantParams {
  int32_t mode;
  T temperature;
  T scale_bound;
  T likelihood_bound;
  bool zero_center;
  // The range bounded_scale holds s in (ScaleRange<T>), as run-time values: GCC 12 stops
  // vectorizing the CPU loops when it sees these clamps as constants.
  T scale_min;
  T scale_max;
};

// s is held in [2^-125, 2^125] (float64: [2^-1000, 2^1000]): there 1/s is a normal number computed
// exactly (reciprocal_rn); beyond, the bin mass is below 1e-37 and its slopes below float32
// resolution, so nothing else changes.
template <typename T>
struct ScaleRange;
template <>
struct ScaleRange<float> {
  static constexpr float kMin = 2.35098870e-38f;  // 2^-125
  static constexpr float kMax = 4.25352958e37f;   // 2^125
};
template <>
struct ScaleRange<double> {
  static constexpr double kMin = 9.3326361850321888e-302;  // 2^-1000
  static constexpr double kMax = 1.0715086071862673e301;   // 2^1000
};

template <typename T>
struct Surrogate {
  T rate;        // r~_R, seen by the entropy model
  T distortion;  // r~_D, seen by the decoder
};

// The one place that defines the quantization surrogates (docs/spec.md section 1). r = y - c, n its
// rounding, u the noise. Every offset from r is straight-through in the backward pass. Written
// without fma so that the pure-torch reference gives the same bits.
template <typename T>
LQ_HD Surrogate<T> surrogate(int32_t mode, T r, T u, T temperature) {
  const T n = round_half_even(r);
  switch (mode) {
    case kNoise:
      return {r + u, r + u};
    case kSte:
      return {n, n};
    case kMixed:
      return {r + u, n};
    default: {
      // SUA: n + T (e + u). T = 0 must give rounding bit for bit (also the sign of zero).
      const T annealed = temperature == T(0) ? n : n + temperature * ((r - n) + u);
      return {annealed, annealed};
    }
  }
}

// The one NaN every backend writes: 0x7fffffff (float64: 0x7fffffffffffffff), the canonical NaN
// that NVIDIA GPUs give for any NaN result of arithmetic. x86 and numpy would write a sign or a
// payload of their own, so the host and the Triton interpreter canonicalize explicitly; on the
// device every output is the result of an add, multiply or fma and is canonical already.
LQ_HD float canonical_nan(float x) {
#if defined(__CUDA_ARCH__)
  return x;
#else
  return x != x ? bits_float(0x7fffffffu) : x;
#endif
}
// float64 goes through CUDA's libm on the device, whose NaNs need not be canonical: explicit there.
LQ_HD double canonical_nan(double x) { return x != x ? bits_double(0x7fffffffffffffffull) : x; }

// ---------------------------------------------------------------------------------------------
// Arguments of the bin mass.

template <typename T>
struct BinArgs {
  T h;  // 1 / s
  T a;  // (|v| - 1/2) / s
  T b;  // (|v| + 1/2) / s
  T m;  // |v| / s, the bin's midpoint
  T x;  // h m = (b^2 - a^2) / 2
};

// num / den from the reciprocal: one product, then the fma residual num - q den (exact) and a
// correction; the result is within a hair of the correctly rounded quotient. The estimate is
// clamped before the residual so that no inf - inf appears; a quotient beyond the clamp comes back
// approximate (the bin mass and its slopes are 0 there).
LQ_HD float refined_quotient(float num, float den, float inv_den) {
  const float q = upper_bound(lower_bound(num * inv_den, -LQ_LIMIT(kQuotientMax)),
                              LQ_LIMIT(kQuotientMax));
  return fma_rn(fma_rn(-q, den, num), inv_den, q);
}
// The same for num >= 0.
LQ_HD float refined_quotient_nonnegative(float num, float den, float inv_den) {
  const float q = upper_bound(num * inv_den, LQ_LIMIT(kQuotientMax));
  return fma_rn(fma_rn(-q, den, num), inv_den, q);
}

// 1/s correctly rounded, for s in [2^-125, 2^125] (bounded_scale keeps it there). On the device:
// the hardware estimate and one Newton step, which is exactly the fast path of nvcc's rcp.rn
// (correctly rounded for these s) without its range check and slow-path call.
LQ_HD float reciprocal_rn(float s) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
  return __fmaf_rn(r, __fmaf_rn(-s, r, 1.0f), r);
#else
  return 1.0f / s;
#endif
}

LQ_HD BinArgs<float> bin_args(float av, float s) {
  const float h = reciprocal_rn(s);  // the one division of the element
  BinArgs<float> o;
  o.h = h;
  o.a = refined_quotient(av - 0.5f, s, h);
  o.b = refined_quotient_nonnegative(av + 0.5f, s, h);
  o.m = av * h;
  o.x = h * o.m;
  return o;
}

LQ_HD BinArgs<double> bin_args(double av, double s) {
  BinArgs<double> o;
  o.h = 1.0 / s;
  o.a = (av - 0.5) / s;
  o.b = (av + 0.5) / s;
  o.m = av / s;
  o.x = o.h * o.m;
  return o;
}

// The midpoint series is used where h < 1/2 and x < 1/2: there its truncation (after the h^4 term
// in float32, the h^12 term in float64) is below 1e-6 (1e-16) relative, and outside it the
// difference form loses at most a factor 1 / (1 - e^{-1/2}) = 2.5 of the tails' accuracy to
// cancellation. `&`, not `&&`: GCC 12 if-converts the short circuit into a select of masks it
// cannot vectorize in the mixture's backward loop (mass and slopes in one body).
LQ_HD bool use_series(const BinArgs<float>& g) { return (g.h < 0.5f) & (g.x < 0.5f); }
LQ_HD bool use_series(const BinArgs<double>& g) { return (g.h < 0.5) & (g.x < 0.5); }

// ---------------------------------------------------------------------------------------------
// The bin mass p (docs/spec.md section 1), finite for every finite av >= 0 and s > 0.

// e_a = exp(-a^2/2), which the slopes share (bin_mass_and_slopes).
LQ_HD float bin_probability(const BinArgs<float>& g, float e_a) {
  const bool series = use_series(g);
  const float w = g.h * g.h;
  // One small exponential serves both forms: e^{-x} (difference) or exp(h^2/8 - x/2) (series).
  const float e = exp_neg(series ? fma_rn(w, -0.125f, 0.5f * g.x)
                                 : upper_bound(g.x, LQ_LIMIT(kExpNegMaxArg)));
  // Difference form: Q(|a|) and Q(b) from one reciprocal of the product of their denominators.
  const float da = tail_denominator(abs_bits(g.a));
  const float db = tail_denominator(g.b);
  const float rd = reciprocal_1_128(da * db);
  const float qa = e_a * mills_scaled(db * rd);
  const float qb = (e_a * e) * mills_scaled(da * rd);
  const float p_diff = (g.a < 0.0f ? 1.0f - qa : qa) - qb;
  // Midpoint series in w = h^2 and q = x^2 = (m h)^2:
  // 1 + (q - w)/24 + (q^2 - 6 q w + 3 w^2)/1920.
  const float q = g.x * g.x;
  const float c0 = fma_rn(w, fma_rn(w, 1.5625e-3f, -4.16666679e-2f), 1.0f);  // 3/1920, 1/24
  const float c1 = fma_rn(w, -3.125e-3f, 4.16666679e-2f);                   // 6/1920
  const float poly = fma_rn(q, fma_rn(q, 5.20833346e-4f, c1), c0);          // 1/1920
  const float p_series = ((g.h * kInvSqrt2Pi) * (e_a * e)) * poly;
  return series ? p_series : p_diff;
}
LQ_HD float bin_probability(const BinArgs<float>& g) {
  return bin_probability(g, exp_neg_half_square(g.a));
}

// float64: the series term by term, He_n(m) by its recurrence; h, m h < 1/2 make the k-th term
// below 4^-k / (2k + 1)!, so six terms reach 1e-17.
LQ_HD double bin_probability(const BinArgs<double>& g) {
  if (use_series(g)) {
    const double m = g.m;
    const double q = 0.25 * g.h * g.h;  // (h/2)^2
    double he_prev = 1.0, he = m, coef = 1.0, poly = 1.0;  // He_0, He_1
    for (int n = 1; n < 12; ++n) {
      const double he_next = m * he - n * he_prev;  // He_{n+1}
      he_prev = he;
      he = he_next;
      if ((n + 1) % 2 == 0) {  // an even order 2k = n + 1
        coef *= q / ((n + 1) * (n + 2));
        poly += he * coef;
      }
    }
    return g.h * 0.3989422804014327 * ::exp(-0.5 * m * m) * poly;
  }
  const double qa = normal_sf(g.a < 0.0 ? -g.a : g.a);
  return (g.a < 0.0 ? 1.0 - qa : qa) - normal_sf(g.b);
}

// ---------------------------------------------------------------------------------------------
// Its derivatives: dp/d|v| = (phi(b) - phi(a)) / s and dp/ds = (a phi(a) - b phi(b)) / s.
// Where |a| is beyond 16, phi(a) is 0 and so are both.

template <typename T>
struct BinSlopes {
  T d_av;  // dp/d|v| (<= 0)
  T d_s;   // dp/ds
};

LQ_HD BinSlopes<float> bin_slopes(const BinArgs<float>& g, float e_a) {
  // a and b enter products with phi(a), which is 0 beyond |a| = 16: finite stand-ins keep those
  // products 0 instead of inf * 0.
  const float phi_a = kInvSqrt2Pi * e_a;  // the bin mass's exp, shared
  const float a = upper_bound(lower_bound(g.a, -LQ_LIMIT(kQuotientMax)), LQ_LIMIT(kQuotientMax));
  const float b = upper_bound(g.b, LQ_LIMIT(kQuotientMax));
  // phi(b) = phi(a) e^{-x}
  const ExpM1 e = exp_and_expm1(-upper_bound(g.x, LQ_LIMIT(kExpNegMaxArg)));
  // a - b e^{-x}; for small x as -h - b (e^{-x} - 1), which does not cancel.
  const float slope = g.x < 1.0f ? fma_rn(-b, e.expm1, -g.h) : fma_rn(-b, e.exp, a);
  return {(phi_a * e.expm1) * g.h, (phi_a * slope) * g.h};
}
LQ_HD BinSlopes<float> bin_slopes(const BinArgs<float>& g) {
  return bin_slopes(g, exp_neg_half_square(g.a));
}

LQ_HD BinSlopes<double> bin_slopes(const BinArgs<double>& g) {
  const double a = upper_bound(lower_bound(g.a, -64.0), 64.0);
  const double b = upper_bound(g.b, 64.0);
  const double phi_a = 0.3989422804014327 * ::exp(-0.5 * a * a);
  const double x = upper_bound(g.x, 700.0);
  const double em1 = ::expm1(-x);
  const double slope = x < 1.0 ? -g.h - b * em1 : a - b * ::exp(-x);
  return {phi_a * em1 * g.h, phi_a * slope * g.h};
}

// ---------------------------------------------------------------------------------------------
// The bin mass and its slopes of each family (laplace_dist.h, logistic_dist.h).

template <int kFamily, typename T>
LQ_HD T family_bin_probability(const BinArgs<T>& g) {
  if constexpr (kFamily == kLaplace) {
    return laplace_bin_probability(g.h, g.a, g.m);
  } else if constexpr (kFamily == kLogistic) {
    return logistic_bin_probability(g.h, g.a, g.m);
  } else {
    return bin_probability(g);
  }
}

// The bin mass and its slopes together, each bit for bit what family_bin_probability and
// family_bin_slopes give, with the exponentials both need computed once (the mixture's backward
// needs both for every component).
template <typename T>
struct MassSlopes {
  T mass;
  T d_av;  // dp/d|v| (<= 0)
  T d_s;   // dp/ds
};

LQ_HD MassSlopes<float> bin_mass_and_slopes(const BinArgs<float>& g) {
  const float e_a = exp_neg_half_square(g.a);
  const BinSlopes<float> d = bin_slopes(g, e_a);
  return {bin_probability(g, e_a), d.d_av, d.d_s};
}
LQ_HD MassSlopes<double> bin_mass_and_slopes(const BinArgs<double>& g) {
  const BinSlopes<double> d = bin_slopes(g);  // float64: libm's erfc and exp, nothing to share
  return {bin_probability(g), d.d_av, d.d_s};
}

template <int kFamily, typename T>
LQ_HD MassSlopes<T> family_bin_mass_and_slopes(const BinArgs<T>& g) {
  if constexpr (kFamily == kLaplace) {
    const LaplaceExps<T> e = laplace_exps(g.h, g.a, g.m);
    const FamilySlopes<T> d = laplace_bin_slopes(g.h, g.a, e);
    return {laplace_bin_probability(g.a, e), d.d_av, d.d_s};
  } else if constexpr (kFamily == kLogistic) {
    const LogisticTerms<T> t = logistic_terms(g.h, g.a, g.m);
    const FamilySlopes<T> d = logistic_bin_slopes(g.h, g.a, t);
    return {logistic_bin_probability(g.a, t), d.d_av, d.d_s};
  } else {
    return bin_mass_and_slopes(g);
  }
}

template <int kFamily, typename T>
LQ_HD BinSlopes<T> family_bin_slopes(const BinArgs<T>& g) {
  if constexpr (kFamily == kLaplace) {
    const FamilySlopes<T> d = laplace_bin_slopes(g.h, g.a, g.m);
    return {d.d_av, d.d_s};
  } else if constexpr (kFamily == kLogistic) {
    const FamilySlopes<T> d = logistic_bin_slopes(g.h, g.a, g.m);
    return {d.d_av, d.d_s};
  } else {
    return bin_slopes(g);
  }
}

// ---------------------------------------------------------------------------------------------
// One element forward and backward.

// s = max(sigma, b_sigma), NaN-preserving, held in [p.scale_min, p.scale_max] (ScaleRange).
template <typename T>
LQ_HD T bounded_scale(T sigma, const QuantParams<T>& p) {
#if defined(__CUDA_ARCH__)
  const T lo = ScaleRange<T>::kMin, hi = ScaleRange<T>::kMax;  // immediates of a min / max
#else
  const T lo = p.scale_min, hi = p.scale_max;
#endif
  return upper_bound(lower_bound(lower_bound(sigma, p.scale_bound), lo), hi);
}

template <typename T>
struct ForwardOut {
  T y_hat;
  T likelihood;
};

template <typename T, int kFamily = kGaussian>
LQ_HD ForwardOut<T> forward_element(T y, T mu, T sigma, T u, const QuantParams<T>& p) {
  const T c = p.zero_center ? mu : T(0);
  const T r = y - c;
  const Surrogate<T> q = surrogate<T>(p.mode, r, u, p.temperature);
  const T v = p.zero_center ? q.rate : q.rate - mu;
  const T s = bounded_scale(sigma, p);
  const T prob = family_bin_probability<kFamily>(bin_args(abs_bits(v), s));
  return {canonical_nan(c + q.distortion), canonical_nan(lower_bound(prob, p.likelihood_bound))};
}

template <typename T>
struct BackwardOut {
  T grad_y;
  T grad_mu;
  T grad_sigma;
};

// CompressAI's LowerBound rule: the gradient passes where x >= bound or where it points up (g < 0).
// Written as g * 0 otherwise so a NaN gradient stays NaN, as it does in CompressAI.
template <typename T>
LQ_HD T pass_if_towards(T g, bool above_bound) {
  return (above_bound || g < T(0)) ? g : g * T(0);
}

// d|v|/dv = sign(v): the sign bit of v moved onto x.
LQ_HD float with_sign_of(float x, float v) {
  return bits_float(float_bits(x) ^ (float_bits(v) & 0x80000000u));
}
LQ_HD double with_sign_of(double x, double v) {
  return bits_double(double_bits(x) ^ (double_bits(v) & 0x8000000000000000ull));
}

// ln 2, rounded to T: the gradient of -log2 P is -g / (P ln 2) (docs/spec.md section 8).
template <typename T>
struct Ln2;
template <>
struct Ln2<float> {
  static constexpr float kValue = 0.693147182464599609375f;  // 0x3f317218
};
template <>
struct Ln2<double> {
  static constexpr double kValue = 0.69314718055994531;
};

// The gradient into p of rate=True's -log2 P, P = max(p, b_p), for the bits' gradient g:
// -g / (P ln 2), then the likelihood bound's rule (single-family and mixture kernels alike).
template <typename T>
LQ_HD T rate_grad_p(T g_bits, T prob, T likelihood_bound) {
  const T big_p = lower_bound(prob, likelihood_bound);
  return pass_if_towards(-g_bits / (big_p * Ln2<T>::kValue), prob >= likelihood_bound);
}

// skip_likelihood: the caller knows every g_P is negative, so the likelihood bound passes the
// gradient whatever p is and p need not be recomputed (the usual case: loss = -log P). Both
// paths give the same bits for a negative g_P.
// kRate: g_lik is the gradient g of the sample's bits (rate=True, docs/spec.md section 8); the
// gradient into P, -g / (P ln 2), is formed here from the recomputed P, so no likelihood tensor is
// read. skip_likelihood is ignored then (P is needed anyway).
template <typename T, int kFamily = kGaussian, bool kRate = false>
LQ_HD BackwardOut<T> backward_element(T g_yhat, T g_lik, T y, T mu, T sigma, T u,
                                      const QuantParams<T>& p, bool skip_likelihood) {
  const T c = p.zero_center ? mu : T(0);
  const T r = y - c;
  const Surrogate<T> q = surrogate<T>(p.mode, r, u, p.temperature);
  const T v = p.zero_center ? q.rate : q.rate - mu;
  const T s = bounded_scale(sigma, p);
  const BinArgs<T> g = bin_args(abs_bits(v), s);
  T g_p = g_lik;
  if constexpr (kRate) {
    g_p = rate_grad_p(g_lik, family_bin_probability<kFamily>(g), p.likelihood_bound);
  } else if (!skip_likelihood) {
    g_p = pass_if_towards(g_lik, family_bin_probability<kFamily>(g) >= p.likelihood_bound);
  }
  const BinSlopes<T> d = family_bin_slopes<kFamily>(g);
  const T dv = with_sign_of(d.d_av, v);
  const T g_v = g_p * dv;
  const T g_s = g_p * d.d_s;
  // -g_p * dv rather than -g_v: a product, so a NaN comes out canonical on the device too.
  return {canonical_nan(g_yhat + g_v), canonical_nan(-g_p * dv),
          canonical_nan(pass_if_towards(g_s, sigma >= p.scale_bound))};
}

}  // namespace lic_quant
