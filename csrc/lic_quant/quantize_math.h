// The per-element math of SPEC sections 1-2, shared by the CPU and CUDA kernels (the Triton
// kernels in lic_quant/triton_ops.py port these functions line by line). T is the compute type:
// float for float16/bfloat16/float32 inputs, double for float64.
#pragma once

#include "host_device.h"
#include "normal_dist.h"
#include "philox.h"

namespace lic_quant {

// Values match the mode order of lic_quant/_ops.py (MODES).
enum Mode : int32_t { kNoise = 0, kSte = 1, kMixed = 2, kSua = 3 };

LQ_HD bool mode_uses_noise(int32_t mode) { return mode != kSte; }

template <typename T>
struct QuantParams {
  int32_t mode;
  T temperature;
  T scale_bound;
  T likelihood_bound;
  bool zero_center;
};

template <typename T>
struct Surrogate {
  T rate;        // r~_R, seen by the entropy model
  T distortion;  // r~_D, seen by the decoder
};

// The one place that defines the quantization surrogates (SPEC section 1). r = y - c, n its
// rounding, u the noise. Every offset from r is straight-through in the backward pass.
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

// Lower bound that keeps NaN (fmax would drop it).
template <typename T>
LQ_HD T lower_bound(T x, T bound) {
  return x < bound ? bound : x;
}

// Discretized Gaussian mass of the unit bin around v, reflected so both terms are upper tails:
// p = Phi((1/2 - |v|)/s) - Phi((-1/2 - |v|)/s) = Q((|v| - 1/2)/s) - Q((|v| + 1/2)/s).
template <typename T>
LQ_HD T bin_probability(T v, T s) {
  const T av = v < T(0) ? -v : v;
  return normal_sf((av - T(0.5)) / s) - normal_sf((av + T(0.5)) / s);
}

template <typename T>
struct ForwardOut {
  T y_hat;
  T likelihood;
};

template <typename T>
LQ_HD ForwardOut<T> forward_element(T y, T mu, T sigma, T u, const QuantParams<T>& p) {
  const T c = p.zero_center ? mu : T(0);
  const T r = y - c;
  const Surrogate<T> q = surrogate<T>(p.mode, r, u, p.temperature);
  const T v = p.zero_center ? q.rate : q.rate - mu;
  const T s = lower_bound(sigma, p.scale_bound);
  return {c + q.distortion, lower_bound(bin_probability(v, s), p.likelihood_bound)};
}

template <typename T>
struct BackwardOut {
  T grad_y;
  T grad_mu;
  T grad_sigma;
};

// CompressAI's LowerBound rule: the gradient passes where x >= bound or where it points up (g < 0).
// Written as g * mask so a NaN gradient stays NaN, as it does in CompressAI.
template <typename T>
LQ_HD T pass_if_towards(T g, bool above_bound) {
  return (above_bound || g < T(0)) ? g : g * T(0);
}

// kSkipLikelihood: the caller knows every g_P is negative, so the likelihood bound passes the
// gradient whatever p is and p need not be recomputed (the usual case: loss = -log P).
template <typename T, bool kSkipLikelihood>
LQ_HD BackwardOut<T> backward_element(T g_yhat, T g_lik, T y, T mu, T sigma, T u,
                                      const QuantParams<T>& p) {
  const T c = p.zero_center ? mu : T(0);
  const T r = y - c;
  const Surrogate<T> q = surrogate<T>(p.mode, r, u, p.temperature);
  const T v = p.zero_center ? q.rate : q.rate - mu;
  const T s = lower_bound(sigma, p.scale_bound);
  T g_p = g_lik;
  if (!kSkipLikelihood) g_p = pass_if_towards(g_lik, bin_probability(v, s) >= p.likelihood_bound);
  const T inv_s = T(1) / s;
  const T u1 = (v + T(0.5)) * inv_s;
  const T u2 = (v - T(0.5)) * inv_s;
  const T phi1 = normal_pdf(u1);
  const T phi2 = normal_pdf(u2);
  const T g_v = g_p * ((phi1 - phi2) * inv_s);
  const T g_s = -g_p * ((u1 * phi1 - u2 * phi2) * inv_s);
  return {g_yhat + g_v, -g_v, pass_if_towards(g_s, sigma >= p.scale_bound)};
}

}  // namespace lic_quant
