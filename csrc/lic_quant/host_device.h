// Portability macros shared by the CPU (C++), CUDA and host-side code paths.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LQ_HD __host__ __device__ __forceinline__
#else
#define LQ_HD inline __attribute__((always_inline))
#endif

namespace lic_quant {

// Bit casts without memcpy so they inline identically on host and device.
LQ_HD uint32_t float_bits(float x) {
  union { float f; uint32_t u; } c;
  c.f = x;
  return c.u;
}
LQ_HD float bits_float(uint32_t u) {
  union { float f; uint32_t u; } c;
  c.u = u;
  return c.f;
}
LQ_HD uint64_t double_bits(double x) {
  union { double f; uint64_t u; } c;
  c.f = x;
  return c.u;
}
LQ_HD double bits_double(uint64_t u) {
  union { double f; uint64_t u; } c;
  c.u = u;
  return c.f;
}

}  // namespace lic_quant
