// Kernels behind ops/cuda/quant_stats.h: min/max with a non-finite count (block partials, then one
// block over the partials), the MSE observer's histogram (per-block shared-memory bins flushed with one
// global atomic per non-empty bin) and the first out-of-range element of each parameter.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ops/cuda/block_reduce.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/quant_stats.h"
#include "ops/cuda/scratch.h"

namespace zsq::cuda {
namespace {

using reduce_detail::block_reduce;
using reduce_detail::kFullMask;
using reduce_detail::kWarp;

// ---- min / max / non-finite count ----

struct MinMaxValue {
  float lo, hi;
  unsigned long long bad;
};

struct MinMaxOp {
  using Value = MinMaxValue;
  __device__ Value identity() const { return {INFINITY, -INFINITY, 0ull}; }
  // The CPU loop's comparisons (v < lo ? v : lo), so a NaN never becomes the minimum.
  __device__ static Value combine(Value a, Value b) {
    return {b.lo < a.lo ? b.lo : a.lo, b.hi > a.hi ? b.hi : a.hi, a.bad + b.bad};
  }
  __device__ static Value shfl_down(Value v, int offset) {
    return {__shfl_down_sync(kFullMask, v.lo, offset), __shfl_down_sync(kFullMask, v.hi, offset),
            __shfl_down_sync(kFullMask, v.bad, offset)};
  }
};

__device__ __forceinline__ MinMaxValue min_max_one(MinMaxValue a, float v) {
  a.lo = v < a.lo ? v : a.lo;
  a.hi = v > a.hi ? v : a.hi;
  a.bad += !(fabsf(v) <= FLT_MAX);
  return a;
}

__global__ void min_max_partials_kernel(const float* __restrict__ x, std::int64_t n,
                                        MinMaxValue* __restrict__ partials) {
  const MinMaxOp op;
  MinMaxValue v = op.identity();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if ((reinterpret_cast<std::uintptr_t>(x) & 15u) == 0) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    for (std::int64_t i = first; i < n / 4; i += stride) {
      const float4 q = x4[i];
      v = min_max_one(min_max_one(min_max_one(min_max_one(v, q.x), q.y), q.z), q.w);
    }
    for (std::int64_t i = n / 4 * 4 + first; i < n; i += stride) v = min_max_one(v, x[i]);
  } else {
    for (std::int64_t i = first; i < n; i += stride) v = min_max_one(v, x[i]);
  }
  v = block_reduce(op, v);
  if (threadIdx.x == 0) partials[blockIdx.x] = v;
}

__global__ void min_max_final_kernel(const MinMaxValue* __restrict__ partials, int count,
                                     MinMaxValue* __restrict__ out) {
  const MinMaxOp op;
  MinMaxValue v = op.identity();
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x))
    v = MinMaxOp::combine(v, partials[i]);
  v = block_reduce(op, v);
  if (threadIdx.x == 0) *out = v;
}

// ---- histogram ----

// quant::MseObserver's bin_of, in the same double operations.
__device__ __forceinline__ int bin_of(double v, double lo, double inv) {
  const double f = __dmul_rn(__dsub_rn(v, lo), inv);
  return f <= 0.0 ? 0 : f >= kHistogramBins - 1 ? kHistogramBins - 1 : static_cast<int>(f);
}

// Every lane of a warp runs the same iterations (i may be past n), so the warp can vote: lanes that
// share a bin add their count with one shared atomic (post-ReLU activations put half their values in
// the bin of 0). Zeros add nothing to the sums and skip those atomics.
__global__ void histogram_kernel(const float* __restrict__ x, std::int64_t n, double lo, double inv,
                                 double* __restrict__ count, double* __restrict__ sum,
                                 double* __restrict__ sumsq) {
  __shared__ unsigned int s_count[kHistogramBins];
  __shared__ double s_sum[kHistogramBins], s_sumsq[kHistogramBins];
  for (int b = static_cast<int>(threadIdx.x); b < kHistogramBins; b += static_cast<int>(blockDim.x)) {
    s_count[b] = 0u;
    s_sum[b] = 0.0;
    s_sumsq[b] = 0.0;
  }
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t warp_first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x - lane;
  for (std::int64_t base = warp_first; base < n; base += stride) {
    const std::int64_t i = base + lane;
    const bool valid = i < n;
    const double v = valid ? static_cast<double>(x[i]) : 0.0;
    const int b = valid ? bin_of(v, lo, inv) : -1;
    const unsigned peers = __match_any_sync(kFullMask, b);
    if (valid && lane == __ffs(peers) - 1) atomicAdd(&s_count[b], static_cast<unsigned>(__popc(peers)));
    if (valid && v != 0.0) {
      atomicAdd(&s_sum[b], v);
      atomicAdd(&s_sumsq[b], __dmul_rn(v, v));  // exact: a float squared fits a double
    }
  }
  __syncthreads();
  for (int b = static_cast<int>(threadIdx.x); b < kHistogramBins; b += static_cast<int>(blockDim.x))
    if (s_count[b] != 0u) {
      atomicAdd(count + b, static_cast<double>(s_count[b]));  // integers below 2^53: exact in any order
      atomicAdd(sum + b, s_sum[b]);
      atomicAdd(sumsq + b, s_sumsq[b]);
    }
}

