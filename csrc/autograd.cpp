// Autograd of the lic_quant ops in C++, registered for the Autograd key the way PyTorch's own
// fused ops are: an eager forward + backward then costs one autograd node of our own (about a
// microsecond of host time) instead of a Python autograd.Function (about a hundred).
//
// - quantize_forward: a hand-written node, QuantizeBackward. The backward recomputes the noise
//   from the seed and saves only the three inputs, the seed and the temperature (docs/spec.md
//   section 2). No forward-mode derivative: dual inputs raise.
// - quantize_backward: its result is not differentiable (docs/spec.md section 4): asking for a
//   second derivative through the op raises a clear error when that backward runs, like
//   torch.autograd.function.once_differentiable, instead of silently returning zero.
// Argument checks are the kernels' (csrc/lic_quant/checks.h), below this key.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "lic_quant/op_handles.h"

namespace lic_quant {
namespace {

using at::Tensor;
using torch::autograd::variable_list;

std::optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Hand-written autograd nodes, as PyTorch's code generator writes them for its own ops. A
// torch::autograd::Function (CppNode) would do the same work through generic machinery (per call:
// an argument walk over all the op's arguments, a context with a string-keyed map, VariableInfo
// records, output wrapping) that cost about 2 us forward and 3 us backward on a 64-element call,
// more than the kernels; and functorch transforms (torch.func.grad, vjp) refuse it.

using torch::autograd::Node;
using torch::autograd::SavedVariable;
// The node pointer of this torch: std::shared_ptr<Node> up to torch 2.11 or so,
// c10::intrusive_ptr<Node> in later ones.
using NodePtr = decltype(torch::autograd::Edge::function);

template <typename N, typename P = NodePtr>
P make_node() {
  if constexpr (std::is_same_v<P, std::shared_ptr<Node>>) {
    // deleteNode frees long chains of nodes iteratively (found by argument-dependent lookup:
    // torch versions with intrusive node pointers have no such function, and never get here).
    return P(new N(), [](auto* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<N>();
  }
}

bool has_forward_grad(const Tensor& t) { return t.defined() && t._fw_grad(0).defined(); }

constexpr const char* kNoForwardMode =
    "lic_quant: the quantize ops have no forward-mode derivative (torch.autograd.forward_ad, "
    "torch.func.jvp); use reverse mode (backward, torch.autograd.grad, torch.func.grad)";

// ---------------------------------------------------------------------------------------------
// quantize_backward: once differentiable.

constexpr const char* kSecondDerivative =
    "lic_quant: the second derivative of the quantize ops is not implemented (docs/spec.md "
    "section 4): a gradient computed with create_graph=True through lic_quant's backward cannot "
    "be differentiated again";

// The node of the gradients computed with grad mode on (create_graph=True, torch.func.grad): the
// gradients themselves are right; differentiating them again raises, like
// torch.autograd.function.once_differentiable, instead of silently returning zero.
struct QuantizeBackwardBackward : Node {
  std::string name() const override { return "QuantizeBackwardBackward"; }

  variable_list apply(variable_list&&) override {
    TORCH_CHECK(false, kSecondDerivative);
    return {};
  }

  void compiled_args(torch::autograd::CompiledNodeArgs&) const override {}

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::autograd::SwapSavedVariables&) override {
    return apply(variable_list(grads));
  }
};

std::tuple<Tensor, Tensor, Tensor> quantize_backward_autograd(
    const std::optional<Tensor>& grad_y_hat, const Tensor& grad_lik, const Tensor& y,
    const Tensor& scales, const std::optional<Tensor>& means, const Tensor& seed,
    const Tensor& temperature, c10::string_view mode, double scale_bound,
    double likelihood_bound, bool zero_center, std::array<bool, 3> output_mask,
    c10::string_view family, bool rate) {
  const Tensor g_yhat = grad_y_hat.has_value() ? *grad_y_hat : Tensor();
  const Tensor m = means.has_value() ? *means : Tensor();
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(has_forward_grad(g_yhat) || has_forward_grad(grad_lik) || has_forward_grad(y) ||
        has_forward_grad(scales) || has_forward_grad(m)),
      kNoForwardMode);
  std::tuple<Tensor, Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = backward_op().call(grad_y_hat, grad_lik, y, scales, means, seed, temperature, mode,
                             scale_bound, likelihood_bound, zero_center, output_mask, family,
                             rate);
  }
  // The ordinary backward pass runs with grad mode off: no node, no bookkeeping.
  auto requires_grad = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(requires_grad(g_yhat) || requires_grad(grad_lik) || requires_grad(y) ||
        requires_grad(scales) || requires_grad(m))) {
    return out;
  }
  NodePtr fn = make_node<QuantizeBackwardBackward>();
  fn->set_next_edges(torch::autograd::collect_next_edges(g_yhat, grad_lik, y, scales, m));
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  torch::autograd::set_history(std::get<2>(out), fn);
  return out;
}

