// Portability macros shared by the CPU (C++), CUDA and host-side code paths.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LQ_HD __host__ __device__ __forceinline__
#else
#define LQ_HD inline __attribute__((always_inline))
#endif

// A loop the device compiler must not unroll (loops over a run-time count of mixture components:
// unrolled copies would multiply the kernel's size for no gain). The host compilers vectorize
// their own way and get no pragma.
#if defined(__CUDA_ARCH__)
#define LQ_ROLLED _Pragma("unroll 1")
#else
#define LQ_ROLLED
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
