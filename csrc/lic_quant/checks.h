// The argument rules of docs/spec.md section 4, once for C++: the lists of modes and families, the
// dtype rules and every check with its message. lic_quant/_checks.py holds the same rules for
// Python with the same messages; lic_quant._C exports the lists so a test can compare them.
// Every C++ route checks here: the op's kernels (prepare_forward/prepare_backward, so inference
// mode and every dispatch key see the same checks) and the eager entry (csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "eb_math.h"
#include "quantize_math.h"

namespace lic_quant {

// Indexed by the kernels' numbering (enum Mode and enum Family of quantize_math.h).
constexpr std::array<const char*, 4> kModeNames{"noise", "ste", "mixed", "sua"};
constexpr std::array<const char*, 3> kFamilyNames{"gaussian", "laplace", "logistic"};

// Python's repr of a tuple of strings, for the messages: ('noise', 'ste', ...).
template <size_t N>
std::string names_repr(const std::array<const char*, N>& names) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < N; ++i) s << (i ? ", '" : "'") << names[i] << '\'';
  s << (N == 1 ? ",)" : ")");
  return s.str();
}

// The index of `value` in `names`, or a ValueError naming the argument.
template <size_t N>
int32_t parse_choice(const char* name, c10::string_view value,
                     const std::array<const char*, N>& names) {
  for (size_t i = 0; i < N; ++i) {
    if (value == names[i]) return static_cast<int32_t>(i);
  }
  TORCH_CHECK_VALUE(false, "lic_quant: ", name, " must be one of ", names_repr(names), "; got '",
                    std::string(value), "'");
}

inline int32_t parse_mode(c10::string_view mode) { return parse_choice("mode", mode, kModeNames); }

inline int32_t parse_family(c10::string_view family) {
  return parse_choice("family", family, kFamilyNames);
}

inline void check_floating(const at::Tensor& y) {
  const auto dt = y.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                   "lic_quant: y must be float16, bfloat16, float32 or float64; got ", dt);
}

inline void check_dtype_device(const at::Tensor& t, const at::Tensor& y, const char* name);

// An input beside y: y's shape, dtype and device.
inline void check_like(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == y.sizes(), "lic_quant: ", name, " must have the shape of y ",
                    y.sizes(), "; got ", t.sizes());
  check_dtype_device(t, y, name);
}

inline void check_dtype_device(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == y.scalar_type(), "lic_quant: ", name,
                   " must have the dtype of y (", y.scalar_type(), "); got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == y.device(), "lic_quant: ", name, " must be on the device of y (",
                    y.device(), "); got ", t.device());
}

inline void check_unit_interval(const char* name, double value) {
  TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, "lic_quant: ", name, " must lie in [0, 1]; got ",
                    value);
}

// A finite scale bound >= 0; a likelihood bound in [0, 1) (1 or more would give zero or negative
// bits).
inline void check_bounds(double scale_bound, double likelihood_bound) {
  TORCH_CHECK_VALUE(scale_bound >= 0.0 && std::isfinite(scale_bound),
                    "lic_quant: scale_bound must be finite and >= 0; got ", scale_bound);
  TORCH_CHECK_VALUE(likelihood_bound >= 0.0 && likelihood_bound < 1.0,
                    "lic_quant: likelihood_bound must lie in [0, 1); got ", likelihood_bound);
}

// The op's tensors for the seed and the temperature: 0-dim, of the schema's dtype, on y's device.
inline void check_scalar_tensor(const at::Tensor& t, const at::Tensor& y, const char* name,
                                at::ScalarType dtype, const char* kind) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.dim() == 0, "lic_quant: ", name, " must be ",
                   kind, "; got ", t.scalar_type(), " with shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == y.device(), "lic_quant: ", name, " must be on the device of y (",
                    y.device(), "); got ", t.device());
}

// float32 likelihoods for reduced and single precision inputs, float64 for float64.
inline at::ScalarType likelihood_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// The checks of one op call that do not need the seed and temperature tensors (the eager entry
// makes those after these pass); returns the mode and family indices.
struct Choices {
  int32_t mode, family;
};

