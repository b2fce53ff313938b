// Sums, means and variances over any axis set on the GPU, and their backward passes (the shared
// reduction kernels are in reduce_kernels.cuh). The backward passes broadcast the output gradient over
// the reduced axes, walking x in its memory order with float4 stores where the innermost dim allows.
#include <cstdint>

#include "ops/cuda/reduce.h"
#include "ops/cuda/reduce_kernels.cuh"

namespace zsq::cuda {

using namespace reduce_detail;

namespace {

struct SumOp {
  static constexpr int K = 1;
  __device__ __forceinline__ void add(Sums<1>& a, float v, i64) const { a.v[0] += v; }
};

// The variance in one pass over x. Each output accumulates, in double, sum x (for the mean) and the sum
// and sum of squares of d = x - shift, where shift is the output's first input (the same in every thread,
// so partials add and the fixed-order two-level sums serve unchanged). Then
//   M2 = sum (x - mean)^2 = sum d^2 - (sum d)^2 / n.
// Why shifted sums and not Welford or plain sum / sum of squares:
// - plain sums cancel catastrophically when |mean| >> std: sum x^2 - (sum x)^2 / n loses a factor
//   1 + mean^2 / var (1e8 for mean 100, std 0.01: 27 of double's 53 bits), unbounded beyond that;
// - with the shift a data point, (shift - mean)^2 <= M2, so sum d^2 = M2 + n (mean - shift)^2 <= (n + 1) M2:
//   the loss is at most a factor n + 1 whatever the data, and 1 + z^2 (a few) for a shift z std from
//   the mean (the mean-100 / std-0.01 test: ~1e-15 relative vs ~1e-5 for plain sums);
// - Welford needs an FP64 division per element (a multi-instruction sequence on the FP64 pipe) and a
//   three-value Chan merge at every level; the shifted sums cost one conversion, two adds and an FMA.
struct ShiftedMomentsOp {
  static constexpr int K = 3;
  static constexpr bool kShifted = true;
  __device__ __forceinline__ void add(Sums<3>& a, float v, float shift, i64) const {
    const double x = v;
    const double d = x - static_cast<double>(shift);
    a.v[0] += x;
    a.v[1] += d;
    a.v[2] = fma(d, d, a.v[2]);
  }
};

// var[o] and the float mean[o] (kept for the backward pass). The CPU path sums squared deviations from
// the float-rounded mean m_f; sum (x - m_f)^2 = M2 + n (mean - m_f)^2 gives the same quantity.
struct StoreVariance {
  float* var;
  float* mean;
  double count;
  double inv_denom;
  __device__ __forceinline__ void operator()(i64 o, const Sums<3>& s) const {
    const double m = s.v[0] / count;
    const float m_f = static_cast<float>(m);
    const double m2 = fmax(0.0, s.v[2] - s.v[1] * s.v[1] / count);
    const double rounding = m - static_cast<double>(m_f);
    var[o] = static_cast<float>((m2 + count * rounding * rounding) * inv_denom);
    mean[o] = m_f;
  }
};

struct StoreScaled {
  float* out;
  double scale;
  __device__ __forceinline__ void operator()(i64 o, const Sums<1>& s) const {
    out[o] = static_cast<float>(s.v[0] * scale);
  }
};

// ---- backward (broadcast) kernels ---------------------------------------------------------------

// All dims of x in memory order with their output strides (0 on reduced dims), for index math in 32
// bits when x has fewer than 2^32 elements.
struct FullDims {
  int n = 0;
  i64 size[kMaxReduceDims] = {};
  i64 out_stride[kMaxReduceDims] = {};
};

FullDims full_dims(const ReduceLayout& raw) {
  const ReduceLayout d = normalize(raw);
  FullDims f;
  f.n = d.ndim;
  for (int k = 0; k < d.ndim; ++k) {
    f.size[k] = d.size[k];
    f.out_stride[k] = d.out_stride[k];
  }
  return f;
}

i64 numel_of(const FullDims& f) {
  i64 n = 1;
  for (int k = 0; k < f.n; ++k) n *= f.size[k];
  return n;
}

template <typename Index>
__device__ __forceinline__ Index output_index(const FullDims& d, Index i) {
  Index o = 0;
  for (int k = d.n - 1; k >= 0; --k) {
    const Index size = static_cast<Index>(d.size[k]);
    o += (i % size) * static_cast<Index>(d.out_stride[k]);
    i /= size;
  }
  return o;
}

// dx[i] = f(o(i), i) over all of x; V consecutive elements per thread (the innermost dim's size is a
// multiple of V, so they share their outer indices and step the output by its stride).
template <typename Index, int V, class F>
__global__ void __launch_bounds__(kBlock)
    broadcast_kernel(FullDims d, Index units, float* __restrict__ dx, F f) {
  const Index os = static_cast<Index>(d.out_stride[d.n - 1]);
  for (Index u = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index i = u * V;
    const Index o = output_index(d, i);
    if constexpr (V == 4) {
      float4 r;
      r.x = f(o, i, 0);
      r.y = f(o + os, i + 1, 1);
      r.z = f(o + 2 * os, i + 2, 2);
      r.w = f(o + 3 * os, i + 3, 3);
      *reinterpret_cast<float4*>(dx + i) = r;
    } else {
      dx[i] = f(o, i, 0);
    }
  }
}

struct ScaleGrad {
  const float* g;
  float scale;
  template <typename Index>
  __device__ __forceinline__ float operator()(Index o, Index, int) const {
    return g[o] * scale;
  }
};

struct VarianceGrad {
  const float* g;
  const float* x;
  const float* mean;
  double two_over_denom;
  template <typename Index>
  __device__ __forceinline__ float operator()(Index o, Index i, int) const {
    const float c = static_cast<float>(static_cast<double>(g[o]) * two_over_denom);
    return c * (x[i] - mean[o]);
  }
};

template <class F>
void run_broadcast(const ReduceLayout& layout, float* dx, bool aligned, F f) {
  const FullDims d = full_dims(layout);
  const i64 n = numel_of(d);
  if (n == 0) return;
  const bool vec4 = aligned && d.size[d.n - 1] % 4 == 0 && reinterpret_cast<std::uintptr_t>(dx) % 16 == 0;
  const i64 units = vec4 ? n / 4 : n;
  const int grid = grid_for(units);
  if (n < (i64{1} << 31)) {  // 32-bit index math; u + grid stride stays below 2^32
    using I = std::uint32_t;
    if (vec4)
      broadcast_kernel<I, 4><<<grid, kBlock, 0, stream()>>>(d, static_cast<I>(units), dx, f);
    else
      broadcast_kernel<I, 1><<<grid, kBlock, 0, stream()>>>(d, static_cast<I>(units), dx, f);
  } else {
    using I = std::uint64_t;
    if (vec4)
      broadcast_kernel<I, 4><<<grid, kBlock, 0, stream()>>>(d, static_cast<I>(units), dx, f);
    else
      broadcast_kernel<I, 1><<<grid, kBlock, 0, stream()>>>(d, static_cast<I>(units), dx, f);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

i64 layout_count(const ReduceLayout& layout) {
  i64 count = 1;
  for (int k = 0; k < layout.ndim; ++k)
    if (layout.reduced[k]) count *= layout.size[k];
  return count;
}

}  // namespace

void reduce_sum(const float* x, const ReduceLayout& layout, double scale, float* out) {
  run_reduction(x, make_geometry(layout), SumOp{}, StoreScaled{out, scale});
}

void reduce_variance(const float* x, const ReduceLayout& layout, double denom, float* var, float* mean) {
  run_reduction(x, make_geometry(layout), ShiftedMomentsOp{},
                StoreVariance{var, mean, static_cast<double>(layout_count(layout)), 1.0 / denom});
}

void reduce_broadcast_backward(const float* g, const ReduceLayout& layout, float scale, float* dx) {
  run_broadcast(layout, dx, true, ScaleGrad{g, scale});
}

void variance_backward(const float* g, const float* x, const float* mean, const ReduceLayout& layout,
                       double two_over_denom, float* dx) {
  const bool aligned = reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
  run_broadcast(layout, dx, aligned, VarianceGrad{g, x, mean, two_over_denom});
}

}  // namespace zsq::cuda
