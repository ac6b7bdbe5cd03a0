// Fused CUDA kernels of the K-component mixture (docs/spec.md section 7): one pass forward
// (y, mu_k, sigma_k, w_k -> y_hat, P, or with rate=True y_hat and the bits of section 8) and one
// pass backward (g_yhat, g_P or the bits' gradient, y, mu_k, sigma_k, w_k -> the four gradients),
// the noise recomputed from the seed, for any K <= 8 without recompiling.
//
// A thread takes four consecutive elements (one Philox block of u) and runs the per-element math
// of mixture_math.h on each in turn, the component loops inside; the loops over elements and
// components stay rolled, so the kernel's size does not grow with K. The backward keeps each
// component's mass and slopes between its two component loops in shared memory (a slot per thread
// and component: no local memory, and every mass and slope is computed once). The parameters are
// read in place in their component layout (checks.h): the host brings every layout to one common
// inner size, so one 64-bit division per four elements locates an element in all of them.
// Separate from quantize_cuda.cu so that the two compile in parallel and alone.
#include <torch/library.h>

#include "../lic_quant/mixture_math.h"
#include "cuda_kernels.h"

namespace lic_quant {
namespace {

constexpr int kGroup = 4;  // elements per thread step: one Philox block

// A parameter (or its gradient) in the common layout: element i of component k at
// k * stride_k + (i / inner) * stride_outer + i % inner, inner shared by every tensor of the call.
template <typename T>
struct Strided {
  T* data;
  int64_t stride_k, stride_outer;
};

template <typename scalar_t, typename lik_t>
struct MixtureArgs {
  const scalar_t* y;
  Strided<const scalar_t> scales, means, weights;
  uint64_t numel, inner;
  int K;
  bool logits;
  // forward
  scalar_t* y_hat;
  lik_t* lik;               // P (rate=False)
  double* partial;          // chunk sums (rate=True)
  int64_t sample_size, chunks;
  // backward
  const scalar_t* g_yhat;   // null when grad_y is not asked for or g_yhat is absent
  const lik_t* g_lik;       // P's gradient, or the bits' gradient per sample (rate=True)
  scalar_t* grad_y;         // null when not asked for
  // A gradient not asked for points at its parameter with the parameter's strides (so its walk
  // stays inside an allocation) and is never written: want_* says which are.
  Strided<scalar_t> grad_scales, grad_means, grad_weights;
  bool want_scales, want_means, want_weights;
};

// Shared-memory slots per thread and component: the forward keeps w_k (the softmax of logits),
// the backward w_k and the mass and slopes between its two component loops. Slot f of component k
// of thread t is at (k * F + f) * block + t. The backward's float64 kernels run blocks of 128 so
// that the four slots fit the 48 KiB of static shared memory (32 KiB for both types).
constexpr int kForwardSlots = 1;
constexpr int kBackwardSlots = 4;
template <typename acc_t>
constexpr int backward_block() {
  return sizeof(acc_t) == 8 ? 128 : kThreads;
}

// The walk over one element's components (the accessor of mixture_math.h) plus, in the
// backward, the gradients it writes.
template <typename scalar_t, typename acc_t, int F, int kBlock>
struct ComponentWalk {
  const scalar_t* __restrict__ s;
  const scalar_t* __restrict__ m;
  const scalar_t* __restrict__ w;
  acc_t* slot;
  scalar_t* gs;
  scalar_t* gm;
  scalar_t* gw;
  int64_t sk, mk, wk, gsk, gmk, gwk;
  bool logits, want_s, want_m, want_w;

