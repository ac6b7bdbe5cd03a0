// Fused CUDA kernels of the factorized prior (docs/spec.md section 9), the GPU side of
// csrc/cpu/entropy_bottleneck_cpu.cpp with the per-element math of csrc/lic_quant/eb_math.h.
//
// Four kernels, every one templated on the layer count L (1 .. kEbMaxLayers, hidden width 3), so
// the MLP's activations and the parameter accumulators are registers indexed by constants:
// - constants: per channel, softplus(M_i), b_i and tanh(F_i) into a [C][slots] buffer, evaluated
//   in float64 (libm on the host, CUDA's on the device) and rounded once to the compute type;
// - forward: one element per thread step (grid-stride), both bin edges in the same thread;
// - backward: one block of 64 threads per task, a task being the CPU kernel's: kChunk elements of
//   one channel in blocks of kBlock. The 64 threads are the CPU kernel's 64 lanes (element j of
//   every block, lower edge in lane j, upper edge in lane 32 + j), each with one accumulator per
//   parameter slot in the compute type, adding its elements block after block. The two edges of
//   an element sit in the same warp (lanes l and l ^ 16), which exchange logits and input
//   gradients with a shuffle. Each thread writes its accumulators to partial[task][slot][lane];
// - reduce: per (channel, slot), the 64 lanes of each task summed in float64 in lane order and the
//   tasks of the channel in chunk order, times the slope of softplus or tanh at the raw parameter.
// That is the CPU kernel's order of every addition: with the device code built with --fmad=false
// and explicit fmas (kernel_math.md) the float32 results are the CPU kernel's bits, parameter
// gradients included; float64 agrees to ulps (CUDA's exp and tanh are not glibc's). No atomics: two
// runs give the same bits.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "../lic_quant/checks.h"
#include "../lic_quant/eb_math.h"
#include "cuda_kernels.h"