// ---------------------------------------------------------------------------------------------
// quantize_forward.

struct QuantizeBackward : Node {
  // y, scales and means (when given) are this node's outputs 0, 1, 2 (its next edges).
  SavedVariable y_, scales_, means_, seed_, temperature_;
  std::string mode_, family_;
  double scale_bound_ = 0.0, likelihood_bound_ = 0.0;
  bool zero_center_ = false;
  bool has_means_ = false;
  bool rate_ = false;  // output 1 is the per-sample bits; its gradient has shape (N,)

  std::string name() const override { return "QuantizeBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    y_.reset_data();
    scales_.reset_data();
    means_.reset_data();
    seed_.reset_data();
    temperature_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor& g_yhat = grads[0];
    const Tensor& g_lik = grads[1];
    variable_list out(has_means_ ? 3 : 2);
    const bool need_y = task_should_compute_output(0);
    if (!g_lik.defined()) {
      // Only y_hat was used: its gradient is the identity, and mu and sigma get none.
      if (need_y) out[0] = g_yhat;
      return out;
    }
    const std::array<bool, 3> mask{need_y, task_should_compute_output(1),
                                   has_means_ && task_should_compute_output(2)};
    if (!(mask[0] || mask[1] || mask[2])) return out;
    const Tensor means = has_means_ ? means_.unpack() : Tensor();
    // With create_graph=True (grad mode on), through the dispatcher's autograd: the result then
    // carries the node of quantize_backward_autograd that refuses a second derivative. Otherwise
    // straight to the kernel.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [gy, gs, gm] = backward_op().call(opt(g_yhat), g_lik, y_.unpack(), scales_.unpack(),
                                           opt(means), seed_.unpack(), temperature_.unpack(),
                                           mode_, scale_bound_, likelihood_bound_, zero_center_,
                                           mask, family_, rate_);
    if (mask[0]) out[0] = std::move(gy);
    if (mask[1]) out[1] = std::move(gs);
    if (mask[2]) out[2] = std::move(gm);
    return out;
  }

  // Compiled autograd: the node's attributes for its cache key, and apply() on the tracer's
  // stand-ins for the saved tensors (the backward op has a fake kernel, so it traces).
  void compiled_args(torch::autograd::CompiledNodeArgs& args) const override {
    args.collect(y_, false);
    args.collect(scales_, false);
    args.collect(means_, false);
    args.collect(seed_, false);
    args.collect(temperature_, false);
    args.collect(mode_);
    args.collect(family_);
    args.collect(scale_bound_);
    args.collect(likelihood_bound_);
    args.collect(zero_center_);
    args.collect(has_means_);
    args.collect(rate_);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::autograd::SwapSavedVariables& saved) override {
    saved.before(y_);
    saved.before(scales_);
    saved.before(means_);
    saved.before(seed_);
    saved.before(temperature_);
    auto out = apply(variable_list(grads));
    saved.after(y_);
    saved.after(scales_);
    saved.after(means_);
    saved.after(seed_);
    saved.after(temperature_);
    return out;
  }
};

