// Host-side preparation of one op call shared by the CPU (.cpp) and CUDA (.cu) implementations:
// the checks of checks.h, contiguous inputs, the outputs, and the kernels' QuantParams.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <string>
#include <type_traits>

#include "checks.h"
#include "quantize_math.h"

namespace lic_quant {

// The data of an optional (possibly undefined) tensor: nullptr when it is undefined.
template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}
template <typename scalar_t>
scalar_t* mutable_or_null(at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr;
}

// Op-level checks of both ops: the call's arguments, then the seed and temperature tensors.
inline Choices check_inputs(const at::Tensor& y, const at::Tensor& scales,
                            const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                            const at::Tensor& temperature, c10::string_view family,
                            c10::string_view mode, double scale_bound, double likelihood_bound,
                            bool rate = false) {
  const Choices choices =
      check_call(y, scales, means, family, mode, scale_bound, likelihood_bound, rate);
  check_scalar_tensor(seed, y, "seed", at::kLong, "a 0-dim int64 tensor");
  check_scalar_tensor(temperature, y, "temperature", at::kDouble, "a 0-dim float64 tensor");
  return choices;
}

template <typename T>
QuantParams<T> make_params(int32_t mode, double temperature, double scale_bound,
                           double likelihood_bound, bool zero_center) {
  QuantParams<T> p;
  p.mode = mode;
  p.temperature = static_cast<T>(temperature);
  p.scale_bound = static_cast<T>(scale_bound);
  p.likelihood_bound = static_cast<T>(likelihood_bound);
  p.zero_center = zero_center;
  p.scale_min = ScaleRange<T>::kMin;
  p.scale_max = ScaleRange<T>::kMax;
  return p;
}

inline at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

// A new uninitialized contiguous tensor. CPU tensors are made directly, not through the
// dispatcher: for the small tensors of a training step's host work that halves the cost of each
// of the op's two to three allocations.
inline at::Tensor new_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().is_cpu()) return at::Tensor(at::detail::empty_cpu(sizes, options));
  return at::empty(sizes, options);
}

// Calls fn(std::integral_constant<int, kFamily>): the family index of a call as a template
// constant, one instantiation of the kernels per family (CPU, mixture and CUDA launches).
template <typename Fn>
void dispatch_family(int32_t family, Fn&& fn) {
  switch (family) {
    case kLaplace: return fn(std::integral_constant<int, kLaplace>{});
    case kLogistic: return fn(std::integral_constant<int, kLogistic>{});
    default: return fn(std::integral_constant<int, kGaussian>{});
  }
}

// One forward call after its checks: the noise index is the logical row-major index, so strided
// inputs are made contiguous; outputs are allocated contiguous. Device checks and guards are the
// caller's (before this, so the outputs land on the right device).
// With rate, `likelihoods` is the bits output, shape (N,), and no P tensor exists.
struct ForwardCall {
  int32_t mode, family;
  at::Tensor y, scales, means;  // means undefined when absent
  at::Tensor y_hat, likelihoods;
  int64_t samples = 0, sample_size = 0;  // rate: y.shape[0] and the elements of one sample
};

inline ForwardCall prepare_forward(const at::Tensor& y, const at::Tensor& scales,
                                   const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                                   const at::Tensor& temperature, c10::string_view family,
                                   c10::string_view mode, double scale_bound,
                                   double likelihood_bound, bool rate = false) {
  const Choices choices = check_inputs(y, scales, means, seed, temperature, family, mode,
                                       scale_bound, likelihood_bound, rate);
  ForwardCall c;
  c.mode = choices.mode;
  c.family = choices.family;
  c.y = y.contiguous();
  c.scales = scales.contiguous();
  c.means = contiguous_or_undefined(means);
  c.y_hat = new_tensor(c.y.sizes(), c.y.options());
  const auto lik_options = c.y.options().dtype(likelihood_dtype(y.scalar_type()));
  if (rate) {
    c.samples = y.size(0);
    c.sample_size = c.samples > 0 ? y.numel() / c.samples : 0;
    c.likelihoods = new_tensor({c.samples}, lik_options);
  } else {
    c.likelihoods = new_tensor(c.y.sizes(), lik_options);
  }
  return c;
}

// One backward call after its checks. grad_* are what the op returns (shape [0] where not asked
// for); out_* are the same tensors where asked for and undefined elsewhere, so kernels get null
// pointers for the gradients they must not write.
struct BackwardCall {
  int32_t mode, family;
  int64_t sample_size = 0;  // rate: g_lik is the bits' gradient, one value per sample
  at::Tensor g_yhat, g_lik, y, scales, means;  // g_yhat and means undefined when absent
  at::Tensor grad_y, grad_scales, grad_means;
  at::Tensor out_y, out_scales, out_means;
};

