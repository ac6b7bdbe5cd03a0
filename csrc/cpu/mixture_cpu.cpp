// Fused CPU kernels of the K-component mixture (docs/spec.md section 7): one pass forward
// (y, mu_k, sigma_k, w_k -> y_hat, P, or with rate=True y_hat and the bits of section 8) and one
// pass backward (g_yhat, g_P or the bits' gradient, y, mu_k, sigma_k, w_k -> the four gradients),
// the noise recomputed from the seed. Work goes in blocks of kBlock elements of y: each block's
// parameters are read in place or gathered into scratch (in their own layout, see
// component_layout), and the per-element math of mixture_math.h runs in loops over the block, a
// few components per loop (for_each_group), so the element loop is straight-line code GCC
// vectorizes.
// Separate from quantize_cpu.cpp so that the two compile in parallel and alone.
//
// GCC schedules x86 code only after register allocation unless told otherwise; scheduling before
// it (register-pressure aware) interleaves the independent chains of a loop body, which the
// mixture's long bodies need (see for_each_group). Before the includes, so that every inline
// function of this file is compiled with the same options.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("schedule-insns", "sched-pressure")
#endif
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../lic_quant/mixture_math.h"
#include "../lic_quant/op_args.h"
#include "cpu_kernels.h"

namespace lic_quant {
namespace {

// 256 rather than 128: each component loop runs 16 vectors instead of 8 between its start and
// drain (K = 3 training step 2-6 % faster, docs/design/cpu_kernels.md); the scratch is 30 KiB
// (float) in the forward, 170 KiB (double) in the backward, on the stack.
constexpr int64_t kBlock = 256;
static_assert(kBlock <= kMaxNoiseBlock && kBlock % 4 == 0, "one noise fill per block");
static_assert(kRateChunk % kBlock == 0, "a rate chunk is whole blocks");
constexpr int64_t kGrain = 16384;  // elements per task of at::parallel_for

// ---------------------------------------------------------------------------------------------
// Moving a block of one component between a tensor in its ComponentLayout and scratch.

template <typename S, typename T, typename Fn>
void for_each_segment(const ComponentLayout& l, int64_t k, int64_t i0, int64_t n, Fn&& fn) {
  int64_t i = i0, j = 0;
  while (j < n) {
    const int64_t r = i % l.inner;
    const int64_t len = std::min(n - j, l.inner - r);
    fn(k * l.stride_k + (i / l.inner) * l.stride_outer + r, j, len);
    j += len;
    i += len;
  }
}

template <typename S, typename T>
void gather(const S* base, const ComponentLayout& l, int64_t k, int64_t i0, int64_t n, T* dst) {
  for_each_segment<S, T>(l, k, i0, n, [&](int64_t off, int64_t j, int64_t len) {
    const S* src = base + off;
    for (int64_t t = 0; t < len; ++t) dst[j + t] = static_cast<T>(src[t]);
  });
}

// float -> float16 / bfloat16 with NaN written as 0x7FFF, the canonical NaN of every backend.
template <typename S, typename T>
S narrow(T x) {
  if constexpr (std::is_same_v<S, c10::Half> || std::is_same_v<S, c10::BFloat16>) {
    return x != x ? S(0x7FFF, S::from_bits()) : static_cast<S>(x);
  } else {
    return static_cast<S>(x);
  }
}

template <typename S, typename T>
void scatter(const T* src, const ComponentLayout& l, int64_t k, int64_t i0, int64_t n, S* base) {
  for_each_segment<S, T>(l, k, i0, n, [&](int64_t off, int64_t j, int64_t len) {
    S* dst = base + off;
    for (int64_t t = 0; t < len; ++t) dst[t] = narrow<S>(src[j + t]);
  });
}

// The offset of the block's run of component k in a tensor of layout l when the run lies inside
// one segment, else -1. There the loops use the tensor's memory itself (when its elements are of
// the compute type): the loads then overlap with the math, where a copy into scratch first would
// wait for them.
inline int64_t run_offset(const ComponentLayout& l, int64_t k, int64_t i0, int64_t n) {
  const int64_t r = i0 % l.inner;
  return r + n <= l.inner ? k * l.stride_k + (i0 / l.inner) * l.stride_outer + r : -1;
}

// The block's run of component k as the loops read it: in place, or gathered into scratch.
template <typename S, typename T>
const T* read_run(const S* base, const ComponentLayout& l, int64_t k, int64_t i0, int64_t n,
                  T* scratch) {
  if constexpr (std::is_same_v<S, T>) {
    const int64_t off = run_offset(l, k, i0, n);
    if (off >= 0) return base + off;
  }
  gather(base, l, k, i0, n, scratch);
  return scratch;
}

// Where the loops write the block's run of component k of a gradient: in place, or scratch
// (scattered after).
template <typename S, typename T>
T* out_run(S* base, const ComponentLayout& l, int64_t k, int64_t i0, int64_t n, T* scratch) {
  if constexpr (std::is_same_v<S, T>) {
    const int64_t off = run_offset(l, k, i0, n);
    if (off >= 0) return base + off;
  }
  return scratch;
}

// ---------------------------------------------------------------------------------------------
// The block loops. T is the compute type; arrays are [component][kBlock].

template <typename T>
struct Block {
  alignas(64) T y[kBlock], u[kBlock], c[kBlock], rate[kBlock], p[kBlock], aux[kBlock];
  alignas(64) T mu[kMaxComponents][kBlock], sigma[kMaxComponents][kBlock],
      w[kMaxComponents][kBlock];
  // What the loops read (read_run): the tensors' memory, or the arrays above.
  const T* y_in;
  const T* mu_in[kMaxComponents];
  const T* sigma_in[kMaxComponents];
  const T* w_in[kMaxComponents];
};

// Logits -> weights, into w (aux holds the running max, then 1 / the normalizer).
template <typename T>
LQ_CLONES void softmax_block(Block<T>& b, int K, int64_t n) {
  for (int64_t j = 0; j < n; ++j) b.aux[j] = b.w_in[0][j];
  for (int k = 1; k < K; ++k) {
    for (int64_t j = 0; j < n; ++j) b.aux[j] = max_nan(b.aux[j], b.w_in[k][j]);
  }
  for (int64_t j = 0; j < n; ++j) b.p[j] = T(0);
  for (int k = 0; k < K; ++k) {
    for (int64_t j = 0; j < n; ++j) {
      b.w[k][j] = softmax_numerator(b.w_in[k][j], b.aux[j]);
      b.p[j] = b.p[j] + b.w[k][j];
    }
    b.w_in[k] = b.w[k];
  }
  for (int64_t j = 0; j < n; ++j) b.aux[j] = softmax_reciprocal(b.p[j]);
  for (int k = 0; k < K; ++k) {
    for (int64_t j = 0; j < n; ++j) b.w[k][j] = b.w[k][j] * b.aux[j];
  }
}

// c = sum_k w_k mu_k (or 0), then the surrogate: rate <- r~_R, y_hat (the output's memory or aux).
template <int32_t kMode, typename T>
LQ_CLONES void center_block(Block<T>& b, int K, int64_t n, bool zero_center, T temperature,
                            T* __restrict y_hat) {
  T* __restrict c = b.c;
  for (int64_t j = 0; j < n; ++j) c[j] = T(0);
  if (zero_center) {
    for (int k = 0; k < K; ++k) {
      const T* __restrict w = b.w_in[k];
      const T* __restrict mu = b.mu_in[k];
      for (int64_t j = 0; j < n; ++j) c[j] = c[j] + w[j] * mu[j];
    }
  }
  const T* __restrict y = b.y_in;
  for (int64_t j = 0; j < n; ++j) {
    const Surrogate<T> q = surrogate<T>(kMode, y[j] - c[j], b.u[j], temperature);
    b.rate[j] = q.rate;
    y_hat[j] = canonical_nan(c[j] + q.distortion);
  }
}

// The loops take the components in groups, a group's per-element math in one loop body: the
// group's chains are independent, so with the pre-allocation scheduling above their instructions
// interleave and the core overlaps their latencies (by our reading of the timings: one component
// per body leaves it waiting on one chain). Groups of three forward; two backward, where three
// components' live values spill more than the overlap gains (docs/design/cpu_kernels.md has the
// measurements). p and the gradient of y still sum the components in the order k = 0 .. K-1, so
// the bits do not depend on the grouping.
constexpr int kForwardGroup = 3;
constexpr int kBackwardGroup = 2;

// fn(group size G as a type constant, first component) over 0 .. K-1: groups of kMax, then one
// of the remaining components.
template <int kMax, typename Fn>
inline __attribute__((always_inline)) void for_each_group(int K, Fn&& fn) {
  int k = 0;
  for (; K - k >= kMax; k += kMax) fn(std::integral_constant<int, kMax>{}, k);
  if constexpr (kMax > 2) {
    if (K - k == 2) fn(std::integral_constant<int, 2>{}, k);
  }
  if (K - k == 1) fn(std::integral_constant<int, 1>{}, k);
}

// The runs of components k0 .. k0 + G - 1 that the loops read. They sit in arrays, where
// __restrict cannot be stated: the group loops state with ivdep that nothing they read or write
// overlaps (the block's arrays and the outputs never do), so that GCC need not version them for
// aliasing (with the eleven arrays of pass 1 that took more run-time checks than its limit, and
// it left the loop scalar).
template <typename T, int G>
struct GroupRuns {
  const T* mu[G];
  const T* sigma[G];
  const T* w[G];
  GroupRuns(const Block<T>& b, int k0) {
    for (int i = 0; i < G; ++i) {
      mu[i] = b.mu_in[k0 + i];
      sigma[i] = b.sigma_in[k0 + i];
      w[i] = b.w_in[k0 + i];
    }
  }
};

// p += the group's terms in increasing k: term(r, i, j, v) for component k0 + i at element j,
// v its residual. The forward's terms are w_k mass_k; pass 1's also store the slopes.
template <int G, typename T, typename Term>
inline __attribute__((always_inline)) void accumulate_p(Block<T>& b, int k0, int64_t n,
                                                        Term&& term) {
  T* __restrict p = b.p;
  const T* __restrict c = b.c;
  const T* __restrict rate = b.rate;
  const GroupRuns<T, G> r(b, k0);
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    T acc = p[j];
#pragma GCC unroll 3
    for (int i = 0; i < G; ++i) {
      acc = acc + term(r, i, j, component_residual(c[j], rate[j], r.mu[i][j]));
    }
    p[j] = acc;
  }
}

// p = sum_k w_k mass_k, then P = max(p, b_p) into lik (the output's memory or scratch).
template <int kFamily, typename T>
LQ_CLONES void mass_block(Block<T>& b, int K, int64_t n, QuantParams<T> prm, T* __restrict lik) {
  T* __restrict p = b.p;
  for (int64_t j = 0; j < n; ++j) p[j] = T(0);
  for_each_group<kForwardGroup>(K, [&](auto grp, int k0) __attribute__((always_inline)) {
    accumulate_p<decltype(grp)::value>(
        b, k0, n, [&](const auto& r, int i, int64_t j, T v) __attribute__((always_inline)) {
          return r.w[i][j] * component_mass<kFamily>(v, r.sigma[i][j], prm);
        });
  });
  for (int64_t j = 0; j < n; ++j) lik[j] = canonical_nan(lower_bound(p[j], prm.likelihood_bound));
}

template <typename T>
struct Grads {
  alignas(64) T g_yhat[kBlock], g_lik[kBlock], g_p[kBlock], gy[kBlock];
  alignas(64) T mass[kMaxComponents][kBlock], dv[kMaxComponents][kBlock],
      ds[kMaxComponents][kBlock];
  alignas(64) T gy_s[kBlock], w_s[kMaxComponents][kBlock], mu_s[kMaxComponents][kBlock],
      sigma_s[kMaxComponents][kBlock];
  const T* g_yhat_in;  // the tensors' memory, or g_yhat and g_lik above
  const T* g_lik_in;
  // Where the gradients go: the outputs' memory (out_run), or the *_s arrays, scattered after.
  // Never the arrays pass 1 writes: the loops' pointers do not alias, so they vectorize.
  T* gy_out;
  T* w_out[kMaxComponents];
  T* mu_out[kMaxComponents];
  T* sigma_out[kMaxComponents];
};

// Both passes for a group of components at once, where g_p is known before p (every g_P
// negative, weights as probabilities): mass, slopes and gradients in one loop, no p and no
// scratch. The same bits as the two passes: g_p is g_P there too, and gy sums the components in
// the same order.
template <int kFamily, int G, typename T>
inline __attribute__((always_inline)) void one_pass_group(const Block<T>& b, Grads<T>& g, int k0,
                                                          int64_t n, const QuantParams<T>& prm) {
  const T* __restrict c = b.c;
  const T* __restrict rate = b.rate;
  const T* __restrict gp = g.g_lik_in;
  T* __restrict gy = g.gy;
  const GroupRuns<T, G> r(b, k0);
  T* w_out[G];
  T* mu_out[G];
  T* sigma_out[G];
  for (int i = 0; i < G; ++i) {
    w_out[i] = g.w_out[k0 + i];
    mu_out[i] = g.mu_out[k0 + i];
    sigma_out[i] = g.sigma_out[k0 + i];
  }
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    T acc = gy[j];
#pragma GCC unroll 3
    for (int i = 0; i < G; ++i) {
      const ComponentSlopes<T> d = component_mass_and_slopes<kFamily>(
          component_residual(c[j], rate[j], r.mu[i][j]), r.sigma[i][j], prm);
      acc = acc + (gp[j] * r.w[i][j]) * d.d_v;
      const ComponentGrads<T> o =
          component_grads(gp[j], r.w[i][j], d, T(0), r.sigma[i][j], false, prm);
      w_out[i][j] = o.weight;
      mu_out[i][j] = o.mu;
      sigma_out[i][j] = o.sigma;
    }
    gy[j] = acc;
  }
}

