// Fused CUDA kernels of the K-component mixture (docs/spec.md section 7): one pass forward
// (y, mu_k, sigma_k, w_k -> y_hat, P, or with rate=True y_hat and the bits of section 8) and one
// pass backward (g_yhat, g_P or the bits' gradient, y, mu_k, sigma_k, w_k -> the four gradients),
// the noise recomputed from the seed, for any K <= 8 without recompiling.
//
// A thread takes four consecutive elements (one Philox block of u) and runs the per-element math
// of mixture_math.h with the component loops outside an unrolled loop over the four, as the CPU
// kernel runs its component loops outside its element loops: one pointer step and one loop test
// per component serve four elements, and four independent masses are in flight. The component
// loops stay rolled, so the kernel's size does not grow with K. The backward keeps each
// component's mass and slopes of the four elements between its two component loops in dynamic
// shared memory (sized for the call's K: no local memory, every mass and slope computed once).
// The parameters are read in place in their component layout (checks.h): the host brings every
// layout to one common inner size, and a grid-stride loop steps (block, offset) of its element
// without a division. The family, whether the weights are logits and (float compute) the mode
// are template constants. Separate from quantize_cuda.cu so that the two compile in parallel.
#include <torch/library.h>

#include <utility>

#include "../lic_quant/mixture_math.h"
#include "cuda_kernels.h"