std::tuple<Tensor, Tensor> quantize_forward_autograd(
    const Tensor& y, const Tensor& scales, const std::optional<Tensor>& means_in,
    const Tensor& seed, const Tensor& temperature, c10::string_view mode, double scale_bound,
    double likelihood_bound, bool zero_center, c10::string_view family, bool rate) {
  const Tensor means = (means_in.has_value() && means_in->defined()) ? *means_in : Tensor();
  // No forward-mode formula (docs/spec.md section 4): a dual input would otherwise give outputs
  // silently without tangents.
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(has_forward_grad(y) || has_forward_grad(scales) || has_forward_grad(means)),
      kNoForwardMode);
  const bool record = at::GradMode::is_enabled() &&
                      (y.requires_grad() || scales.requires_grad() ||
                       (means.defined() && means.requires_grad()));
  std::tuple<Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = forward_op().call(y, scales, means_in, seed, temperature, mode, scale_bound,
                            likelihood_bound, zero_center, family, rate);
  }
  if (!record) return out;
  NodePtr fn = make_node<QuantizeBackward>();
  auto* node = static_cast<QuantizeBackward*>(fn.get());
  node->set_next_edges(means.defined() ? torch::autograd::collect_next_edges(y, scales, means)
                                       : torch::autograd::collect_next_edges(y, scales));
  node->y_ = SavedVariable(y, false);
  node->scales_ = SavedVariable(scales, false);
  if (means.defined()) node->means_ = SavedVariable(means, false);
  node->seed_ = SavedVariable(seed, false);
  node->temperature_ = SavedVariable(temperature, false);
  node->mode_ = std::string(mode);
  node->family_ = std::string(family);
  node->scale_bound_ = scale_bound;
  node->likelihood_bound_ = likelihood_bound;
  node->zero_center_ = zero_center;
  node->has_means_ = means.defined();
  node->rate_ = rate;
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  return out;
}

// ---------------------------------------------------------------------------------------------
// mixture_quantize_forward / _backward (docs/spec.md section 7): the same scheme, four inputs.

std::tuple<Tensor, Tensor, Tensor, Tensor> mixture_backward_autograd(
    const std::optional<Tensor>& grad_y_hat, const Tensor& grad_lik, const Tensor& y,
    const Tensor& scales, const Tensor& means, const Tensor& weights, const Tensor& seed,
    const Tensor& temperature, c10::string_view mode, double scale_bound,
    double likelihood_bound, bool zero_center, c10::string_view family, bool logits,
    std::array<bool, 4> output_mask, bool rate) {
  const Tensor g_yhat = grad_y_hat.has_value() ? *grad_y_hat : Tensor();
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(has_forward_grad(g_yhat) || has_forward_grad(grad_lik) || has_forward_grad(y) ||
        has_forward_grad(scales) || has_forward_grad(means) || has_forward_grad(weights)),
      kNoForwardMode);
  std::tuple<Tensor, Tensor, Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = mixture_backward_op().call(grad_y_hat, grad_lik, y, scales, means, weights, seed,
                                     temperature, mode, scale_bound, likelihood_bound,
                                     zero_center, family, logits, output_mask, rate);
  }
  auto requires_grad = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(requires_grad(g_yhat) || requires_grad(grad_lik) || requires_grad(y) ||
        requires_grad(scales) || requires_grad(means) || requires_grad(weights))) {
    return out;
  }
  NodePtr fn = make_node<QuantizeBackwardBackward>();
  fn->set_next_edges(
      torch::autograd::collect_next_edges(g_yhat, grad_lik, y, scales, means, weights));
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  torch::autograd::set_history(std::get<2>(out), fn);
  torch::autograd::set_history(std::get<3>(out), fn);
  return out;
}