// Pass 2 for component k: its gradients from g_p into the *_out pointers, and its term of the
// gradient of y into gy. The arrays are parameters so that their __restrict holds (as locals
// loaded from the blocks' pointer members, GCC left this loop scalar).
template <typename T>
inline __attribute__((always_inline)) void component_grads_loop(
    int64_t n, const T* __restrict gp, const T* __restrict p, const T* __restrict w,
    const T* __restrict sigma, const T* __restrict mass, const T* __restrict dv,
    const T* __restrict ds, T* __restrict gy, T* __restrict w_out, T* __restrict mu_out,
    T* __restrict sigma_out, bool logits, const QuantParams<T>& prm) {
  for (int64_t j = 0; j < n; ++j) {
    const ComponentSlopes<T> d{mass[j], dv[j], ds[j]};
    gy[j] = gy[j] + (gp[j] * w[j]) * d.d_v;
    const ComponentGrads<T> o = component_grads(gp[j], w[j], d, p[j], sigma[j], logits, prm);
    w_out[j] = o.weight;
    mu_out[j] = o.mu;
    sigma_out[j] = o.sigma;
  }
}

// Pass 1: every component's mass and slopes, and p; pass 2: g_p and the gradients into the
// *_out pointers. With weights as probabilities and every g_P of the block negative, one pass
// (one_pass_group).
// bits_grad (rate=True): g_lik holds the bits' gradient of each element's sample, and g_p is
// formed from it and p.
template <int kFamily, typename T>
LQ_CLONES void grad_block(Block<T>& b, Grads<T>& g, int K, int64_t n, bool logits,
                          bool bits_grad, QuantParams<T> prm) {
  T* __restrict p = b.p;
  T* __restrict gp = g.g_p;
  T* __restrict gy = g.gy;
  const T* __restrict g_yhat = g.g_yhat_in;
  T* __restrict gy_out = g.gy_out;
  if (!logits && !bits_grad && all_negative(g.g_lik_in, n)) {
    for (int64_t j = 0; j < n; ++j) gy[j] = T(0);
    for_each_group<kBackwardGroup>(K, [&](auto grp, int k0) __attribute__((always_inline)) {
      one_pass_group<kFamily, decltype(grp)::value>(b, g, k0, n, prm);
    });
    for (int64_t j = 0; j < n; ++j) gy_out[j] = canonical_nan(g_yhat[j] + gy[j]);
    return;
  }
  for (int64_t j = 0; j < n; ++j) p[j] = T(0);
  // Pass 1: each component's mass and slopes into scratch, and its term of p. The mass and the
  // slopes in one body share the bin's arguments and exponentials (as two loops: 1.25x the time,
  // same bits).
  for_each_group<kBackwardGroup>(K, [&](auto grp, int k0) __attribute__((always_inline)) {
    accumulate_p<decltype(grp)::value>(
        b, k0, n, [&](const auto& r, int i, int64_t j, T v) __attribute__((always_inline)) {
          const ComponentSlopes<T> d = component_mass_and_slopes<kFamily>(v, r.sigma[i][j], prm);
          g.mass[k0 + i][j] = d.mass;
          g.dv[k0 + i][j] = d.d_v;
          g.ds[k0 + i][j] = d.d_s;
          return r.w[i][j] * d.mass;
        });
  });
  const T* __restrict g_lik = g.g_lik_in;
  if (bits_grad) {
    for (int64_t j = 0; j < n; ++j) gp[j] = rate_grad_p(g_lik[j], p[j], prm.likelihood_bound);
  } else {
    for (int64_t j = 0; j < n; ++j) gp[j] = pass_if_towards(g_lik[j], p[j] >= prm.likelihood_bound);
  }
  for (int64_t j = 0; j < n; ++j) gy[j] = T(0);
  for (int k = 0; k < K; ++k) {
    component_grads_loop(n, gp, p, b.w_in[k], b.sigma_in[k], g.mass[k], g.dv[k], g.ds[k], gy,
                         g.w_out[k], g.mu_out[k], g.sigma_out[k], logits, prm);
  }
  for (int64_t j = 0; j < n; ++j) gy_out[j] = canonical_nan(g_yhat[j] + gy[j]);
}

