// Host-side argument handling shared by the CPU (.cpp) and CUDA (.cu) op implementations: the
// checks that name the offending argument, and the translation of schema arguments to QuantParams.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <string>

#include "quantize_math.h"

namespace lic_quant {

inline int32_t parse_mode(c10::string_view mode) {
  if (mode == "noise") return kNoise;
  if (mode == "ste") return kSte;
  if (mode == "mixed") return kMixed;
  if (mode == "sua") return kSua;
  TORCH_CHECK_VALUE(false, "lic_quant: mode must be one of ('noise', 'ste', 'mixed', 'sua'); got '",
                    std::string(mode), "'");
}

// The messages (and exception types) of lic_quant/api.py's checks.
inline void check_like(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == y.sizes(), "lic_quant: ", name, " must have the shape of y ",
                    y.sizes(), "; got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == y.scalar_type(), "lic_quant: ", name,
                   " must have the dtype of y (", y.scalar_type(), "); got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == y.device(), "lic_quant: ", name, " must be on the device of y (",
                    y.device(), "); got ", t.device());
}

// Checks shared by forward and backward; y's dtype must be a supported floating type.
inline void check_inputs(const at::Tensor& y, const at::Tensor& scales,
                         const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                         const at::Tensor& temperature, double scale_bound,
                         double likelihood_bound) {
  const auto dt = y.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                   "lic_quant: y must be float16, bfloat16, float32 or float64; got ", dt);
  check_like(scales, y, "scales");
  if (means.has_value() && means->defined()) check_like(*means, y, "means");
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.dim() == 0,
                   "lic_quant: seed must be a 0-dim int64 tensor; got ", seed.scalar_type(),
                   " with shape ", seed.sizes());
  TORCH_CHECK(seed.device() == y.device(), "lic_quant: seed must be on the device of y (",
              y.device(), "); got ", seed.device());
  TORCH_CHECK_TYPE(temperature.scalar_type() == at::kDouble && temperature.dim() == 0,
                   "lic_quant: temperature must be a 0-dim float64 tensor; got ",
                   temperature.scalar_type(), " with shape ", temperature.sizes());
  TORCH_CHECK(temperature.device() == y.device(),
              "lic_quant: temperature must be on the device of y (", y.device(), "); got ",
              temperature.device());
  TORCH_CHECK_VALUE(scale_bound >= 0.0, "lic_quant: scale_bound must be >= 0; got ", scale_bound);
  TORCH_CHECK_VALUE(likelihood_bound >= 0.0, "lic_quant: likelihood_bound must be >= 0; got ",
                    likelihood_bound);
}

inline void check_temperature_value(double t) {
  TORCH_CHECK_VALUE(t >= 0.0 && t <= 1.0, "lic_quant: temperature must lie in [0, 1]; got ", t);
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

// float32 likelihoods for reduced and single precision inputs, float64 for float64.
inline at::ScalarType likelihood_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
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

// One forward call after its checks: the noise index is the logical row-major index, so strided
// inputs are made contiguous; outputs are allocated contiguous. Device checks and guards are the
// caller's (before this, so the outputs land on the right device).
struct ForwardCall {
  int32_t mode;
  at::Tensor y, scales, means;  // means undefined when absent
  at::Tensor y_hat, likelihoods;
};

inline ForwardCall prepare_forward(const at::Tensor& y, const at::Tensor& scales,
                                   const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                                   const at::Tensor& temperature, c10::string_view mode,
                                   double scale_bound, double likelihood_bound) {
  check_inputs(y, scales, means, seed, temperature, scale_bound, likelihood_bound);
  ForwardCall c;
  c.mode = parse_mode(mode);
  c.y = y.contiguous();
  c.scales = scales.contiguous();
  c.means = contiguous_or_undefined(means);
  c.y_hat = new_tensor(c.y.sizes(), c.y.options());
  c.likelihoods = new_tensor(c.y.sizes(), c.y.options().dtype(likelihood_dtype(y.scalar_type())));
  return c;
}

// One backward call after its checks. grad_* are what the op returns (shape [0] where not asked
// for); out_* are the same tensors where asked for and undefined elsewhere, so kernels get null
// pointers for the gradients they must not write.
struct BackwardCall {
  int32_t mode;
  at::Tensor g_yhat, g_lik, y, scales, means;  // g_yhat and means undefined when absent
  at::Tensor grad_y, grad_scales, grad_means;
  at::Tensor out_y, out_scales, out_means;
};

inline BackwardCall prepare_backward(const c10::optional<at::Tensor>& grad_y_hat,
                                     const at::Tensor& grad_lik, const at::Tensor& y,
                                     const at::Tensor& scales,
                                     const c10::optional<at::Tensor>& means, const at::Tensor& seed,
                                     const at::Tensor& temperature, c10::string_view mode,
                                     double scale_bound, double likelihood_bound,
                                     std::array<bool, 3> output_mask) {
  check_inputs(y, scales, means, seed, temperature, scale_bound, likelihood_bound);
  const auto lik_dtype = likelihood_dtype(y.scalar_type());
  TORCH_CHECK_VALUE(grad_lik.sizes() == y.sizes() && grad_lik.scalar_type() == lik_dtype &&
                        grad_lik.device() == y.device(),
                    "lic_quant: grad_likelihoods must be ", lik_dtype,
                    " with the shape and device of y");
  if (grad_y_hat.has_value() && grad_y_hat->defined()) check_like(*grad_y_hat, y, "grad_y_hat");
  const bool has_means = means.has_value() && means->defined();
  TORCH_CHECK_VALUE(!output_mask[2] || has_means,
                    "lic_quant: grad of means requested without means");
  BackwardCall c;
  c.mode = parse_mode(mode);
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

}  // namespace lic_quant