struct MixtureQuantizeBackward : Node {
  // y, scales, means and weights are this node's outputs 0 to 3 (its next edges).
  SavedVariable y_, scales_, means_, weights_, seed_, temperature_;
  std::string mode_, family_;
  double scale_bound_ = 0.0, likelihood_bound_ = 0.0;
  bool zero_center_ = false, logits_ = false;
  bool rate_ = false;  // output 1 is the per-sample bits; its gradient has shape (N,)

  std::string name() const override { return "MixtureQuantizeBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : {&y_, &scales_, &means_, &weights_, &seed_, &temperature_}) {
      v->reset_data();
    }
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor& g_yhat = grads[0];
    const Tensor& g_lik = grads[1];
    variable_list out(4);
    const bool need_y = task_should_compute_output(0);
    if (!g_lik.defined()) {
      if (need_y) out[0] = g_yhat;
      return out;
    }
    const std::array<bool, 4> mask{need_y, task_should_compute_output(1),
                                   task_should_compute_output(2), task_should_compute_output(3)};
    if (!(mask[0] || mask[1] || mask[2] || mask[3])) return out;
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto g = mixture_backward_op().call(opt(g_yhat), g_lik, y_.unpack(), scales_.unpack(),
                                        means_.unpack(), weights_.unpack(), seed_.unpack(),
                                        temperature_.unpack(), mode_, scale_bound_,
                                        likelihood_bound_, zero_center_, family_, logits_, mask,
                                        rate_);
    if (mask[0]) out[0] = std::move(std::get<0>(g));
    if (mask[1]) out[1] = std::move(std::get<1>(g));
    if (mask[2]) out[2] = std::move(std::get<2>(g));
    if (mask[3]) out[3] = std::move(std::get<3>(g));
    return out;
  }

  void compiled_args(torch::autograd::CompiledNodeArgs& args) const override {
    for (const SavedVariable* v : {&y_, &scales_, &means_, &weights_, &seed_, &temperature_}) {
      args.collect(*v, false);
    }
    args.collect(mode_);
    args.collect(family_);
    args.collect(scale_bound_);
    args.collect(likelihood_bound_);
    args.collect(zero_center_);
    args.collect(logits_);
    args.collect(rate_);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::autograd::SwapSavedVariables& saved) override {
    for (SavedVariable* v : {&y_, &scales_, &means_, &weights_, &seed_, &temperature_}) {
      saved.before(*v);
    }
    auto out = apply(variable_list(grads));
    for (SavedVariable* v : {&y_, &scales_, &means_, &weights_, &seed_, &temperature_}) {
      saved.after(*v);
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> mixture_forward_autograd(
    const Tensor& y, const Tensor& scales, const Tensor& means, const Tensor& weights,
    const Tensor& seed, const Tensor& temperature, c10::string_view mode, double scale_bound,
    double likelihood_bound, bool zero_center, c10::string_view family, bool logits, bool rate) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(has_forward_grad(y) || has_forward_grad(scales) ||
                                has_forward_grad(means) || has_forward_grad(weights)),
                              kNoForwardMode);
  const bool record = at::GradMode::is_enabled() &&
                      (y.requires_grad() || scales.requires_grad() || means.requires_grad() ||
                       weights.requires_grad());
  std::tuple<Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = mixture_forward_op().call(y, scales, means, weights, seed, temperature, mode,
                                    scale_bound, likelihood_bound, zero_center, family, logits,
                                    rate);
  }
  if (!record) return out;
  NodePtr fn = make_node<MixtureQuantizeBackward>();
  auto* node = static_cast<MixtureQuantizeBackward*>(fn.get());
  node->set_next_edges(torch::autograd::collect_next_edges(y, scales, means, weights));
  node->y_ = SavedVariable(y, false);
  node->scales_ = SavedVariable(scales, false);
  node->means_ = SavedVariable(means, false);
  node->weights_ = SavedVariable(weights, false);
  node->seed_ = SavedVariable(seed, false);
  node->temperature_ = SavedVariable(temperature, false);
  node->mode_ = std::string(mode);
  node->family_ = std::string(family);
  node->scale_bound_ = scale_bound;
  node->likelihood_bound_ = likelihood_bound;
  node->zero_center_ = zero_center;
  node->logits_ = logits;
  node->rate_ = rate;
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  return out;
}