// rate=True sums per sample along y's dim 0 (docs/spec.md section 8): y needs one.
inline void check_rate(const at::Tensor& y, bool rate) {
  TORCH_CHECK_VALUE(!rate || y.dim() > 0,
                    "lic_quant: rate=True needs y with at least 1 dimension (bits are per sample "
                    "along y's dim 0); got a 0-dim y");
}

// The backward's incoming gradient of the likelihoods (y's shape) or, with rate=True, of the bits
// (one value per sample).
inline void check_grad_likelihoods(const at::Tensor& grad_lik, const at::Tensor& y, bool rate) {
  const auto lik_dtype = likelihood_dtype(y.scalar_type());
  if (rate) {
    TORCH_CHECK_VALUE(grad_lik.dim() == 1 && grad_lik.size(0) == y.size(0) &&
                          grad_lik.scalar_type() == lik_dtype && grad_lik.device() == y.device(),
                      "lic_quant: with rate=True, grad_likelihoods (the bits' gradient) must be ",
                      lik_dtype, " of shape (", y.size(0), ",) on the device of y");
  } else {
    TORCH_CHECK_VALUE(grad_lik.sizes() == y.sizes() && grad_lik.scalar_type() == lik_dtype &&
                          grad_lik.device() == y.device(),
                      "lic_quant: grad_likelihoods must be ", lik_dtype,
                      " with the shape and device of y");
  }
}

inline Choices check_call(const at::Tensor& y, const at::Tensor& scales,
                          const std::optional<at::Tensor>& means, c10::string_view family,
                          c10::string_view mode, double scale_bound, double likelihood_bound,
                          bool rate = false) {
  check_floating(y);
  check_like(scales, y, "scales");
  if (means.has_value() && means->defined()) check_like(*means, y, "means");
  const int32_t family_index = parse_family(family);
  const int32_t mode_index = parse_mode(mode);
  check_bounds(scale_bound, likelihood_bound);
  check_rate(y, rate);
  return {mode_index, family_index};
}

// ---------------------------------------------------------------------------------------------
// Mixtures (docs/spec.md section 7): lic_quant/_checks.py's check_component_input,
// check_mixture_call and component_layout, with the same messages.

constexpr int64_t kMaxMixtureComponents = 8;

// A mixture parameter: shape (K, *y.shape) with 1 <= K <= 8 (`first` null), or the shape of
// `first` (the scales); y's dtype and device.
inline void check_component(const at::Tensor& t, const at::Tensor& y, const char* name,
                            const at::Tensor* first) {
  if (first != nullptr) {
    TORCH_CHECK_VALUE(t.sizes() == first->sizes(), "lic_quant: ", name,
                      " must have the shape of scales ", first->sizes(), "; got ", t.sizes());
  } else {
    TORCH_CHECK_VALUE(t.dim() == y.dim() + 1 && t.sizes().slice(1) == y.sizes(), "lic_quant: ",
                      name, " must have shape (K, *y.shape) with y of shape ", y.sizes(), "; got ",
                      t.sizes());
    TORCH_CHECK_VALUE(t.size(0) >= 1 && t.size(0) <= kMaxMixtureComponents, "lic_quant: ", name,
                      " must have 1 <= K <= ", kMaxMixtureComponents,
                      " mixture components (its first dimension); got K = ", t.size(0));
  }
  check_dtype_device(t, y, name);
}

inline Choices check_mixture_call(const at::Tensor& y, const at::Tensor& scales,
                                  const at::Tensor& means, const at::Tensor& weights,
                                  c10::string_view family, c10::string_view mode,
                                  double scale_bound, double likelihood_bound, bool rate) {
  check_floating(y);
  check_component(scales, y, "scales", nullptr);
  check_component(means, y, "means", &scales);
  check_component(weights, y, "weights", &scales);
  const int32_t family_index = parse_family(family);
  const int32_t mode_index = parse_mode(mode);
  check_bounds(scale_bound, likelihood_bound);
  check_rate(y, rate);
  return {mode_index, family_index};
}