namespace lic_quant {
namespace {

// The CPU kernel's task geometry: the parameter gradients' order of additions depends on it.
constexpr int64_t kEbChunk = 4096;
constexpr int kEbBlock = 32;
constexpr int kEbLanes = 2 * kEbBlock;
constexpr int kW = kEbWidth;

// The parameter slots of one channel for L layers, as the CPU kernel numbers them: layer i's
// softplus(M_i) (out x in, row-major), then b_i (out), then tanh(F_i) (out, hidden layers only).
template <int L>
struct Layout {
  static constexpr int in(int i) { return i == 0 ? 1 : kW; }
  static constexpr int out(int i) { return i == L - 1 ? 1 : kW; }
  static constexpr int size(int i) { return out(i) * in(i) + out(i) + (i + 1 < L ? out(i) : 0); }
  static constexpr int w_off(int i) {
    int s = 0;
    for (int j = 0; j < i; ++j) s += size(j);
    return s;
  }
  static constexpr int b_off(int i) { return w_off(i) + out(i) * in(i); }
  static constexpr int f_off(int i) { return b_off(i) + out(i); }
  static constexpr int kSlots = w_off(L);
};

// The raw parameters (contiguous), and where their gradients go (null: not asked for).
template <typename S>
struct Params {
  const S* m[kEbMaxLayers];
  const S* b[kEbMaxLayers];
  const S* f[kEbMaxLayers];
};
template <typename S>
struct ParamGrads {
  S* m[kEbMaxLayers];
  S* b[kEbMaxLayers];
  S* f[kEbMaxLayers];
};

struct Shape {
  int64_t C, S, per_channel, chunks;
  double inv_C, inv_S;  // 1 / C, 1 / S, for index splits without a 64-bit division
  int32_t mode;
  double likelihood_bound;
};

// ---------------------------------------------------------------------------------------------
// Per channel constants.

// T(f(double(x))): the CPU kernel's softplus and tanh of a parameter are libm's in float64
// rounded once, so the device evaluates them in float64 too (CUDA's float exp would round
// differently).
template <typename T>
__device__ __forceinline__ T softplus_of(double x) {
  return static_cast<T>(eb_softplus(x));
}
template <typename T>
__device__ __forceinline__ T factor_of(double x) {
  return static_cast<T>(eb_factor(x));
}

template <int L, typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    eb_constants_kernel(Params<S> prm, int64_t C, T* __restrict__ cst) {
  using Lay = Layout<L>;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= C) return;
  T* dst = cst + ch * Lay::kSlots;
#pragma unroll
  for (int i = 0; i < L; ++i) {
    const int in = Lay::in(i), out = Lay::out(i);
    for (int k = 0; k < out * in; ++k) {
      dst[Lay::w_off(i) + k] = softplus_of<T>(static_cast<double>(prm.m[i][ch * out * in + k]));
    }
    for (int k = 0; k < out; ++k) {
      dst[Lay::b_off(i) + k] = static_cast<T>(prm.b[i][ch * out + k]);
      if (i + 1 < L) {
        dst[Lay::f_off(i) + k] = factor_of<T>(static_cast<double>(prm.f[i][ch * out + k]));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The MLP of one bin edge, layer by layer at compile time. Mlp::h[i] is the input of layer i
// (h[0][0] = x), t[i] its tanh(pre).

template <int L, typename T>
struct Mlp {
  T h[L][kW];
  T t[L][kW];
  T logit;
};

template <int I, int L, typename T>
__device__ __forceinline__ void mlp_forward(const T* __restrict__ cst, Mlp<L, T>& m) {
  if constexpr (I < L) {
    using Lay = Layout<L>;
    constexpr int in = Lay::in(I), out = Lay::out(I);
    constexpr bool hidden = I + 1 < L;
    T W[out * in], b[out], f[out], h[in], o[out], t[out];
#pragma unroll
    for (int k = 0; k < out * in; ++k) W[k] = cst[Lay::w_off(I) + k];
#pragma unroll
    for (int k = 0; k < out; ++k) {
      b[k] = cst[Lay::b_off(I) + k];
      f[k] = hidden ? cst[Lay::f_off(I) + k] : T(0);
    }
#pragma unroll
    for (int q = 0; q < in; ++q) h[q] = m.h[I][q];
    eb_layer_forward<in, out, hidden>(W, b, f, h, o, t);
    if constexpr (hidden) {
#pragma unroll
      for (int k = 0; k < out; ++k) {
        m.h[I + 1][k] = o[k];
        m.t[I][k] = t[k];
      }
    } else {
      m.logit = o[0];
    }
    mlp_forward<I + 1, L>(cst, m);
  }
}

// From the logit's gradient g back to the input's; the parameter terms added to acc (slots).
template <int I, int L, typename T>
__device__ __forceinline__ T mlp_backward(const T* __restrict__ cst, const Mlp<L, T>& m,
                                          const T (&g)[Layout<L>::out(I)],
                                          T (&acc)[Layout<L>::kSlots]) {
  using Lay = Layout<L>;
  constexpr int in = Lay::in(I), out = Lay::out(I);
  constexpr bool hidden = I + 1 < L;
  T W[out * in], f[out], h[in], t[out], gin[in], gw[out * in], gb[out], gf[out];
#pragma unroll
  for (int k = 0; k < out * in; ++k) W[k] = cst[Lay::w_off(I) + k];
#pragma unroll
  for (int k = 0; k < out; ++k) {
    f[k] = hidden ? cst[Lay::f_off(I) + k] : T(0);
    t[k] = hidden ? m.t[I][k] : T(0);
  }
#pragma unroll
  for (int q = 0; q < in; ++q) h[q] = m.h[I][q];
  eb_layer_backward<in, out, hidden>(W, f, h, t, g, gin, gw, gb, gf);
#pragma unroll
  for (int k = 0; k < out * in; ++k) acc[Lay::w_off(I) + k] += gw[k];
#pragma unroll
  for (int k = 0; k < out; ++k) {
    acc[Lay::b_off(I) + k] += gb[k];
    if constexpr (hidden) acc[Lay::f_off(I) + k] += gf[k];
  }
  if constexpr (I == 0) {
    return gin[0];
  } else {
    return mlp_backward<I - 1, L>(cst, m, gin, acc);
  }
}

template <typename T>
__device__ __forceinline__ T load_as(const T* p) {
  return *p;
}
template <typename S>
__device__ __forceinline__ float load_as_float(const S* p) {
  return static_cast<float>(*p);
}

// float -> storage; float16/bfloat16 conversions write NaN as 0x7FFF (cuda_kernels.h to_storage),
// float64's NaN is made canonical explicitly (CUDA's libm NaNs need not be).
template <typename S, typename T>
__device__ __forceinline__ S narrow(T x) {
  return to_storage<S>(canonical_nan(x));
}

// a / d for 0 <= a < 2^53 and d >= 1, given inv_d = 1 / d: a float64 estimate corrected with
// integer steps. A 64-bit integer division is a call on the GPU, and the registers saved around
// it gave some backward instantiations a stack frame.
__device__ __forceinline__ int64_t quotient(int64_t a, int64_t d, double inv_d) {
  int64_t q = static_cast<int64_t>(static_cast<double>(a) * inv_d);
  int64_t r = a - q * d;
  while (r < 0) {
    --q;
    r += d;
  }
  while (r >= d) {
    ++q;
    r -= d;
  }
  return q;
}

// The channel of row-major index i: 32-bit division where the index fits.
__device__ __forceinline__ int64_t channel_of(int64_t i, const Shape& sh, bool small) {
  if (small) {
    return static_cast<uint32_t>(i) / static_cast<uint32_t>(sh.S) % static_cast<uint32_t>(sh.C);
  }
  const int64_t n = quotient(i, sh.S, sh.inv_S);
  return n - quotient(n, sh.C, sh.inv_C) * sh.C;
}

// ---------------------------------------------------------------------------------------------
// Forward: one element per thread step; both bin edges through the MLP of its channel.

template <int L, typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    eb_forward_kernel(const S* __restrict__ z, const S* __restrict__ medians,
                      const T* __restrict__ cst, S* __restrict__ z_hat, T* __restrict__ lik,
                      int64_t numel, Shape sh, const int64_t* __restrict__ seed_ptr,
                      const double* __restrict__ temperature) {
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const T temp = static_cast<T>(*temperature);
  const T bound = static_cast<T>(sh.likelihood_bound);
  const bool noisy = mode_uses_noise(sh.mode);
  const bool small = numel <= INT32_MAX;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const int64_t ch = channel_of(i, sh, small);
    const T* c = cst + ch * Layout<L>::kSlots;
    const T median = static_cast<T>(medians[ch]);
    const T u = noisy ? static_cast<T>(philox_uniform(keys, static_cast<uint64_t>(i))) : T(0);
    const Surrogate<T> q = surrogate<T>(sh.mode, static_cast<T>(z[i]) - median, u, temp);
    const T v = median + q.rate;
    Mlp<L, T> lo, up;
    lo.h[0][0] = v - T(0.5);
    up.h[0][0] = v + T(0.5);
    mlp_forward<0, L>(c, lo);
    mlp_forward<0, L>(c, up);
    const T p = eb_mass(up.logit, lo.logit, eb_exp_neg_abs(up.logit), eb_exp_neg_abs(lo.logit));
    z_hat[i] = narrow<S>(median + q.distortion);
    lik[i] = canonical_nan(lower_bound(p, bound));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: one task (kEbChunk elements of one channel) per block of kEbLanes threads. Thread
// (warp w, lane l) is CPU lane (l >> 4) * 32 + 16 w + (l & 15): element 16 w + (l & 15) of each
// block, the upper edge where l >= 16.

template <int L, typename S, typename T>
__global__ void __launch_bounds__(kEbLanes)
    eb_backward_kernel(const S* __restrict__ g_zhat, const T* __restrict__ g_lik,
                       const S* __restrict__ z, const S* __restrict__ medians,
                       const T* __restrict__ cst, S* __restrict__ g_z, T* __restrict__ partial,
                       Shape sh, const int64_t* __restrict__ seed_ptr,
                       const double* __restrict__ temperature) {
  using Lay = Layout<L>;
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const T temp = static_cast<T>(*temperature);
  const T bound = static_cast<T>(sh.likelihood_bound);
  const bool noisy = mode_uses_noise(sh.mode);
  const int64_t task = blockIdx.x;
  const int64_t ch = static_cast<uint32_t>(task) / static_cast<uint32_t>(sh.chunks);
  const int64_t t_begin = (task - ch * sh.chunks) * kEbChunk;
  const int64_t t_end = std::min(sh.per_channel, t_begin + kEbChunk);
  const int lane = threadIdx.x & 31;
  const int elem = (threadIdx.x >> 5) * 16 + (lane & 15);
  const bool upper = (lane & 16) != 0;
  const T* c = cst + ch * Lay::kSlots;
  const T median = static_cast<T>(medians[ch]);

  T acc[Lay::kSlots];
#pragma unroll
  for (int s = 0; s < Lay::kSlots; ++s) acc[s] = T(0);

  // The element's sample and position, (t / S, t % S) for t = t0 + elem, stepped with the
  // blocks (one division per task).
  int64_t t_n = quotient(t_begin + elem, sh.S, sh.inv_S);
  int64_t t_s = t_begin + elem - t_n * sh.S;
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kEbBlock) {
    const bool live = elem < t_end - t0;
    // Padding elements run as in the CPU kernel: z = u = 0, MLP input 0, g_P = 0.
    T zc = T(0), u = T(0), gl = T(0);
    int64_t gi = 0;
    if (live) {
      gi = (t_n * sh.C + ch) * sh.S + t_s;
      zc = static_cast<T>(z[gi]);
      if (noisy) u = static_cast<T>(philox_uniform(keys, static_cast<uint64_t>(gi)));
      gl = g_lik[gi];
    }
    const Surrogate<T> q = surrogate<T>(sh.mode, zc - median, u, temp);
    const T v = median + q.rate;
    Mlp<L, T> m;
    m.h[0][0] = live ? (upper ? v + T(0.5) : v - T(0.5)) : T(0);
    mlp_forward<0, L>(c, m);
    const T other = __shfl_xor_sync(0xffffffffu, m.logit, 16);
    const T lo = upper ? other : m.logit;
    const T up = upper ? m.logit : other;
    const T e_up = eb_exp_neg_abs(up), e_lo = eb_exp_neg_abs(lo);
    const T p = eb_mass(up, lo, e_up, e_lo);
    const T g_p = live ? pass_if_towards(gl, p >= bound) : T(0);
    const T g[1] = {upper ? g_p * eb_sigmoid_slope(e_up) : -g_p * eb_sigmoid_slope(e_lo)};
    const T gx = mlp_backward<L - 1, L>(c, m, g, acc);
    const T gx_other = __shfl_xor_sync(0xffffffffu, gx, 16);
    if (g_z != nullptr && live && !upper) {
      const T g_up = g_zhat != nullptr ? static_cast<T>(g_zhat[gi]) : T(0);
      g_z[gi] = narrow<S>(g_up + (gx + gx_other));
    }
    t_s += kEbBlock;
    while (t_s >= sh.S) {
      t_s -= sh.S;
      ++t_n;
    }
  }
  if (partial != nullptr) {
    const int cpu_lane = (upper ? kEbBlock : 0) + elem;
    T* dst = partial + task * Lay::kSlots * kEbLanes + cpu_lane;
#pragma unroll
    for (int s = 0; s < Lay::kSlots; ++s) dst[s * kEbLanes] = acc[s];
  }
}

// Per (channel, slot): the CPU kernel's sums (lanes in order in float64 per task, tasks in chunk
// order), then the chain rule back to the raw parameter in float64.
template <int L, typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    eb_reduce_kernel(const T* __restrict__ partial, Params<S> prm, ParamGrads<S> out,
                     int64_t C, int64_t chunks) {
  using Lay = Layout<L>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= C * Lay::kSlots) return;
  const int64_t ch = static_cast<uint32_t>(idx) / static_cast<uint32_t>(Lay::kSlots);
  const int s = static_cast<int>(idx - ch * Lay::kSlots);
  double sum = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    const T* src = partial + ((ch * chunks + k) * Lay::kSlots + s) * kEbLanes;
    double part = 0.0;
    for (int j = 0; j < kEbLanes; ++j) part += static_cast<double>(src[j]);
    sum += part;
  }
#pragma unroll
  for (int i = 0; i < L; ++i) {
    const int in = Lay::in(i), o = Lay::out(i);
    if (s >= Lay::w_off(i) && s < Lay::b_off(i)) {
      const int64_t k = ch * o * in + (s - Lay::w_off(i));
      if (out.m[i] != nullptr) {
        out.m[i][k] = narrow<S>(sum * eb_softplus_slope(static_cast<double>(prm.m[i][k])));
      }
    } else if (s >= Lay::b_off(i) && s < Lay::f_off(i)) {
      if (out.b[i] != nullptr) out.b[i][ch * o + (s - Lay::b_off(i))] = narrow<S>(sum);
    } else if (i + 1 < L && s >= Lay::f_off(i) && s < Lay::f_off(i) + o) {
      const int64_t k = ch * o + (s - Lay::f_off(i));
      if (out.f[i] != nullptr) {
        out.f[i][k] = narrow<S>(sum * eb_factor_slope(static_cast<double>(prm.f[i][k])));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct EbCallCuda : EbTensors {
  Shape sh{};
};

EbCallCuda prepare(const at::Tensor& z, const at::Tensor& medians, at::TensorList matrices,
                   at::TensorList biases, at::TensorList factors, const at::Tensor& seed,
                   const at::Tensor& temperature, c10::string_view mode,
                   double likelihood_bound) {
  TORCH_CHECK(z.device().is_cuda(), "lic_quant: the CUDA kernels got z on ", z.device());
  EbCallCuda c;
  static_cast<EbTensors&>(c) = prepare_eb_tensors(z, medians, matrices, biases, factors, seed,
                                                  temperature, mode, likelihood_bound, "CUDA");
  const int64_t N = z.size(0), C = z.size(1);
  c.sh.C = C;
  c.sh.S = N * C > 0 ? z.numel() / (N * C) : 0;
  c.sh.per_channel = N * c.sh.S;
  c.sh.chunks = (c.sh.per_channel + kEbChunk - 1) / kEbChunk;
  c.sh.inv_C = C > 0 ? 1.0 / static_cast<double>(C) : 0.0;
  c.sh.inv_S = c.sh.S > 0 ? 1.0 / static_cast<double>(c.sh.S) : 0.0;
  c.sh.mode = c.mode;
  c.sh.likelihood_bound = likelihood_bound;
  return c;
}

template <typename S>
Params<S> params_of(const EbCallCuda& c) {
  Params<S> p{};
  for (int i = 0; i < c.layers; ++i) {
    p.m[i] = c.matrices[i].const_data_ptr<S>();
    p.b[i] = c.biases[i].const_data_ptr<S>();
    p.f[i] = i + 1 < c.layers ? c.factors[i].const_data_ptr<S>() : nullptr;
  }
  return p;
}

// Calls fn(std::integral_constant<int, L>{}) for the call's layer count.
template <typename Fn>
void dispatch_layers(int layers, Fn&& fn) {
  switch (layers) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    default: return fn(std::integral_constant<int, 8>{});
  }
}
static_assert(kEbMaxLayers == 8, "dispatch_layers instantiates 1 .. 8 layers");

// The constants buffer [C][slots] of the compute type.
template <int L, typename S>
at::Tensor channel_constants(const EbCallCuda& c, cudaStream_t stream) {
  using T = acc_type<S>;
  at::Tensor cst = at::empty({c.sh.C * Layout<L>::kSlots},
                             c.z.options().dtype(c10::CppTypeToScalarType<T>::value));
  const int64_t blocks = (c.sh.C + kThreads - 1) / kThreads;
  eb_constants_kernel<L, S, T><<<blocks, kThreads, 0, stream>>>(params_of<S>(c), c.sh.C,
                                                                 cst.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return cst;
}

std::tuple<at::Tensor, at::Tensor> eb_forward_cuda(const at::Tensor& z, const at::Tensor& medians,
                                                   at::TensorList matrices, at::TensorList biases,
                                                   at::TensorList factors, const at::Tensor& seed,
                                                   const at::Tensor& temperature,
                                                   c10::string_view mode,
                                                   double likelihood_bound) {
  const c10::cuda::CUDAGuard guard(z.device());
  const EbCallCuda c = prepare(z, medians, matrices, biases, factors, seed, temperature, mode,
                               likelihood_bound);
  at::Tensor z_hat = at::empty(c.z.sizes(), c.z.options());
  at::Tensor lik = at::empty(c.z.sizes(), c.z.options().dtype(likelihood_dtype(z.scalar_type())));
  const int64_t numel = c.z.numel();
  if (numel == 0) return {z_hat, lik};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(c.z.scalar_type(), [&](auto s) {
    using S = decltype(s);
    using T = acc_type<S>;
    dispatch_layers(c.layers, [&](auto l) {
      constexpr int L = decltype(l)::value;
      const at::Tensor cst = channel_constants<L, S>(c, stream);
      constexpr auto kernel = eb_forward_kernel<L, S, T>;
      eb_forward_kernel<L, S, T><<<grid_size<kernel>(numel), kThreads, 0, stream>>>(
          c.z.const_data_ptr<S>(), c.medians.const_data_ptr<S>(), cst.const_data_ptr<T>(),
          z_hat.mutable_data_ptr<S>(), lik.mutable_data_ptr<T>(), numel, c.sh,
          seed.const_data_ptr<int64_t>(), temperature.const_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {z_hat, lik};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
eb_backward_cuda(const std::optional<at::Tensor>& grad_z_hat, const at::Tensor& grad_lik,
                 const at::Tensor& z, const at::Tensor& medians, at::TensorList matrices,
                 at::TensorList biases, at::TensorList factors, const at::Tensor& seed,
                 const at::Tensor& temperature, c10::string_view mode, double likelihood_bound,
                 std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(z.device());
  const EbCallCuda c = prepare(z, medians, matrices, biases, factors, seed, temperature, mode,
                               likelihood_bound);
  const auto upstream = check_eb_grads(grad_z_hat, grad_lik, z);
  const at::Tensor& g_zhat = upstream.first;
  const at::Tensor& g_l = upstream.second;
  at::Tensor g_z = at::empty(output_mask[0] ? c.z.sizes() : at::IntArrayRef{0}, c.z.options());
  std::vector<at::Tensor> g_m = eb_parameter_grads(c.matrices, output_mask[1]);
  std::vector<at::Tensor> g_b = eb_parameter_grads(c.biases, output_mask[2]);
  std::vector<at::Tensor> g_f = eb_parameter_grads(c.factors, output_mask[3]);
  const bool params = output_mask[1] || output_mask[2] || output_mask[3];
  if (c.z.numel() == 0) {
    for (auto* list : {&g_m, &g_b, &g_f}) {
      for (auto& g : *list) g.zero_();
    }
    return {g_z, g_m, g_b, g_f};
  }
  if (!output_mask[0] && !params) return {g_z, g_m, g_b, g_f};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(c.z.scalar_type(), [&](auto s) {
    using S = decltype(s);
    using T = acc_type<S>;
    dispatch_layers(c.layers, [&](auto l) {
      constexpr int L = decltype(l)::value;
      constexpr int kSlots = Layout<L>::kSlots;
      const at::Tensor cst = channel_constants<L, S>(c, stream);
      const int64_t tasks = c.sh.C * c.sh.chunks;
      at::Tensor partial;
      if (params) {
        partial = at::empty({tasks * kSlots * kEbLanes},
                            c.z.options().dtype(c10::CppTypeToScalarType<T>::value));
      }
      eb_backward_kernel<L, S, T><<<tasks, kEbLanes, 0, stream>>>(
          data_or_null<S>(g_zhat), g_l.const_data_ptr<T>(), c.z.const_data_ptr<S>(),
          c.medians.const_data_ptr<S>(), cst.const_data_ptr<T>(),
          output_mask[0] ? g_z.mutable_data_ptr<S>() : nullptr,
          mutable_or_null<T>(partial), c.sh, seed.const_data_ptr<int64_t>(),
          temperature.const_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (!params) return;
      ParamGrads<S> out{};
      for (int i = 0; i < c.layers; ++i) {
        if (output_mask[1]) out.m[i] = g_m[i].mutable_data_ptr<S>();
        if (output_mask[2]) out.b[i] = g_b[i].mutable_data_ptr<S>();
        if (output_mask[3] && i + 1 < c.layers) out.f[i] = g_f[i].mutable_data_ptr<S>();
      }
      const int64_t blocks = (c.sh.C * kSlots + kThreads - 1) / kThreads;
      eb_reduce_kernel<L, S, T><<<blocks, kThreads, 0, stream>>>(
          partial.const_data_ptr<T>(), params_of<S>(c), out, c.sh.C, c.sh.chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {g_z, g_m, g_b, g_f};
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CUDA, m) {
  m.impl("entropy_bottleneck_forward", &lic_quant::eb_forward_cuda);
  m.impl("entropy_bottleneck_backward", &lic_quant::eb_backward_cuda);
}