inline BackwardCall prepare_backward(const c10::optional<at::Tensor>& grad_y_hat,
                                     const at::Tensor& grad_lik, const at::Tensor& y,
                                     const at::Tensor& scales,
                                     const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                                     const at::Tensor& temperature, c10::string_view family,
                                     c10::string_view mode, double scale_bound,
                                     double likelihood_bound, std::array<bool, 3> output_mask,
                                     bool rate = false) {
  const Choices choices = check_inputs(y, scales, means, seed, temperature, family, mode,
                                       scale_bound, likelihood_bound, rate);
  check_grad_likelihoods(grad_lik, y, rate);
  if (grad_y_hat.has_value() && grad_y_hat->defined()) check_like(*grad_y_hat, y, "grad_y_hat");
  const bool has_means = means.has_value() && means->defined();
  TORCH_CHECK_VALUE(!output_mask[2] || has_means,
                    "lic_quant: grad of means requested without means");
  BackwardCall c;
  c.mode = choices.mode;
  c.family = choices.family;
  if (rate && y.size(0) > 0) c.sample_size = y.numel() / y.size(0);
  c.y = y.contiguous();
  c.scales = scales.contiguous();
  c.means = contiguous_or_undefined(means);
  c.g_lik = grad_lik.contiguous();
  c.g_yhat = contiguous_or_undefined(grad_y_hat);
  const auto opts = c.y.options();
  auto grad = [&](bool asked) { return new_tensor(asked ? c.y.sizes() : at::IntArrayRef{0}, opts); };
  c.grad_y = grad(output_mask[0]);
  c.grad_scales = grad(output_mask[1]);
  c.grad_means = grad(output_mask[2]);
  c.out_y = output_mask[0] ? c.grad_y : at::Tensor();
  c.out_scales = output_mask[1] ? c.grad_scales : at::Tensor();
  c.out_means = output_mask[2] ? c.grad_means : at::Tensor();
  return c;
}

// ---------------------------------------------------------------------------------------------
// Mixtures (docs/spec.md section 7).

// The parameter as the kernels read it: in place when component_layout takes it, else a
// contiguous copy.
inline at::Tensor in_place_or_copy(const at::Tensor& t, ComponentLayout& layout) {
  if (auto l = component_layout(t)) {
    layout = *l;
    return t;
  }
  at::Tensor c = t.contiguous();
  layout = *component_layout(c);
  return c;
}

// A gradient for parameter t (as read): t's own strides where it is dense, so the gradient of a
// view flows back through the view's backward without a copy; contiguous otherwise.
inline at::Tensor grad_like(const at::Tensor& t, bool asked, ComponentLayout& layout) {
  if (!asked) return at::empty({0}, t.options());
  at::Tensor g =
      t.is_non_overlapping_and_dense() ? at::empty_like(t) : at::empty(t.sizes(), t.options());
  layout = *component_layout(g);
  return g;
}

// One mixture call after its checks: y contiguous, the parameters as the kernels read them. The
// seed and temperature are checked, not read (on CUDA they stay on the device).
struct MixtureCall {
  int32_t mode = 0, family = 0;
  int K = 0;
  at::Tensor y, scales, means, weights;
  ComponentLayout ls{}, lm{}, lw{};
};

inline MixtureCall prepare_mixture(const at::Tensor& y, const at::Tensor& scales,
                                   const at::Tensor& means, const at::Tensor& weights,
                                   const at::Tensor& seed, const at::Tensor& temperature,
                                   c10::string_view mode, c10::string_view family,
                                   double scale_bound, double likelihood_bound, bool rate) {
  const Choices ch = check_mixture_call(y, scales, means, weights, family, mode, scale_bound,
                                        likelihood_bound, rate);
  check_scalar_tensor(seed, y, "seed", at::kLong, "a 0-dim int64 tensor");
  check_scalar_tensor(temperature, y, "temperature", at::kDouble, "a 0-dim float64 tensor");
  MixtureCall c;
  c.mode = ch.mode;
  c.family = ch.family;
  c.K = static_cast<int>(scales.size(0));
  c.y = y.contiguous();
  c.scales = in_place_or_copy(scales, c.ls);
  c.means = in_place_or_copy(means, c.lm);
  c.weights = in_place_or_copy(weights, c.lw);
  return c;
}

}  // namespace lic_quant
