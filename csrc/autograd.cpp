// Autograd of the lic_quant ops in C++, registered for the Autograd key the way PyTorch's own
// fused ops are: an eager forward + backward then costs one autograd node of our own (about a
// microsecond of host time) instead of a Python autograd.Function (about a hundred).
//
// - quantize_forward: a hand-written node, GaussianQuantizeBackward. The backward recomputes the
//   noise from the seed and saves only the three inputs, the seed and the temperature
//   (docs/spec.md section 2). No forward-mode derivative: dual inputs raise.
// - quantize_backward: its result is not differentiable (docs/spec.md section 4): asking for a
//   second derivative through the op raises a clear error when that backward runs, like
//   torch.autograd.function.once_differentiable, instead of silently returning zero.
// - draw_seed / scalar_tensors (and seed_tensor / temperature_tensor of autograd.h, used by the
//   eager entry point in ops.cpp): the seed and temperature tensors for plain Python values, made
//   on the host (no fill or randint kernel), the seed drawn from the default generator of the
//   device when none is given.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ScalarOps.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randint.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "autograd.h"
#include "lic_quant/op_handles.h"

#ifdef LIC_QUANT_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace lic_quant {
namespace {

using at::Tensor;
using torch::autograd::variable_list;

std::optional<Tensor> opt(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// The bounds of docs/spec.md section 4 that the kernels' own checks (>= 0) do not cover.
void check_bounds(double scale_bound, double likelihood_bound) {
  TORCH_CHECK_VALUE(scale_bound >= 0.0 && std::isfinite(scale_bound),
                    "lic_quant: scale_bound must be finite and >= 0; got ", scale_bound);
  TORCH_CHECK_VALUE(likelihood_bound >= 0.0 && likelihood_bound < 1.0,
                    "lic_quant: likelihood_bound must lie in [0, 1); got ", likelihood_bound);
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
    "lic_quant: gaussian_quantize has no forward-mode derivative (torch.autograd.forward_ad, "
    "torch.func.jvp); use reverse mode (backward, torch.autograd.grad, torch.func.grad)";

// ---------------------------------------------------------------------------------------------
// quantize_backward: once differentiable.

constexpr const char* kSecondDerivative =
    "lic_quant: the second derivative of gaussian_quantize is not implemented (docs/spec.md "
    "section 4): a gradient computed with create_graph=True through lic_quant's backward cannot "
    "be differentiated again";

// The node of the gradients computed with grad mode on (create_graph=True, torch.func.grad): the
// gradients themselves are right; differentiating them again raises, like
// torch.autograd.function.once_differentiable, instead of silently returning zero.
struct GaussianQuantizeBackwardBackward : Node {
  std::string name() const override { return "GaussianQuantizeBackwardBackward"; }

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
    double likelihood_bound, bool zero_center, std::array<bool, 3> output_mask) {
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
                             scale_bound, likelihood_bound, zero_center, output_mask);
  }
  // The ordinary backward pass runs with grad mode off: no node, no bookkeeping.
  auto requires_grad = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(requires_grad(g_yhat) || requires_grad(grad_lik) || requires_grad(y) ||
        requires_grad(scales) || requires_grad(m))) {
    return out;
  }
  NodePtr fn = make_node<GaussianQuantizeBackwardBackward>();
  fn->set_next_edges(torch::autograd::collect_next_edges(g_yhat, grad_lik, y, scales, m));
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  torch::autograd::set_history(std::get<2>(out), fn);
  return out;
}

// ---------------------------------------------------------------------------------------------
// quantize_forward.

struct GaussianQuantizeBackward : Node {
  // y, scales and means (when given) are this node's outputs 0, 1, 2 (its next edges).
  SavedVariable y_, scales_, means_, seed_, temperature_;
  std::string mode_;
  double scale_bound_ = 0.0, likelihood_bound_ = 0.0;
  bool zero_center_ = false;
  bool has_means_ = false;

  std::string name() const override { return "GaussianQuantizeBackward"; }

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
                                           mask);
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
    args.collect(scale_bound_);
    args.collect(likelihood_bound_);
    args.collect(zero_center_);
    args.collect(has_means_);
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
    double likelihood_bound, bool zero_center) {
  check_bounds(scale_bound, likelihood_bound);
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
                            likelihood_bound, zero_center);
  }
  if (!record) return out;
  NodePtr fn = make_node<GaussianQuantizeBackward>();
  auto* node = static_cast<GaussianQuantizeBackward*>(fn.get());
  node->set_next_edges(means.defined() ? torch::autograd::collect_next_edges(y, scales, means)
                                       : torch::autograd::collect_next_edges(y, scales));
  node->y_ = SavedVariable(y, false);
  node->scales_ = SavedVariable(scales, false);
  if (means.defined()) node->means_ = SavedVariable(means, false);
  node->seed_ = SavedVariable(seed, false);
  node->temperature_ = SavedVariable(temperature, false);
  node->mode_ = std::string(mode);
  node->scale_bound_ = scale_bound;
  node->likelihood_bound_ = likelihood_bound;
  node->zero_center_ = zero_center;
  node->has_means_ = means.defined();
  torch::autograd::set_history(std::get<0>(out), fn);
  torch::autograd::set_history(std::get<1>(out), fn);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Seeds drawn on the host.

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

int64_t double_bits(double x) {
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
    return copy_to_device(device, {double_bits(temperature)}).select(0, 0).view(at::kDouble);
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
        device, {seed.has_value() ? *seed : draw_cuda_seed(device), double_bits(temperature)});
    return {dev.select(0, 0), dev.select(0, 1).view(at::kDouble)};
  }
#endif
  return {seed_tensor(device, seed), temperature_tensor(device, temperature)};
}

namespace {

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_FRAGMENT(lic_quant, m) {
  // Draws from torch's generators: tagged like aten's random ops, so tracing treats them as such.
  m.def("draw_seed(Device device) -> int", &lic_quant::draw_seed,
        {at::Tag::nondeterministic_seeded});
  m.def("scalar_tensors(Device device, int? seed, float temperature) -> (Tensor, Tensor)",
        &lic_quant::scalar_tensors, {at::Tag::nondeterministic_seeded});
}

TORCH_LIBRARY_IMPL(lic_quant, Autograd, m) {
  m.impl("quantize_forward", &lic_quant::quantize_forward_autograd);
  m.impl("quantize_backward", &lic_quant::quantize_backward_autograd);
}
