// The moment-matching (BN-statistics) loss on the GPU: per-channel sums of x and x^2 in double through
// the two-level reduction of reduce_kernels.cuh (warp rows for NCHW, float4 columns for channels_last),
// per-channel statistics and loss terms in the reduction's finisher, then one block folds the terms.
// The backward pass is one element-wise kernel over x in its own format.
#include <cstdint>

#include "ops/cuda/moment_matching.h"
#include "ops/cuda/reduce_kernels.cuh"

namespace zsq::cuda {

using namespace reduce_detail;

namespace {

struct MomentsOp {
  static constexpr int K = 2;
  __device__ __forceinline__ void add(Sums<2>& a, float v, i64) const {
    const double x = v;
    a.v[0] += x;
    a.v[1] += x * x;
  }
};

// Per channel c: mean, the gaps to the targets (stats = [3][C]) and the channel's loss term. The CPU
// path's arithmetic: double mean and E[x^2] - mean^2 clamped at 0.
struct MomentStats {
  const float* target_mean;
  const float* target_var;
  float* stats;
  double* loss_terms;
  i64 channels;
  double count;
  __device__ __forceinline__ void operator()(i64 c, const Sums<2>& s) const {
    const double m = s.v[0] / count;
    const double v = fmax(0.0, s.v[1] / count - m * m);
    const double dm = m - static_cast<double>(target_mean[c]);
    const double dv = v - static_cast<double>(target_var[c]);
    stats[c] = static_cast<float>(m);
    stats[channels + c] = static_cast<float>(dm);
    stats[2 * channels + c] = static_cast<float>(dv);
    loss_terms[c] = dm * dm + dv * dv;
  }
};

// ---- moment matching ------------------------------------------------------------------------------

ReduceLayout moment_layout(i64 batch, i64 channels, i64 spatial, bool channels_last) {
  ReduceLayout l;
  if (channels_last) {
    l.ndim = 2;
    l.size[0] = batch * spatial;
    l.reduced[0] = true;
    l.size[1] = channels;
    l.out_stride[1] = 1;
  } else {
    l.ndim = 3;
    l.size[0] = batch;
    l.reduced[0] = true;
    l.size[1] = channels;
    l.out_stride[1] = 1;
    l.size[2] = spatial;
    l.reduced[2] = true;
  }
  return l;
}

// Sum of the per-channel loss terms (one block, fixed order) -> loss = total / channels.
__global__ void __launch_bounds__(kBlock)
    moment_loss_kernel(const double* __restrict__ terms, i64 channels, float* __restrict__ loss) {
  __shared__ double warp_totals[kWarpsPerBlock];
  Sums<1> acc = zero_sums<1>();
  for (i64 c = threadIdx.x; c < channels; c += blockDim.x) acc.v[0] += terms[c];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x >> 5] = acc.v[0];
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_totals[w];
    loss[0] = static_cast<float>(total / static_cast<double>(channels));
  }
}

// coef = [3][C]: a_c, b_c, mean_c for dx = a_c + b_c (x - mean_c); the CPU's arithmetic.
__global__ void __launch_bounds__(kBlock)
    moment_coef_kernel(const float* __restrict__ g, const float* __restrict__ stats, i64 channels,
                       double count, float* __restrict__ coef) {
  const double scale = static_cast<double>(g[0]) * 2.0 / static_cast<double>(channels) / count;
  for (i64 c = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<i64>(gridDim.x) * blockDim.x) {
    coef[c] = static_cast<float>(scale * static_cast<double>(stats[channels + c]));
    coef[channels + c] = static_cast<float>(scale * 2.0 * static_cast<double>(stats[2 * channels + c]));
    coef[2 * channels + c] = stats[c];
  }
}

