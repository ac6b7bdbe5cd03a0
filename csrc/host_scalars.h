// The seed and temperature tensors of a call, made on the host (csrc/host_scalars.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace lic_quant {

// The 0-dim int64 seed tensor on `device`: `seed`, or for nullopt one drawn from torch's default
// generator of that device. No kernel (CPU: a host tensor; CUDA: an asynchronous copy from pinned
// memory), except during CUDA graph capture, where a kernel the graph replays makes it.
at::Tensor seed_tensor(c10::Device device, std::optional<int64_t> seed);

// The 0-dim float64 temperature tensor on `device`, made as seed_tensor makes the seed.
at::Tensor temperature_tensor(c10::Device device, double temperature);

// Both, in one copy on CUDA.
std::tuple<at::Tensor, at::Tensor> scalar_tensors(c10::Device device, std::optional<int64_t> seed,
                                                  double temperature);

}  // namespace lic_quant