  __device__ __forceinline__ void advance() {
    s += sk;
    m += mk;
    w += wk;
    slot += F * kBlock;
    if constexpr (F > 1) {
      gs += gsk;
      gm += gmk;
      gw += gwk;
    }
  }
  __device__ __forceinline__ acc_t given_weight() const { return static_cast<acc_t>(*w); }
  __device__ __forceinline__ acc_t mean() const { return static_cast<acc_t>(*m); }
  __device__ __forceinline__ acc_t scale() const { return static_cast<acc_t>(*s); }
  __device__ __forceinline__ acc_t weight() const { return logits ? slot[0] : given_weight(); }
  __device__ __forceinline__ void set_weight(acc_t x) const { slot[0] = x; }
  __device__ __forceinline__ void keep(const ComponentSlopes<acc_t>& d) const {
    slot[kBlock] = d.mass;
    slot[2 * kBlock] = d.d_v;
    slot[3 * kBlock] = d.d_s;
  }
  __device__ __forceinline__ ComponentSlopes<acc_t> kept() const {
    return {slot[kBlock], slot[2 * kBlock], slot[3 * kBlock]};
  }
  __device__ __forceinline__ void put(const ComponentGrads<acc_t>& o) const {
    if (want_s) *gs = to_storage<scalar_t>(o.sigma);
    if (want_m) *gm = to_storage<scalar_t>(o.mu);
    if (want_w) *gw = to_storage<scalar_t>(o.weight);
  }
};

template <typename T>
__device__ __forceinline__ T* element_ptr(const Strided<T>& t, uint64_t q, uint64_t r) {
  return t.data + (static_cast<int64_t>(q) * t.stride_outer + static_cast<int64_t>(r));
}

// Component 0 of element (q, r) (i = q inner + r).
template <int F, int kBlock, typename scalar_t, typename acc_t, typename lik_t>
__device__ __forceinline__ void locate(ComponentWalk<scalar_t, acc_t, F, kBlock>& c,
                                       const MixtureArgs<scalar_t, lik_t>& a, uint64_t q,
                                       uint64_t r) {
  c.s = element_ptr(a.scales, q, r);
  c.m = element_ptr(a.means, q, r);
  c.w = element_ptr(a.weights, q, r);
  if constexpr (F > 1) {
    c.gs = element_ptr(a.grad_scales, q, r);
    c.gm = element_ptr(a.grad_means, q, r);
    c.gw = element_ptr(a.grad_weights, q, r);
  }
}

template <int F, int kBlock, typename scalar_t, typename acc_t, typename lik_t>
__device__ __forceinline__ ComponentWalk<scalar_t, acc_t, F, kBlock> start_walk(
    const MixtureArgs<scalar_t, lik_t>& a, acc_t* slots) {
  ComponentWalk<scalar_t, acc_t, F, kBlock> c{};
  c.slot = slots + threadIdx.x;
  c.sk = a.scales.stride_k;
  c.mk = a.means.stride_k;
  c.wk = a.weights.stride_k;
  c.gsk = a.grad_scales.stride_k;
  c.gmk = a.grad_means.stride_k;
  c.gwk = a.grad_weights.stride_k;
  c.logits = a.logits;
  c.want_s = a.want_scales;
  c.want_m = a.want_means;
  c.want_w = a.want_weights;
  return c;
}

// The next element: one further in every tensor, unless it starts the next block of `inner`.
template <int F, int kBlock, typename scalar_t, typename acc_t, typename lik_t>
__device__ __forceinline__ void next_element(ComponentWalk<scalar_t, acc_t, F, kBlock>& c,
                                             const MixtureArgs<scalar_t, lik_t>& a, uint64_t& q,
                                             uint64_t& r) {
  if (++r == a.inner) {
    r = 0;
    ++q;
    locate(c, a, q, r);
  } else {
    ++c.s;
    ++c.m;
    ++c.w;
    if constexpr (F > 1) {
      ++c.gs;
      ++c.gm;
      ++c.gw;
    }
  }
}

// u of the group's elements i0 .. i0 + 3 when i0 is a multiple of 4 (one Philox block); zeros
// where the mode draws none.
__device__ __forceinline__ void group_noise(bool noisy, const PhiloxKeys& keys, uint64_t i0,
                                            float (&u)[kGroup]) {
  if (noisy && (i0 & 3) == 0) {
    philox_uniform4(keys, i0 >> 2, u);
  } else {
#pragma unroll
    for (int j = 0; j < kGroup; ++j) u[j] = 0.0f;
  }
}

// u of element j of the group (selects keep u in registers: an indexed array would go to local
// memory). A group that does not start a Philox block (rate=True, samples whose size is not a
// multiple of 4) draws per element.
__device__ __forceinline__ float element_noise(bool noisy, const PhiloxKeys& keys, uint64_t i0,
                                               int j, const float (&u)[kGroup]) {
  if (noisy && (i0 & 3) != 0) return philox_uniform(keys, i0 + j);
  return j == 0 ? u[0] : j == 1 ? u[1] : j == 2 ? u[2] : u[3];
}

// ---------------------------------------------------------------------------------------------
// Forward. Elements i0 .. i0 + n - 1 (n <= 4); returns the sum of their -log2 P with kRate (the
// likelihoods are not written then).

template <int kFamily, bool kRate, typename scalar_t, typename lik_t, typename acc_t>
__device__ __forceinline__ double forward_group(const MixtureArgs<scalar_t, lik_t>& a,
                                                acc_t* slots, uint64_t i0, int n,
                                                const PhiloxKeys& keys, bool noisy,
                                                const QuantParams<acc_t>& p) {
  float u[kGroup];
  group_noise(noisy, keys, i0, u);
  uint64_t q = i0 / a.inner, r = i0 % a.inner;
  auto comp = start_walk<kForwardSlots, kThreads>(a, slots);
  locate(comp, a, q, r);
  double acc = 0.0;
#pragma unroll 1
  for (int j = 0; j < n; ++j) {
    const uint64_t i = i0 + j;
    const ForwardOut<acc_t> o = mixture_forward_element<kFamily>(
        static_cast<acc_t>(a.y[i]), static_cast<acc_t>(element_noise(noisy, keys, i0, j, u)),
        a.K, a.logits, comp, p);
    a.y_hat[i] = to_storage<scalar_t>(o.y_hat);
    if constexpr (kRate) {
      acc += neg_log2(o.likelihood);
    } else {
      a.lik[i] = static_cast<lik_t>(o.likelihood);
    }
    next_element(comp, a, q, r);
  }
  return acc;
}

// rate=False: a grid-stride loop over the groups of four. kRate: block k is chunk k % chunks of
// sample k / chunks (cuda_kernels.h), four elements per thread, then the chunk's sum.
template <typename scalar_t, int kFamily, bool kRate>
__global__ void __launch_bounds__(kThreads)
    mixture_forward_kernel(const MixtureArgs<scalar_t, acc_type<scalar_t>> a,
                           const int64_t* __restrict__ seed_ptr,
                           const double* __restrict__ temperature,
                           QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t slots[kMaxComponents * kForwardSlots * kThreads];
  const QuantParams<acc_t> p = with_temperature(params, temperature);
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  if constexpr (kRate) {
    const int64_t sample = blockIdx.x / a.chunks;
    const int64_t w0 = (blockIdx.x % a.chunks) * kRateChunk + kGroup * threadIdx.x;
    const int n = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kGroup, a.sample_size - w0)));
    const double acc = forward_group<kFamily, true>(
        a, slots, static_cast<uint64_t>(sample * a.sample_size + w0), n, keys, noisy, p);
    chunk_sum(acc, a.partial);
  } else {
    const uint64_t groups = (a.numel + kGroup - 1) / kGroup;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    for (uint64_t g = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
         g += stride) {
      const uint64_t i0 = g * kGroup;
      const int n = static_cast<int>(std::min<uint64_t>(kGroup, a.numel - i0));
      forward_group<kFamily, false>(a, slots, i0, n, keys, noisy, p);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: a grid-stride loop over the groups of four. kRate: g_lik holds one value per sample of
// sample_size elements.

template <typename scalar_t, int kFamily, bool kRate>
__global__ void __launch_bounds__(backward_block<acc_type<scalar_t>>())
    mixture_backward_kernel(const MixtureArgs<scalar_t, acc_type<scalar_t>> a,
                            const int64_t* __restrict__ seed_ptr,
                            const double* __restrict__ temperature,
                            QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  using lik_t = acc_t;
  constexpr int kBlock = backward_block<acc_t>();
  __shared__ acc_t slots[kMaxComponents * kBackwardSlots * kBlock];
  const QuantParams<acc_t> p = with_temperature(params, temperature);
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  const uint64_t groups = (a.numel + kGroup - 1) / kGroup;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t g = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    const uint64_t i0 = g * kGroup;
    const int n = static_cast<int>(std::min<uint64_t>(kGroup, a.numel - i0));
    float u[kGroup];
    group_noise(noisy, keys, i0, u);
    uint64_t q = i0 / a.inner, r = i0 % a.inner;
    auto comp = start_walk<kBackwardSlots, kBlock>(a, slots);
    locate(comp, a, q, r);
    // rate: the sample of element i0 and the first element of the next one
    uint64_t sample = 0, next = 0;
    if constexpr (kRate) {
      sample = i0 / static_cast<uint64_t>(a.sample_size);
      next = (sample + 1) * static_cast<uint64_t>(a.sample_size);
    }
#pragma unroll 1
    for (int j = 0; j < n; ++j) {
      const uint64_t i = i0 + j;
      lik_t gl;
      if constexpr (kRate) {
        if (i == next) {  // a group may cross into the next sample
          ++sample;
          next += static_cast<uint64_t>(a.sample_size);
        }
        gl = a.g_lik[sample];
      } else {
        gl = a.g_lik[i];
      }
      const acc_t gyh = a.g_yhat != nullptr ? static_cast<acc_t>(a.g_yhat[i]) : acc_t(0);
      const acc_t gy = mixture_backward_element<kFamily, kRate>(
          gyh, static_cast<acc_t>(gl), static_cast<acc_t>(a.y[i]),
          static_cast<acc_t>(element_noise(noisy, keys, i0, j, u)), a.K, a.logits, comp, p);
      if (a.grad_y != nullptr) a.grad_y[i] = to_storage<scalar_t>(gy);
      next_element(comp, a, q, r);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// A layout whose offset is the element index itself (contiguous over the elements of y).
bool is_identity(const ComponentLayout& l, int64_t numel) {
  return l.inner >= numel || l.stride_outer == l.inner;
}

// The inner size every tensor of the call is addressed with: the one inner of the layouts that
// are not the identity (the identity takes any inner: stride_outer = inner). A tensor with another
// inner is read from (or, for a gradient, written to) a contiguous tensor instead, which never
// happens for the layouts of section 7 (contiguous, channel-blocked, broadcast over the batch).
int64_t common_inner(const std::initializer_list<const ComponentLayout*>& layouts,
                     int64_t numel) {
  for (const ComponentLayout* l : layouts) {
    if (l != nullptr && !is_identity(*l, numel)) return l->inner;
  }
  return std::max<int64_t>(numel, 1);
}

template <typename T>
Strided<T> strided(T* data, const ComponentLayout& l, int64_t inner, int64_t numel) {
  return {data, l.stride_k, is_identity(l, numel) ? inner : l.stride_outer};
}

// Brings a parameter to the common inner: in place when it has it, else a contiguous copy.
void to_common(at::Tensor& t, ComponentLayout& l, int64_t inner, int64_t numel) {
  if (!is_identity(l, numel) && l.inner != inner) {
    t = t.contiguous();
    l = *component_layout(t);
  }
}

// A gradient as grad_like gives it, contiguous where its layout does not have the common inner.
at::Tensor common_grad(const at::Tensor& t, bool asked, ComponentLayout& l, int64_t inner,
                       int64_t numel) {
  at::Tensor g = grad_like(t, asked, l);
  if (asked && !is_identity(l, numel) && l.inner != inner) {
    g = at::empty(t.sizes(), t.options());
    l = *component_layout(g);
  }
  return g;
}

struct CudaMixtureCall : MixtureCall {
  int64_t inner = 1;
};

CudaMixtureCall prepare(const at::Tensor& y, const at::Tensor& scales, const at::Tensor& means,
                        const at::Tensor& weights, const at::Tensor& seed,
                        const at::Tensor& temperature, c10::string_view mode,
                        c10::string_view family, double scale_bound, double likelihood_bound,
                        bool rate) {
  check_cuda(y);
  CudaMixtureCall c;
  static_cast<MixtureCall&>(c) = prepare_mixture(y, scales, means, weights, seed, temperature,
                                                 mode, family, scale_bound, likelihood_bound,
                                                 rate);
  const int64_t numel = c.y.numel();
  c.inner = common_inner({&c.ls, &c.lm, &c.lw}, numel);
  to_common(c.scales, c.ls, c.inner, numel);
  to_common(c.means, c.lm, c.inner, numel);
  to_common(c.weights, c.lw, c.inner, numel);
  return c;
}

template <typename scalar_t>
MixtureArgs<scalar_t, acc_type<scalar_t>> make_args(const CudaMixtureCall& c, bool logits) {
  MixtureArgs<scalar_t, acc_type<scalar_t>> a{};
  const int64_t numel = c.y.numel();
  a.y = c.y.const_data_ptr<scalar_t>();
  a.scales = strided(c.scales.const_data_ptr<scalar_t>(), c.ls, c.inner, numel);
  a.means = strided(c.means.const_data_ptr<scalar_t>(), c.lm, c.inner, numel);
  a.weights = strided(c.weights.const_data_ptr<scalar_t>(), c.lw, c.inner, numel);
  a.numel = static_cast<uint64_t>(numel);
  a.inner = static_cast<uint64_t>(c.inner);
  a.K = c.K;
  a.logits = logits;
  return a;
}

template <typename acc_t>
QuantParams<acc_t> kernel_params(const MixtureCall& c, double scale_bound,
                                 double likelihood_bound, bool zero_center) {
  // The temperature slot is filled in by the kernel from the device tensor.
  return make_params<acc_t>(c.mode, 0.0, scale_bound, likelihood_bound, zero_center);
}

std::tuple<at::Tensor, at::Tensor> mixture_forward_cuda(
    const at::Tensor& y, const at::Tensor& scales, const at::Tensor& means,
    const at::Tensor& weights, const at::Tensor& seed, const at::Tensor& temperature,
    c10::string_view mode, double scale_bound, double likelihood_bound, bool zero_center,
    c10::string_view family, bool weights_are_logits, bool rate) {
  check_cuda(y);
  const c10::cuda::CUDAGuard guard(y.device());
  const CudaMixtureCall c = prepare(y, scales, means, weights, seed, temperature, mode, family,
                                    scale_bound, likelihood_bound, rate);
  at::Tensor y_hat = at::empty(c.y.sizes(), c.y.options());
  const auto lik_options = c.y.options().dtype(likelihood_dtype(y.scalar_type()));
  const int64_t samples = rate ? y.size(0) : 0;
  const int64_t sample_size = samples > 0 ? y.numel() / samples : 0;
  at::Tensor lik = rate ? at::empty({samples}, lik_options) : at::empty(c.y.sizes(), lik_options);
  if (c.y.numel() == 0) return {y_hat, rate ? lik.zero_() : lik};  // an empty sum is 0 bits
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(c.y.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    auto a = make_args<scalar_t>(c, weights_are_logits);
    a.y_hat = y_hat.mutable_data_ptr<scalar_t>();
    const QuantParams<acc_t> p = kernel_params<acc_t>(c, scale_bound, likelihood_bound, zero_center);
    const int64_t* sd = seed.const_data_ptr<int64_t>();
    const double* tp = temperature.const_data_ptr<double>();
    dispatch_family(c.family, [&](auto fam) {
      constexpr int kFamily = decltype(fam)::value;
      if (rate) {
        a.sample_size = sample_size;
        launch_rate<acc_t>(c.y, samples, sample_size, lik, stream,
                           [&](int64_t blocks, int64_t chunks, double* partial) {
          a.chunks = chunks;
          a.partial = partial;
          mixture_forward_kernel<scalar_t, kFamily, true>
              <<<blocks, kThreads, 0, stream>>>(a, sd, tp, p);
        });
      } else {
        a.lik = lik.mutable_data_ptr<acc_t>();
        constexpr auto kernel = mixture_forward_kernel<scalar_t, kFamily, false>;
        const int64_t groups = (c.y.numel() + kGroup - 1) / kGroup;
        kernel<<<grid_size<kernel>(groups), kThreads, 0, stream>>>(a, sd, tp, p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {y_hat, lik};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_backward_cuda(
    const c10::optional<at::Tensor>& grad_y_hat, const at::Tensor& grad_lik, const at::Tensor& y,
    const at::Tensor& scales, const at::Tensor& means, const at::Tensor& weights,
    const at::Tensor& seed, const at::Tensor& temperature, c10::string_view mode,
    double scale_bound, double likelihood_bound, bool zero_center, c10::string_view family,
    bool weights_are_logits, std::array<bool, 4> output_mask, bool rate) {
  check_cuda(y);
  const c10::cuda::CUDAGuard guard(y.device());
  const CudaMixtureCall c = prepare(y, scales, means, weights, seed, temperature, mode, family,
                                    scale_bound, likelihood_bound, rate);
  check_grad_likelihoods(grad_lik, y, rate);
  at::Tensor g_yhat;
  if (output_mask[0] && grad_y_hat.has_value() && grad_y_hat->defined()) {
    check_like(*grad_y_hat, y, "grad_y_hat");
    g_yhat = grad_y_hat->contiguous();
  }
  const at::Tensor g_lik = grad_lik.contiguous();
  const int64_t numel = c.y.numel();
  ComponentLayout ls{}, lm{}, lw{};
  at::Tensor gy = output_mask[0] ? at::empty(c.y.sizes(), c.y.options()) : at::empty({0}, c.y.options());
  at::Tensor gs = common_grad(c.scales, output_mask[1], ls, c.inner, numel);
  at::Tensor gm = common_grad(c.means, output_mask[2], lm, c.inner, numel);
  at::Tensor gw = common_grad(c.weights, output_mask[3], lw, c.inner, numel);
  if (numel == 0 || !(output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3])) {
    return {gy, gs, gm, gw};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(c.y.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    auto a = make_args<scalar_t>(c, weights_are_logits);
    a.g_yhat = data_or_null<scalar_t>(g_yhat);
    a.g_lik = g_lik.const_data_ptr<acc_t>();
    a.grad_y = output_mask[0] ? gy.mutable_data_ptr<scalar_t>() : nullptr;
    auto out = [&](at::Tensor& g, bool asked, const ComponentLayout& l,
                   const Strided<const scalar_t>& param) {
      return asked ? strided(g.mutable_data_ptr<scalar_t>(), l, c.inner, numel)
                   : Strided<scalar_t>{const_cast<scalar_t*>(param.data), param.stride_k,
                                       param.stride_outer};
    };
    a.grad_scales = out(gs, output_mask[1], ls, a.scales);
    a.grad_means = out(gm, output_mask[2], lm, a.means);
    a.grad_weights = out(gw, output_mask[3], lw, a.weights);
    a.want_scales = output_mask[1];
    a.want_means = output_mask[2];
    a.want_weights = output_mask[3];
    if (rate) a.sample_size = numel / y.size(0);
    const QuantParams<acc_t> p = kernel_params<acc_t>(c, scale_bound, likelihood_bound, zero_center);
    const int64_t* sd = seed.const_data_ptr<int64_t>();
    const double* tp = temperature.const_data_ptr<double>();
    const int64_t groups = (numel + kGroup - 1) / kGroup;
    dispatch_family(c.family, [&](auto fam) {
      constexpr int kFamily = decltype(fam)::value;
      constexpr int kBlock = backward_block<acc_t>();
      if (rate) {
        constexpr auto kernel = mixture_backward_kernel<scalar_t, kFamily, true>;
        kernel<<<grid_size<kernel, kBlock>(groups), kBlock, 0, stream>>>(a, sd, tp, p);
      } else {
        constexpr auto kernel = mixture_backward_kernel<scalar_t, kFamily, false>;
        kernel<<<grid_size<kernel, kBlock>(groups), kBlock, 0, stream>>>(a, sd, tp, p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {gy, gs, gm, gw};
}

}  // namespace
}  // namespace lic_quant

TORCH_LIBRARY_IMPL(lic_quant, CUDA, m) {
  m.impl("mixture_quantize_forward", &lic_quant::mixture_forward_cuda);
  m.impl("mixture_quantize_backward", &lic_quant::mixture_backward_cuda);
}
