// The per-element math of a K-component mixture (docs/spec.md section 7) on top of the families'
// bin masses and slopes of quantize_math.h. The sums over k run from 0 in the order k = 0 .. K-1
// (CompressAI's GaussianMixtureConditional accumulates its likelihood that way), so a kernel that
// loops over components outside its loop over elements (the CPU kernel, which vectorizes the
// inner loop) and one that loops over them per element (CUDA, Triton) give the same bits.
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

// The component's slopes: d mass_k / d v_k (signed) in d_av, d mass_k / d s_k in d_s.
template <int kFamily, typename T>
LQ_HD BinSlopes<T> component_bin_slopes(T v, T sigma, const QuantParams<T>& p) {
  const BinSlopes<T> d =
      family_bin_slopes<kFamily>(bin_args(abs_bits(v), bounded_scale(sigma, p)));
  return {with_sign_of(d.d_av, v), d.d_s};
}

template <typename T>
struct ComponentSlopes {
  T mass;  // mass_k
  T d_v;   // d mass_k / d v_k (signed)
  T d_s;   // d mass_k / d s_k
};

// component_mass and component_bin_slopes together (the backward needs both), bit for bit theirs,
// with the arguments and the exponentials both use formed once.
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

// ---------------------------------------------------------------------------------------------
// One element with the component loops inside (the CUDA kernels; the CPU kernel runs the same
// steps with the loops the other way round). `comp` walks the element's components: a copy starts
// at component 0 and advance() moves it to the next. At the current component it reads, as T,
// given_weight() (a probability or a logit), mean(), scale(), and weight() (w_k: the probability,
// or the softmax that set_weight() stored). Every sum runs k = 0 .. K-1 from 0, as the CPU
// kernel's, so the bits are the same.

// Logits -> weights through set_weight, in the CPU kernel's steps (softmax_block): the max, the
// numerators and their sum, then each numerator times 1 / the sum.
template <typename T, typename Comp>
LQ_HD void mixture_softmax(int K, const Comp& comp) {
  Comp it = comp;
  T mx = it.given_weight();
  LQ_ROLLED for (int k = 1; k < K; ++k) {
    it.advance();
    mx = max_nan(mx, it.given_weight());
  }
  T z = T(0);
  it = comp;
  LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) {
    const T e = softmax_numerator(it.given_weight(), mx);
    it.set_weight(e);
    z = z + e;
  }
  const T inv = softmax_reciprocal(z);
  it = comp;
  LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) it.set_weight(it.weight() * inv);
}

// The weights (softmax of logits), then c = sum_k w_k mu_k with zero_center, else 0.
template <typename T, typename Comp>
LQ_HD T mixture_center(int K, bool logits, const Comp& comp, const QuantParams<T>& p) {
  if (logits) mixture_softmax<T>(K, comp);
  T c = T(0);
  if (p.zero_center) {
    Comp it = comp;
    LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) c = c + it.weight() * it.mean();
  }
  return c;
}

template <int kFamily, typename T, typename Comp>
LQ_HD ForwardOut<T> mixture_forward_element(T y, T u, int K, bool logits, const Comp& comp,
                                            const QuantParams<T>& p) {
  const T c = mixture_center(K, logits, comp, p);
  const Surrogate<T> q = surrogate<T>(p.mode, y - c, u, p.temperature);
  T prob = T(0);
  Comp it = comp;
  LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) {
    prob = prob + it.weight() * component_mass<kFamily>(component_residual(c, q.rate, it.mean()),
                                                        it.scale(), p);
  }
  return {canonical_nan(c + q.distortion), canonical_nan(lower_bound(prob, p.likelihood_bound))};
}

// The backward of one element: the first component loop forms every mass and slope and p (and
// hands each component's to keep()), the second the gradients from kept() (to put()); returns
// grad_y. kRate: g_lik is the gradient of the sample's bits (docs/spec.md section 8), whose
// gradient into p is formed here from the recomputed p.
template <int kFamily, bool kRate, typename T, typename Comp>
LQ_HD T mixture_backward_element(T g_yhat, T g_lik, T y, T u, int K, bool logits,
                                 const Comp& comp, const QuantParams<T>& p) {
  const T c = mixture_center(K, logits, comp, p);
  const Surrogate<T> q = surrogate<T>(p.mode, y - c, u, p.temperature);
  T prob = T(0);
  Comp it = comp;
  LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) {
    const T v = component_residual(c, q.rate, it.mean());
    const T sigma = it.scale();
    const T mass = component_mass<kFamily>(v, sigma, p);
    const BinSlopes<T> d = component_bin_slopes<kFamily>(v, sigma, p);
    prob = prob + it.weight() * mass;
    it.keep(ComponentSlopes<T>{mass, d.d_av, d.d_s});
  }
  const T g_p = kRate ? rate_grad_p(g_lik, prob, p.likelihood_bound)
                      : pass_if_towards(g_lik, prob >= p.likelihood_bound);
  T gy = T(0);
  it = comp;
  LQ_ROLLED for (int k = 0; k < K; ++k, it.advance()) {
    const T w = it.weight();
    const ComponentSlopes<T> d = it.kept();
    gy = gy + (g_p * w) * d.d_v;
    it.put(component_grads(g_p, w, d, prob, it.scale(), logits, p));
  }
  return canonical_nan(g_yhat + gy);
}

}  // namespace lic_quant
