// Host-side argument handling shared by the CPU (.cpp) and CUDA (.cu) op implementations: the
// checks that name the offending argument, and the translation of schema arguments to QuantParams.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>

#include "quantize_math.h"

namespace lic_quant {

inline int32_t parse_mode(c10::string_view mode) {
  if (mode == "noise") return kNoise;
  if (mode == "ste") return kSte;
  if (mode == "mixed") return kMixed;
  if (mode == "sua") return kSua;
  TORCH_CHECK_VALUE(false, "lic_quant: mode must be one of 'noise', 'ste', 'mixed', 'sua'; got '",
                    std::string(mode), "'");
}

inline void check_like(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == y.sizes(), "lic_quant: ", name, " must have the shape of y ",
                    y.sizes(), "; got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == y.scalar_type(), "lic_quant: ", name,
                   " must have the dtype of y (", y.scalar_type(), "); got ", t.scalar_type());
  TORCH_CHECK(t.device() == y.device(), "lic_quant: ", name, " must be on the device of y (",
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
  return p;
}

// float32 likelihoods for reduced and single precision inputs, float64 for float64.
inline at::ScalarType likelihood_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace lic_quant
