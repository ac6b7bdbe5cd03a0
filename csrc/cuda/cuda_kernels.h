// What the CUDA translation units (quantize_cuda.cu, mixture_cuda.cu) share: the block size, the
// compute type, the device-side scalars, the rate=True chunk sums and their per-sample finish
// (docs/spec.md section 8), the grid sizing and the dtype dispatch. Both files keep their kernels
// in this anonymous namespace, so each instantiates what it uses.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../lic_quant/op_args.h"

namespace lic_quant {
namespace {

constexpr int kThreads = 256;

// float for float16 / bfloat16 / float32 inputs, double for float64 (docs/spec.md section 1).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// acc -> storage type. The device's conversions write NaN as 0x7FFF in float16 and bfloat16, the
// canonical NaN every backend writes (quantize_math.h, canonical_nan).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t to_storage(acc_t x) {
  return static_cast<scalar_t>(x);
}

// Reads the device-side scalars once per thread (cached broadcast loads).
template <typename acc_t>
__device__ __forceinline__ QuantParams<acc_t> with_temperature(QuantParams<acc_t> p,
                                                               const double* temperature) {
  p.temperature = static_cast<acc_t>(*temperature);  // as make_params: static_cast<T>(double)
  return p;
}

// ---------------------------------------------------------------------------------------------
// rate=True (docs/spec.md section 8). A forward block handles one chunk of kRateChunk elements of
// one sample, four consecutive ones per thread, and leaves the float64 sum of -log2 P over the
// chunk in partial[block] (chunk_sum); rate_finish_kernel adds each sample's chunks in index
// order. The order of every sum depends on the shape alone.

constexpr int kRateChunk = 4 * kThreads;

// -log2 P in float64: log2f (1 ulp) of float32 likelihoods, log2 of float64 ones.
__device__ __forceinline__ double neg_log2(float p) { return -static_cast<double>(log2f(p)); }
__device__ __forceinline__ double neg_log2(double p) { return -log2(p); }

// The block's sum of every thread's acc (a fixed shared-memory tree) into partial[blockIdx.x].
__device__ __forceinline__ void chunk_sum(double acc, double* __restrict__ partial) {
  __shared__ double sums[kThreads];
  sums[threadIdx.x] = acc;
  __syncthreads();
#pragma unroll
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

template <typename bits_t>
__global__ void __launch_bounds__(kThreads)
    rate_finish_kernel(const double* __restrict__ partial, bits_t* __restrict__ bits,
                       int64_t samples, int64_t chunks) {
  const int64_t sample = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (sample >= samples) return;
  double sum = 0.0;
  for (int64_t c = 0; c < chunks; ++c) sum += partial[sample * chunks + c];
  bits[sample] = static_cast<bits_t>(sum);
}

// One rate=True forward launch: launch(blocks, chunks, partial) runs the chunk kernel over
// samples * chunks blocks, then each sample's chunks are added into bits (shape (samples,)).
template <typename bits_t, typename Launch>
void launch_rate(const at::Tensor& y, int64_t samples, int64_t sample_size, at::Tensor& bits,
                 cudaStream_t stream, Launch&& launch) {
  const int64_t chunks = (sample_size + kRateChunk - 1) / kRateChunk;
  at::Tensor partial = at::empty({samples * chunks}, y.options().dtype(at::kDouble));
  launch(samples * chunks, chunks, partial.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t blocks = (samples + kThreads - 1) / kThreads;
  rate_finish_kernel<bits_t><<<blocks, kThreads, 0, stream>>>(
      partial.const_data_ptr<double>(), bits.mutable_data_ptr<bits_t>(), samples, chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Launch configuration.

constexpr int kMaxDevices = 64;

// Multiprocessors of the current device, read once per device.
inline int64_t multiprocessor_count(int dev) {
  static std::atomic<int> count[kMaxDevices];  // zero-initialized: not read yet
  int n = dev < kMaxDevices ? count[dev].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    if (dev < kMaxDevices) count[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Blocks of kBlock threads for `work` thread-steps: one full wave, every multiprocessor filled at
// the kernel's occupancy (per device, computed once per kernel), fewer when there is less work;
// the kernels loop over the rest. A template per kernel, so each has its own cache.
template <auto kKernel, int kBlock = kThreads>
int64_t grid_size(int64_t work) {
  static std::atomic<int> blocks_per_sm[kMaxDevices];  // zero-initialized: not computed yet
  const int dev = c10::cuda::current_device();
  int per_sm = dev < kMaxDevices ? blocks_per_sm[dev].load(std::memory_order_relaxed) : 0;
  if (per_sm == 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kBlock, 0));
    per_sm = std::max(per_sm, 1);
    if (dev < kMaxDevices) blocks_per_sm[dev].store(per_sm, std::memory_order_relaxed);
  }
  const int64_t sms = multiprocessor_count(dev);
  const int64_t needed = (work + kBlock - 1) / kBlock;
  return std::max<int64_t>(1, std::min<int64_t>(needed, sms * per_sm));
}

inline void check_cuda(const at::Tensor& y) {
  TORCH_CHECK(y.device().is_cuda(), "lic_quant: the CUDA kernels got y on ", y.device());
}

// Calls f(scalar_t{}) with the storage type of dt.
template <typename F>
void dispatch_dtype(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "lic_quant: unsupported dtype ", dt);
  }
}

}  // namespace
}  // namespace lic_quant