template <typename T>
void center(Block<T>& b, int K, int64_t n, int32_t mode, bool zero_center, T temperature,
            T* y_hat) {
  dispatch_mode(mode, [&](auto m) {
    center_block<decltype(m)::value>(b, K, n, zero_center, temperature, y_hat);
  });
}

// ---------------------------------------------------------------------------------------------
// One call.

// The CPU's view of a call: the shared preparation (op_args.h) and the seed and temperature,
// read on the host.
struct CpuMixtureCall : MixtureCall {
  bool logits = false, zero_center = false, rate = false;
  int64_t samples = 0, sample_size = 0;  // rate: y.shape[0] and the elements of one sample
  uint64_t seed = 0;
  double temperature = 0.0;
};

CpuMixtureCall prepare(const at::Tensor& y, const at::Tensor& scales, const at::Tensor& means,
                       const at::Tensor& weights, const at::Tensor& seed,
                       const at::Tensor& temperature, c10::string_view mode,
                       c10::string_view family, double scale_bound, double likelihood_bound,
                       bool zero_center, bool logits, bool rate) {
  TORCH_CHECK(y.device().is_cpu(), "lic_quant: the CPU kernels got y on ", y.device());
  CpuMixtureCall c;
  static_cast<MixtureCall&>(c) = prepare_mixture(y, scales, means, weights, seed, temperature,
                                                 mode, family, scale_bound, likelihood_bound,
                                                 rate);
  c.logits = logits;
  c.zero_center = zero_center;
  c.rate = rate;
  if (rate) {
    c.samples = y.size(0);
    c.sample_size = c.samples > 0 ? y.numel() / c.samples : 0;
  }
  c.seed = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  c.temperature = *temperature.const_data_ptr<double>();
  check_unit_interval("temperature", c.temperature);
  return c;
}