// Element i of component k of a (K, *shape) tensor at k * stride_k + (i / inner) * stride_outer +
// i % inner.
struct ComponentLayout {
  int64_t stride_k, stride_outer, inner;
};

// The layout of `t` when it has that form (the contiguous layout, CompressAI's channel-blocked
// view), or nothing (the kernels then read a contiguous copy).
inline std::optional<ComponentLayout> component_layout(const at::Tensor& t) {
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  int64_t d = t.dim() - 1, inner = 1;
  // Sizes 0 count as 1, as in torch's contiguous strides.
  while (d >= 1 && (sizes[d] == 1 || strides[d] == inner)) {
    inner *= std::max<int64_t>(sizes[d], 1);
    --d;
  }
  int64_t outer_stride = 0, expected = -1;
  for (int64_t dd = d; dd >= 1; --dd) {
    if (sizes[dd] == 1) continue;
    if (expected < 0) {
      outer_stride = strides[dd];
    } else if (strides[dd] != expected) {
      return std::nullopt;
    }
    expected = strides[dd] * std::max<int64_t>(sizes[dd], 1);
  }
  return ComponentLayout{strides[0], outer_stride, inner};
}

// ---------------------------------------------------------------------------------------------
// The factorized prior (docs/spec.md section 9): lic_quant/_checks.py's check_eb_call, with the
// same messages.

constexpr int64_t kMaxEbLayers = 8;

inline void check_eb_parameter(const at::Tensor& t, const at::Tensor& z, const std::string& name,
                               at::IntArrayRef shape) {
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, "lic_quant: ", name,
                   " must be a dense (strided) tensor; got ", t.layout());
  TORCH_CHECK_VALUE(t.sizes() == shape, "lic_quant: ", name, " must have shape ", shape, "; got ",
                    t.sizes());
  check_dtype_device(t, z, name.c_str());
}

// Returns the mode index.
inline int32_t check_eb_call(const at::Tensor& z, const at::Tensor& medians,
                             at::TensorList matrices, at::TensorList biases,
                             at::TensorList factors, c10::string_view mode,
                             double likelihood_bound) {
  check_floating(z);
  TORCH_CHECK_VALUE(z.dim() >= 2, "lic_quant: z must have shape (N, C, ...) with at least 2 "
                    "dimensions; got ", z.sizes());
  const int64_t channels = z.size(1);
  check_eb_parameter(medians, z, "medians", {channels});
  const int64_t layers = static_cast<int64_t>(matrices.size());
  TORCH_CHECK_VALUE(layers >= 1 && layers <= kMaxEbLayers, "lic_quant: matrices must hold 1 to ",
                    kMaxEbLayers, " tensors (one per layer); got ", layers);
  TORCH_CHECK_VALUE(static_cast<int64_t>(biases.size()) == layers, "lic_quant: biases must hold ",
                    layers, " tensors (one per layer); got ", biases.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(factors.size()) == layers - 1,
                    "lic_quant: factors must hold ", layers - 1,
                    " tensors (one per layer); got ", factors.size());
  int64_t width_in = 1;
  for (int64_t i = 0; i < layers; ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    TORCH_CHECK_VALUE(matrices[i].dim() == 3, "lic_quant: matrices", idx,
                      " must have shape (C, out, in); got ", matrices[i].sizes());
    const int64_t width_out = i == layers - 1 ? 1 : matrices[i].size(1);
    check_eb_parameter(matrices[i], z, "matrices" + idx, {channels, width_out, width_in});
    check_eb_parameter(biases[i], z, "biases" + idx, {channels, width_out, 1});
    if (i < layers - 1) {
      check_eb_parameter(factors[i], z, "factors" + idx, {channels, width_out, 1});
    }
    width_in = width_out;
  }
  const int32_t mode_index = parse_mode(mode);
  TORCH_CHECK_VALUE(likelihood_bound >= 0.0 && likelihood_bound < 1.0,
                    "lic_quant: likelihood_bound must lie in [0, 1); got ", likelihood_bound);
  return mode_index;
}

