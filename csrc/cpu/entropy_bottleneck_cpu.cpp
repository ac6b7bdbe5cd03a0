// Fused CPU kernels of the factorized prior (docs/spec.md section 9): one pass forward
// (z, medians, the channel MLPs -> z_hat, P) and one pass backward (g_zhat, g_P, the same inputs
// -> the gradients of z and of every parameter), the noise recomputed from the seed.
//
// Work goes by channel: a task is one chunk of kChunk elements of one channel (channel-local index
// t = n * S + s for z viewed as (N, C, S)). A task runs in blocks of kBlock elements; each block
// holds both bin edges of its elements as 2 * kBlock lanes (v - 1/2 in lanes 0 .. kBlock-1,
// v + 1/2 above), so one pass over the MLP serves both logits, layer by layer, with the per-element
// math of csrc/lic_quant/eb_math.h in straight-line loops over the lanes that GCC vectorizes.
//
// Parameter gradients: every lane of a task has its own accumulator per parameter (a lane always
// adds the elements at its position of each block, blocks in order); at the end of the task the
// lanes are summed in lane order in float64 into the task's partial sums, and the partial sums of a
// channel are added in chunk order. The chunks and lanes are fixed sizes, so the bits do not depend
// on the thread count or on the ISA clone.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "../lic_quant/checks.h"
#include "../lic_quant/eb_math.h"
#include "cpu_kernels.h"

namespace lic_quant {
namespace {

constexpr int64_t kBlock = 32;             // elements per block
constexpr int64_t kLanes = 2 * kBlock;     // both bin edges
constexpr int64_t kChunk = 4096;           // elements of one channel per task
constexpr int kW = kEbWidth;

// ---------------------------------------------------------------------------------------------
// One call: z as (N, C, S), the channel constants, and the layout of the parameter gradients.

template <typename T>
struct Channel {
  T median;
  T W[kEbMaxLayers][kW * kW];  // softplus(M_i), row-major [out][in]
  T b[kEbMaxLayers][kW];
  T f[kEbMaxLayers][kW];       // tanh(F_i)
};

struct EbCall : EbTensors {
  int64_t N = 0, C = 0, S = 0;
  uint64_t seed = 0;
  double temperature = 0.0, likelihood_bound = 0.0;
  // Parameter slots of one channel: layer i's W at w_off[i] (out * in), b at b_off[i], F at
  // f_off[i]; n_slots in all.
  int w_off[kEbMaxLayers] = {}, b_off[kEbMaxLayers] = {}, f_off[kEbMaxLayers] = {};
  int n_slots = 0;