// Loads block [i0, i0 + n) of the call into b (compute type T, inputs of type S) and forms c,
// r~_R and y_hat (into y_hat: the output's memory, or b.aux); i0 is any index (rate=True's
// chunks start where a sample does).
template <typename S, typename T>
void load(const CpuMixtureCall& c, Block<T>& b, int64_t i0, int64_t n, const PhiloxKeys& keys,
          T* y_hat) {
  const S* y = c.y.const_data_ptr<S>() + i0;
  if constexpr (std::is_same_v<S, T>) {
    b.y_in = y;
  } else {
    for (int64_t j = 0; j < n; ++j) b.y[j] = static_cast<T>(y[j]);
    b.y_in = b.y;
  }
  if (mode_uses_noise(c.mode)) {
    alignas(64) float buf[kNoiseAtBuffer];
    const float* u = noise_at(buf, i0, n, keys);
    for (int64_t j = 0; j < n; ++j) b.u[j] = static_cast<T>(u[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) b.u[j] = T(0);
  }
  for (int k = 0; k < c.K; ++k) {
    b.mu_in[k] = read_run(c.means.const_data_ptr<S>(), c.lm, k, i0, n, b.mu[k]);
    b.sigma_in[k] = read_run(c.scales.const_data_ptr<S>(), c.ls, k, i0, n, b.sigma[k]);
    b.w_in[k] = read_run(c.weights.const_data_ptr<S>(), c.lw, k, i0, n, b.w[k]);
  }
  if (c.logits) softmax_block(b, c.K, n);
  center(b, c.K, n, c.mode, c.zero_center, static_cast<T>(c.temperature), y_hat);
}

// Block [i0, i0 + n) forward: y_hat written out, P into lik.
template <typename S, typename T>
void forward_block(const CpuMixtureCall& c, Block<T>& b, int64_t i0, int64_t n,
                   const PhiloxKeys& keys, const QuantParams<T>& prm, S* yh, T* lik) {
  if constexpr (std::is_same_v<S, T>) {
    load<S, T>(c, b, i0, n, keys, yh + i0);
  } else {
    load<S, T>(c, b, i0, n, keys, b.aux);
    for (int64_t j = 0; j < n; ++j) yh[i0 + j] = narrow<S>(b.aux[j]);
  }
  dispatch_family(c.family, [&](auto fam) {
    mass_block<decltype(fam)::value>(b, c.K, n, prm, lik);
  });
}

// lik: P (rate=False, y's shape) or the bits (rate=True, one per sample).
template <typename S, typename T>
void forward_impl(const CpuMixtureCall& c, at::Tensor& y_hat, at::Tensor& lik,
                  const QuantParams<T>& prm) {
  const int64_t numel = c.y.numel();
  const PhiloxKeys keys = philox_keys(c.seed);
  S* yh = y_hat.mutable_data_ptr<S>();
  T* pl = lik.mutable_data_ptr<T>();
  if (c.rate) {
    // One chunk of section 8 is kRateChunk / kBlock blocks; P stays in `chunk`.
    for_each_rate_chunk(c.samples, c.sample_size, kGrain / kRateChunk, pl,
                        [&](int64_t i0, int64_t n) {
      Block<T> b;
      alignas(64) T chunk[kRateChunk];
      for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
        forward_block<S, T>(c, b, i0 + j0, std::min(kBlock, n - j0), keys, prm, yh, chunk + j0);
      }
      return chunk_bits(chunk, n);
    });
    return;
  }
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, kGrain / kBlock, [&](int64_t b0, int64_t b1) {
    Block<T> b;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kBlock, n = std::min(kBlock, numel - i0);
      forward_block<S, T>(c, b, i0, n, keys, prm, yh, pl + i0);
    }
  });
}