// The fused EntropyBottleneck kernels' one limit: hidden layers of width 3 (CompressAI's default
// filters), any depth; `kernels` names the backend ("CPU", "CUDA") in the message.
inline void check_eb_kernel_widths(at::TensorList matrices, const char* kernels) {
  for (size_t i = 0; i + 1 < matrices.size(); ++i) {
    TORCH_CHECK_NOT_IMPLEMENTED(matrices[i].size(1) == kEbWidth, "lic_quant: the ", kernels,
                                " EntropyBottleneck kernels take hidden widths of 3 (filters=(3, "
                                "3, ...)); matrices[", i, "] has ", matrices[i].size(1),
                                " outputs (use backend='reference')");
  }
}

// One EntropyBottleneck call as both kernels take it: every check of the op (check_eb_call, the
// seed and temperature tensors, the kernels' width limit, `kernels` naming the backend in its
// message) and the tensors made contiguous (factors: one per hidden layer).
struct EbTensors {
  int32_t mode = 0;
  int layers = 0;
  at::Tensor z, medians;
  std::vector<at::Tensor> matrices, biases, factors;
};

inline EbTensors prepare_eb_tensors(const at::Tensor& z, const at::Tensor& medians,
                                    at::TensorList matrices, at::TensorList biases,
                                    at::TensorList factors, const at::Tensor& seed,
                                    const at::Tensor& temperature, c10::string_view mode,
                                    double likelihood_bound, const char* kernels) {
  EbTensors c;
  c.mode = check_eb_call(z, medians, matrices, biases, factors, mode, likelihood_bound);
  check_scalar_tensor(seed, z, "seed", at::kLong, "a 0-dim int64 tensor");
  check_scalar_tensor(temperature, z, "temperature", at::kDouble, "a 0-dim float64 tensor");
  check_eb_kernel_widths(matrices, kernels);
  c.layers = static_cast<int>(matrices.size());
  c.z = z.contiguous();
  c.medians = medians.contiguous();
  for (int i = 0; i < c.layers; ++i) {
    c.matrices.push_back(matrices[i].contiguous());
    c.biases.push_back(biases[i].contiguous());
    if (i + 1 < c.layers) c.factors.push_back(factors[i].contiguous());
  }
  return c;
}

// The EntropyBottleneck backward's incoming gradients, checked against z (both kernels take the
// same): grad_likelihoods of z's shape in the likelihoods' dtype, grad_z_hat (optional) of z's
// shape and dtype. Returns {grad_z_hat, grad_likelihoods} contiguous, the first undefined where
// none was given.
inline std::pair<at::Tensor, at::Tensor> check_eb_grads(
    const std::optional<at::Tensor>& grad_z_hat, const at::Tensor& grad_lik, const at::Tensor& z) {
  const auto lik_dtype = likelihood_dtype(z.scalar_type());
  TORCH_CHECK_VALUE(grad_lik.sizes() == z.sizes() && grad_lik.scalar_type() == lik_dtype &&
                        grad_lik.device() == z.device(),
                    "lic_quant: grad_likelihoods must be ", lik_dtype,
                    " with the shape and device of z");
  at::Tensor g_zhat;
  if (grad_z_hat.has_value() && grad_z_hat->defined()) {
    TORCH_CHECK_VALUE(grad_z_hat->sizes() == z.sizes() &&
                          grad_z_hat->scalar_type() == z.scalar_type() &&
                          grad_z_hat->device() == z.device(),
                      "lic_quant: grad_z_hat must have the shape, dtype and device of z");
    g_zhat = grad_z_hat->contiguous();
  }
  return {g_zhat, grad_lik.contiguous()};
}

// One uninitialized gradient per parameter of a list where output_mask asks for them, else none.
inline std::vector<at::Tensor> eb_parameter_grads(const std::vector<at::Tensor>& params,
                                                  bool asked) {
  std::vector<at::Tensor> g;
  if (asked) {
    for (const auto& p : params) g.push_back(at::empty(p.sizes(), p.options()));
  }
  return g;
}

}  // namespace lic_quant
