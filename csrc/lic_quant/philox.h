// The noise stream, version 2 (docs/spec.md section 3): u = f(seed, logical element index),
// identical on every backend. Element i takes word i mod 4 of one Philox4x32-10 block (Salmon et
// al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) at counter (lo32(i / 4), hi32(i / 4),
// 0, 0) with key (lo32(seed), hi32(seed)), mapped to [0, 1) by Triton's uint_to_uniform_float:
// the bits of tl.rand4x(seed, i // 4)[i % 4]. One block serves four consecutive elements.
// lic_quant/_triton_kernels.py ports this file line by line; lic_quant/noise.py is the readable
// torch version the tests hold every backend to.
#pragma once

#include "host_device.h"

namespace lic_quant {

constexpr uint32_t kPhiloxMulA = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kPhiloxMulB = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;  // Weyl increment of k0 (golden ratio)
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;  // Weyl increment of k1 (sqrt 3 - 1)
constexpr int kPhiloxRounds = 10;

// The ten round keys of one seed. A kernel computes them once and reuses them for every block it
// draws: they depend on the seed only.
struct PhiloxKeys {
  uint32_t k0[kPhiloxRounds];
  uint32_t k1[kPhiloxRounds];
};

LQ_HD PhiloxKeys philox_keys(uint64_t seed) {
  PhiloxKeys k;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    k.k0[round] = k0;
    k.k1[round] = k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return k;
}

// The four words of Philox4x32-10 at counter (lo32(block), hi32(block), 0, 0).
LQ_HD void philox4x32_10(const PhiloxKeys& key, uint64_t block, uint32_t (&w)[4]) {
#if defined(__CUDA_ARCH__)
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = 0u, c3 = 0u;
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    // One 32x32 -> 64-bit product gives both halves (IMAD.WIDE.U32).
    const uint64_t pb = static_cast<uint64_t>(kPhiloxMulB) * c2;
    const uint64_t pa = static_cast<uint64_t>(kPhiloxMulA) * c0;
    c0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ key.k0[round];
    c2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ key.k1[round];
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
#else
  // 32-bit words held in 64-bit integers: a vectorizing compiler maps each 32x32 -> 64 product to
  // one widening multiply per lane (vpmuludq) without lane shuffles.
  constexpr uint64_t kLow = 0xffffffffull;
  uint64_t c0 = block & kLow, c1 = block >> 32, c2 = 0u, c3 = 0u;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t pb = (c2 & kLow) * kPhiloxMulB;
    const uint64_t pa = (c0 & kLow) * kPhiloxMulA;
    c0 = (pb >> 32) ^ c1 ^ key.k0[round];
    c2 = (pa >> 32) ^ c3 ^ key.k1[round];
    c1 = pb & kLow;
    c3 = pa & kLow;
  }
  w[0] = static_cast<uint32_t>(c0);
  w[1] = static_cast<uint32_t>(c1);
  w[2] = static_cast<uint32_t>(c2);
  w[3] = static_cast<uint32_t>(c3);
#endif
}

// Triton's uint_to_uniform_float, then -1/2: [-1/2, 1/2). Both steps round on their own in
// float32 (never one fma), as tl.rand4x(...) - 0.5 does.
LQ_HD float word_to_uniform(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x ^= x >> 31;  // x < 0 ? ~x : x
#if defined(__CUDA_ARCH__)
  return __fsub_rn(__fmul_rn(static_cast<float>(x), 4.6566127342e-10f), 0.5f);
#else
  const float rand = static_cast<float>(x) * 4.6566127342e-10f;
  return rand - 0.5f;
#endif
}

// u of the four elements 4 * block .. 4 * block + 3.
LQ_HD void philox_uniform4(const PhiloxKeys& key, uint64_t block, float (&u)[4]) {
  uint32_t w[4];
  philox4x32_10(key, block, w);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < 4; ++j) u[j] = word_to_uniform(w[j]);
}

// u of one element (tails, float64 and scalar paths): word index % 4 of its block.
LQ_HD float philox_uniform(const PhiloxKeys& key, uint64_t index) {
  uint32_t w[4];
  philox4x32_10(key, index >> 2, w);
  const uint32_t j = static_cast<uint32_t>(index & 3u);
  const uint32_t word = j == 0 ? w[0] : j == 1 ? w[1] : j == 2 ? w[2] : w[3];
  return word_to_uniform(word);
}

}  // namespace lic_quant
