// The noise stream of SPEC section 3: u = f(seed, logical element index), identical on every backend.
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) with the
// counter (lo32(i), hi32(i), 0, 0) and key (lo32(seed), hi32(seed)), then Triton's
// uint_to_uniform_float on the first output word, so Triton's tl.rand(seed, i) gives the same bits.
#pragma once

#include "host_device.h"

namespace lic_quant {

constexpr uint32_t kPhiloxMulA = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kPhiloxMulB = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;  // Weyl increment of k0 (golden ratio)
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;  // Weyl increment of k1 (sqrt 3 - 1)

// First output word of Philox4x32-10 for counter (c0, c1, 0, 0) and key (k0, k1).
LQ_HD uint32_t philox4x32_10_word0(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0u, c3 = 0u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
#if defined(__CUDA_ARCH__)
    const uint32_t n0 = __umulhi(kPhiloxMulB, c2) ^ c1 ^ k0;
    const uint32_t n2 = __umulhi(kPhiloxMulA, c0) ^ c3 ^ k1;
    c1 = kPhiloxMulB * c2;
    c3 = kPhiloxMulA * c0;
#else
    // One widening product gives both halves (a vector unit has no 32-bit mulhi).
    const uint64_t pb = static_cast<uint64_t>(kPhiloxMulB) * c2;
    const uint64_t pa = static_cast<uint64_t>(kPhiloxMulA) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
#endif
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
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

// u in [-1/2, 1/2). Both steps round separately in float32: the host code is compiled with
// -ffp-contract=off and the device code uses the _rn intrinsics, which nvcc never contracts.
LQ_HD float philox_uniform(uint64_t seed, uint64_t index) {
  const uint32_t word = philox4x32_10_word0(
      static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
#if defined(__CUDA_ARCH__)
  return __fsub_rn(uint32_to_unit_float(word), 0.5f);
#else
  return uint32_to_unit_float(word) - 0.5f;
#endif
}

}  // namespace lic_quant
