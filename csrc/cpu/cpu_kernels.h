// What the CPU translation units (quantize_cpu.cpp, mixture_cpu.cpp, entropy_bottleneck_cpu.cpp)
// share: the ISA clones their loops are compiled as, the dtype and mode dispatch, the block fill
// of the noise stream (docs/spec.md section 3) and the per-sample reduction of rate=True
// (section 8).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../lic_quant/host_device.h"
#include "../lic_quant/philox.h"
#include "../lic_quant/quantize_math.h"

// The loops are built as target clones (AVX-512, AVX2, baseline x86-64) and the loader picks one
// for the machine; LQ_CPU_CLONES_AVX2 / LQ_CPU_CLONES_BASELINE build fewer, for
// tests/test_cpu_isa_variants.py, which checks that every clone gives the same bits.
#if defined(LQ_CPU_CLONES_AVX2)  // no AVX-512 clone
#define LQ_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(LQ_CPU_CLONES_BASELINE)  // baseline x86-64 (SSE2) code only
#define LQ_CLONES
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LQ_CLONES
#endif

namespace lic_quant {
namespace {

// Calls fn(S{}, T{}) with S the input type and T the compute type (float32 for float16 and
// bfloat16): the dtype dispatch of the mixture and EntropyBottleneck kernels.
template <typename Fn>
void dispatch_types(at::ScalarType dt, Fn&& fn) {
  switch (dt) {
    case at::kDouble: return fn(double{}, double{});
    case at::kFloat: return fn(float{}, float{});
    case at::kHalf: return fn(c10::Half{}, float{});
    default: return fn(c10::BFloat16{}, float{});
  }
}

// Calls fn(std::integral_constant<int32_t, mode>{}): the surrogate's mode as a compile-time
// constant, so that the per-element loops have no branch on it and vectorize.
template <typename Fn>
decltype(auto) dispatch_mode(int32_t mode, Fn&& fn) {
  switch (mode) {
    case kNoise: return fn(std::integral_constant<int32_t, kNoise>{});
    case kSte: return fn(std::integral_constant<int32_t, kSte>{});
    case kMixed: return fn(std::integral_constant<int32_t, kMixed>{});
    default: return fn(std::integral_constant<int32_t, kSua>{});
  }
}

// Whether every upstream gradient of P in g[0, n) is negative (NaN is not): the likelihood
// bound then passes each of them whatever p is, so the backward need not know p first.
template <typename T>
bool all_negative(const T* g, int64_t n) {
  bool all = true;
  for (int64_t j = 0; j < n; ++j) all &= g[j] < T(0);
  return all;
}

// The largest block a fill serves.
constexpr int64_t kMaxNoiseBlock = 256;

// u of the n elements index0 .. index0 + n - 1, index0 a multiple of 4, n <= kMaxNoiseBlock: one
// Philox block per four elements (noise stream v2). The words land in four planes first, so the
// Philox loop has no interleaved stores and vectorizes; the second loop interleaves them into u,
// which must have room for n rounded up to a multiple of 4.
LQ_CLONES void fill_noise_block(float* __restrict u, int64_t n, const PhiloxKeys& keys,
                                uint64_t index0) {
  const PhiloxKeys key = keys;
  alignas(64) uint32_t w0[kMaxNoiseBlock / 4], w1[kMaxNoiseBlock / 4], w2[kMaxNoiseBlock / 4],
      w3[kMaxNoiseBlock / 4];
  const int64_t nb = (n + 3) / 4;
  const uint64_t b0 = index0 >> 2;
  for (int64_t j = 0; j < nb; ++j) {
    uint32_t w[4];
    philox4x32_10(key, b0 + static_cast<uint64_t>(j), w);
    w0[j] = w[0];
    w1[j] = w[1];
    w2[j] = w[2];
    w3[j] = w[3];
  }
  for (int64_t j = 0; j < nb; ++j) {
    u[4 * j] = word_to_uniform(w0[j]);
    u[4 * j + 1] = word_to_uniform(w1[j]);
    u[4 * j + 2] = word_to_uniform(w2[j]);
    u[4 * j + 3] = word_to_uniform(w3[j]);
  }
}

// u of elements start .. start + n - 1 (n <= kMaxNoiseBlock, start any index) into u[0 .. n):
// the Philox blocks from start rounded down to a multiple of 4; buf holds kNoiseAtBuffer floats.
constexpr int64_t kNoiseAtBuffer = kMaxNoiseBlock + 8;
inline const float* noise_at(float* buf, int64_t start, int64_t n, const PhiloxKeys& keys) {
  const int64_t off = start & 3;
  const int64_t first = std::min(kMaxNoiseBlock, n + off);
  fill_noise_block(buf, first, keys, static_cast<uint64_t>(start - off));
  if (n + off > kMaxNoiseBlock) {
    fill_noise_block(buf + kMaxNoiseBlock, n + off - kMaxNoiseBlock, keys,
                     static_cast<uint64_t>(start - off + kMaxNoiseBlock));
  }
  return buf + off;
}

// ---------------------------------------------------------------------------------------------
// rate=True (docs/spec.md section 8): per sample the sum of -log2 P in float64, with P only in a
// chunk-sized scratch. The reduction order is fixed by the shape alone: each sample is cut into
// chunks of kRateChunk elements (counted from the sample's first element), each chunk's sum is one
// task's result, and the chunks of a sample are added in index order. So the bits depend neither
// on the thread count nor on which kernel (single family or mixture) produced P.

constexpr int64_t kRateChunk = 256;

// Sum of -log2 P over n <= kRateChunk float32 likelihoods, in float64. P = 2^e m exactly (m in
// [1, 2); float32 subnormals are normal doubles): the exponents add up exactly as integers and the
// mantissas multiply in eight float64 lanes (each below 2^32 for n <= 256), so one log2 serves the
// chunk. 0, negative, inf or NaN P (only possible with a zero likelihood bound, or NaN inputs)
// take the per-element log2 instead, which gives inf or NaN as -log2 does. Cloned like the kernels:
// in the baseline build (two-lane SSE2, exponents scalar) it took a fifth of the rate=True forward.
LQ_CLONES inline double chunk_bits(const float* lik, int64_t n) {
  // Eight lanes as GCC vector types, so that each clone keeps them in registers of its width (as
  // arrays, GCC vectorized the products and left the exponents scalar).
  using F8 = float __attribute__((vector_size(32)));
  using D8 = double __attribute__((vector_size(64)));
  using U8 = uint64_t __attribute__((vector_size(64)));
  constexpr int kLanes = 8;
  D8 prod = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
  U8 expo = {};
  // The largest e - 1 of each lane, unsigned: at least 2046 exactly where some P is special (e is
  // 0 for 0, 2047 for inf and NaN, above 2047 with the sign bit).
  U8 worst = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    F8 f;
    std::memcpy(&f, lik + j, sizeof f);
    const D8 d = __builtin_convertvector(f, D8);
    U8 b;
    std::memcpy(&b, &d, sizeof b);
    const U8 e = b >> 52;  // biased exponent, with the sign bit above it
    worst = worst > e - 1 ? worst : e - 1;
    expo += e;
    const U8 mb = (b & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    D8 mant;
    std::memcpy(&mant, &mb, sizeof mant);
    prod *= mant;
  }
  for (; j < n; ++j) {
    const uint64_t b = double_bits(static_cast<double>(lik[j]));
    const uint64_t e = b >> 52;
    worst[0] = worst[0] > e - 1 ? worst[0] : e - 1;
    expo[0] += e;
    prod[0] *= bits_double((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  }
  bool special = false;
  for (int l = 0; l < kLanes; ++l) special |= worst[l] >= 2046;
  if (special) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) sum -= std::log2(static_cast<double>(lik[k]));
    return sum;
  }
  const double m = ((prod[0] * prod[1]) * (prod[2] * prod[3])) *
                   ((prod[4] * prod[5]) * (prod[6] * prod[7]));
  uint64_t e = 0;
  for (int l = 0; l < kLanes; ++l) e += expo[l];
  const int64_t unbiased = static_cast<int64_t>(e) - 1023 * n;
  return -(static_cast<double>(unbiased) + std::log2(m));
}

// float64 likelihoods: the per-element log2, added in order.
inline double chunk_bits(const double* lik, int64_t n) {
  double sum = 0.0;
  for (int64_t k = 0; k < n; ++k) sum -= std::log2(lik[k]);
  return sum;
}

// Runs chunk(start, n) for every chunk of every sample over the threads (grain chunks per task at
// least), then adds each sample's chunk results in order into bits (float or double).
template <typename bits_t, typename Fn>
void for_each_rate_chunk(int64_t samples, int64_t sample_size, int64_t grain, bits_t* bits,
                         Fn&& chunk) {
  const int64_t per_sample = (sample_size + kRateChunk - 1) / kRateChunk;
  // A tensor rather than a std::vector: the profiler's memory events then show it too.
  const at::Tensor partial_t = at::empty({samples * per_sample}, at::kDouble);
  double* partial = partial_t.mutable_data_ptr<double>();
  at::parallel_for(0, samples * per_sample, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t sample = t / per_sample, c = t % per_sample;
      const int64_t start = sample * sample_size + c * kRateChunk;
      partial[t] = chunk(start, std::min(kRateChunk, sample_size - c * kRateChunk));
    }
  });
  for (int64_t sample = 0; sample < samples; ++sample) {
    double sum = 0.0;
    for (int64_t c = 0; c < per_sample; ++c) sum += partial[sample * per_sample + c];
    bits[sample] = static_cast<bits_t>(sum);
  }
}

// rate=True backward: out[j] = g_bits[sample of element i0 + j], j < n. One fill per sample the
// block touches (a loop of stores that vectorizes; per element with a test for the next sample's
// start it stayed scalar).
template <typename T>
void spread_sample_grads(const T* g_bits, int64_t sample_size, int64_t i0, int64_t n, T* out) {
  for (int64_t j = 0; j < n;) {
    const int64_t sample = (i0 + j) / sample_size;
    const int64_t end = std::min(n, (sample + 1) * sample_size - i0);
    const T g = g_bits[sample];
    for (; j < end; ++j) out[j] = g;
  }
}

}  // namespace
}  // namespace lic_quant