namespace lic_quant {
namespace {

constexpr int kGroup = 4;  // elements per thread step: one Philox block

// A parameter (or its gradient) in the common layout: element i of component k at
// k * stride_k + (i / inner) * stride_outer + i % inner, inner shared by every tensor of the call.
// ext = stride_outer - inner: how much further than the next address the next element lies when
// it starts the next block of `inner` (the host keeps |ext| within int32: addressable).
template <typename T>
struct Strided {
  T* data;
  int64_t stride_k, stride_outer;
  int32_t ext;
};

template <typename scalar_t, typename lik_t>
struct MixtureArgs {
  const scalar_t* y;
  Strided<const scalar_t> scales, means, weights;
  uint64_t numel, inner;
  int K;
  // forward
  scalar_t* y_hat;
  lik_t* lik;               // P (rate=False)
  double* partial;          // chunk sums (rate=True)
  int64_t sample_size, chunks;
  // backward
  const scalar_t* g_yhat;   // null when grad_y is not asked for or g_yhat is absent
  const lik_t* g_lik;       // P's gradient, or the bits' gradient per sample (rate=True)
  scalar_t* grad_y;         // null when not asked for
  // A gradient not asked for goes to a scratch tensor of y's size that every component writes
  // over (stride_k = 0), so that the kernel's stores need no test of which are asked for.
  Strided<scalar_t> grad_scales, grad_means, grad_weights;
};

// The backward keeps each component's mass and slopes for its four elements between its two
// component loops in dynamic shared memory: kSlots values per element and component, value f of
// element j of component k of thread t at ((k * kSlots + f) * kGroup + j) * block + t. The blocks
// are small enough that K = 8 fits the 48 KiB a launch gets without opting in.
constexpr int kSlots = 3;
template <typename acc_t>
constexpr int backward_block() {
  return sizeof(acc_t) == 8 ? 64 : 128;
}
template <typename acc_t>
constexpr size_t backward_shared_bytes(int K) {
  return static_cast<size_t>(K) * kSlots * kGroup * backward_block<acc_t>() * sizeof(acc_t);
}
static_assert(backward_shared_bytes<float>(kMaxComponents) <= 48 * 1024 &&
                  backward_shared_bytes<double>(kMaxComponents) <= 48 * 1024,
              "within the default dynamic shared memory of a launch");

// (q, r) of element i0 = q inner + r and the step of a grid-stride loop over groups, as an
// increment of both, so that the loop needs no division.
struct GroupWalk {
  uint64_t q, r, dq, dr;
  __device__ __forceinline__ void next(uint64_t inner) {
    q += dq;
    r += dr;
    if (r >= inner) {
      r -= inner;
      ++q;
    }
  }
};

__device__ __forceinline__ GroupWalk group_walk(uint64_t i0, uint64_t step, uint64_t inner) {
  return {i0 / inner, i0 % inner, step / inner, step % inner};
}

// The grid-stride loop of both kernels: fn(i0, n, q, r) for each group of four this thread takes,
// its first element i0, its element count n and (q, r) = (i0 / inner, i0 % inner).
template <typename Args, typename Fn>
__device__ __forceinline__ void for_each_group(const Args& a, Fn&& fn) {
  const uint64_t groups = (a.numel + kGroup - 1) / kGroup;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  GroupWalk walk = group_walk(first * kGroup, stride * kGroup, a.inner);
  for (uint64_t gi = first; gi < groups; gi += stride, walk.next(a.inner)) {
    const uint64_t i0 = gi * kGroup;
    fn(i0, static_cast<int>(std::min<uint64_t>(kGroup, a.numel - i0)), walk.q, walk.r);
  }
}

// A group's four lanes are its elements i0 .. i0 + 3, of which the first n exist. They run in one
// piece, or in two where the group crosses into the next block of `inner` (the host keeps
// inner >= 4 wherever a tensor's layout makes that matter, see addressable): lanes [0, split) lie
// in element 0's block, lanes [split, n) in the next, one tensor's ext further. A piece's lanes are
// at p + j in every parameter, so their loads and stores are immediate offsets of one pointer;
// the lanes outside the piece (on[j] false) load nothing and store nothing.
struct Piece {
  bool on[kGroup];
  bool second;  // the lanes past the block boundary
};

// One tensor at the piece's lanes, component k: lane j at p[j]; advance() moves to component
// k + 1 with one pointer step.
template <typename T>
struct Quad {
  T* p;
  int64_t sk;
  __device__ __forceinline__ void advance() { p += sk; }
  // Lane j's value into x, which keeps what it held where the lane is off: one predicated load
  // into the register of the previous component's value.
  template <typename acc_t>
  __device__ __forceinline__ void load(const Piece& pc, int j, acc_t& x) const {
    if (pc.on[j]) x = static_cast<acc_t>(p[j]);
  }
};

template <typename T>
__device__ __forceinline__ Quad<T> quad(const Strided<T>& t, uint64_t q, uint64_t r,
                                        const Piece& pc) {
  // q < 2^32 (the host makes sure): a 32 x 64-bit product
  const int64_t at = static_cast<int64_t>(static_cast<uint32_t>(q)) * t.stride_outer +
                     static_cast<int64_t>(r) + (pc.second ? static_cast<int64_t>(t.ext) : 0);
  return {t.data + at, t.stride_k};
}

// u of the group's lanes (zeros where the mode draws none). A group that does not start a
// Philox block (rate=True, samples whose size is not a multiple of 4) takes its elements' words
// from the two blocks it spans.
__device__ __forceinline__ void group_noise(bool noisy, const PhiloxKeys& keys, uint64_t i0,
                                            float (&u)[kGroup]) {
  if (!noisy) {
#pragma unroll
    for (int j = 0; j < kGroup; ++j) u[j] = 0.0f;
    return;
  }
  const int off = static_cast<int>(i0 & 3);
  float lo[4], hi[4];
  philox_uniform4(keys, i0 >> 2, lo);
  if (off == 0) {
#pragma unroll
    for (int j = 0; j < kGroup; ++j) u[j] = lo[j];
  } else {
    philox_uniform4(keys, (i0 >> 2) + 1, hi);
    // selects keep u in registers (an indexed array would go to local memory)
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int x = off + j;
      u[j] = x == 1 ? lo[1] : x == 2 ? lo[2] : x == 3 ? lo[3] : x == 4 ? hi[0] : x == 5 ? hi[1]
                                                                                     : hi[2];
    }
  }
}

// x as a value the optimizer knows nothing about (no instruction).
__device__ __forceinline__ void opaque(float& x) { asm volatile("" : "+f"(x)); }
__device__ __forceinline__ void opaque(double& x) { asm volatile("" : "+d"(x)); }

// ---------------------------------------------------------------------------------------------
// The per-element math of mixture_math.h for the lanes of a piece, component loops outside the
// (unrolled) loop over the lanes, as the CPU kernel's component loops run outside its element
// loops: every sum runs k = 0 .. K-1 from 0 per element, so the bits are the CPU kernel's.

template <bool kLogits, typename acc_t>
struct GroupState {
  acc_t c[kGroup];           // the centre (0 without zero_center)
  acc_t rate[kGroup];        // r~_R
  acc_t distortion[kGroup];  // r~_D
  acc_t mx[kGroup], inv[kGroup];  // logits: the max and 1 / the softmax's normalizer
};

// w_k of lane j from what the weights tensor holds there: the probability, or with logits
// softmax_numerator(l_k, max) * (1 / sum), the steps of mixture_cpu.cpp's softmax_block (the
// numerator is formed again where it is needed rather than kept: the same bits).
template <bool kLogits, typename acc_t>
__device__ __forceinline__ acc_t weight_of(acc_t given, const GroupState<kLogits, acc_t>& st,
                                           int j) {
  if constexpr (kLogits) {
    return softmax_numerator(given, st.mx[j]) * st.inv[j];
  } else {
    return given;
  }
}

// The softmax's max and normalizer (logits), the centre and the surrogate of the piece's lanes.
template <bool kLogits, typename acc_t, typename scalar_t>
__device__ __forceinline__ GroupState<kLogits, acc_t> group_state(
    const Quad<const scalar_t>& weights, const Quad<const scalar_t>& means, int K,
    const Piece& pc, const acc_t (&y)[kGroup], const float (&u)[kGroup],
    const QuantParams<acc_t>& p) {
  GroupState<kLogits, acc_t> st;
  if constexpr (kLogits) {
    Quad<const scalar_t> w = weights;
    acc_t l[kGroup], z[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      l[j] = z[j] = acc_t(0);
      w.load(pc, j, l[j]);
      st.mx[j] = l[j];
    }
    LQ_ROLLED for (int k = 1; k < K; ++k) {
      w.advance();
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        w.load(pc, j, l[j]);
        st.mx[j] = max_nan(st.mx[j], l[j]);
      }
    }
    w = weights;
    LQ_ROLLED for (int k = 0; k < K; ++k, w.advance()) {
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        w.load(pc, j, l[j]);
        z[j] = z[j] + softmax_numerator(l[j], st.mx[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) st.inv[j] = softmax_reciprocal(z[j]);
  }
#pragma unroll
  for (int j = 0; j < kGroup; ++j) st.c[j] = acc_t(0);
  if (p.zero_center) {
    Quad<const scalar_t> w = weights, m = means;
    acc_t wv[kGroup], mv[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) wv[j] = mv[j] = acc_t(0);
    LQ_ROLLED for (int k = 0; k < K; ++k, w.advance(), m.advance()) {
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        w.load(pc, j, wv[j]);
        m.load(pc, j, mv[j]);
        st.c[j] = st.c[j] + weight_of(wv[j], st, j) * mv[j];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kGroup; ++j) {
    const Surrogate<acc_t> q =
        surrogate<acc_t>(p.mode, y[j] - st.c[j], static_cast<acc_t>(u[j]), p.temperature);
    st.rate[j] = q.rate;
    st.distortion[j] = q.distortion;
  }
  return st;
}

// kMode >= 0: the mode as a compile-time constant; -1: read from the parameters.
template <int kMode, typename acc_t>
__device__ __forceinline__ QuantParams<acc_t> fix_mode(QuantParams<acc_t> p) {
  if constexpr (kMode >= 0) p.mode = kMode;
  return p;
}

// Lanes [0, split) and [split, n) of a group whose element 0 is r into its block of `inner`.
__device__ __forceinline__ int group_split(uint64_t r, int n, uint64_t inner) {
  const uint64_t left = inner - r;
  return left < static_cast<uint64_t>(n) ? static_cast<int>(left) : n;
}

__device__ __forceinline__ Piece make_piece(int lo, int hi) {
  Piece pc;
#pragma unroll
  for (int j = 0; j < kGroup; ++j) pc.on[j] = lo <= j && j < hi;
  pc.second = lo > 0;
  return pc;
}

// ---------------------------------------------------------------------------------------------
// Forward. Elements i0 .. i0 + n - 1 (1 <= n <= 4) at (q, r); returns the sum of their -log2 P
// with kRate (the likelihoods are not written then).

template <int kFamily, bool kRate, bool kLogits, typename scalar_t, typename lik_t, typename acc_t>
__device__ __forceinline__ double forward_group(const MixtureArgs<scalar_t, lik_t>& a,
                                                uint64_t i0, int n, uint64_t q, uint64_t r,
                                                const PhiloxKeys& keys, bool noisy,
                                                const QuantParams<acc_t>& p) {
  float u[kGroup];
  group_noise(noisy, keys, i0, u);
  const scalar_t* const yp = a.y + i0;
  scalar_t* const yhp = a.y_hat + i0;
  acc_t y[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) y[j] = j < n ? static_cast<acc_t>(yp[j]) : acc_t(0);
  double acc = 0.0;
  const int split = group_split(r, n, a.inner);
  // One piece, or two where the group crosses a block boundary.
#pragma unroll 1
  for (int lo = 0, hi = split; lo < n; lo = hi, hi = n) {
    const Piece pc = make_piece(lo, hi);
    Quad<const scalar_t> s = quad(a.scales, q, r, pc), m = quad(a.means, q, r, pc),
                         w = quad(a.weights, q, r, pc);
    const GroupState<kLogits, acc_t> st = group_state<kLogits>(w, m, a.K, pc, y, u, p);
    acc_t prob[kGroup], sv[kGroup], mv[kGroup], wv[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) prob[j] = sv[j] = mv[j] = wv[j] = acc_t(0);
    LQ_ROLLED for (int k = 0; k < a.K; ++k, s.advance(), m.advance(), w.advance()) {
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        s.load(pc, j, sv[j]);
        m.load(pc, j, mv[j]);
        w.load(pc, j, wv[j]);
        prob[j] = prob[j] + weight_of(wv[j], st, j) *
                                component_mass<kFamily>(
                                    component_residual(st.c[j], st.rate[j], mv[j]), sv[j], p);
      }
    }
    // Every lane's outputs (held opaque, so that nvcc does not sink them into a branch per lane),
    // then the stores of the piece's lanes as predicated stores.
    acc_t yh[kGroup], likelihood[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      likelihood[j] = canonical_nan(lower_bound(prob[j], p.likelihood_bound));
      yh[j] = canonical_nan(st.c[j] + st.distortion[j]);
      opaque(likelihood[j]);
      opaque(yh[j]);
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (pc.on[j]) yhp[j] = to_storage<scalar_t>(yh[j]);
      if constexpr (kRate) {
        if (pc.on[j]) acc += neg_log2(likelihood[j]);
      } else {
        if (pc.on[j]) a.lik[i0 + j] = static_cast<lik_t>(likelihood[j]);
      }
    }
  }
  return acc;
}

// rate=False: a grid-stride loop over the groups of four. kRate: block k is chunk k % chunks of
// sample k / chunks (cuda_kernels.h), four elements per thread, then the chunk's sum.
template <typename scalar_t, int kFamily, int kMode, bool kRate, bool kLogits>
__global__ void __launch_bounds__(kThreads, 1)
    mixture_forward_kernel(const MixtureArgs<scalar_t, acc_type<scalar_t>> a,
                           const int64_t* __restrict__ seed_ptr,
                           const double* __restrict__ temperature,
                           QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  const QuantParams<acc_t> p = fix_mode<kMode>(with_temperature(params, temperature));
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  if constexpr (kRate) {
    const int64_t sample = blockIdx.x / a.chunks;
    const int64_t w0 = (blockIdx.x % a.chunks) * kRateChunk + kGroup * threadIdx.x;
    const int n = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kGroup, a.sample_size - w0)));
    double acc = 0.0;
    if (n > 0) {
      const uint64_t i0 = static_cast<uint64_t>(sample * a.sample_size + w0);
      acc = forward_group<kFamily, true, kLogits>(a, i0, n, i0 / a.inner, i0 % a.inner, keys,
                                                  noisy, p);
    }
    chunk_sum(acc, a.partial);
  } else {
    for_each_group(a, [&](uint64_t i0, int n, uint64_t q, uint64_t r) {
      forward_group<kFamily, false, kLogits>(a, i0, n, q, r, keys, noisy, p);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: a grid-stride loop over the groups of four. kRate: g_lik holds one value per sample of
// sample_size elements.

extern __shared__ __align__(16) unsigned char mixture_shared[];

template <typename scalar_t, int kFamily, int kMode, bool kRate, bool kLogits>
__global__ void __launch_bounds__(backward_block<acc_type<scalar_t>>(), 1)
    mixture_backward_kernel(const MixtureArgs<scalar_t, acc_type<scalar_t>> a,
                            const int64_t* __restrict__ seed_ptr,
                            const double* __restrict__ temperature,
                            QuantParams<acc_type<scalar_t>> params) {
  using acc_t = acc_type<scalar_t>;
  using lik_t = acc_t;
  constexpr int kBlock = backward_block<acc_t>();
  constexpr int kComponentSlots = kSlots * kGroup * kBlock;  // one component's, every thread's
  acc_t* const slots = reinterpret_cast<acc_t*>(mixture_shared) + threadIdx.x;
  const QuantParams<acc_t> p = fix_mode<kMode>(with_temperature(params, temperature));
  const PhiloxKeys keys = philox_keys(static_cast<uint64_t>(*seed_ptr));
  const bool noisy = mode_uses_noise(p.mode);
  for_each_group(a, [&](uint64_t i0, int n, uint64_t q, uint64_t r) {
    float u[kGroup];
    group_noise(noisy, keys, i0, u);
    const scalar_t* const yp = a.y + i0;
    acc_t y[kGroup], gl[kGroup], gyh[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      y[j] = gyh[j] = acc_t(0);
      if (j < n) y[j] = static_cast<acc_t>(yp[j]);
    }
    if (a.g_yhat != nullptr) {
      const scalar_t* const gyhp = a.g_yhat + i0;
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (j < n) gyh[j] = static_cast<acc_t>(gyhp[j]);
      }
    }
    if constexpr (kRate) {
      // the sample of each element (a group may cross into the next sample, or several)
      uint64_t sample = i0 / static_cast<uint64_t>(a.sample_size);
      uint64_t next = (sample + 1) * static_cast<uint64_t>(a.sample_size);
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (i0 + j == next) {
          ++sample;
          next += static_cast<uint64_t>(a.sample_size);
        }
        gl[j] = j < n ? a.g_lik[sample] : lik_t(0);
      }
    } else {
      const lik_t* const glp = a.g_lik + i0;
#pragma unroll
      for (int j = 0; j < kGroup; ++j) gl[j] = j < n ? glp[j] : lik_t(0);
    }
    acc_t gy[kGroup];  // each lane's sum, formed in the piece that holds the lane
#pragma unroll
    for (int j = 0; j < kGroup; ++j) gy[j] = acc_t(0);
    const int split = group_split(r, n, a.inner);
#pragma unroll 1
    for (int lo = 0, hi = split; lo < n; lo = hi, hi = n) {
      const Piece pc = make_piece(lo, hi);
      Quad<const scalar_t> s = quad(a.scales, q, r, pc),
                           m = quad(a.means, q, r, pc),
                           w = quad(a.weights, q, r, pc);
      const GroupState<kLogits, acc_t> st = group_state<kLogits>(w, m, a.K, pc, y, u, p);
      // Pass 1: every component's mass and slopes (kept), and p.
      acc_t prob[kGroup], sv[kGroup], mv[kGroup], wv[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) prob[j] = sv[j] = mv[j] = wv[j] = acc_t(0);
      {
        Quad<const scalar_t> s1 = s, m1 = m, w1 = w;
        acc_t* slot = slots;
        LQ_ROLLED for (int k = 0; k < a.K;
                       ++k, s1.advance(), m1.advance(), w1.advance(), slot += kComponentSlots) {
#pragma unroll
          for (int j = 0; j < kGroup; ++j) {
            s1.load(pc, j, sv[j]);
            m1.load(pc, j, mv[j]);
            w1.load(pc, j, wv[j]);
            const ComponentSlopes<acc_t> d = component_mass_and_slopes<kFamily>(
                component_residual(st.c[j], st.rate[j], mv[j]), sv[j], p);
            prob[j] = prob[j] + weight_of(wv[j], st, j) * d.mass;
            slot[(0 * kGroup + j) * kBlock] = d.mass;
            slot[(1 * kGroup + j) * kBlock] = d.d_v;
            slot[(2 * kGroup + j) * kBlock] = d.d_s;
          }
        }
      }
      acc_t g_p[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        g_p[j] = kRate ? rate_grad_p(gl[j], prob[j], p.likelihood_bound)
                       : pass_if_towards(gl[j], prob[j] >= p.likelihood_bound);
      }
      // Pass 2: the gradients from the kept mass and slopes.
      Quad<scalar_t> gs = quad(a.grad_scales, q, r, pc),
                     gm = quad(a.grad_means, q, r, pc),
                     gw = quad(a.grad_weights, q, r, pc);
      const acc_t* slot = slots;
      LQ_ROLLED for (int k = 0; k < a.K; ++k, s.advance(), w.advance(), gs.advance(),
                                         gm.advance(), gw.advance(), slot += kComponentSlots) {
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
          s.load(pc, j, sv[j]);
          w.load(pc, j, wv[j]);
          const acc_t wk = weight_of(wv[j], st, j);
          const ComponentSlopes<acc_t> d{slot[(0 * kGroup + j) * kBlock],
                                         slot[(1 * kGroup + j) * kBlock],
                                         slot[(2 * kGroup + j) * kBlock]};
          acc_t gyk = gy[j] + (g_p[j] * wk) * d.d_v;
          ComponentGrads<acc_t> o = component_grads(g_p[j], wk, d, prob[j], sv[j], kLogits, p);
          // formed for every lane (opaque: not sunk into a branch), stored for the piece's lanes
          opaque(gyk);
          opaque(o.sigma);
          opaque(o.mu);
          opaque(o.weight);
          if (pc.on[j]) {
            gy[j] = gyk;
            gs.p[j] = to_storage<scalar_t>(o.sigma);
            gm.p[j] = to_storage<scalar_t>(o.mu);
            gw.p[j] = to_storage<scalar_t>(o.weight);
          }
        }
      }
    }
    if (a.grad_y != nullptr) {
      scalar_t* const gyp = a.grad_y + i0;
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        acc_t g = canonical_nan(gyh[j] + gy[j]);
        opaque(g);
        if (j < n) gyp[j] = to_storage<scalar_t>(g);
      }
    }
  });
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