  int in_width(int i) const { return i == 0 ? 1 : kW; }
  int out_width(int i) const { return i == layers - 1 ? 1 : kW; }
};

EbCall prepare(const at::Tensor& z, const at::Tensor& medians, at::TensorList matrices,
               at::TensorList biases, at::TensorList factors, const at::Tensor& seed,
               const at::Tensor& temperature, c10::string_view mode, double likelihood_bound) {
  TORCH_CHECK(z.device().is_cpu(), "lic_quant: the CPU kernels got z on ", z.device());
  EbCall c;
  static_cast<EbTensors&>(c) = prepare_eb_tensors(z, medians, matrices, biases, factors, seed,
                                                  temperature, mode, likelihood_bound, "CPU");
  c.seed = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  c.temperature = *temperature.const_data_ptr<double>();
  check_unit_interval("temperature", c.temperature);
  c.likelihood_bound = likelihood_bound;
  c.N = z.size(0);
  c.C = z.size(1);
  c.S = c.N * c.C > 0 ? z.numel() / (c.N * c.C) : 0;
  int slot = 0;
  for (int i = 0; i < c.layers; ++i) {
    c.w_off[i] = slot;
    slot += c.out_width(i) * c.in_width(i);
    c.b_off[i] = slot;
    slot += c.out_width(i);
    c.f_off[i] = slot;
    if (i + 1 < c.layers) slot += c.out_width(i);
  }
  c.n_slots = slot;
  return c;
}

template <typename S, typename T>
Channel<T> load_channel(const EbCall& c, int64_t ch) {
  Channel<T> p{};
  p.median = static_cast<T>(c.medians.const_data_ptr<S>()[ch]);
  for (int i = 0; i < c.layers; ++i) {
    const int in = c.in_width(i), out = c.out_width(i);
    const S* m = c.matrices[i].const_data_ptr<S>() + ch * out * in;
    const S* b = c.biases[i].const_data_ptr<S>() + ch * out;
    // softplus and tanh of the raw parameters in float64, rounded once: the CUDA and Triton
    // kernels do the same (their float32 exp would round differently from libm's).
    for (int k = 0; k < out * in; ++k) {
      p.W[i][k] = static_cast<T>(eb_softplus(static_cast<double>(static_cast<T>(m[k]))));
    }
    for (int k = 0; k < out; ++k) p.b[i][k] = static_cast<T>(b[k]);
    if (i + 1 < c.layers) {
      const S* f = c.factors[i].const_data_ptr<S>() + ch * out;
      for (int k = 0; k < out; ++k) {
        p.f[i][k] = static_cast<T>(eb_factor(static_cast<double>(static_cast<T>(f[k]))));
      }
    }
  }
  return p;
}

// float -> float16 / bfloat16 with NaN written as 0x7FFF, the canonical NaN of every backend.
template <typename S, typename T>
S narrow(T x) {
  if constexpr (std::is_same_v<S, c10::Half> || std::is_same_v<S, c10::BFloat16>) {
    return x != x ? S(0x7FFF, S::from_bits()) : static_cast<S>(x);
  } else {
    return static_cast<S>(canonical_nan(x));
  }
}

// Calls fn(offset, j, len) for the runs of block [t0, t0 + n) of channel ch: element j of the
// block is global (row-major) index offset + (j - j_run).
template <typename Fn>
void for_each_run(const EbCall& c, int64_t ch, int64_t t0, int64_t n, Fn&& fn) {
  int64_t t = t0, j = 0;
  while (j < n) {
    const int64_t s = t % c.S, len = std::min(n - j, c.S - s);
    fn(((t / c.S) * c.C + ch) * c.S + s, j, len);
    j += len;
    t += len;
  }
}

// u of the block's elements: each run's Philox blocks from the multiple of 4 below its start.
void block_noise(const EbCall& c, int64_t ch, int64_t t0, int64_t n, const PhiloxKeys& keys,
                 float* u) {
  for_each_run(c, ch, t0, n, [&](int64_t g0, int64_t j, int64_t len) {
    alignas(64) float tmp[kBlock + 8];
    const int64_t a0 = g0 & ~int64_t(3), lead = g0 - a0;
    fill_noise_block(tmp, lead + len, keys, static_cast<uint64_t>(a0));
    for (int64_t k = 0; k < len; ++k) u[j + k] = tmp[lead + k];
  });
}

// ---------------------------------------------------------------------------------------------
// The lane loops. Arrays are [unit][kLanes].

template <typename T>
struct Lanes {
  alignas(64) T x[kLanes];  // the MLP's input: v - 1/2, then v + 1/2
  alignas(64) T h[kEbMaxLayers + 1][kW][kLanes];  // h[i]: input of layer i (i >= 1); h[L]: logits
  alignas(64) T t[kEbMaxLayers][kW][kLanes];      // tanh(pre) of layer i
  alignas(64) T g[2][kW][kLanes];                 // gradients, ping-pong
};

// The absent tanh and factor arrays of the last layer.
template <typename T>
T* const kNone = nullptr;

template <int kIn, int kOut, bool kTanh, typename T>
LQ_CLONES void layer_forward_lanes(const T* __restrict in, T* __restrict out, T* __restrict tanh_,
                                   const T* W, const T* b, const T* f) {
  T w[kOut * kIn], bb[kOut], ff[kOut];
  LQ_UNROLL
  for (int k = 0; k < kOut * kIn; ++k) w[k] = W[k];
  LQ_UNROLL
  for (int k = 0; k < kOut; ++k) {
    bb[k] = b[k];
    ff[k] = kTanh ? f[k] : T(0);
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    T h[kIn], o[kOut], t[kOut];
    LQ_UNROLL
    for (int q = 0; q < kIn; ++q) h[q] = in[q * kLanes + j];
    eb_layer_forward<kIn, kOut, kTanh>(w, bb, ff, h, o, t);
    LQ_UNROLL
    for (int k = 0; k < kOut; ++k) {
      out[k * kLanes + j] = o[k];
      if (kTanh) tanh_[k * kLanes + j] = t[k];
    }
  }
}

template <typename T>
void mlp_forward(const EbCall& c, const Channel<T>& p, Lanes<T>& L) {
  const int n = c.layers;
  if (n == 1) {
    layer_forward_lanes<1, 1, false>(L.x, L.h[1][0], kNone<T>, p.W[0], p.b[0], p.f[0]);
    return;
  }
  layer_forward_lanes<1, kW, true>(L.x, L.h[1][0], L.t[0][0], p.W[0], p.b[0], p.f[0]);
  for (int i = 1; i + 1 < n; ++i) {
    layer_forward_lanes<kW, kW, true>(L.h[i][0], L.h[i + 1][0], L.t[i][0], p.W[i], p.b[i], p.f[i]);
  }
  layer_forward_lanes<kW, 1, false>(L.h[n - 1][0], L.h[n][0], kNone<T>, p.W[n - 1], p.b[n - 1],
                                    p.f[n - 1]);
}

// Layer i's backward over the lanes: g (its output's gradient) -> gin, and the lanes' parameter
// terms added to acc (W at acc + w_off, ...).
template <int kIn, int kOut, bool kTanh, typename T>
LQ_CLONES void layer_backward_lanes(const T* __restrict in, const T* __restrict tanh_,
                                    const T* __restrict g, T* __restrict gin, const T* W,
                                    const T* f, T* __restrict acc_w, T* __restrict acc_b,
                                    T* __restrict acc_f) {
  T w[kOut * kIn], ff[kOut];
  LQ_UNROLL
  for (int k = 0; k < kOut * kIn; ++k) w[k] = W[k];
  LQ_UNROLL
  for (int k = 0; k < kOut; ++k) ff[k] = kTanh ? f[k] : T(0);
  for (int64_t j = 0; j < kLanes; ++j) {
    T h[kIn], t[kOut], go[kOut], gi[kIn], gw[kOut * kIn], gb[kOut], gf[kOut];
    LQ_UNROLL
    for (int q = 0; q < kIn; ++q) h[q] = in[q * kLanes + j];
    LQ_UNROLL
    for (int k = 0; k < kOut; ++k) {
      t[k] = kTanh ? tanh_[k * kLanes + j] : T(0);
      go[k] = g[k * kLanes + j];
    }
    eb_layer_backward<kIn, kOut, kTanh>(w, ff, h, t, go, gi, gw, gb, gf);
    LQ_UNROLL
    for (int q = 0; q < kIn; ++q) gin[q * kLanes + j] = gi[q];
    LQ_UNROLL
    for (int k = 0; k < kOut * kIn; ++k) acc_w[k * kLanes + j] += gw[k];
    LQ_UNROLL
    for (int k = 0; k < kOut; ++k) {
      acc_b[k * kLanes + j] += gb[k];
      if (kTanh) acc_f[k * kLanes + j] += gf[k];
    }
  }
}

// From the logits' gradients in L.g[0][0] back to the input's in L.g[?][0]; returns that array.
template <typename T>
const T* mlp_backward(const EbCall& c, const Channel<T>& p, Lanes<T>& L, T* acc) {
  const int n = c.layers;
  auto A = [&](int off) { return acc + static_cast<int64_t>(off) * kLanes; };
  if (n == 1) {
    layer_backward_lanes<1, 1, false>(L.x, kNone<T>, L.g[0][0], L.g[1][0], p.W[0], p.f[0],
                                      A(c.w_off[0]), A(c.b_off[0]), kNone<T>);
    return L.g[1][0];
  }
  int cur = 0;
  layer_backward_lanes<kW, 1, false>(L.h[n - 1][0], kNone<T>, L.g[cur][0], L.g[1 - cur][0],
                                     p.W[n - 1], p.f[n - 1], A(c.w_off[n - 1]),
                                     A(c.b_off[n - 1]), kNone<T>);
  cur = 1 - cur;
  for (int i = n - 2; i >= 1; --i) {
    layer_backward_lanes<kW, kW, true>(L.h[i][0], L.t[i][0], L.g[cur][0], L.g[1 - cur][0], p.W[i],
                                       p.f[i], A(c.w_off[i]), A(c.b_off[i]), A(c.f_off[i]));
    cur = 1 - cur;
  }
  layer_backward_lanes<1, kW, true>(L.x, L.t[0][0], L.g[cur][0], L.g[1 - cur][0], p.W[0], p.f[0],
                                    A(c.w_off[0]), A(c.b_off[0]), A(c.f_off[0]));
  return L.g[1 - cur][0];
}

// The surrogates of the block: x <- the MLP inputs (padding lanes 0), yh <- z_hat.
template <int32_t kMode, typename T>
LQ_CLONES void edges_block_mode(const T* __restrict zb, const T* __restrict u, T* __restrict x,
                                T* __restrict yh, int64_t n, T median, T temperature) {
  for (int64_t j = 0; j < kBlock; ++j) {
    const Surrogate<T> q = surrogate<T>(kMode, zb[j] - median, u[j], temperature);
    const T v = median + q.rate;
    const bool live = j < n;
    x[j] = live ? v - T(0.5) : T(0);
    x[kBlock + j] = live ? v + T(0.5) : T(0);
    yh[j] = median + q.distortion;
  }
}
template <typename T>
void edges_block(const T* zb, const T* u, T* x, T* yh, int64_t n, int32_t mode, T median,
                 T temperature) {
  dispatch_mode(mode, [&](auto m) {
    edges_block_mode<decltype(m)::value>(zb, u, x, yh, n, median, temperature);
  });
}

// p from the logits (lower in lanes 0 .. kBlock-1, upper above).
template <typename T>
LQ_CLONES void mass_block(const T* __restrict logits, T* __restrict p) {
  for (int64_t j = 0; j < kBlock; ++j) {
    const T lo = logits[j], up = logits[kBlock + j];
    p[j] = eb_mass(up, lo, eb_exp_neg_abs(up), eb_exp_neg_abs(lo));
  }
}

// The logits' gradients from g_P (through the likelihood bound); padding lanes get 0.
template <typename T>
LQ_CLONES void logit_grads_block(const T* __restrict logits, const T* __restrict g_lik,
                                 T* __restrict g, int64_t n, T bound) {
  for (int64_t j = 0; j < kBlock; ++j) {
    const T lo = logits[j], up = logits[kBlock + j];
    const T e_up = eb_exp_neg_abs(up), e_lo = eb_exp_neg_abs(lo);
    const T p = eb_mass(up, lo, e_up, e_lo);
    const T g_p = j < n ? pass_if_towards(g_lik[j], p >= bound) : T(0);
    g[j] = -g_p * eb_sigmoid_slope(e_lo);
    g[kBlock + j] = g_p * eb_sigmoid_slope(e_up);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward and backward over the tasks.

template <typename S, typename T>
void load_block(const EbCall& c, int64_t ch, int64_t t0, int64_t n, const PhiloxKeys& keys,
                T* zb, T* ub) {
  const S* z = c.z.const_data_ptr<S>();
  for_each_run(c, ch, t0, n, [&](int64_t g0, int64_t j, int64_t len) {
    for (int64_t k = 0; k < len; ++k) zb[j + k] = static_cast<T>(z[g0 + k]);
  });
  for (int64_t j = n; j < kBlock; ++j) zb[j] = T(0);
  if (mode_uses_noise(c.mode)) {
    alignas(64) float u[kBlock];
    block_noise(c, ch, t0, n, keys, u);
    for (int64_t j = 0; j < n; ++j) ub[j] = static_cast<T>(u[j]);
  }
  for (int64_t j = mode_uses_noise(c.mode) ? n : 0; j < kBlock; ++j) ub[j] = T(0);
}

int64_t chunks_per_channel(const EbCall& c) { return (c.N * c.S + kChunk - 1) / kChunk; }

template <typename S, typename T>
void forward_impl(const EbCall& c, at::Tensor& z_hat, at::Tensor& lik) {
  const PhiloxKeys keys = philox_keys(c.seed);
  const int64_t per_channel = c.N * c.S, chunks = chunks_per_channel(c);
  S* yh_out = z_hat.mutable_data_ptr<S>();
  T* p_out = lik.mutable_data_ptr<T>();
  const T bound = static_cast<T>(c.likelihood_bound), temp = static_cast<T>(c.temperature);
  at::parallel_for(0, c.C * chunks, 1, [&](int64_t task0, int64_t task1) {
    auto L = std::make_unique<Lanes<T>>();
    alignas(64) T zb[kBlock], ub[kBlock], yh[kBlock], p[kBlock];
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t ch = task / chunks, t_begin = (task % chunks) * kChunk;
      const int64_t t_end = std::min(per_channel, t_begin + kChunk);
      const Channel<T> prm = load_channel<S, T>(c, ch);
      for (int64_t t0 = t_begin; t0 < t_end; t0 += kBlock) {
        const int64_t n = std::min(kBlock, t_end - t0);
        load_block<S, T>(c, ch, t0, n, keys, zb, ub);
        edges_block(zb, ub, L->x, yh, n, c.mode, prm.median, temp);
        mlp_forward(c, prm, *L);
        mass_block(L->h[c.layers][0], p);
        for_each_run(c, ch, t0, n, [&](int64_t g0, int64_t j, int64_t len) {
          for (int64_t k = 0; k < len; ++k) {
            yh_out[g0 + k] = narrow<S>(yh[j + k]);
            p_out[g0 + k] = canonical_nan(lower_bound(p[j + k], bound));
          }
        });
      }
    }
  });
}

struct EbGrads {
  at::Tensor z;
  std::vector<at::Tensor> matrices, biases, factors;
};

template <typename S, typename T>
void backward_impl(const EbCall& c, const at::Tensor& g_zhat, const at::Tensor& g_lik,
                   EbGrads& o, std::array<bool, 4> mask) {
  const PhiloxKeys keys = philox_keys(c.seed);
  const int64_t per_channel = c.N * c.S, chunks = chunks_per_channel(c);
  const bool params = mask[1] || mask[2] || mask[3];
  const S* gzh = g_zhat.defined() ? g_zhat.const_data_ptr<S>() : nullptr;
  const T* gl = g_lik.const_data_ptr<T>();
  S* gz_out = mask[0] ? o.z.mutable_data_ptr<S>() : nullptr;
  const T bound = static_cast<T>(c.likelihood_bound), temp = static_cast<T>(c.temperature);
  // Partial sums of the parameter terms: [task][slot], in float64.
  std::vector<double> partial(params ? static_cast<size_t>(c.C * chunks * c.n_slots) : 0);
  at::parallel_for(0, c.C * chunks, 1, [&](int64_t task0, int64_t task1) {
    auto L = std::make_unique<Lanes<T>>();
    std::vector<T> acc_store(static_cast<size_t>(c.n_slots * kLanes) + 16);
    // 64-byte aligned accumulators
    T* acc = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(acc_store.data()) + 63) &
                                  ~uintptr_t(63));
    alignas(64) T zb[kBlock], ub[kBlock], yh[kBlock], glb[kBlock];
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t ch = task / chunks, t_begin = (task % chunks) * kChunk;
      const int64_t t_end = std::min(per_channel, t_begin + kChunk);
      const Channel<T> prm = load_channel<S, T>(c, ch);
      std::fill(acc, acc + c.n_slots * kLanes, T(0));
      for (int64_t t0 = t_begin; t0 < t_end; t0 += kBlock) {
        const int64_t n = std::min(kBlock, t_end - t0);
        load_block<S, T>(c, ch, t0, n, keys, zb, ub);
        for_each_run(c, ch, t0, n, [&](int64_t g0, int64_t j, int64_t len) {
          for (int64_t k = 0; k < len; ++k) glb[j + k] = gl[g0 + k];
        });
        for (int64_t j = n; j < kBlock; ++j) glb[j] = T(0);
        edges_block(zb, ub, L->x, yh, n, c.mode, prm.median, temp);
        mlp_forward(c, prm, *L);
        logit_grads_block(L->h[c.layers][0], glb, L->g[0][0], n, bound);
        const T* gx = mlp_backward(c, prm, *L, acc);
        if (gz_out != nullptr) {
          for_each_run(c, ch, t0, n, [&](int64_t g0, int64_t j, int64_t len) {
            for (int64_t k = 0; k < len; ++k) {
              const T g_up = gzh ? static_cast<T>(gzh[g0 + k]) : T(0);
              gz_out[g0 + k] = narrow<S>(g_up + (gx[j + k] + gx[kBlock + j + k]));
            }
          });
        }
      }
      if (params) {
        double* dst = partial.data() + task * c.n_slots;
        for (int s = 0; s < c.n_slots; ++s) {
          double sum = 0.0;
          for (int64_t j = 0; j < kLanes; ++j) sum += static_cast<double>(acc[s * kLanes + j]);
          dst[s] = sum;
        }
      }
    }
  });
  if (!params) return;
  // Per channel: the chunks in order, then the chain rule back to the raw parameters.
  at::parallel_for(0, c.C, 16, [&](int64_t c0, int64_t c1) {
    std::vector<double> sum(static_cast<size_t>(c.n_slots));
    for (int64_t ch = c0; ch < c1; ++ch) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t k = 0; k < chunks; ++k) {
        const double* src = partial.data() + (ch * chunks + k) * c.n_slots;
        for (int s = 0; s < c.n_slots; ++s) sum[s] += src[s];
      }
      for (int i = 0; i < c.layers; ++i) {
        const int in = c.in_width(i), out = c.out_width(i);
        if (mask[1]) {
          const S* raw = c.matrices[i].const_data_ptr<S>() + ch * out * in;
          S* dst = o.matrices[i].mutable_data_ptr<S>() + ch * out * in;
          for (int k = 0; k < out * in; ++k) {
            dst[k] = narrow<S>(sum[c.w_off[i] + k] *
                               eb_softplus_slope(static_cast<double>(raw[k])));
          }
        }
        if (mask[2]) {
          S* dst = o.biases[i].mutable_data_ptr<S>() + ch * out;
          for (int k = 0; k < out; ++k) dst[k] = narrow<S>(sum[c.b_off[i] + k]);
        }
        if (mask[3] && i + 1 < c.layers) {
          const S* raw = c.factors[i].const_data_ptr<S>() + ch * out;
          S* dst = o.factors[i].mutable_data_ptr<S>() + ch * out;
          for (int k = 0; k < out; ++k) {
            dst[k] = narrow<S>(sum[c.f_off[i] + k] * eb_factor_slope(static_cast<double>(raw[k])));
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> eb_forward_cpu(const at::Tensor& z, const at::Tensor& medians,
                                                  at::TensorList matrices, at::TensorList biases,
                                                  at::TensorList factors, const at::Tensor& seed,
                                                  const at::Tensor& temperature,
                                                  c10::string_view mode, double likelihood_bound) {
  const EbCall c = prepare(z, medians, matrices, biases, factors, seed, temperature, mode,
                           likelihood_bound);
  at::Tensor z_hat = at::empty(c.z.sizes(), c.z.options());
  at::Tensor lik = at::empty(c.z.sizes(), c.z.options().dtype(likelihood_dtype(z.scalar_type())));
  if (c.z.numel() == 0) return {z_hat, lik};
  dispatch_types(c.z.scalar_type(), [&](auto s, auto t) {
    forward_impl<decltype(s), decltype(t)>(c, z_hat, lik);
  });
  return {z_hat, lik};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
eb_backward_cpu(const std::optional<at::Tensor>& grad_z_hat, const at::Tensor& grad_lik,
                const at::Tensor& z, const at::Tensor& medians, at::TensorList matrices,
                at::TensorList biases, at::TensorList factors, const at::Tensor& seed,
                const at::Tensor& temperature, c10::string_view mode, double likelihood_bound,
                std::array<bool, 4> output_mask) {
  const EbCall c = prepare(z, medians, matrices, biases, factors, seed, temperature, mode,
                           likelihood_bound);
  const auto upstream = check_eb_grads(grad_z_hat, grad_lik, z);
  const at::Tensor& g_zhat = upstream.first;
  const at::Tensor& g_l = upstream.second;
  EbGrads o;
  o.z = at::empty(output_mask[0] ? c.z.sizes() : at::IntArrayRef{0}, c.z.options());
  o.matrices = eb_parameter_grads(c.matrices, output_mask[1]);
  o.biases = eb_parameter_grads(c.biases, output_mask[2]);
  o.factors = eb_parameter_grads(c.factors, output_mask[3]);
  if (c.z.numel() == 0) {
    for (auto* list : {&o.matrices, &o.biases, &o.factors}) {
      for (auto& g : *list) g.zero_();
    }
  } else if (output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3]) {
    dispatch_types(c.z.scalar_type(), [&](auto s, auto t) {
      backward_impl<decltype(s), decltype(t)>(c, g_zhat, g_l, o, output_mask);
    });
  }
  return {o.z, o.matrices, o.biases, o.factors};
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CPU, m) {
  m.impl("entropy_bottleneck_forward", &lic_quant::eb_forward_cpu);
  m.impl("entropy_bottleneck_backward", &lic_quant::eb_backward_cpu);
}