struct GradOutputs {
  at::Tensor y, scales, means, weights;
  ComponentLayout ls{}, lm{}, lw{};
};

template <typename S, typename T>
void backward_impl(const CpuMixtureCall& c, const at::Tensor& g_yhat, const at::Tensor& g_lik,
                   GradOutputs& o, std::array<bool, 4> mask, const QuantParams<T>& prm) {
  const int64_t numel = c.y.numel();
  const PhiloxKeys keys = philox_keys(c.seed);
  const S* gyh = g_yhat.defined() ? g_yhat.const_data_ptr<S>() : nullptr;
  const T* gl = g_lik.const_data_ptr<T>();
  const ComponentLayout y_layout{0, 0, numel};  // y and its gradient: contiguous, one component
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, kGrain / kBlock, [&](int64_t b0, int64_t b1) {
    Block<T> b;
    Grads<T> g;
    if (!gyh) std::fill(g.g_yhat, g.g_yhat + kBlock, T(0));  // no y_hat gradient: zeros, once
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kBlock, n = std::min(kBlock, numel - i0);
      load<S, T>(c, b, i0, n, keys, b.aux);  // y_hat is not needed
      g.g_yhat_in = g.g_yhat;
      if constexpr (std::is_same_v<S, T>) {
        if (gyh) g.g_yhat_in = gyh + i0;
      } else if (gyh) {
        for (int64_t j = 0; j < n; ++j) g.g_yhat[j] = static_cast<T>(gyh[i0 + j]);
      }
      if (c.rate) {
        spread_sample_grads(gl, c.sample_size, i0, n, g.g_lik);
        g.g_lik_in = g.g_lik;
      } else {
        g.g_lik_in = gl + i0;
      }
      g.gy_out = mask[0] ? out_run<S, T>(o.y.mutable_data_ptr<S>(), y_layout, 0, i0, n, g.gy_s)
                         : g.gy_s;
      for (int k = 0; k < c.K; ++k) {
        g.sigma_out[k] = mask[1] ? out_run<S, T>(o.scales.mutable_data_ptr<S>(), o.ls, k, i0, n,
                                                 g.sigma_s[k])
                                 : g.sigma_s[k];
        g.mu_out[k] = mask[2] ? out_run<S, T>(o.means.mutable_data_ptr<S>(), o.lm, k, i0, n,
                                              g.mu_s[k])
                              : g.mu_s[k];
        g.w_out[k] = mask[3] ? out_run<S, T>(o.weights.mutable_data_ptr<S>(), o.lw, k, i0, n,
                                             g.w_s[k])
                             : g.w_s[k];
      }
      dispatch_family(c.family, [&](auto fam) {
        grad_block<decltype(fam)::value>(b, g, c.K, n, c.logits, c.rate, prm);
      });
      // The gradients the loops could not write in place.
      if (mask[0] && g.gy_out == g.gy_s) {
        scatter(g.gy_s, y_layout, 0, i0, n, o.y.mutable_data_ptr<S>());
      }
      for (int k = 0; k < c.K; ++k) {
        if (mask[1] && g.sigma_out[k] == g.sigma_s[k]) {
          scatter(g.sigma_s[k], o.ls, k, i0, n, o.scales.mutable_data_ptr<S>());
        }
        if (mask[2] && g.mu_out[k] == g.mu_s[k]) {
          scatter(g.mu_s[k], o.lm, k, i0, n, o.means.mutable_data_ptr<S>());
        }
        if (mask[3] && g.w_out[k] == g.w_s[k]) {
          scatter(g.w_s[k], o.lw, k, i0, n, o.weights.mutable_data_ptr<S>());
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mixture_forward_cpu(
    const at::Tensor& y, const at::Tensor& scales, const at::Tensor& means,
    const at::Tensor& weights, const at::Tensor& seed, const at::Tensor& temperature,
    c10::string_view mode, double scale_bound, double likelihood_bound, bool zero_center,
    c10::string_view family, bool weights_are_logits, bool rate) {
  const CpuMixtureCall c = prepare(y, scales, means, weights, seed, temperature, mode, family,
                                   scale_bound, likelihood_bound, zero_center, weights_are_logits,
                                   rate);
  at::Tensor y_hat = at::empty(c.y.sizes(), c.y.options());
  const auto lik_options = c.y.options().dtype(likelihood_dtype(y.scalar_type()));
  at::Tensor lik = rate ? at::empty({c.samples}, lik_options) : at::empty(c.y.sizes(), lik_options);
  if (c.y.numel() == 0) return {y_hat, rate ? lik.zero_() : lik};  // an empty sum is 0 bits
  dispatch_types(c.y.scalar_type(), [&](auto s, auto t) {
    using S = decltype(s);
    using T = decltype(t);
    forward_impl<S, T>(c, y_hat, lik,
                       make_params<T>(c.mode, c.temperature, scale_bound, likelihood_bound,
                                      zero_center));
  });
  return {y_hat, lik};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_backward_cpu(
    const c10::optional<at::Tensor>& grad_y_hat, const at::Tensor& grad_lik, const at::Tensor& y,
    const at::Tensor& scales, const at::Tensor& means, const at::Tensor& weights,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode,
    double scale_bound, double likelihood_bound, bool zero_center, c10::string_view family,
    bool weights_are_logits, std::array<bool, 4> output_mask, bool rate) {
  const CpuMixtureCall c = prepare(y, scales, means, weights, seed, temperature, mode, family,
                                   scale_bound, likelihood_bound, zero_center, weights_are_logits,
                                   rate);
  check_grad_likelihoods(grad_lik, y, rate);
  at::Tensor g_yhat;
  if (grad_y_hat.has_value() && grad_y_hat->defined()) {
    check_like(*grad_y_hat, y, "grad_y_hat");
    g_yhat = grad_y_hat->contiguous();
  }
  const at::Tensor g_lik = grad_lik.contiguous();
  GradOutputs o;
  o.y = output_mask[0] ? at::empty(c.y.sizes(), c.y.options()) : at::empty({0}, c.y.options());
  o.scales = grad_like(c.scales, output_mask[1], o.ls);
  o.means = grad_like(c.means, output_mask[2], o.lm);
  o.weights = grad_like(c.weights, output_mask[3], o.lw);
  if (c.y.numel() > 0 && (output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3])) {
    dispatch_types(c.y.scalar_type(), [&](auto s, auto t) {
      using S = decltype(s);
      using T = decltype(t);
      backward_impl<S, T>(c, g_yhat, g_lik, o, output_mask,
                          make_params<T>(c.mode, c.temperature, scale_bound, likelihood_bound,
                                         zero_center));
    });
  }
  return {o.y, o.scales, o.means, o.weights};
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CPU, m) {
  m.impl("mixture_quantize_forward", &lic_quant::mixture_forward_cpu);
  m.impl("mixture_quantize_backward", &lic_quant::mixture_backward_cpu);
}