// V consecutive elements per thread share a channel (NCHW, spatial % V == 0) or hold V consecutive
// channels (channels_last, channels % V == 0).
template <typename Index, int V>
__global__ void __launch_bounds__(kBlock)
    moment_backward_kernel(const float* __restrict__ x, const float* __restrict__ coef, Index units,
                           Index channels, Index spatial, bool channels_last, float* __restrict__ dx) {
  const float* a = coef;
  const float* b = coef + channels;
  const float* mu = coef + 2 * channels;
  for (Index u = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index i = u * V;
    if constexpr (V == 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + i);
      float4 r;
      if (channels_last) {
        const Index c = i % channels;
        r.x = a[c] + b[c] * (v.x - mu[c]);
        r.y = a[c + 1] + b[c + 1] * (v.y - mu[c + 1]);
        r.z = a[c + 2] + b[c + 2] * (v.z - mu[c + 2]);
        r.w = a[c + 3] + b[c + 3] * (v.w - mu[c + 3]);
      } else {
        const Index c = (i / spatial) % channels;
        const float ac = a[c], bc = b[c], mc = mu[c];
        r.x = ac + bc * (v.x - mc);
        r.y = ac + bc * (v.y - mc);
        r.z = ac + bc * (v.z - mc);
        r.w = ac + bc * (v.w - mc);
      }
      *reinterpret_cast<float4*>(dx + i) = r;
    } else {
      const Index c = channels_last ? i % channels : (i / spatial) % channels;
      dx[i] = a[c] + b[c] * (x[i] - mu[c]);
    }
  }
}

}  // namespace

void moment_matching_forward(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             bool channels_last, const float* target_mean, const float* target_var,
                             float* stats, float* loss) {
  if (batch * channels * spatial == 0) raise_error("moment_matching_loss: empty input");
  Scratch terms(static_cast<std::size_t>(channels) * sizeof(double));
  const double count = static_cast<double>(batch) * static_cast<double>(spatial);
  run_reduction(x, make_geometry(moment_layout(batch, channels, spatial, channels_last)), MomentsOp{},
                MomentStats{target_mean, target_var, stats, terms.as<double>(), channels, count});
  moment_loss_kernel<<<1, kBlock, 0, stream()>>>(terms.as<double>(), channels, loss);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void moment_matching_backward(const float* g, const float* x, const float* stats, std::int64_t batch,
                              std::int64_t channels, std::int64_t spatial, bool channels_last, float* dx) {
  const i64 n = batch * channels * spatial;
  if (n == 0) return;
  Scratch coef(static_cast<std::size_t>(3 * channels) * sizeof(float));
  const double count = static_cast<double>(batch) * static_cast<double>(spatial);
  moment_coef_kernel<<<grid_for(channels), kBlock, 0, stream()>>>(g, stats, channels, count,
                                                                  coef.as<float>());
  ZSQ_CUDA_LAUNCH_CHECK();
  const bool vec4 = (channels_last ? channels % 4 == 0 : spatial % 4 == 0) &&
                    reinterpret_cast<std::uintptr_t>(x) % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(dx) % 16 == 0;
  const i64 units = vec4 ? n / 4 : n;
  const int grid = grid_for(units);
  if (n < (i64{1} << 31)) {  // 32-bit index math; u + grid stride stays below 2^32
    using I = std::uint32_t;
    if (vec4)
      moment_backward_kernel<I, 4><<<grid, kBlock, 0, stream()>>>(x, coef.as<float>(), static_cast<I>(units),
                                                                  static_cast<I>(channels),
                                                                  static_cast<I>(spatial), channels_last, dx);
    else
      moment_backward_kernel<I, 1><<<grid, kBlock, 0, stream()>>>(x, coef.as<float>(), static_cast<I>(units),
                                                                  static_cast<I>(channels),
                                                                  static_cast<I>(spatial), channels_last, dx);
  } else {
    using I = std::uint64_t;
    if (vec4)
      moment_backward_kernel<I, 4><<<grid, kBlock, 0, stream()>>>(x, coef.as<float>(), static_cast<I>(units),
                                                                  static_cast<I>(channels),
                                                                  static_cast<I>(spatial), channels_last, dx);
    else
      moment_backward_kernel<I, 1><<<grid, kBlock, 0, stream()>>>(x, coef.as<float>(), static_cast<I>(units),
                                                                  static_cast<I>(channels),
                                                                  static_cast<I>(spatial), channels_last, dx);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