// Whether the kernels address a tensor of layout l in place with the common inner: the identity,
// or blocks of the common inner of at least a group's four elements (so that a group spans at
// most two of them) whose ext fits an int32.
bool addressable(const ComponentLayout& l, int64_t inner, int64_t numel) {
  return is_identity(l, numel) ||
         (l.inner == inner && inner >= kGroup && std::abs(l.stride_outer - inner) <= INT32_MAX);
}

template <typename T>
Strided<T> strided(T* data, const ComponentLayout& l, int64_t inner, int64_t numel) {
  const int64_t outer = is_identity(l, numel) ? inner : l.stride_outer;
  return {data, l.stride_k, outer, static_cast<int32_t>(outer - inner)};
}

// Brings a parameter to the common inner: in place when it has it, else a contiguous copy.
void to_common(at::Tensor& t, ComponentLayout& l, int64_t inner, int64_t numel) {
  if (!addressable(l, inner, numel)) {
    t = t.contiguous();
    l = *component_layout(t);
  }
}

// A gradient as grad_like gives it, contiguous where its layout does not have the common inner.
at::Tensor common_grad(const at::Tensor& t, bool asked, ComponentLayout& l, int64_t inner,
                       int64_t numel) {
  at::Tensor g = grad_like(t, asked, l);
  if (asked && !addressable(l, inner, numel)) {
    g = at::empty(t.sizes(), t.options());
    l = *component_layout(g);
  }
  return g;
}

