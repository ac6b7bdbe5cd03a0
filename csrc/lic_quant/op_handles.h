// Typed dispatcher handles of the ops whose schemas csrc/ops.cpp declares: C++ code that calls
// the ops (the autograd nodes, the eager entry point, benchmarks/bench_overhead_cpp.py) goes
// through the dispatcher like any torch op, so each device's kernel is found by the tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace lic_quant {

// quantize_forward(y, scales, means, seed, temperature, mode, scale_bound, likelihood_bound,
// zero_center, family, rate) -> (y_hat, likelihoods), or (y_hat, bits) with rate
using ForwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, c10::string_view, double, double, bool, c10::string_view, bool);

// quantize_backward(grad_y_hat, grad_likelihoods, y, scales, means, seed, temperature, mode,
// scale_bound, likelihood_bound, zero_center, output_mask, family, rate)
// -> (grad_y, grad_scales, grad_means); with rate, grad_likelihoods is the gradient of the bits
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, c10::string_view,
    double, double, bool, std::array<bool, 3>, c10::string_view, bool);

inline const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lic_quant::quantize_forward", "")
                             .typed<ForwardFn>();
  return op;
}

inline const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lic_quant::quantize_backward", "")
                             .typed<BackwardFn>();
  return op;
}

}  // namespace lic_quant
