// The per-element math of the factorized prior (docs/spec.md section 9), shared by the CPU kernel
// (csrc/cpu/entropy_bottleneck_cpu.cpp) and written host/device so that a CUDA kernel and a Triton
// port can follow it line by line.
//
// Each channel has a small MLP, CompressAI's EntropyBottleneck._logits_cumulative: layer i maps
// width f[i] to f[i+1] (f = (1, filters..., 1)) with
//     pre = softplus(M_i) h + b_i,   out = pre + tanh(F_i) tanh(pre)   (every layer but the last)
// and the bin mass is sigma(upper) - sigma(lower) with lower, upper the logits at v -+ 1/2.
// softplus(M_i) and tanh(F_i) depend on the channel only: eb_prepare_* evaluates them once per
// channel (libm; the per-element math below never calls libm in float32).
//
// float32: IEEE operations, explicit fmas, bit casts and correctly rounded divisions only (tanh a
// rational function, the sigmoids from neg_exp.h), so a CUDA or Triton port that keeps the same
// order of operations gives the same bits. float64: libm.
#pragma once

#include <cmath>

#include "host_device.h"
#include "neg_exp.h"
#include "normal_dist.h"
#include "quantize_math.h"

namespace lic_quant {

// Fully unrolled loops over the units of a layer: the per-element code is then straight-line, so
// the CPU kernels' loops over elements vectorize (GCC otherwise vectorizes the short unit loop).
#if defined(__CUDACC__)
#define LQ_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define LQ_UNROLL _Pragma("clang loop unroll(full)")
#else
#define LQ_UNROLL _Pragma("GCC unroll 16")
#endif

// The hidden width the kernels are built for (CompressAI's default filters are all 3), and the
// most layers a channel MLP may have (CompressAI's default has 5; lic_quant/_checks.py
// MAX_EB_LAYERS).
constexpr int kEbWidth = 3;
constexpr int kEbMaxLayers = 8;

// ---------------------------------------------------------------------------------------------
// Per channel: the constants of the MLP and the chain rule back to the raw parameters.

// F.softplus with torch's threshold 20: x itself above it.
template <typename T>
LQ_HD T eb_softplus(T x) {
  return x > T(20) ? x : ::log1p(::exp(x));
}
// Its derivative as torch's softplus_backward forms it: sigmoid(x), 1 above the threshold.
template <typename T>
LQ_HD T eb_softplus_slope(T x) {
  if (x > T(20)) return T(1);
  const T e = ::exp(x);
  return e / (e + T(1));
}
template <typename T>
LQ_HD T eb_factor(T x) {
  return ::tanh(x);
}
template <typename T>
LQ_HD T eb_factor_slope(T x) {
  const T t = ::tanh(x);
  return T(1) - t * t;
}

// ---------------------------------------------------------------------------------------------
// Per element.

// The clamp limits of eb_tanh (below) and eb_exp_neg_abs, as LQ_LIMIT reads them.
constexpr float kEbTanhArgMax = 9.02000237f;  // the first float32 a where the quotient gives 1
constexpr float kEbTanhMax = 1.0f;
// The largest |logit| the sigmoids see: e^{-87} = 1.6e-38 is still a normal float32;
// beyond it the bin mass is below 1e-37 and its slopes below 2e-38.
constexpr float kEbLogitMax = 87.0f;
#if !defined(__CUDA_ARCH__)
namespace host_limits {
extern const float kEbTanhArgMax, kEbTanhMax, kEbLogitMax;
}  // namespace host_limits
#endif

// tanh(x) = sign(x) a P(a^2) / Q(a^2) for a = |x|, degrees 6 and 3, fitted on a <= 9.2
// (tools/fit_eb_tanh.py, which also checks every float32 argument: at most 5.0 ulp). A dozen
// operations and one division, half of an exponential-based form: the 24 tanh per element of a
// 5-layer MLP, run forward and again in the backward, are most of the EntropyBottleneck's time on
// the CPU. Every float32 tanh from 9.02 on is 1: a is held at the first float32 from there where
// the quotient gives 1 exactly, and the quotient is held at 1. The clamps act on |x| only: with a
// two-sided clamp GCC folds the held lanes to constants and blends them back with a dozen mask
// operations per tanh (the forward took 1.25x longer). NaN -> NaN.
LQ_HD float eb_tanh(float x) {
  const float c = upper_bound(abs_bits(x), LQ_LIMIT(kEbTanhArgMax));
  const float s = c * c;
  float p = -7.97609998e-14f;
  p = fma_rn(p, s, 5.07903407e-11f);
  p = fma_rn(p, s, -1.98139301e-08f);
  p = fma_rn(p, s, 1.1053342e-05f);
  p = fma_rn(p, s, 0.00309432787f);
  p = fma_rn(p, s, 0.130753964f);
  p = fma_rn(p, s, 1.0f);
  float q = 0.000253210979f;
  q = fma_rn(q, s, 0.0244568568f);
  q = fma_rn(q, s, 0.464087218f);
  q = fma_rn(q, s, 1.0f);
  return with_sign_of(upper_bound((c * p) / q, LQ_LIMIT(kEbTanhMax)), x);
}
LQ_HD double eb_tanh(double x) { return ::tanh(x); }

// float64's kEbLogitMax: e^{-708} = 3.3e-308 is still a normal float64.
constexpr double kEbLogitMaxDouble = 708.0;

// e^{-|x|}: the one exponential of sigma(x) and of its slope.
LQ_HD float eb_exp_neg_abs(float x) {
  return neg_exp(upper_bound(abs_bits(x), LQ_LIMIT(kEbLogitMax))).exp;
}
LQ_HD double eb_exp_neg_abs(double x) {
  return ::exp(-upper_bound(abs_bits(x), kEbLogitMaxDouble));
}

// sigma(s x) for s = +-1 given e = e^{-|x|}: 1/(1 + e) where s x >= 0, e/(1 + e) below.
template <typename T>
LQ_HD T eb_sigmoid(T sx, T e) {
  return (sx >= T(0) ? T(1) : e) / (T(1) + e);
}

// One layer of one element: out = pre + f tanh(pre) with pre = W h + b (hidden layers, kTanh),
// or out = W h + b (the last layer). W is row-major [kOut][kIn]; tanh(pre) is returned in t for
// the backward. The products are summed in input order, the bias added last, as CompressAI's
// matmul + bias.
template <int kIn, int kOut, bool kTanh, typename T>
LQ_HD void eb_layer_forward(const T* W, const T* b, const T* f, const T (&h)[kIn],
                            T (&out)[kOut], T (&t)[kOut]) {
  LQ_UNROLL
  for (int k = 0; k < kOut; ++k) {
    T acc = W[k * kIn] * h[0];
    LQ_UNROLL
    for (int q = 1; q < kIn; ++q) acc = fma_rn(W[k * kIn + q], h[q], acc);
    const T pre = acc + b[k];
    if constexpr (kTanh) {
      t[k] = eb_tanh(pre);
      out[k] = fma_rn(f[k], t[k], pre);
    } else {
      t[k] = T(0);
      out[k] = pre;
    }
  }
}

// The gradients of one layer of one element given the gradient g of its output: the gradient of
// its input (gin), and the element's terms of the parameter gradients (gw = d/dW as [kOut][kIn],
// gb = d/db, gf = d/d tanh(F)). d out/d pre = 1 + f (1 - t^2).
template <int kIn, int kOut, bool kTanh, typename T>
LQ_HD void eb_layer_backward(const T* W, const T* f, const T (&h)[kIn], const T (&t)[kOut],
                             const T (&g)[kOut], T (&gin)[kIn], T (&gw)[kOut * kIn],
                             T (&gb)[kOut], T (&gf)[kOut]) {
  T gpre[kOut];
  LQ_UNROLL
  for (int k = 0; k < kOut; ++k) {
    if constexpr (kTanh) {
      gpre[k] = g[k] * fma_rn(f[k], fma_rn(-t[k], t[k], T(1)), T(1));
      gf[k] = g[k] * t[k];
    } else {
      gpre[k] = g[k];
      gf[k] = T(0);
    }
    gb[k] = gpre[k];
    LQ_UNROLL
    for (int q = 0; q < kIn; ++q) gw[k * kIn + q] = gpre[k] * h[q];
  }
  LQ_UNROLL
  for (int q = 0; q < kIn; ++q) {
    T acc = W[q] * gpre[0];
    LQ_UNROLL
    for (int k = 1; k < kOut; ++k) acc = fma_rn(W[k * kIn + q], gpre[k], acc);
    gin[q] = acc;
  }
}

// The bin mass sigma(upper) - sigma(lower), taken where both sigmoids are far from 1: where
// upper + lower > 0 as sigma(-lower) - sigma(-upper), so two large logits do not cancel to 0.
// e_upper, e_lower are eb_exp_neg_abs of the logits.
template <typename T>
LQ_HD T eb_mass(T upper, T lower, T e_upper, T e_lower) {
  const bool flip = upper + lower > T(0);
  const T a = flip ? -lower : upper;
  const T b = flip ? -upper : lower;
  return flip ? eb_sigmoid(a, e_lower) - eb_sigmoid(b, e_upper)
              : eb_sigmoid(a, e_upper) - eb_sigmoid(b, e_lower);
}

// sigma'(x) = e/(1 + e)^2 with e = e^{-|x|} (0 where e underflows: never inf * 0).
template <typename T>
LQ_HD T eb_sigmoid_slope(T e) {
  const T d = T(1) / (T(1) + e);
  return (e * d) * d;
}

}  // namespace lic_quant
