// What the CPU translation units (quantize_cpu.cpp, mixture_cpu.cpp) share: the ISA clones their
// loops are compiled as, and the block fill of the noise stream (docs/spec.md section 3).
#pragma once

#include <cstdint>

#include "../lic_quant/philox.h"

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

}  // namespace
}  // namespace lic_quant