// ---------------------------------------------------------------------------------------------
// entropy_bottleneck_forward / _backward (docs/spec.md section 9). The node's outputs (next
// edges) are z, then matrices, biases and factors in list order; the medians get no gradient (in
// CompressAI they learn through loss() only).

bool any_forward_grad(at::TensorList ts) {
  for (const auto& t : ts) {
    if (has_forward_grad(t)) return true;
  }
  return false;
}

bool any_requires_grad(at::TensorList ts) {
  for (const auto& t : ts) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>
eb_backward_autograd(const std::optional<Tensor>& grad_z_hat, const Tensor& grad_lik,
                     const Tensor& z, const Tensor& medians, at::TensorList matrices,
                     at::TensorList biases, at::TensorList factors, const Tensor& seed,
                     const Tensor& temperature, c10::string_view mode, double likelihood_bound,
                     std::array<bool, 4> output_mask) {
  const Tensor g_zhat = grad_z_hat.has_value() ? *grad_z_hat : Tensor();
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(has_forward_grad(g_zhat) || has_forward_grad(grad_lik) || has_forward_grad(z) ||
        any_forward_grad(matrices) || any_forward_grad(biases) || any_forward_grad(factors)),
      kNoForwardMode);
  std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = eb_backward_op().call(grad_z_hat, grad_lik, z, medians, matrices, biases, factors, seed,
                                temperature, mode, likelihood_bound, output_mask);
  }
  auto requires_grad = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(requires_grad(g_zhat) || requires_grad(grad_lik) || requires_grad(z) ||
        any_requires_grad(matrices) || any_requires_grad(biases) || any_requires_grad(factors))) {
    return out;
  }
  NodePtr fn = make_node<QuantizeBackwardBackward>();
  std::vector<Tensor> inputs{g_zhat, grad_lik, z};
  for (at::TensorList list : {matrices, biases, factors}) inputs.insert(inputs.end(), list.begin(), list.end());
  fn->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(std::get<0>(out), fn);
  for (auto* list : {&std::get<1>(out), &std::get<2>(out), &std::get<3>(out)}) {
    for (auto& t : *list) torch::autograd::set_history(t, fn);
  }
  return out;
}

struct EntropyBottleneckBackward : Node {
  SavedVariable z_, medians_, seed_, temperature_;
  std::vector<SavedVariable> matrices_, biases_, factors_;
  std::string mode_;
  double likelihood_bound_ = 0.0;

  std::string name() const override { return "EntropyBottleneckBackward"; }

