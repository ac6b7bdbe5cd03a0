// The seed and temperature tensors of a call, made on the host: the seed drawn from torch's
// default generator of the device when none is given, and plain Python values turned into the
// 0-dim tensors the ops take without a fill or randint kernel (docs/spec.md section 3). Used by
// the eager entry (csrc/ops.cpp) and registered as lic_quant::draw_seed / scalar_tensors for the
// Python paths (lic_quant/api.py).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ScalarOps.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randint.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>

#include "host_scalars.h"

#ifdef LIC_QUANT_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace lic_quant {
namespace {

using at::Tensor;

#ifdef LIC_QUANT_WITH_CUDA
// The finalizer of splitmix64: spreads (generator seed, offset) over all 64 bits.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

bool capturing_cuda_graph() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// One seed from the CUDA generator of `device` without a kernel: the generator's seed and Philox
// offset, read and advanced on the host as a CUDA RNG kernel would. torch.manual_seed and
// torch.cuda.manual_seed reset both, so they govern reproducibility. Not during graph capture
// (the state lives on the device there): callers use a randint kernel then.
int64_t draw_cuda_seed(const c10::Device& device) {
  auto gen = at::cuda::detail::getDefaultCUDAGenerator(device.index());
  std::lock_guard<std::mutex> lock(gen.mutex());
  const at::PhiloxCudaState state =
      at::check_generator<at::CUDAGeneratorImpl>(gen)->philox_cuda_state(4);
  TORCH_INTERNAL_ASSERT(!state.captured_, "lic_quant: CUDA seed drawn on the host during capture");
  return static_cast<int64_t>(mix64(state.seed_.val ^ mix64(state.offset_.val + 1)));
}
#endif

#ifdef LIC_QUANT_WITH_CUDA
constexpr const char* kDevices = "CPU and CUDA";
#else
constexpr const char* kDevices = "CPU";
#endif

// Bit for bit what torch.randint(-2**63, 2**63 - 1, ()) returns on the CPU (one random64() of
// the generator, reduced as ATen's uniform_int_from_to does), without dispatching a kernel: so
// eager calls and compiled graphs that draw with randint (Inductor with fallback_random) agree.
int64_t draw_cpu_seed() {
  constexpr uint64_t kRange = ~uint64_t{0};  // (2^63 - 1) - (-2^63)
  constexpr uint64_t kBase = uint64_t{1} << 63;  // -2^63 as unsigned
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  const uint64_t r = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
  return static_cast<int64_t>(r % kRange + kBase);
}

// lic_quant::draw_seed: the seed the op draws for seed=None, from torch's default generator of
// `device` (lic_quant.make_seed(None, device) returns it as a tensor).
int64_t draw_seed(c10::Device device) {
  if (device.is_cpu()) return draw_cpu_seed();
#ifdef LIC_QUANT_WITH_CUDA
  if (device.is_cuda()) {
    TORCH_CHECK(!capturing_cuda_graph(),
                "lic_quant: draw_seed cannot draw on the host during CUDA graph capture; pass a "
                "seed tensor");
    return draw_cuda_seed(device);
  }
#endif
  TORCH_CHECK(false, "lic_quant: draw_seed supports ", kDevices, " devices; got ", device);
  return 0;
}

#ifdef LIC_QUANT_WITH_CUDA
// Captured: a host buffer would be read at replay, so values are made by kernels the graph
// replays, and a seed=None draw stays fresh per replay (graph-safe Philox offsets).
Tensor captured_seed(c10::Device device, std::optional<int64_t> seed) {
  const auto opts = at::TensorOptions().device(device).dtype(at::kLong);
  return seed.has_value() ? at::full({}, *seed, opts)
                          : at::randint(std::numeric_limits<int64_t>::min(),
                                        std::numeric_limits<int64_t>::max(), {}, opts);
}

// Host values to the device in one asynchronous copy from pinned memory (the caching host
// allocator keeps the buffer until the copy is done) instead of a fill or randint kernel each.
Tensor copy_to_device(c10::Device device, std::initializer_list<int64_t> words) {
  Tensor host = at::empty({static_cast<int64_t>(words.size())},
                          at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(words.begin(), words.end(), host.mutable_data_ptr<int64_t>());
  return host.to(device, at::kLong, /*non_blocking=*/true);
}

int64_t double_as_int64(double x) {
  int64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}
#endif

[[noreturn]] void unsupported_device(c10::Device device) {
  TORCH_CHECK(false, "lic_quant: the C++ ops run on ", kDevices, " tensors; got ", device);
  std::abort();
}

}  // namespace

Tensor seed_tensor(c10::Device device, std::optional<int64_t> seed) {
  if (device.is_cpu()) {
    return at::detail::scalar_tensor_static(seed.has_value() ? *seed : draw_cpu_seed(),
                                            at::kLong, at::kCPU);
  }
#ifdef LIC_QUANT_WITH_CUDA
  if (device.is_cuda()) {
    if (capturing_cuda_graph()) return captured_seed(device, seed);
    return copy_to_device(device, {seed.has_value() ? *seed : draw_cuda_seed(device)})
        .select(0, 0);
  }
#endif
  unsupported_device(device);
}

Tensor temperature_tensor(c10::Device device, double temperature) {
  if (device.is_cpu()) {
    // A training loop passes one temperature for many steps: reuse its tensor (per thread; the
    // ops only read it, and it is never handed to the caller).
    thread_local Tensor last;
    if (!last.defined() || last.const_data_ptr<double>()[0] != temperature ||
        std::signbit(last.const_data_ptr<double>()[0]) != std::signbit(temperature)) {
      last = at::detail::scalar_tensor_static(temperature, at::kDouble, at::kCPU);
    }
    return last;
  }
#ifdef LIC_QUANT_WITH_CUDA
  if (device.is_cuda()) {
    if (capturing_cuda_graph()) {
      return at::full({}, temperature, at::TensorOptions().device(device).dtype(at::kDouble));
    }
    return copy_to_device(device, {double_as_int64(temperature)}).select(0, 0).view(at::kDouble);
  }
#endif
  unsupported_device(device);
}

std::tuple<Tensor, Tensor> scalar_tensors(c10::Device device, std::optional<int64_t> seed,
                                          double temperature) {
#ifdef LIC_QUANT_WITH_CUDA
  if (device.is_cuda() && !capturing_cuda_graph()) {
    // Both values in one copy.
    Tensor dev = copy_to_device(
        device, {seed.has_value() ? *seed : draw_cuda_seed(device), double_as_int64(temperature)});
    return {dev.select(0, 0), dev.select(0, 1).view(at::kDouble)};
  }
#endif
  return {seed_tensor(device, seed), temperature_tensor(device, temperature)};
}

}  // namespace lic_quant

TORCH_LIBRARY_FRAGMENT(lic_quant, m) {
  // Draws from torch's generators: tagged like aten's random ops, so tracing treats them as such.
  m.def("draw_seed(Device device) -> int", &lic_quant::draw_seed,
        {at::Tag::nondeterministic_seeded});
  m.def("scalar_tensors(Device device, int? seed, float temperature) -> (Tensor, Tensor)",
        &lic_quant::scalar_tensors, {at::Tag::nondeterministic_seeded});
}