// Calls fn(family, mode, logits) as integral constants: the family and whether the weights are
// logits are template constants of every kernel; the mode is one of the float-compute kernels
// (its switch and noise test then fold away per element) and read at run time (-1) in float64.
template <typename scalar_t, typename Fn>
void dispatch_kernel(int32_t family, int32_t mode, bool logits, Fn&& fn) {
  dispatch_family(family, [&](auto fam) {
    auto with_logits = [&](auto mode_c) {
      if (logits) {
        fn(fam, mode_c, std::true_type{});
      } else {
        fn(fam, mode_c, std::false_type{});
      }
    };
    if constexpr (std::is_same_v<scalar_t, double>) {
      with_logits(std::integral_constant<int, -1>{});
    } else {
      switch (mode) {
        case kNoise: return with_logits(std::integral_constant<int, kNoise>{});
        case kSte: return with_logits(std::integral_constant<int, kSte>{});
        case kMixed: return with_logits(std::integral_constant<int, kMixed>{});
        default: return with_logits(std::integral_constant<int, kSua>{});
      }
    }
  });
}

// grid_size (cuda_kernels.h) for the backward, whose occupancy depends on its shared memory and so
// on K: computed once per device and K.
template <auto kKernel, int kBlock>
int64_t backward_grid(int64_t work, int K, size_t shared) {
  static std::atomic<int> blocks_per_sm[kMaxDevices][kMaxComponents + 1];  // zero: not computed
  const int dev = c10::cuda::current_device();
  int per_sm = dev < kMaxDevices ? blocks_per_sm[dev][K].load(std::memory_order_relaxed) : 0;
  if (per_sm == 0) {
    C10_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kBlock, shared));
    per_sm = std::max(per_sm, 1);
    if (dev < kMaxDevices) blocks_per_sm[dev][K].store(per_sm, std::memory_order_relaxed);
  }
  const int64_t needed = (work + kBlock - 1) / kBlock;
  return std::max<int64_t>(1, std::min<int64_t>(needed, multiprocessor_count(dev) * per_sm));
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
  if (numel > 0 && (numel - 1) / c.inner > static_cast<int64_t>(UINT32_MAX)) {
    // The kernels take the block index q of an element as 32 bits: beyond, every tensor is read
    // contiguous (the identity, addressed with inner = numel, q = 0).
    for (auto [t, l] : {std::pair{&c.scales, &c.ls}, {&c.means, &c.lm}, {&c.weights, &c.lw}}) {
      if (!is_identity(*l, numel)) {
        *t = t->contiguous();
        *l = *component_layout(*t);
      }
    }
    c.inner = numel;
  }
  return c;
}