  std::vector<SavedVariable*> saved() {
    std::vector<SavedVariable*> all{&z_, &medians_, &seed_, &temperature_};
    for (auto* list : {&matrices_, &biases_, &factors_}) {
      for (auto& v : *list) all.push_back(&v);
    }
    return all;
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : saved()) v->reset_data();
  }

  static std::vector<Tensor> unpack(std::vector<SavedVariable>& list) {
    std::vector<Tensor> out;
    for (auto& v : list) out.push_back(v.unpack());
    return out;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor& g_zhat = grads[0];
    const Tensor& g_lik = grads[1];
    const size_t n_m = matrices_.size(), n_b = biases_.size(), n_f = factors_.size();
    variable_list out(1 + n_m + n_b + n_f);
    const bool need_z = task_should_compute_output(0);
    if (!g_lik.defined()) {
      if (need_z) out[0] = g_zhat;
      return out;
    }
    auto any_output = [&](size_t first, size_t count) {
      for (size_t i = first; i < first + count; ++i) {
        if (task_should_compute_output(i)) return true;
      }
      return false;
    };
    const std::array<bool, 4> mask{need_z, any_output(1, n_m), any_output(1 + n_m, n_b),
                                   any_output(1 + n_m + n_b, n_f)};
    if (!(mask[0] || mask[1] || mask[2] || mask[3])) return out;
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto g = eb_backward_op().call(opt(g_zhat), g_lik, z_.unpack(), medians_.unpack(),
                                   unpack(matrices_), unpack(biases_), unpack(factors_),
                                   seed_.unpack(), temperature_.unpack(), mode_,
                                   likelihood_bound_, mask);
    if (mask[0]) out[0] = std::move(std::get<0>(g));
    // The lists come back full where asked for, empty otherwise.
    size_t slot = 1;
    auto place = [&](std::vector<Tensor>& list, size_t count) {
      for (size_t i = 0; i < count; ++i, ++slot) {
        if (!list.empty() && task_should_compute_output(slot)) out[slot] = std::move(list[i]);
      }
    };
    place(std::get<1>(g), n_m);
    place(std::get<2>(g), n_b);
    place(std::get<3>(g), n_f);
    return out;
  }

  void compiled_args(torch::autograd::CompiledNodeArgs& args) const override {
    for (const SavedVariable* v : {&z_, &medians_, &seed_, &temperature_}) args.collect(*v, false);
    for (const auto* list : {&matrices_, &biases_, &factors_}) {
      for (const auto& v : *list) args.collect(v, false);
    }
    args.collect(mode_);
    args.collect(likelihood_bound_);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::autograd::SwapSavedVariables& swap) override {
    for (SavedVariable* v : saved()) swap.before(*v);
    auto out = apply(variable_list(grads));
    for (SavedVariable* v : saved()) swap.after(*v);
    return out;
  }
};

std::tuple<Tensor, Tensor> eb_forward_autograd(const Tensor& z, const Tensor& medians,
                                               at::TensorList matrices, at::TensorList biases,
                                               at::TensorList factors, const Tensor& seed,
                                               const Tensor& temperature, c10::string_view mode,
                                               double likelihood_bound) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(has_forward_grad(z) || any_forward_grad(matrices) ||
                                any_forward_grad(biases) || any_forward_grad(factors)),
                              kNoForwardMode);
  const bool record = at::GradMode::is_enabled() &&
                      (z.requires_grad() || any_requires_grad(matrices) ||
                       any_requires_grad(biases) || any_requires_grad(factors));
  std::tuple<Tensor, Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = eb_forward_op().call(z, medians, matrices, biases, factors, seed, temperature, mode,
                               likelihood_bound);
  }
  if (!record) return out;
  NodePtr fn = make_node<EntropyBottleneckBackward>();
  auto* node = static_cast<EntropyBottleneckBackward*>(fn.get());
  std::vector<Tensor> inputs{z};
  for (at::TensorList list : {matrices, biases, factors}) inputs.insert(inputs.end(), list.begin(), list.end());
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->z_ = SavedVariable(z, false);
  node->medians_ = SavedVariable(medians, false);
  node->seed_ = SavedVariable(seed, false);
  node->temperature_ = SavedVariable(temperature, false);
  for (const auto& t : matrices) node->matrices_.emplace_back(t, false);
  for (const auto& t : biases) node->biases_.emplace_back(t, false);
  for (const auto& t : factors) node->factors_.emplace_back(t, false);
  node->mode_ = std::string(mode);
  node->likelihood_bound_ = likelihood_bound;
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  return out;
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, Autograd, m) {
  m.impl("quantize_forward", &lic_quant::quantize_forward_autograd);
  m.impl("quantize_backward", &lic_quant::quantize_backward_autograd);
  m.impl("mixture_quantize_forward", &lic_quant::mixture_forward_autograd);
  m.impl("mixture_quantize_backward", &lic_quant::mixture_backward_autograd);
  m.impl("entropy_bottleneck_forward", &lic_quant::eb_forward_autograd);
  m.impl("entropy_bottleneck_backward", &lic_quant::eb_backward_autograd);
}
