// Fused CPU kernels: one pass forward (y, mu, sigma -> y_hat, P), one pass backward
// (g_yhat, g_P, y, mu, sigma -> grad_y, grad_mu, grad_sigma) that recomputes u from the seed.
// The float32 path works on blocks of kBlock elements in plain loops over the header math, which
// GCC vectorizes; target_clones builds AVX-512, AVX2 and baseline versions chosen at load time
// (never -march=native). Contraction is off (setup.py), so every ISA gives the same bits.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../lic_quant/op_args.h"
#include "cpu_kernels.h"

namespace lic_quant {
namespace {

constexpr int64_t kBlock = 256;
// Elements per task of at::parallel_for: large enough to hide the scheduling cost.
constexpr int64_t kGrain = 32768;

static_assert(kBlock <= kMaxNoiseBlock, "one noise fill per block");
static_assert(kBlock == kRateChunk, "a rate chunk is one block");

// Mode, centring and family are template constants so the per-element switch folds away and the
// loop body is straight-line code the vectorizer accepts.
template <int32_t kMode, bool kZeroCenter, int kFamily>
LQ_CLONES void forward_block_f32(const float* __restrict y, const float* __restrict mu,
                                 const float* __restrict sigma, const float* __restrict u,
                                 float* __restrict y_hat, float* __restrict lik, int64_t n,
                                 QuantParams<float> p) {
  p.mode = kMode;
  p.zero_center = kZeroCenter;
  for (int64_t j = 0; j < n; ++j) {
    const ForwardOut<float> o = forward_element<float, kFamily>(y[j], mu[j], sigma[j], u[j], p);
    y_hat[j] = o.y_hat;
    lik[j] = o.likelihood;
  }
}

template <int32_t kMode, bool kZeroCenter, bool kSkipLikelihood, int kFamily, bool kRate = false>
LQ_CLONES void backward_block_f32(const float* __restrict g_yhat, const float* __restrict g_lik,
                                  const float* __restrict y, const float* __restrict mu,
                                  const float* __restrict sigma, const float* __restrict u,
                                  float* __restrict gy, float* __restrict gmu,
                                  float* __restrict gs, int64_t n, QuantParams<float> p) {
  p.mode = kMode;
  p.zero_center = kZeroCenter;
  for (int64_t j = 0; j < n; ++j) {
    const BackwardOut<float> o = backward_element<float, kFamily, kRate>(
        g_yhat[j], g_lik[j], y[j], mu[j], sigma[j], u[j], p, kSkipLikelihood);
    gy[j] = o.grad_y;
    gmu[j] = o.grad_mu;
    gs[j] = o.grad_sigma;
  }
}

// Calls fn with (mode, zero_center) as compile-time constants.
template <typename Fn>
void dispatch_mode_center(int32_t mode, bool zero_center, Fn&& fn) {
  dispatch_mode(mode, [&](auto mode_c) {
    if (zero_center) {
      fn(mode_c, std::true_type{});
    } else {
      fn(mode_c, std::false_type{});
    }
  });
}

// Loads kBlock elements of a half/bfloat16/float tensor as float. float32 blocks are used in place.
template <typename scalar_t>
const float* as_float(const scalar_t* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(src[j]);
    return buf;
  }
}

// float -> float16 / bfloat16 with NaN written as 0x7FFF, the canonical NaN of every backend
// (c10's conversions would write 0x7E00 / 0x7FC0).
template <typename scalar_t>
void store(const float* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    for (int64_t j = 0; j < n; ++j) {
      dst[j] = src[j] != src[j] ? scalar_t(0x7FFF, scalar_t::from_bits()) : static_cast<scalar_t>(src[j]);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<scalar_t>(src[j]);
  }
}

struct Scratch {
  alignas(64) float a[kBlock];
};

// Runs fn(i, n) over [0, numel) in blocks of kBlock elements that start at multiples of kBlock,
// so every block's noise starts on a Philox block boundary; blocks are spread over the threads.
template <typename Fn>
void for_each_block(int64_t numel, Fn&& fn) {
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kGrain / kBlock, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t i = b * kBlock;
      fn(i, std::min(kBlock, numel - i));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// float16 / bfloat16 / float32: float compute, vectorized blocks.

template <typename scalar_t>
void forward_reduced(const scalar_t* y, const scalar_t* mu, const scalar_t* sigma, scalar_t* y_hat,
                     float* lik, int64_t numel, uint64_t seed, const QuantParams<float>& p,
                     int32_t family) {
  const PhiloxKeys keys = philox_keys(seed);
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kGrain / kBlock, [&](int64_t b_begin, int64_t b_end) {
    Scratch by, bm, bs, bu, byh;
    std::fill(bm.a, bm.a + kBlock, 0.0f);
    std::fill(bu.a, bu.a + kBlock, 0.0f);
    for (int64_t blk = b_begin; blk < b_end; ++blk) {
      const int64_t i = blk * kBlock;
      const int64_t n = std::min(kBlock, numel - i);
      const float* fy = as_float(y + i, by.a, n);
      const float* fm = mu ? as_float(mu + i, bm.a, n) : bm.a;
      const float* fs = as_float(sigma + i, bs.a, n);
      if (mode_uses_noise(p.mode)) fill_noise_block(bu.a, n, keys, static_cast<uint64_t>(i));
      float* out = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(y_hat + i) : byh.a;
      dispatch_family(family, [&](auto fam) {
        dispatch_mode_center(p.mode, p.zero_center, [&](auto m, auto zc) {
          forward_block_f32<decltype(m)::value, decltype(zc)::value, decltype(fam)::value>(
              fy, fm, fs, bu.a, out, lik + i, n, p);
        });
      });
      if constexpr (!std::is_same_v<scalar_t, float>) store(byh.a, y_hat + i, n);
    }
  });
}

// sample_size > 0: rate=True, g_lik holds one gradient per sample (of its bits), spread over the
// sample's elements block by block.
template <typename scalar_t>
void backward_reduced(const scalar_t* g_yhat, const float* g_lik, const scalar_t* y,
                      const scalar_t* mu, const scalar_t* sigma, scalar_t* gy, scalar_t* gmu,
                      scalar_t* gs, int64_t numel, uint64_t seed, const QuantParams<float>& p,
                      int32_t family, int64_t sample_size = 0) {
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const PhiloxKeys keys = philox_keys(seed);
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kGrain / kBlock, [&](int64_t b_begin, int64_t b_end) {
    Scratch bg, by, bm, bs, bu, oy, om, os, bgl;
    std::fill(bg.a, bg.a + kBlock, 0.0f);
    std::fill(bm.a, bm.a + kBlock, 0.0f);
    std::fill(bu.a, bu.a + kBlock, 0.0f);
    for (int64_t blk = b_begin; blk < b_end; ++blk) {
      const int64_t i = blk * kBlock;
      const int64_t n = std::min(kBlock, numel - i);
      const float* fg = g_yhat ? as_float(g_yhat + i, bg.a, n) : bg.a;
      const float* fy = as_float(y + i, by.a, n);
      const float* fm = mu ? as_float(mu + i, bm.a, n) : bm.a;
      const float* fs = as_float(sigma + i, bs.a, n);
      if (mode_uses_noise(p.mode)) fill_noise_block(bu.a, n, keys, static_cast<uint64_t>(i));
      // Gradients nobody asked for land in scratch, never in memory that is read back.
      float* py = (kFloat && gy) ? reinterpret_cast<float*>(gy + i) : oy.a;
      float* pm = (kFloat && gmu) ? reinterpret_cast<float*>(gmu + i) : om.a;
      float* ps = (kFloat && gs) ? reinterpret_cast<float*>(gs + i) : os.a;
      const bool rate = sample_size > 0;
      if (rate) spread_sample_grads(g_lik, sample_size, i, n, bgl.a);
      const bool skip = !rate && all_negative(g_lik + i, n);
      dispatch_family(family, [&](auto fam) {
        dispatch_mode_center(p.mode, p.zero_center, [&](auto m, auto zc) {
          constexpr int32_t kM = decltype(m)::value;
          constexpr bool kZ = decltype(zc)::value;
          constexpr int kF = decltype(fam)::value;
          if (rate) {
            backward_block_f32<kM, kZ, false, kF, true>(fg, bgl.a, fy, fm, fs, bu.a, py, pm, ps, n,
                                                        p);
          } else if (skip) {
            backward_block_f32<kM, kZ, true, kF>(fg, g_lik + i, fy, fm, fs, bu.a, py, pm, ps, n, p);
          } else {
            backward_block_f32<kM, kZ, false, kF>(fg, g_lik + i, fy, fm, fs, bu.a, py, pm, ps, n, p);
          }
        });
      });
      if constexpr (!kFloat) {
        if (gy) store(oy.a, gy + i, n);
        if (gmu) store(om.a, gmu + i, n);
        if (gs) store(os.a, gs + i, n);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// float64: double compute through libm, element by element (the noise is float32 on every
// backend and widens exactly).

// fn(i0, n, u) over the blocks of for_each_block with u the block's noise as float32 (zeros where
// the mode draws none): the element-by-element float64 loops.
template <typename Fn>
void for_each_noise_block(int64_t numel, int32_t mode, uint64_t seed, Fn&& fn) {
  const bool noisy = mode_uses_noise(mode);
  const PhiloxKeys keys = philox_keys(seed);
  for_each_block(numel, [&](int64_t i0, int64_t n) {
    Scratch bu;
    if (noisy) {
      fill_noise_block(bu.a, n, keys, static_cast<uint64_t>(i0));
    } else {
      std::fill(bu.a, bu.a + n, 0.0f);
    }
    fn(i0, n, bu.a);
  });
}

template <int kFamily>
void forward_double(const double* y, const double* mu, const double* sigma, double* y_hat,
                    double* lik, int64_t numel, uint64_t seed, const QuantParams<double>& p) {
  for_each_noise_block(numel, p.mode, seed, [&](int64_t i0, int64_t n, const float* u) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = i0 + j;
      const ForwardOut<double> o =
          forward_element<double, kFamily>(y[i], mu ? mu[i] : 0.0, sigma[i],
                                           static_cast<double>(u[j]), p);
      y_hat[i] = o.y_hat;
      lik[i] = o.likelihood;
    }
  });
}

template <int kFamily, bool kRate = false>
void backward_double(const double* g_yhat, const double* g_lik, const double* y, const double* mu,
                     const double* sigma, double* gy, double* gmu, double* gs, int64_t numel,
                     uint64_t seed, const QuantParams<double>& p, int64_t sample_size = 0) {
  for_each_noise_block(numel, p.mode, seed, [&](int64_t i0, int64_t n, const float* u) {
    double g_rate[kBlock];
    if constexpr (kRate) spread_sample_grads(g_lik, sample_size, i0, n, g_rate);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = i0 + j;
      const double gl = kRate ? g_rate[j] : g_lik[i];
      const BackwardOut<double> o = backward_element<double, kFamily, kRate>(
          g_yhat ? g_yhat[i] : 0.0, gl, y[i], mu ? mu[i] : 0.0, sigma[i],
          static_cast<double>(u[j]), p, gl < 0.0);
      if (gy) gy[i] = o.grad_y;
      if (gmu) gmu[i] = o.grad_mu;
      if (gs) gs[i] = o.grad_sigma;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// rate=True forward (docs/spec.md section 8): y_hat as above, and per sample the sum of -log2 P
// (cpu_kernels.h: chunks of kRateChunk = kBlock elements), with P only in a block-sized scratch.

template <typename scalar_t>
void forward_rate_reduced(const scalar_t* y, const scalar_t* mu, const scalar_t* sigma,
                          scalar_t* y_hat, float* bits, int64_t samples, int64_t sample_size,
                          uint64_t seed, const QuantParams<float>& p, int32_t family) {
  const PhiloxKeys keys = philox_keys(seed);
  alignas(64) static const float kZeros[kBlock] = {};
  for_each_rate_chunk(samples, sample_size, kGrain / kBlock, bits, [&](int64_t i, int64_t n) {
    Scratch by, bm, bs, byh, lik;
    alignas(64) float bu[kNoiseAtBuffer];
    const float* fy = as_float(y + i, by.a, n);
    const float* fm = mu ? as_float(mu + i, bm.a, n) : kZeros;
    const float* fs = as_float(sigma + i, bs.a, n);
    const float* fu = mode_uses_noise(p.mode) ? noise_at(bu, i, n, keys) : kZeros;
    float* out = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(y_hat + i) : byh.a;
    dispatch_family(family, [&](auto fam) {
      dispatch_mode_center(p.mode, p.zero_center, [&](auto m, auto zc) {
        forward_block_f32<decltype(m)::value, decltype(zc)::value, decltype(fam)::value>(
            fy, fm, fs, fu, out, lik.a, n, p);
      });
    });
    if constexpr (!std::is_same_v<scalar_t, float>) store(byh.a, y_hat + i, n);
    return chunk_bits(lik.a, n);
  });
}

template <int kFamily>
void forward_rate_double(const double* y, const double* mu, const double* sigma, double* y_hat,
                         double* bits, int64_t samples, int64_t sample_size, uint64_t seed,
                         const QuantParams<double>& p) {
  const PhiloxKeys keys = philox_keys(seed);
  const bool noisy = mode_uses_noise(p.mode);
  for_each_rate_chunk(samples, sample_size, kGrain / kBlock, bits, [&](int64_t i0, int64_t n) {
    alignas(64) float bu[kNoiseAtBuffer];
    double lik[kBlock];
    const float* u = noisy ? noise_at(bu, i0, n, keys) : nullptr;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = i0 + j;
      const ForwardOut<double> o = forward_element<double, kFamily>(
          y[i], mu ? mu[i] : 0.0, sigma[i], u ? static_cast<double>(u[j]) : 0.0, p);
      y_hat[i] = o.y_hat;
      lik[j] = o.likelihood;
    }
    return chunk_bits(lik, n);
  });
}

// ---------------------------------------------------------------------------------------------
// Op implementations.

void check_cpu(const at::Tensor& y) {
  TORCH_CHECK(y.device().is_cpu(), "lic_quant: the CPU kernels got y on ", y.device());
}

// The seed and the temperature are read on the host: cheap for CPU tensors, and the range of a
// tensor temperature is checked here.
struct HostScalars {
  uint64_t seed;
  double temperature;
};

// Both are checked 0-dim CPU tensors of the right dtype by now: read the element directly
// (item() goes through the dispatcher, microseconds per call on small tensors).
HostScalars read_scalars(const at::Tensor& seed, const at::Tensor& temperature) {
  const double t = *temperature.const_data_ptr<double>();
  check_unit_interval("temperature", t);
  return {static_cast<uint64_t>(*seed.const_data_ptr<int64_t>()), t};
}

std::tuple<at::Tensor, at::Tensor> quantize_forward_cpu(
    const at::Tensor& y_in, const at::Tensor& scales_in, const c10::optional<at::Tensor>& means_in,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode_name,
    double scale_bound, double likelihood_bound, bool zero_center, c10::string_view family,
    bool rate) {
  check_cpu(y_in);
  ForwardCall c = prepare_forward(y_in, scales_in, means_in, seed, temperature, family, mode_name,
                                  scale_bound, likelihood_bound, rate);
  const HostScalars h = read_scalars(seed, temperature);
  const int64_t numel = c.y.numel();
  if (rate) {
    if (numel == 0) return {c.y_hat, c.likelihoods.zero_()};  // an empty sum is 0 bits
    if (c.y.scalar_type() == at::kDouble) {
      dispatch_family(c.family, [&](auto fam) {
        forward_rate_double<decltype(fam)::value>(
            c.y.const_data_ptr<double>(), data_or_null<double>(c.means),
            c.scales.const_data_ptr<double>(), c.y_hat.mutable_data_ptr<double>(),
            c.likelihoods.mutable_data_ptr<double>(), c.samples, c.sample_size, h.seed,
            make_params<double>(c.mode, h.temperature, scale_bound, likelihood_bound, zero_center));
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.y.scalar_type(), "lic_quant_rate", [&] {
        forward_rate_reduced<scalar_t>(
            c.y.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(c.means),
            c.scales.const_data_ptr<scalar_t>(), c.y_hat.mutable_data_ptr<scalar_t>(),
            c.likelihoods.mutable_data_ptr<float>(), c.samples, c.sample_size, h.seed,
            make_params<float>(c.mode, h.temperature, scale_bound, likelihood_bound, zero_center),
            c.family);
      });
    }
    return {c.y_hat, c.likelihoods};
  }
  if (numel == 0) return {c.y_hat, c.likelihoods};
  if (c.y.scalar_type() == at::kDouble) {
    dispatch_family(c.family, [&](auto fam) {
      forward_double<decltype(fam)::value>(
          c.y.const_data_ptr<double>(), data_or_null<double>(c.means),
          c.scales.const_data_ptr<double>(), c.y_hat.mutable_data_ptr<double>(),
          c.likelihoods.mutable_data_ptr<double>(), numel, h.seed,
          make_params<double>(c.mode, h.temperature, scale_bound, likelihood_bound, zero_center));
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.y.scalar_type(), "lic_quant_fwd", [&] {
      forward_reduced<scalar_t>(c.y.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(c.means),
                                c.scales.const_data_ptr<scalar_t>(),
                                c.y_hat.mutable_data_ptr<scalar_t>(),
                                c.likelihoods.mutable_data_ptr<float>(), numel, h.seed,
                                make_params<float>(c.mode, h.temperature, scale_bound,
                                                   likelihood_bound, zero_center),
                                c.family);
    });
  }
  return {c.y_hat, c.likelihoods};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_backward_cpu(
    const c10::optional<at::Tensor>& grad_y_hat_in, const at::Tensor& grad_lik_in,
    const at::Tensor& y_in, const at::Tensor& scales_in, const c10::optional<at::Tensor>& means_in,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode_name,
    double scale_bound, double likelihood_bound, bool zero_center,
    std::array<bool, 3> output_mask, c10::string_view family, bool rate) {
  check_cpu(y_in);
  BackwardCall c = prepare_backward(grad_y_hat_in, grad_lik_in, y_in, scales_in, means_in, seed,
                                    temperature, family, mode_name, scale_bound,
                                    likelihood_bound, output_mask, rate);
  const HostScalars h = read_scalars(seed, temperature);
  const int64_t numel = c.y.numel();
  if (numel == 0) return {c.grad_y, c.grad_scales, c.grad_means};
  if (c.y.scalar_type() == at::kDouble) {
    dispatch_family(c.family, [&](auto fam) {
      auto run = [&](auto rate_c) {
        backward_double<decltype(fam)::value, decltype(rate_c)::value>(
            data_or_null<double>(c.g_yhat), c.g_lik.const_data_ptr<double>(),
            c.y.const_data_ptr<double>(), data_or_null<double>(c.means),
            c.scales.const_data_ptr<double>(), mutable_or_null<double>(c.out_y),
            mutable_or_null<double>(c.out_means), mutable_or_null<double>(c.out_scales), numel,
            h.seed,
            make_params<double>(c.mode, h.temperature, scale_bound, likelihood_bound, zero_center),
            c.sample_size);
      };
      if (rate) {
        run(std::true_type{});
      } else {
        run(std::false_type{});
      }
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.y.scalar_type(), "lic_quant_bwd", [&] {
      backward_reduced<scalar_t>(
          data_or_null<scalar_t>(c.g_yhat), c.g_lik.const_data_ptr<float>(),
          c.y.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(c.means),
          c.scales.const_data_ptr<scalar_t>(), mutable_or_null<scalar_t>(c.out_y),
          mutable_or_null<scalar_t>(c.out_means), mutable_or_null<scalar_t>(c.out_scales), numel,
          h.seed,
          make_params<float>(c.mode, h.temperature, scale_bound, likelihood_bound, zero_center),
          c.family, c.sample_size);
    });
  }
  return {c.grad_y, c.grad_scales, c.grad_means};
}

at::Tensor uniform_noise_cpu(const at::Tensor& seed, c10::SymIntArrayRef size) {
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.dim() == 0,
                   "lic_quant: seed must be a 0-dim int64 tensor");
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(seed.item<int64_t>()));
  at::Tensor u = at::empty(C10_AS_INTARRAYREF_SLOW(size), seed.options().dtype(at::kFloat));
  float* out = u.mutable_data_ptr<float>();
  for_each_block(u.numel(), [&](int64_t i, int64_t n) {
    if (n == kBlock) {
      fill_noise_block(out + i, n, keys, static_cast<uint64_t>(i));
    } else {  // the last block: the fill writes whole groups of four
      Scratch bu;
      fill_noise_block(bu.a, n, keys, static_cast<uint64_t>(i));
      std::copy(bu.a, bu.a + n, out + i);
    }
  });
  return u;
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CPU, m) {
  m.impl("quantize_forward", &lic_quant::quantize_forward_cpu);
  m.impl("quantize_backward", &lic_quant::quantize_backward_cpu);
  m.impl("uniform_noise", &lic_quant::uniform_noise_cpu);
}
