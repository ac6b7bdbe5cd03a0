// Fused CUDA kernels: one pass forward (y, mu, sigma -> y_hat, P), one pass backward
// (g_yhat, g_P, y, mu, sigma -> grad_y, grad_mu, grad_sigma) that recomputes u from the seed.
//
// The per-element math and the noise stream are the CPU kernels' (lic_quant/quantize_math.h,
// lic_quant/philox.h); this file only moves bytes:
// - each thread handles kVec consecutive elements per step with 16-byte loads and stores when every
//   pointer is 16-byte aligned (scalar kernels otherwise), over a grid-stride loop with int64
//   indices; the grid is sized from the multiprocessor count and the kernel's occupancy;
// - the seed (int64) and the temperature (float64) are read from their 0-dim device tensors inside
//   the kernel: no host synchronization, and a CUDA graph replays with whatever the caller wrote
//   into those tensors;
// - the device code is compiled with --fmad=false (setup.py), so no multiply-add is contracted and
//   every float32 step rounds as on the CPU: u, y_hat and (in float32) the likelihoods match the
//   CPU kernels bit for bit.
#include <torch/library.h>

#include "cuda_kernels.h"

namespace lic_quant {
namespace {

// kVec elements of T in registers; 16-byte aligned when the pack spans 16 bytes or more, so a
// load or store of it is one (or two) 128-bit memory instructions.
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* __restrict__ p) {
  if constexpr (sizeof(T) * N <= 16) {
    return *reinterpret_cast<const Pack<T, N>*>(p);
  } else {
    // 32 bytes (float likelihoods of a float16 pack): two 16-byte loads.
    constexpr int H = N / 2;
    const Pack<T, H> a = *reinterpret_cast<const Pack<T, H>*>(p);
    const Pack<T, H> b = *reinterpret_cast<const Pack<T, H>*>(p + H);
    Pack<T, N> r;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      r.v[j] = a.v[j];
      r.v[H + j] = b.v[j];
    }
    return r;
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const Pack<T, N>& x) {
  if constexpr (sizeof(T) * N <= 16) {
    *reinterpret_cast<Pack<T, N>*>(p) = x;
  } else {
    constexpr int H = N / 2;
    Pack<T, H> a, b;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      a.v[j] = x.v[j];
      b.v[j] = x.v[H + j];
    }
    *reinterpret_cast<Pack<T, H>*>(p) = a;
    *reinterpret_cast<Pack<T, H>*>(p + H) = b;
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t noise_at(bool noisy, const PhiloxKeys& keys, int64_t i) {
  // u is float32 on every backend; float64 compute widens it exactly, as the CPU kernels do.
  return noisy ? static_cast<acc_t>(philox_uniform(keys, static_cast<uint64_t>(i))) : acc_t(0);
}

// u for the N elements i0 .. i0 + N - 1 (zeros where the mode draws none). i0 is a multiple of N,
// so a pack of 4 or 8 is one or two whole Philox blocks and a pack of 2 is half of one.
template <int N>
__device__ __forceinline__ void noise_pack(bool noisy, const PhiloxKeys& keys, int64_t i0,
                                           float (&u)[N]) {
  if (!noisy) {
#pragma unroll
    for (int j = 0; j < N; ++j) u[j] = 0.0f;
  } else if constexpr (N % 4 == 0) {
#pragma unroll
    for (int g = 0; g < N / 4; ++g) {
      float q[4];
      philox_uniform4(keys, (static_cast<uint64_t>(i0) >> 2) + g, q);
#pragma unroll
      for (int j = 0; j < 4; ++j) u[4 * g + j] = q[j];
    }
  } else if constexpr (N == 2) {
    float q[4];
    philox_uniform4(keys, static_cast<uint64_t>(i0) >> 2, q);
    const bool upper = (i0 & 2) != 0;
    u[0] = upper ? q[2] : q[0];
    u[1] = upper ? q[3] : q[1];
  } else {
    u[0] = philox_uniform(keys, static_cast<uint64_t>(i0));
  }
}


// kMode >= 0: the mode is a compile-time constant (the aligned float-compute kernels), so the
// per-element mode switch and the noise test fold away; -1: read from the parameters.
template <int kMode, typename acc_t>
__device__ __forceinline__ QuantParams<acc_t> fix_mode(QuantParams<acc_t> p) {
  if constexpr (kMode >= 0) p.mode = kMode;
  return p;
}


// ---------------------------------------------------------------------------------------------
// Forward. N = elements per thread step: 16 / sizeof(scalar_t) on the aligned path, 1 otherwise.
// Elements [0, numel / N * N) go through packs; the few left over are handled one per thread.

template <typename scalar_t, typename lik_t, int N, int kMode, int kFamily>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ mu,
                   const scalar_t* __restrict__ sigma, scalar_t* __restrict__ y_hat,
                   lik_t* __restrict__ lik, int64_t numel, const int64_t* __restrict__ seed_ptr,
                   const double* __restrict__ temperature, QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  const QuantParams<acc_t> p = fix_mode<kMode>(with_temperature(params, temperature));
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t npack = numel / N;

  for (int64_t k = tid; k < npack; k += stride) {
    const int64_t i0 = k * N;
    const Pack<scalar_t, N> py = load_pack<scalar_t, N>(y + i0);
    const Pack<scalar_t, N> ps = load_pack<scalar_t, N>(sigma + i0);
    Pack<scalar_t, N> pm;
    if (mu != nullptr) pm = load_pack<scalar_t, N>(mu + i0);
    float u[N];
    noise_pack<N>(noisy, keys, i0, u);
    Pack<scalar_t, N> out_y;
    Pack<lik_t, N> out_p;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc_t m = mu != nullptr ? static_cast<acc_t>(pm.v[j]) : acc_t(0);
      const ForwardOut<acc_t> o = forward_element<acc_t, kFamily>(
          static_cast<acc_t>(py.v[j]), m, static_cast<acc_t>(ps.v[j]), static_cast<acc_t>(u[j]), p);
      out_y.v[j] = to_storage<scalar_t>(o.y_hat);
      out_p.v[j] = static_cast<lik_t>(o.likelihood);
    }
    store_pack<scalar_t, N>(y_hat + i0, out_y);
    store_pack<lik_t, N>(lik + i0, out_p);
  }
  if constexpr (N > 1) {
    const int64_t i = npack * N + tid;
    if (i < numel) {
      const acc_t m = mu != nullptr ? static_cast<acc_t>(mu[i]) : acc_t(0);
      const ForwardOut<acc_t> o =
          forward_element<acc_t, kFamily>(static_cast<acc_t>(y[i]), m, static_cast<acc_t>(sigma[i]),
                                          noise_at<acc_t>(noisy, keys, i), p);
      y_hat[i] = to_storage<scalar_t>(o.y_hat);
      lik[i] = static_cast<lik_t>(o.likelihood);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. Gradients not asked for have null pointers and are never written. Where every g_P of
// a warp's step is negative (the usual -log P rate loss), the likelihood bound passes the gradient
// whatever p is, so p is not recomputed; the vote keeps the warp on one path, and both paths give
// the same bits for a negative g_P.

template <int kFamily, bool kRate, typename acc_t, typename scalar_t, typename lik_t, int N>
__device__ __forceinline__ void backward_pack(const Pack<scalar_t, N>& pg, const Pack<lik_t, N>& pl,
                                              const Pack<scalar_t, N>& py,
                                              const Pack<scalar_t, N>& pm,
                                              const Pack<scalar_t, N>& ps, bool has_gyh,
                                              bool has_mu, const float (&u)[N],
                                              const QuantParams<acc_t>& p, bool skip_likelihood,
                                              Pack<scalar_t, N>& gy, Pack<scalar_t, N>& gm,
                                              Pack<scalar_t, N>& gs) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const acc_t g = has_gyh ? static_cast<acc_t>(pg.v[j]) : acc_t(0);
    const acc_t m = has_mu ? static_cast<acc_t>(pm.v[j]) : acc_t(0);
    const BackwardOut<acc_t> o = backward_element<acc_t, kFamily, kRate>(
        g, static_cast<acc_t>(pl.v[j]), static_cast<acc_t>(py.v[j]), m,
        static_cast<acc_t>(ps.v[j]), static_cast<acc_t>(u[j]), p, skip_likelihood);
    gy.v[j] = to_storage<scalar_t>(o.grad_y);
    gm.v[j] = to_storage<scalar_t>(o.grad_mu);
    gs.v[j] = to_storage<scalar_t>(o.grad_sigma);
  }
}

// kRate (rate=True): g_lik holds the gradient of each sample's bits, sample_size elements per
// sample; each element reads its sample's (the kernel's other parameters keep their offsets).
template <typename scalar_t, typename lik_t, int N, int kMode, int kFamily, bool kRate = false>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ g_yhat, const lik_t* __restrict__ g_lik,
                    const scalar_t* __restrict__ y, const scalar_t* __restrict__ mu,
                    const scalar_t* __restrict__ sigma, scalar_t* __restrict__ grad_y,
                    scalar_t* __restrict__ grad_mu, scalar_t* __restrict__ grad_sigma,
                    int64_t numel, const int64_t* __restrict__ seed_ptr,
                    const double* __restrict__ temperature,
                    QuantParams<acc_type<scalar_t>> params, int64_t sample_size = 0) {
  using acc_t = acc_type<scalar_t>;
  const QuantParams<acc_t> p = fix_mode<kMode>(with_temperature(params, temperature));
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  const bool has_gyh = g_yhat != nullptr;
  const bool has_mu = mu != nullptr;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t npack = numel / N;

  for (int64_t k = tid; k < npack; k += stride) {
    const int64_t i0 = k * N;
    Pack<lik_t, N> pl;
    if constexpr (kRate) {
      int64_t sample = i0 / sample_size;
      int64_t next = (sample + 1) * sample_size;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        while (i0 + j >= next) {  // a pack may cross sample boundaries
          ++sample;
          next += sample_size;
        }
        pl.v[j] = g_lik[sample];
      }
    } else {
      pl = load_pack<lik_t, N>(g_lik + i0);
    }
    const Pack<scalar_t, N> py = load_pack<scalar_t, N>(y + i0);
    const Pack<scalar_t, N> ps = load_pack<scalar_t, N>(sigma + i0);
    Pack<scalar_t, N> pg, pm;
    if (has_gyh) pg = load_pack<scalar_t, N>(g_yhat + i0);
    if (has_mu) pm = load_pack<scalar_t, N>(mu + i0);
    bool all_negative = true;
#pragma unroll
    for (int j = 0; j < N; ++j) all_negative &= pl.v[j] < lik_t(0);
    float u[N];
    noise_pack<N>(noisy, keys, i0, u);
    Pack<scalar_t, N> gy, gm, gs;
    // Warp-uniform: the lanes take the p-recomputing code together or skip it together.
    const bool skip = !kRate && __all_sync(__activemask(), all_negative);
    backward_pack<kFamily, kRate, acc_t>(pg, pl, py, pm, ps, has_gyh, has_mu, u, p, skip, gy, gm,
                                         gs);
    if (grad_y != nullptr) store_pack<scalar_t, N>(grad_y + i0, gy);
    if (grad_mu != nullptr) store_pack<scalar_t, N>(grad_mu + i0, gm);
    if (grad_sigma != nullptr) store_pack<scalar_t, N>(grad_sigma + i0, gs);
  }
  if constexpr (N > 1) {
    const int64_t i = npack * N + tid;
    if (i < numel) {
      const acc_t g = has_gyh ? static_cast<acc_t>(g_yhat[i]) : acc_t(0);
      const acc_t m = has_mu ? static_cast<acc_t>(mu[i]) : acc_t(0);
      const acc_t gl = static_cast<acc_t>(g_lik[kRate ? i / sample_size : i]);
      const acc_t yy = static_cast<acc_t>(y[i]);
      const acc_t ss = static_cast<acc_t>(sigma[i]);
      const acc_t u = noise_at<acc_t>(noisy, keys, i);
      const BackwardOut<acc_t> o =
          backward_element<acc_t, kFamily, kRate>(g, gl, yy, m, ss, u, p, gl < acc_t(0));
      if (grad_y != nullptr) grad_y[i] = to_storage<scalar_t>(o.grad_y);
      if (grad_mu != nullptr) grad_mu[i] = to_storage<scalar_t>(o.grad_mu);
      if (grad_sigma != nullptr) grad_sigma[i] = to_storage<scalar_t>(o.grad_sigma);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// rate=True forward (docs/spec.md section 8). Block k handles chunk c = k % chunks of sample
// k / chunks: its elements [c kRateChunk, (c + 1) kRateChunk), four consecutive ones per thread.
// It writes y_hat and the chunk's sum of -log2 P (cuda_kernels.h, chunk_sum).

template <typename scalar_t, int kFamily>
__global__ void __launch_bounds__(kThreads)
    forward_rate_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ mu,
                        const scalar_t* __restrict__ sigma, scalar_t* __restrict__ y_hat,
                        double* __restrict__ partial, int64_t sample_size, int64_t chunks,
                        const int64_t* __restrict__ seed_ptr,
                        const double* __restrict__ temperature,
                        QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  const QuantParams<acc_t> p = with_temperature(params, temperature);
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  const int64_t sample = blockIdx.x / chunks;
  const int64_t w0 = (blockIdx.x % chunks) * kRateChunk + 4 * threadIdx.x;  // within the sample
  const int64_t i0 = sample * sample_size + w0;
  float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (noisy) {
    if (sample_size % 4 == 0 && w0 + 3 < sample_size) {
      philox_uniform4(keys, static_cast<uint64_t>(i0) >> 2, u);  // i0 is a multiple of 4
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (w0 + j < sample_size) u[j] = philox_uniform(keys, static_cast<uint64_t>(i0 + j));
      }
    }
  }
  double acc = 0.0;
  // Not unrolled: with the mode read at run time, four inlined copies of the element (each with
  // every mode's surrogate) would make the kernel several times larger. The selects keep u in
  // registers (an indexed array would go to local memory).
#pragma unroll 1
  for (int j = 0; j < 4; ++j) {
    if (w0 + j < sample_size) {
      const int64_t i = i0 + j;
      const float uj = j == 0 ? u[0] : j == 1 ? u[1] : j == 2 ? u[2] : u[3];
      const acc_t m = mu != nullptr ? static_cast<acc_t>(mu[i]) : acc_t(0);
      const ForwardOut<acc_t> o = forward_element<acc_t, kFamily>(
          static_cast<acc_t>(y[i]), m, static_cast<acc_t>(sigma[i]), static_cast<acc_t>(uj), p);
      y_hat[i] = to_storage<scalar_t>(o.y_hat);
      acc += neg_log2(o.likelihood);
    }
  }
  chunk_sum(acc, partial);
}


