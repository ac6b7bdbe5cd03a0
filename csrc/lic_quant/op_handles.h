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
#include <vector>

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

// mixture_quantize_forward(y, scales, means, weights, seed, temperature, mode, scale_bound,
// likelihood_bound, zero_center, family, weights_are_logits, rate) -> (y_hat, likelihoods or bits)
using MixtureForwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, c10::string_view, double, double, bool,
    c10::string_view, bool, bool);

// mixture_quantize_backward(grad_y_hat, grad_likelihoods, y, scales, means, weights, seed,
// temperature, mode, scale_bound, likelihood_bound, zero_center, family, weights_are_logits,
// output_mask, rate) -> (grad_y, grad_scales, grad_means, grad_weights)
using MixtureBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
    double, double, bool, c10::string_view, bool, std::array<bool, 4>, bool);

// entropy_bottleneck_forward(z, medians, matrices, biases, factors, seed, temperature, mode,
// likelihood_bound) -> (z_hat, likelihoods)
using EbForwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
    const at::Tensor&, const at::Tensor&, c10::string_view, double);

// entropy_bottleneck_backward(grad_z_hat, grad_likelihoods, z, medians, matrices, biases,
// factors, seed, temperature, mode, likelihood_bound, output_mask)
// -> (grad_z, grad_matrices, grad_biases, grad_factors)
using EbBackwardFn =
    std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>>(
        const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
        const at::Tensor&, c10::string_view, double, std::array<bool, 4>);

// The typed handle of the op `name`, looked up once per process by each accessor below.
template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

#define LQ_OP_HANDLE(accessor, Fn, name)                          \
  inline const c10::TypedOperatorHandle<Fn>& accessor() {         \
    static const auto op = find_op<Fn>("lic_quant::" name);       \
    return op;                                                    \
  }

LQ_OP_HANDLE(forward_op, ForwardFn, "quantize_forward")
LQ_OP_HANDLE(backward_op, BackwardFn, "quantize_backward")
LQ_OP_HANDLE(mixture_forward_op, MixtureForwardFn, "mixture_quantize_forward")
LQ_OP_HANDLE(mixture_backward_op, MixtureBackwardFn, "mixture_quantize_backward")
LQ_OP_HANDLE(eb_forward_op, EbForwardFn, "entropy_bottleneck_forward")
LQ_OP_HANDLE(eb_backward_op, EbBackwardFn, "entropy_bottleneck_backward")

#undef LQ_OP_HANDLE

}  // namespace lic_quant