template <typename scalar_t>
MixtureArgs<scalar_t, acc_type<scalar_t>> make_args(const CudaMixtureCall& c) {
  MixtureArgs<scalar_t, acc_type<scalar_t>> a{};
  const int64_t numel = c.y.numel();
  a.y = c.y.const_data_ptr<scalar_t>();
  a.scales = strided(c.scales.const_data_ptr<scalar_t>(), c.ls, c.inner, numel);
  a.means = strided(c.means.const_data_ptr<scalar_t>(), c.lm, c.inner, numel);
  a.weights = strided(c.weights.const_data_ptr<scalar_t>(), c.lw, c.inner, numel);
  a.numel = static_cast<uint64_t>(numel);
  a.inner = static_cast<uint64_t>(c.inner);
  a.K = c.K;
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
    auto a = make_args<scalar_t>(c);
    a.y_hat = y_hat.mutable_data_ptr<scalar_t>();
    const QuantParams<acc_t> p = kernel_params<acc_t>(c, scale_bound, likelihood_bound, zero_center);
    const int64_t* sd = seed.const_data_ptr<int64_t>();
    const double* tp = temperature.const_data_ptr<double>();
    dispatch_kernel<scalar_t>(c.family, c.mode, weights_are_logits,
                              [&](auto fam, auto mode, auto lg) {
      constexpr int kFamily = decltype(fam)::value;
      constexpr int kMode = decltype(mode)::value;
      constexpr bool kLogits = decltype(lg)::value;
      if (rate) {
        a.sample_size = sample_size;
        launch_rate<acc_t>(c.y, samples, sample_size, lik, stream,
                           [&](int64_t blocks, int64_t chunks, double* partial) {
          a.chunks = chunks;
          a.partial = partial;
          mixture_forward_kernel<scalar_t, kFamily, kMode, true, kLogits>
              <<<blocks, kThreads, 0, stream>>>(a, sd, tp, p);
        });
      } else {
        a.lik = lik.mutable_data_ptr<acc_t>();
        constexpr auto kernel = mixture_forward_kernel<scalar_t, kFamily, kMode, false, kLogits>;
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
    auto a = make_args<scalar_t>(c);
    a.g_yhat = data_or_null<scalar_t>(g_yhat);
    a.g_lik = g_lik.const_data_ptr<acc_t>();
    a.grad_y = output_mask[0] ? gy.mutable_data_ptr<scalar_t>() : nullptr;
    const bool all_asked = output_mask[1] && output_mask[2] && output_mask[3];
    at::Tensor scratch = all_asked ? at::Tensor() : at::empty({numel}, c.y.options());
    auto out = [&](at::Tensor& g, bool asked, const ComponentLayout& l) {
      return asked ? strided(g.mutable_data_ptr<scalar_t>(), l, c.inner, numel)
                   : Strided<scalar_t>{scratch.mutable_data_ptr<scalar_t>(), 0, c.inner, 0};
    };
    a.grad_scales = out(gs, output_mask[1], ls);
    a.grad_means = out(gm, output_mask[2], lm);
    a.grad_weights = out(gw, output_mask[3], lw);
    if (rate) a.sample_size = numel / y.size(0);
    const QuantParams<acc_t> p = kernel_params<acc_t>(c, scale_bound, likelihood_bound, zero_center);
    const int64_t* sd = seed.const_data_ptr<int64_t>();
    const double* tp = temperature.const_data_ptr<double>();
    const int64_t groups = (numel + kGroup - 1) / kGroup;
    const size_t shared = backward_shared_bytes<acc_t>(c.K);
    dispatch_kernel<scalar_t>(c.family, c.mode, weights_are_logits,
                              [&](auto fam, auto mode, auto lg) {
      constexpr int kFamily = decltype(fam)::value;
      constexpr int kMode = decltype(mode)::value;
      constexpr bool kLogits = decltype(lg)::value;
      constexpr int kBlock = backward_block<acc_t>();
      if (rate) {
        constexpr auto kernel = mixture_backward_kernel<scalar_t, kFamily, kMode, true, kLogits>;
        kernel<<<backward_grid<kernel, kBlock>(groups, c.K, shared), kBlock, shared, stream>>>(
            a, sd, tp, p);
      } else {
        constexpr auto kernel = mixture_backward_kernel<scalar_t, kFamily, kMode, false, kLogits>;
        kernel<<<backward_grid<kernel, kBlock>(groups, c.K, shared), kBlock, shared, stream>>>(
            a, sd, tp, p);
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