// u for logical indices [0, numel), float32, one Philox block (four elements) per thread step
// (the output is fresh, so aligned).
__global__ void __launch_bounds__(kThreads)
    uniform_noise_kernel(float* __restrict__ out, int64_t numel, const int64_t* __restrict__ seed_ptr) {
  constexpr int N = 4;
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t npack = numel / N;
  for (int64_t k = tid; k < npack; k += stride) {
    Pack<float, N> o;
    philox_uniform4(keys, static_cast<uint64_t>(k), o.v);
    store_pack<float, N>(out + k * N, o);
  }
  const int64_t i = npack * N + tid;
  if (i < numel) out[i] = philox_uniform(keys, static_cast<uint64_t>(i));
}

// ---------------------------------------------------------------------------------------------
// Launch configuration.


bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }


template <typename scalar_t, typename lik_t, int N, int kMode, int kFamily>
void launch_forward_mode(const scalar_t* y, const scalar_t* mu, const scalar_t* sigma, scalar_t* y_hat,
                    lik_t* lik, int64_t numel, const int64_t* seed, const double* temperature,
                    const QuantParams<acc_type<scalar_t>>& p, cudaStream_t stream) {
  constexpr auto kernel = forward_kernel<scalar_t, lik_t, N, kMode, kFamily>;
  // numel / N pack steps plus at most N - 1 tail elements, one per thread.
  const int64_t work = std::max<int64_t>(numel / N, numel % N);
  kernel<<<grid_size<kernel>(work), kThreads, 0, stream>>>(y, mu, sigma, y_hat, lik, numel, seed,
                                                            temperature, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename lik_t, int N, int kMode, int kFamily, bool kRate>
void launch_backward_mode(const scalar_t* g_yhat, const lik_t* g_lik, const scalar_t* y,
                     const scalar_t* mu, const scalar_t* sigma, scalar_t* gy, scalar_t* gm,
                     scalar_t* gs, int64_t numel, const int64_t* seed, const double* temperature,
                     const QuantParams<acc_type<scalar_t>>& p, cudaStream_t stream,
                     int64_t sample_size) {
  constexpr auto kernel = backward_kernel<scalar_t, lik_t, N, kMode, kFamily, kRate>;
  const int64_t work = std::max<int64_t>(numel / N, numel % N);
  kernel<<<grid_size<kernel>(work), kThreads, 0, stream>>>(g_yhat, g_lik, y, mu, sigma, gy, gm, gs,
                                                            numel, seed, temperature, p,
                                                            sample_size);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls fn(std::integral_constant<int, kMode>): the mode as a template constant for the aligned
// float-compute kernels (the hot path), -1 (read at run time) for float64 and the scalar fallback.
template <typename scalar_t, int N, typename Fn>
void dispatch_mode(int32_t mode, Fn&& fn) {
  if constexpr (N > 1 && !std::is_same_v<scalar_t, double>) {
    switch (mode) {
      case kNoise: return fn(std::integral_constant<int, kNoise>{});
      case kSte: return fn(std::integral_constant<int, kSte>{});
      case kMixed: return fn(std::integral_constant<int, kMixed>{});
      default: return fn(std::integral_constant<int, kSua>{});
    }
  } else {
    return fn(std::integral_constant<int, -1>{});
  }
}

template <typename scalar_t, typename lik_t, int N, int kFamily>
void launch_forward(const scalar_t* y, const scalar_t* mu, const scalar_t* sigma, scalar_t* y_hat,
                    lik_t* lik, int64_t numel, const int64_t* seed, const double* temperature,
                    const QuantParams<acc_type<scalar_t>>& p, cudaStream_t stream) {
  dispatch_mode<scalar_t, N>(p.mode, [&](auto mode_c) {
    launch_forward_mode<scalar_t, lik_t, N, decltype(mode_c)::value, kFamily>(
        y, mu, sigma, y_hat, lik, numel, seed, temperature, p, stream);
  });
}

template <typename scalar_t, typename lik_t, int N, int kFamily>
void launch_backward(const scalar_t* g_yhat, const lik_t* g_lik, const scalar_t* y,
                     const scalar_t* mu, const scalar_t* sigma, scalar_t* gy, scalar_t* gm,
                     scalar_t* gs, int64_t numel, const int64_t* seed, const double* temperature,
                     const QuantParams<acc_type<scalar_t>>& p, cudaStream_t stream,
                     int64_t sample_size) {
  dispatch_mode<scalar_t, N>(p.mode, [&](auto mode_c) {
    if (sample_size > 0) {
      launch_backward_mode<scalar_t, lik_t, N, decltype(mode_c)::value, kFamily, true>(
          g_yhat, g_lik, y, mu, sigma, gy, gm, gs, numel, seed, temperature, p, stream,
          sample_size);
    } else {
      launch_backward_mode<scalar_t, lik_t, N, decltype(mode_c)::value, kFamily, false>(
          g_yhat, g_lik, y, mu, sigma, gy, gm, gs, numel, seed, temperature, p, stream, 0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Op implementations (semantics and return conventions of the CPU kernels).


template <typename scalar_t, int kFamily>
void forward_typed(const at::Tensor& y, const at::Tensor& scales, const at::Tensor& means,
                   const at::Tensor& seed, const at::Tensor& temperature, at::Tensor& y_hat,
                   at::Tensor& lik, int32_t mode, double scale_bound, double likelihood_bound,
                   bool zero_center) {
  using acc_t = acc_type<scalar_t>;
  using lik_t = acc_t;  // float32 likelihoods for reduced precision, float64 for float64
  constexpr int kVec = 16 / sizeof(scalar_t);
  // The temperature slot is filled in by the kernel from the device tensor.
  const QuantParams<acc_t> p = make_params<acc_t>(mode, 0.0, scale_bound, likelihood_bound, zero_center);
  const scalar_t* py = y.const_data_ptr<scalar_t>();
  const scalar_t* pm = data_or_null<scalar_t>(means);
  const scalar_t* ps = scales.const_data_ptr<scalar_t>();
  scalar_t* pyh = y_hat.mutable_data_ptr<scalar_t>();
  lik_t* pl = lik.mutable_data_ptr<lik_t>();
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const double* tp = temperature.const_data_ptr<double>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = y.numel();
  if (aligned16(py) && aligned16(pm) && aligned16(ps) && aligned16(pyh) && aligned16(pl)) {
    launch_forward<scalar_t, lik_t, kVec, kFamily>(py, pm, ps, pyh, pl, numel, sd, tp, p, stream);
  } else {
    launch_forward<scalar_t, lik_t, 1, kFamily>(py, pm, ps, pyh, pl, numel, sd, tp, p, stream);
  }
}

template <typename scalar_t, int kFamily>
void backward_typed(const at::Tensor& g_yhat, const at::Tensor& g_lik, const at::Tensor& y,
                    const at::Tensor& scales, const at::Tensor& means, const at::Tensor& seed,
                    const at::Tensor& temperature, at::Tensor& gy, at::Tensor& gm, at::Tensor& gs,
                    int32_t mode, double scale_bound, double likelihood_bound, bool zero_center,
                    int64_t sample_size) {
  using acc_t = acc_type<scalar_t>;
  using lik_t = acc_t;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const QuantParams<acc_t> p = make_params<acc_t>(mode, 0.0, scale_bound, likelihood_bound, zero_center);
  scalar_t* oy = mutable_or_null<scalar_t>(gy);
  // g_yhat only enters grad_y: not read when grad_y is not asked for.
  const scalar_t* pg = oy != nullptr ? data_or_null<scalar_t>(g_yhat) : nullptr;
  const lik_t* pl = g_lik.const_data_ptr<lik_t>();
  const scalar_t* py = y.const_data_ptr<scalar_t>();
  const scalar_t* pm = data_or_null<scalar_t>(means);
  const scalar_t* ps = scales.const_data_ptr<scalar_t>();
  scalar_t* om = mutable_or_null<scalar_t>(gm);
  scalar_t* os = mutable_or_null<scalar_t>(gs);
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const double* tp = temperature.const_data_ptr<double>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = y.numel();
  if (aligned16(pg) && aligned16(pl) && aligned16(py) && aligned16(pm) && aligned16(ps) &&
      aligned16(oy) && aligned16(om) && aligned16(os)) {
    launch_backward<scalar_t, lik_t, kVec, kFamily>(pg, pl, py, pm, ps, oy, om, os, numel, sd, tp,
                                                    p, stream, sample_size);
  } else {
    launch_backward<scalar_t, lik_t, 1, kFamily>(pg, pl, py, pm, ps, oy, om, os, numel, sd, tp, p,
                                                 stream, sample_size);
  }
}

template <typename scalar_t, int kFamily>
void forward_rate_typed(const ForwardCall& c, const at::Tensor& seed,
                        const at::Tensor& temperature, double scale_bound,
                        double likelihood_bound, bool zero_center) {
  using acc_t = acc_type<scalar_t>;
  const QuantParams<acc_t> p =
      make_params<acc_t>(c.mode, 0.0, scale_bound, likelihood_bound, zero_center);
  at::Tensor y_hat = c.y_hat, bits = c.likelihoods;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_rate<acc_t>(c.y, c.samples, c.sample_size, bits, stream,
                     [&](int64_t blocks, int64_t chunks, double* partial) {
    forward_rate_kernel<scalar_t, kFamily><<<blocks, kThreads, 0, stream>>>(
        c.y.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(c.means),
        c.scales.const_data_ptr<scalar_t>(), y_hat.mutable_data_ptr<scalar_t>(), partial,
        c.sample_size, chunks, seed.const_data_ptr<int64_t>(),
        temperature.const_data_ptr<double>(), p);
  });
}


std::tuple<at::Tensor, at::Tensor> quantize_forward_cuda(
    const at::Tensor& y_in, const at::Tensor& scales_in, const c10::optional<at::Tensor>& means_in,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode_name,
    double scale_bound, double likelihood_bound, bool zero_center, c10::string_view family,
    bool rate) {
  check_cuda(y_in);
  // The temperature's range is checked by the Python API; reading it here would synchronize.
  const c10::cuda::CUDAGuard guard(y_in.device());
  ForwardCall c = prepare_forward(y_in, scales_in, means_in, seed, temperature, family, mode_name,
                                  scale_bound, likelihood_bound, rate);
  if (rate) {
    if (c.y.numel() == 0) return {c.y_hat, c.likelihoods.zero_()};  // an empty sum is 0 bits
    dispatch_dtype(c.y.scalar_type(), [&](auto tag) {
      dispatch_family(c.family, [&](auto fam) {
        forward_rate_typed<decltype(tag), decltype(fam)::value>(c, seed, temperature, scale_bound,
                                                                likelihood_bound, zero_center);
      });
    });
    return {c.y_hat, c.likelihoods};
  }
  if (c.y.numel() == 0) return {c.y_hat, c.likelihoods};
  dispatch_dtype(c.y.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_family(c.family, [&](auto fam) {
      forward_typed<scalar_t, decltype(fam)::value>(c.y, c.scales, c.means, seed, temperature,
                                                    c.y_hat, c.likelihoods, c.mode, scale_bound,
                                                    likelihood_bound, zero_center);
    });
  });
  return {c.y_hat, c.likelihoods};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_backward_cuda(
    const c10::optional<at::Tensor>& grad_y_hat_in, const at::Tensor& grad_lik_in,
    const at::Tensor& y_in, const at::Tensor& scales_in, const c10::optional<at::Tensor>& means_in,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode_name,
    double scale_bound, double likelihood_bound, bool zero_center,
    std::array<bool, 3> output_mask, c10::string_view family, bool rate) {
  check_cuda(y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  BackwardCall c = prepare_backward(grad_y_hat_in, grad_lik_in, y_in, scales_in, means_in, seed,
                                    temperature, family, mode_name, scale_bound,
                                    likelihood_bound, output_mask, rate);
  if (c.y.numel() == 0 || !(output_mask[0] || output_mask[1] || output_mask[2])) {
    return {c.grad_y, c.grad_scales, c.grad_means};
  }
  dispatch_dtype(c.y.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_family(c.family, [&](auto fam) {
      backward_typed<scalar_t, decltype(fam)::value>(c.g_yhat, c.g_lik, c.y, c.scales, c.means,
                                                     seed, temperature, c.out_y, c.out_means,
                                                     c.out_scales, c.mode, scale_bound,
                                                     likelihood_bound, zero_center,
                                                     c.sample_size);
    });
  });
  return {c.grad_y, c.grad_scales, c.grad_means};
}

at::Tensor uniform_noise_cuda(const at::Tensor& seed, c10::SymIntArrayRef size) {
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.dim() == 0,
                   "lic_quant: seed must be a 0-dim int64 tensor");
  check_cuda(seed);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor u = at::empty(C10_AS_INTARRAYREF_SLOW(size), seed.options().dtype(at::kFloat));
  const int64_t numel = u.numel();
  if (numel == 0) return u;
  const int64_t work = std::max<int64_t>(numel / 4, numel % 4);
  uniform_noise_kernel<<<grid_size<uniform_noise_kernel>(work), kThreads, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(u.mutable_data_ptr<float>(), numel,
                                                             seed.const_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return u;
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CUDA, m) {
  m.impl("quantize_forward", &lic_quant::quantize_forward_cuda);
  m.impl("quantize_backward", &lic_quant::quantize_backward_cuda);
  m.impl("uniform_noise", &lic_quant::uniform_noise_cuda);
}