// ---- first element out of range ----

constexpr int kMaxBatch = 32;
struct TensorBatch {
  const float* ptr[kMaxBatch];
  std::int64_t n[kMaxBatch];
};

// blockIdx.y picks the tensor; an out-of-range element lowers its slot with atomicMin (rare: a healthy
// model has none, so there is no contention).
__global__ void first_outside_kernel(TensorBatch batch, float limit, unsigned long long* __restrict__ slots) {
  const float* p = batch.ptr[blockIdx.y];
  const std::int64_t n = batch.n[blockIdx.y];
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (!(fabsf(p[i]) <= limit)) atomicMin(slots + blockIdx.y, static_cast<unsigned long long>(i));
}

}  // namespace

MinMaxCount tensor_min_max(const float* x, std::int64_t n) {
  MinMaxCount result;
  if (n <= 0) return result;
  const int blocks = grid_for(n);
  Scratch scratch(static_cast<std::size_t>(blocks + 1) * sizeof(MinMaxValue));
  auto* partials = static_cast<MinMaxValue*>(scratch.get());
  min_max_partials_kernel<<<blocks, kThreads, 0, stream()>>>(x, n, partials);
  ZSQ_CUDA_LAUNCH_CHECK();
  min_max_final_kernel<<<1, kThreads, 0, stream()>>>(partials, blocks, partials + blocks);
  ZSQ_CUDA_LAUNCH_CHECK();
  MinMaxValue host{};
  copy(&host, false, partials + blocks, true, sizeof host);
  result.lo = host.lo;
  result.hi = host.hi;
  result.non_finite = host.bad;
  return result;
}

void histogram(const float* x, std::int64_t n, double lo, double inv, double* count, double* sum,
               double* sumsq) {
  constexpr std::size_t kBytes = kHistogramBins * sizeof(double);
  Scratch scratch(3 * kBytes);
  auto* bins = static_cast<double*>(scratch.get());
  ZSQ_CUDA_CHECK(cudaMemsetAsync(bins, 0, 3 * kBytes, stream()));
  if (n > 0) {
    histogram_kernel<<<grid_for(n), kThreads, 0, stream()>>>(x, n, lo, inv, bins, bins + kHistogramBins,
                                                             bins + 2 * kHistogramBins);
    ZSQ_CUDA_LAUNCH_CHECK();
  }
  copy(count, false, bins, true, kBytes);  // synchronizes; the next two copies find the work done
  copy(sum, false, bins + kHistogramBins, true, kBytes);
  copy(sumsq, false, bins + 2 * kHistogramBins, true, kBytes);
}

void first_outside(const float* const* ptrs, const std::int64_t* sizes, std::size_t count, float limit,
                   std::int64_t* first) {
  if (count == 0) return;
  Scratch scratch(count * sizeof(unsigned long long));
  auto* slots = static_cast<unsigned long long*>(scratch.get());
  ZSQ_CUDA_CHECK(cudaMemsetAsync(slots, 0xFF, count * sizeof(unsigned long long), stream()));
  for (std::size_t begin = 0; begin < count; begin += kMaxBatch) {
    const std::size_t batch_size = count - begin < kMaxBatch ? count - begin : kMaxBatch;
    TensorBatch batch{};
    std::int64_t largest = 0;
    for (std::size_t k = 0; k < batch_size; ++k) {
      batch.ptr[k] = ptrs[begin + k];
      batch.n[k] = sizes[begin + k];
      largest = sizes[begin + k] > largest ? sizes[begin + k] : largest;
    }
    if (largest == 0) continue;
    // A few blocks per multiprocessor per tensor: most parameters are small, and blocks past a tensor's
    // end would only exit.
    const int per_tensor = std::min(grid_for(largest), multiprocessor_count() * 2);
    const dim3 grid(static_cast<unsigned>(per_tensor), static_cast<unsigned>(batch_size));
    first_outside_kernel<<<grid, kThreads, 0, stream()>>>(batch, limit, slots + begin);
    ZSQ_CUDA_LAUNCH_CHECK();
  }
  static_assert(sizeof(unsigned long long) == sizeof(std::int64_t));
  copy(first, false, slots, true, count * sizeof(unsigned long long));
  // An untouched slot holds all ones: -1 as a signed index.
}

float read_float(const float* ptr) {
  float v = 0.0f;
  copy(&v, false, ptr, true, sizeof v);
  return v;
}

}  // namespace zsq::cuda
