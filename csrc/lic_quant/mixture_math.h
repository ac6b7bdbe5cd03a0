// The per-element math of a K-component mixture (docs/spec.md section 7) on top of the families'
// bin masses and slopes of quantize_math.h. The sums over k run from 0 in the order k = 0 .. K-1
// (CompressAI's GaussianMixtureConditional accumulates its likelihood that way), so a kernel that
// loops over components outside its loop over elements (the CPU kernel, which vectorizes the
// inner loop; CUDA, four elements per thread) and one that loops over them per element (Triton)
// give the same bits. The kernels compose these steps in the same order: the softmax's max,
// numerators, normalizer and weights; c; p = sum of w_k mass_k from 0; then the gradients from g_p.
#pragma once

#include "neg_exp.h"
#include "quantize_math.h"

namespace lic_quant {

constexpr int kMaxComponents = 8;

// Softmax over k of the logits: w_k = e^{l_k - max_k l} / sum_j e^{l_j - max_k l}. The exponent is
// <= 0, so the portable e^{-x} of neg_exp.h serves; the normalizer lies in [1, K].
template <typename T>
LQ_HD T softmax_numerator(T logit, T max_logit) {
  return neg_exp(max_logit - logit).exp;
}
LQ_HD float softmax_reciprocal(float z) { return reciprocal_1_128(z); }
LQ_HD double softmax_reciprocal(double z) { return 1.0 / z; }
// max that propagates a NaN of either argument (one NaN logit makes every weight NaN).
template <typename T>
LQ_HD T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// One component's residual: v_k = (c - mu_k) + r~_R. With c = 0 (zero_center=False) this is
// r~_R - mu_k bit for bit; with one component of weight 1 and zero_center it is r~_R, as the
// single-family op.
template <typename T>
LQ_HD T component_residual(T c, T rate, T mu) {
  return (c - mu) + rate;
}

// The component's bin mass at |v_k| with s_k = max(sigma_k, b_sigma).
template <int kFamily, typename T>
LQ_HD T component_mass(T v, T sigma, const QuantParams<T>& p) {
  return family_bin_probability<kFamily>(bin_args(abs_bits(v), bounded_scale(sigma, p)));
}

template <typename T>
struct ComponentSlopes {
  T mass;  // mass_k
  T d_v;   // d mass_k / d v_k (signed)
  T d_s;   // d mass_k / d s_k
};

// component_mass and the component's slopes together (the backward needs both): mass_k, d mass_k
// / d v_k (signed) and d mass_k / d s_k, bit for bit family_bin_probability's and
// family_bin_slopes', with the arguments and the exponentials both use formed once.
template <int kFamily, typename T>
LQ_HD ComponentSlopes<T> component_mass_and_slopes(T v, T sigma, const QuantParams<T>& p) {
  const MassSlopes<T> d =
      family_bin_mass_and_slopes<kFamily>(bin_args(abs_bits(v), bounded_scale(sigma, p)));
  return {d.mass, with_sign_of(d.d_av, v), d.d_s};
}

// The gradients of component k given g_p (the gradient of p after the likelihood bound's rule)
// and gw = g_p * w_k: dmu_k = -gw dv, dsigma_k = gw ds through the scale bound's rule, and the
// weight's g_p * mass_k, or with logits the softmax Jacobian w_k (g_p mass_k - sum_j w_j g_p
// mass_j) = gw (mass_k - p).
template <typename T>
struct ComponentGrads {
  T mu, sigma, weight;
};

template <typename T>
LQ_HD ComponentGrads<T> component_grads(T g_p, T w, const ComponentSlopes<T>& d, T p, T sigma,
                                        bool logits, const QuantParams<T>& prm) {
  const T gw = g_p * w;
  return {canonical_nan(-gw * d.d_v),
          canonical_nan(pass_if_towards(gw * d.d_s, sigma >= prm.scale_bound)),
          canonical_nan(logits ? gw * (d.mass - p) : g_p * d.mass)};
}

}  // namespace lic_quant
