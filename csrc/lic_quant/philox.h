// The noise stream of SPEC section 3: u = f(seed, logical element index), identical on every backend.
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) with the
// counter (lo32(i), hi32(i), 0, 0) and key (lo32(seed), hi32(seed)), then Triton's
// uint_to_uniform_float on the first output word: the same bits as tl.rand(seed, i) of Triton 3.8,
// which splits a 64-bit offset that way (our Triton kernels write the rounds out, so they do not
// depend on how a Triton version treats 64-bit offsets).
#pragma once

#include "host_device.h"

namespace lic_quant {

constexpr uint32_t kPhiloxMulA = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kPhiloxMulB = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;  // Weyl increment of k0 (golden ratio)
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;  // Weyl increment of k1 (sqrt 3 - 1)

#if defined(__CUDA_ARCH__)
// One Philox4x32 round on 32-bit words with round key (k0, k1) (device).
__device__ __forceinline__ void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                             uint32_t k0, uint32_t k1) {
  const uint32_t n0 = __umulhi(kPhiloxMulB, c2) ^ c1 ^ k0;
  const uint32_t n2 = __umulhi(kPhiloxMulA, c0) ^ c3 ^ k1;
  c1 = kPhiloxMulB * c2;
  c3 = kPhiloxMulA * c0;
  c0 = n0;
  c2 = n2;
}
#endif

// First output word of Philox4x32-10 for counter (c0, c1, 0, 0) and key (k0, k1).
LQ_HD uint32_t philox4x32_10_word0(uint32_t c0_in, uint32_t c1_in, uint32_t k0_in, uint32_t k1_in) {
#if defined(__CUDA_ARCH__)
  uint32_t c0 = c0_in, c1 = c1_in, c2 = 0u, c3 = 0u, k0 = k0_in, k1 = k1_in;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
#else
  // 32-bit words held in 64-bit integers: a vectorizing compiler then maps each 32x32->64
  // product to one unsigned widening multiply per lane (vpmuludq) with no lane shuffles, which is
  // about 1.7x faster than the 32-bit formulation on AVX-512 and AVX2.
  constexpr uint64_t kLow = 0xffffffffull;
  uint64_t c0 = c0_in, c1 = c1_in, c2 = 0u, c3 = 0u, k0 = k0_in, k1 = k1_in;
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = (c2 & kLow) * kPhiloxMulB;
    const uint64_t pa = (c0 & kLow) * kPhiloxMulA;
    c0 = (pb >> 32) ^ c1 ^ k0;
    c2 = (pa >> 32) ^ c3 ^ k1;
    c1 = pb & kLow;
    c3 = pa & kLow;
    k0 = (k0 + kPhiloxKeyA) & kLow;
    k1 = (k1 + kPhiloxKeyB) & kLow;
  }
  return static_cast<uint32_t>(c0);
#endif
}

// Triton's uint_to_uniform_float for 32-bit words: [0, 1) without ever reaching 1.0f.
LQ_HD float uint32_to_unit_float(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  if (x < 0) x = ~x;
#if defined(__CUDA_ARCH__)
  return __fmul_rn(static_cast<float>(x), 4.6566127342e-10f);
#else
  return static_cast<float>(x) * 4.6566127342e-10f;
#endif
}

// u in [-1/2, 1/2) from the first Philox word. Both steps round separately in float32: the host
// code is compiled with -ffp-contract=off and the device code uses the _rn intrinsics, which nvcc
// never contracts.
LQ_HD float word_to_uniform(uint32_t word) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(uint32_to_unit_float(word), 0.5f);
#else
  return uint32_to_unit_float(word) - 0.5f;
#endif
}

LQ_HD float philox_uniform(uint64_t seed, uint64_t index) {
  return word_to_uniform(philox4x32_10_word0(
      static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
}

// philox_uniform for the N consecutive indices index0 .. index0 + N - 1. On the device the N
// counters advance round by round together: the same words, but each round key is computed once
// for all N, and the N chains are independent work for the pipelines (the CUDA kernels' packs).
template <int N>
LQ_HD void philox_uniform_n(uint64_t seed, uint64_t index0, float (&u)[N]) {
#if defined(__CUDA_ARCH__)
  uint32_t c0[N], c1[N], c2[N], c3[N];
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const uint64_t index = index0 + static_cast<uint64_t>(j);
    c0[j] = static_cast<uint32_t>(index);
    c1[j] = static_cast<uint32_t>(index >> 32);
    c2[j] = 0u;
    c3[j] = 0u;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
#pragma unroll
    for (int j = 0; j < N; ++j) philox_round(c0[j], c1[j], c2[j], c3[j], k0, k1);
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) u[j] = word_to_uniform(c0[j]);
#else
  for (int j = 0; j < N; ++j) u[j] = philox_uniform(seed, index0 + static_cast<uint64_t>(j));
#endif
}

}  // namespace lic_quant
