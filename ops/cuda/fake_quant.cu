// Fake-quantization kernels (launchers declared in ops/cuda/fake_quant.h). The element math is the CPU's
// written with explicitly rounded intrinsics (__fdiv_rn, __fmul_rn, rintf = round half to even, the
// clamp as the reference's two comparisons so NaN stays NaN), so outputs match the CPU bit for bit.
// Per-channel sums and min/max are two-level: one warp per short channel, or block partials for long
// ones combined by a second small kernel (no atomics, so the results do not depend on timing).
#include <cmath>
#include <cstdint>

#include "ops/cuda/block_reduce.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/fake_quant.h"
#include "ops/cuda/scratch.h"

namespace zsq::cuda {
namespace {

using reduce_detail::block_reduce;
using reduce_detail::kFullMask;
using reduce_detail::kWarp;
using reduce_detail::kWarpsPerBlock;
using reduce_detail::warp_reduce;
// A channel this short is reduced by one warp; a longer one by one or more whole blocks.
constexpr std::int64_t kWarpChannelMax = 1024;
// A channel is split across blocks only into pieces at least this long (less work per block than this
// costs more in the second pass than it gains in parallelism).
constexpr std::int64_t kBlockChunkMin = 4096;

struct Grid1 {
  float delta, qmin, qmax;
};

__device__ __forceinline__ Grid1 grid_of(const FakeQuantGridArg& g, std::int64_t c, std::int64_t channels) {
  if (g.table == nullptr) return {g.delta, g.qmin, g.qmax};
  return {__ldg(g.table + c), __ldg(g.table + channels + c), __ldg(g.table + 2 * channels + c)};
}

// clamp(round_half_even(x / delta), qmin, qmax) * delta, the reference's operations in its order.
__device__ __forceinline__ float quantize(float x, const Grid1& g) {
  float q = rintf(__fdiv_rn(x, g.delta));
  q = q < g.qmin ? g.qmin : q;
  q = q > g.qmax ? g.qmax : q;
  return __fmul_rn(q, g.delta);
}

__device__ __forceinline__ float clipped_ste(float g, float x, const Grid1& grid) {
  return x >= __fmul_rn(grid.qmin, grid.delta) && x <= __fmul_rn(grid.qmax, grid.delta) ? g : 0.0f;
}

__device__ __forceinline__ std::int64_t channel_of(std::int64_t i, std::int64_t channels,
                                                   std::int64_t inner) {
  return channels == 1 ? 0 : i / inner;
}

// ---- grids ----

// ops::fake_quant_grid on the device (same double and f32 operations, explicitly rounded), with a NaN
// grid where the host version throws. learned: the learned range [0, h], which also needs h > 0.
__device__ Grid1 device_grid(float l, float h, double levels, bool symmetric, bool learned) {
  Grid1 g;
  if (symmetric) {
    const double amax = fmax(fmax(fabs(static_cast<double>(l)), fabs(static_cast<double>(h))), 1e-8);
    g.delta = __double2float_rn(__ddiv_rn(amax, levels));
    g.qmin = __double2float_rn(-levels);
    g.qmax = __double2float_rn(levels);
  } else {
    const double range = fmax(__dsub_rn(static_cast<double>(h), static_cast<double>(l)), 1e-8);
    g.delta = __double2float_rn(__ddiv_rn(range, levels));
    const float zero = rintf(__fdiv_rn(l, g.delta));  // f32 division, as the element path
    g.qmin = zero;
    g.qmax = __double2float_rn(__dadd_rn(static_cast<double>(zero), levels));
  }
  const bool range_ok = isfinite(l) && isfinite(h) && (learned ? h > 0.0f : l <= h);
  const bool grid_ok = isfinite(g.qmin) && isfinite(g.qmax) && isfinite(__fmul_rn(g.qmin, g.delta)) &&
                       isfinite(__fmul_rn(g.qmax, g.delta));
  if (!(range_ok && grid_ok)) g.delta = g.qmin = g.qmax = NAN;
  return g;
}

__global__ void grids_kernel(const float* __restrict__ lo, const float* __restrict__ hi,
                             std::int64_t channels, double levels, bool symmetric,
                             float* __restrict__ table) {
  for (std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Grid1 g = device_grid(lo == nullptr ? 0.0f : lo[c], hi[c], levels, symmetric, lo == nullptr);
    table[c] = g.delta;
    table[channels + c] = g.qmin;
    table[2 * channels + c] = g.qmax;
  }
}

__global__ void ratio_ranges_kernel(const float* __restrict__ mn, const float* __restrict__ mx,
                                    const float* __restrict__ ratio, std::int64_t channels,
                                    float* __restrict__ lo, float* __restrict__ hi) {
  for (std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; c < channels;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float r = ratio[c];
    const bool ok = isfinite(r) && r > 0.0f;
    lo[c] = ok ? __fmul_rn(mn[c], r) : NAN;
    hi[c] = ok ? __fmul_rn(mx[c], r) : NAN;
  }
}

// ---- element kernels ----

__global__ void apply_kernel(const float* __restrict__ x, float* __restrict__ out, std::int64_t n,
                             std::int64_t channels, std::int64_t inner, FakeQuantGridArg grid) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = quantize(x[i], grid_of(grid, channel_of(i, channels, inner), channels));
}

// inner % 4 == 0 and 16-byte aligned pointers: the four floats of a float4 share a channel.
__global__ void apply4_kernel(const float4* __restrict__ x, float4* __restrict__ out, std::int64_t n4,
                              std::int64_t channels, std::int64_t inner, FakeQuantGridArg grid) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Grid1 g = grid_of(grid, channel_of(4 * i, channels, inner), channels);
    const float4 v = x[i];
    out[i] = make_float4(quantize(v.x, g), quantize(v.y, g), quantize(v.z, g), quantize(v.w, g));
  }
}

__global__ void clipped_ste_kernel(const float* __restrict__ g, const float* __restrict__ x,
                                   float* __restrict__ dx, std::int64_t n, std::int64_t channels,
                                   std::int64_t inner, FakeQuantGridArg grid) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dx[i] = clipped_ste(g[i], x[i], grid_of(grid, channel_of(i, channels, inner), channels));
}

__global__ void clipped_ste4_kernel(const float4* __restrict__ g, const float4* __restrict__ x,
                                    float4* __restrict__ dx, std::int64_t n4, std::int64_t channels,
                                    std::int64_t inner, FakeQuantGridArg grid) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Grid1 q = grid_of(grid, channel_of(4 * i, channels, inner), channels);
    const float4 gv = g[i], xv = x[i];
    dx[i] = make_float4(clipped_ste(gv.x, xv.x, q), clipped_ste(gv.y, xv.y, q), clipped_ste(gv.z, xv.z, q),
                        clipped_ste(gv.w, xv.w, q));
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// ---- per-channel reductions ----
// An Op gives Value, identity(), load(c, i) (element i of channel c; may also write an element output),
// combine(a, b), shfl_down(v, offset) and finish(c, total).

// One warp per channel (short channels): coalesced reads along the channel, no shared memory.
template <class Op>
__global__ void warp_segments_kernel(Op op, std::int64_t channels, std::int64_t inner) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  for (std::int64_t c = first; c < channels; c += static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock) {
    typename Op::Value v = op.identity();
    for (std::int64_t i = lane; i < inner; i += kWarp) v = op.combine(v, op.load(c, i));
    v = warp_reduce(op, v);
    if (lane == 0) op.finish(c, v);
  }
}

// Block b reduces piece b % splits of channel b / splits; with one piece per channel it finishes the
// channel itself, otherwise it leaves a partial for finish_partials_kernel.
template <class Op>
__global__ void block_segments_kernel(Op op, std::int64_t channels, std::int64_t inner, std::int64_t splits,
                                      std::int64_t chunk, typename Op::Value* __restrict__ partials) {
  for (std::int64_t b = blockIdx.x; b < channels * splits; b += gridDim.x) {
    const std::int64_t c = b / splits, begin = (b % splits) * chunk;
    const std::int64_t end = begin + chunk < inner ? begin + chunk : inner;
    typename Op::Value v = op.identity();
    for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) v = op.combine(v, op.load(c, i));
    v = block_reduce(op, v);
    if (threadIdx.x == 0) {
      if (splits == 1)
        op.finish(c, v);
      else
        partials[b] = v;
    }
  }
}

template <class Op>
__global__ void finish_partials_kernel(Op op, std::int64_t channels, std::int64_t splits,
                                       const typename Op::Value* __restrict__ partials) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  for (std::int64_t c = first; c < channels; c += static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock) {
    typename Op::Value v = op.identity();
    for (std::int64_t s = lane; s < splits; s += kWarp) v = op.combine(v, partials[c * splits + s]);
    v = warp_reduce(op, v);
    if (lane == 0) op.finish(c, v);
  }
}

int capped_grid(std::int64_t blocks) {
  const std::int64_t cap = static_cast<std::int64_t>(multiprocessor_count()) * 32;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

template <class Op>
void reduce_segments(const Op& op, std::int64_t channels, std::int64_t inner) {
  if (channels <= 0) return;
  if (inner <= kWarpChannelMax) {
    warp_segments_kernel<<<capped_grid((channels + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0,
                           stream()>>>(op, channels, inner);
    ZSQ_CUDA_LAUNCH_CHECK();
    return;
  }
  // Enough blocks to fill the chip (a few per multiprocessor), each with at least kBlockChunkMin elements.
  const std::int64_t target_blocks = static_cast<std::int64_t>(multiprocessor_count()) * 8;
  const std::int64_t by_length = (inner + kBlockChunkMin - 1) / kBlockChunkMin;
  const std::int64_t by_occupancy = (target_blocks + channels - 1) / channels;
  std::int64_t splits = by_length < by_occupancy ? by_length : by_occupancy;
  if (splits < 1) splits = 1;
  const std::int64_t chunk = (inner + splits - 1) / splits;
  splits = (inner + chunk - 1) / chunk;  // no empty pieces
  if (splits == 1) {
    block_segments_kernel<<<capped_grid(channels), kThreads, 0, stream()>>>(op, channels, inner, 1, chunk,
                                                                            nullptr);
    ZSQ_CUDA_LAUNCH_CHECK();
    return;
  }
  using Value = typename Op::Value;
  Scratch scratch(static_cast<std::size_t>(channels * splits) * sizeof(Value));
  auto* partials = static_cast<Value*>(scratch.get());
  block_segments_kernel<<<capped_grid(channels * splits), kThreads, 0, stream()>>>(op, channels, inner,
                                                                                   splits, chunk, partials);
  ZSQ_CUDA_LAUNCH_CHECK();
  finish_partials_kernel<<<capped_grid((channels + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0,
                           stream()>>>(op, channels, splits, partials);
  ZSQ_CUDA_LAUNCH_CHECK();
}

struct MinMaxOp {
  using Value = float2;
  const float* w;
  float* mn;
  float* mx;
  std::int64_t inner;

  __device__ Value identity() const { return make_float2(INFINITY, -INFINITY); }
  __device__ Value load(std::int64_t c, std::int64_t i) const {
    const float v = w[c * inner + i];
    return make_float2(v, v);
  }
  __device__ static Value combine(Value a, Value b) { return make_float2(fminf(a.x, b.x), fmaxf(a.y, b.y)); }
  __device__ static Value shfl_down(Value v, int offset) {
    return make_float2(__shfl_down_sync(kFullMask, v.x, offset), __shfl_down_sync(kFullMask, v.y, offset));
  }
  // -0.0 -> +0.0 (as the CPU), so which zero the lanes met first cannot show; an empty channel is 0.
  __device__ void finish(std::int64_t c, Value v) const {
    mn[c] = inner == 0 ? 0.0f : __fadd_rn(v.x, 0.0f);
    mx[c] = inner == 0 ? 0.0f : __fadd_rn(v.y, 0.0f);
  }
};

struct RangeGradOp {
  using Value = double;
  const float* g;
  const float* x;
  float* dx;  // may be null
  const float* table;
  const float* ratio;  // null: the learned range (one channel)
  float* range_grad;   // may be null
  std::int64_t channels, inner;

  __device__ Value identity() const { return 0.0; }
  __device__ Value load(std::int64_t c, std::int64_t i) const {
    const std::int64_t k = c * inner + i;
    const float delta = __ldg(table + c), qmin = __ldg(table + channels + c),
                qmax = __ldg(table + 2 * channels + c);
    const float v = __fdiv_rn(x[k], delta);  // IEEE division, as the forward
    const bool below = v<qmin, above = v> qmax;
    const float step = below ? qmin : (above ? qmax : __fsub_rn(rintf(v), v));
    const float gk = g[k];
    if (dx != nullptr) dx[k] = below || above ? 0.0f : gk;
    return __dmul_rn(static_cast<double>(gk), static_cast<double>(step));
  }
  __device__ static Value combine(Value a, Value b) { return __dadd_rn(a, b); }
  __device__ static Value shfl_down(Value v, int offset) { return __shfl_down_sync(kFullMask, v, offset); }
  __device__ void finish(std::int64_t c, Value sum) const {
    if (range_grad == nullptr) return;
    if (ratio == nullptr)
      range_grad[c] = __double2float_rn(__ddiv_rn(sum, static_cast<double>(table[2 * channels + c])));
    else
      range_grad[c] = __double2float_rn(
          __ddiv_rn(__dmul_rn(sum, static_cast<double>(table[c])), static_cast<double>(ratio[c])));
  }
};

struct SumOp {
  using Value = double;
  __device__ Value identity() const { return 0.0; }
  __device__ static Value combine(Value a, Value b) { return __dadd_rn(a, b); }
  __device__ static Value shfl_down(Value v, int offset) { return __shfl_down_sync(kFullMask, v, offset); }
};

// quant/weight_ranges.cpp's clip search, one block per channel: from r = 1 down, the candidate range
// [r * mn, r * mx] whose grid gives the smallest squared error wins when strictly better (relative 1e-9).
// The element error is the CPU's expression (fmin/fmax clamp, d * d accumulated in double, which GCC
// contracts into an FMA); only the summation order differs.
__global__ void mse_ranges_kernel(const float* __restrict__ w, std::int64_t channels, std::int64_t inner,
                                  const float* __restrict__ mn, const float* __restrict__ mx, double levels,
                                  bool symmetric, int candidates, float min_ratio, float* __restrict__ lo,
                                  float* __restrict__ hi) {
  __shared__ bool stop;
  const SumOp sum;
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const float cmn = mn[c], cmx = mx[c];
    const float* block = w + c * inner;
    // The CPU refuses a channel whose full range has no grid; every smaller candidate then has one.
    bool valid = !isnan(device_grid(cmn, cmx, levels, symmetric, false).delta);
    double best_err = INFINITY;
    float best_lo = cmn, best_hi = cmx;
    for (int i = candidates - 1; valid && i >= 0; --i) {
      const float r = i == candidates - 1
                          ? 1.0f
                          : __double2float_rn(
                                __dadd_rn(static_cast<double>(min_ratio),
                                          __ddiv_rn(__dmul_rn(__dsub_rn(1.0, static_cast<double>(min_ratio)),
                                                              static_cast<double>(i)),
                                                    static_cast<double>(candidates - 1))));
      const float clo = __fmul_rn(r, cmn), chi = __fmul_rn(r, cmx);
      const Grid1 g = device_grid(clo, chi, levels, symmetric, false);
      double err = 0.0;
      for (std::int64_t k = threadIdx.x; k < inner; k += blockDim.x) {
        const float v = block[k];
        const float q = __fmul_rn(fminf(fmaxf(rintf(__fdiv_rn(v, g.delta)), g.qmin), g.qmax), g.delta);
        const double d = __dsub_rn(static_cast<double>(q), static_cast<double>(v));
        err = __fma_rn(d, d, err);
      }
      err = block_reduce(sum, err);
      if (threadIdx.x == 0) {
        stop = !isfinite(err);  // a NaN weight: the CPU throws for this channel
        if (!stop && err < best_err * (1.0 - 1e-9)) {
          best_err = err;
          best_lo = clo;
          best_hi = chi;
        }
      }
      __syncthreads();
      if (stop) valid = false;
    }
    if (threadIdx.x == 0) {
      lo[c] = valid ? best_lo : NAN;
      hi[c] = valid ? best_hi : NAN;
    }
  }
}

}  // namespace

void mse_channel_ranges(const float* w, std::int64_t channels, std::int64_t inner, const float* mn,
                        const float* mx, double levels, bool symmetric, int candidates, float min_ratio,
                        float* lo, float* hi) {
  if (channels <= 0) return;
  mse_ranges_kernel<<<capped_grid(channels), kThreads, 0, stream()>>>(
      w, channels, inner, mn, mx, levels, symmetric, candidates, min_ratio, lo, hi);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void fake_quant_grids(const float* lo, const float* hi, std::int64_t channels, double levels, bool symmetric,
                      float* table) {
  if (channels <= 0) return;
  grids_kernel<<<grid_for(channels), kThreads, 0, stream()>>>(lo, hi, channels, levels, symmetric, table);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void ratio_ranges(const float* mn, const float* mx, const float* ratio, std::int64_t channels, float* lo,
                  float* hi) {
  if (channels <= 0) return;
  ratio_ranges_kernel<<<grid_for(channels), kThreads, 0, stream()>>>(mn, mx, ratio, channels, lo, hi);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void channel_min_max(const float* w, std::int64_t channels, std::int64_t inner, float* mn, float* mx) {
  reduce_segments(MinMaxOp{w, mn, mx, inner}, channels, inner);
}

void fake_quant_apply(const float* x, float* out, std::int64_t channels, std::int64_t inner,
                      FakeQuantGridArg grid) {
  const std::int64_t n = channels * inner;
  if (n <= 0) return;
  if (inner % 4 == 0 && aligned16(x) && aligned16(out)) {
    apply4_kernel<<<grid_for(n / 4), kThreads, 0, stream()>>>(
        reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(out), n / 4, channels, inner, grid);
  } else {
    apply_kernel<<<grid_for(n), kThreads, 0, stream()>>>(x, out, n, channels, inner, grid);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

void fake_quant_clipped_ste_backward(const float* g, const float* x, float* dx, std::int64_t channels,
                                     std::int64_t inner, FakeQuantGridArg grid) {
  const std::int64_t n = channels * inner;
  if (n <= 0) return;
  if (inner % 4 == 0 && aligned16(g) && aligned16(x) && aligned16(dx)) {
    clipped_ste4_kernel<<<grid_for(n / 4), kThreads, 0, stream()>>>(
        reinterpret_cast<const float4*>(g), reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(dx),
        n / 4, channels, inner, grid);
  } else {
    clipped_ste_kernel<<<grid_for(n), kThreads, 0, stream()>>>(g, x, dx, n, channels, inner, grid);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

void fake_quant_range_backward(const float* g, const float* x, float* dx, std::int64_t channels,
                               std::int64_t inner, const float* table, const float* ratio,
                               float* range_grad) {
  reduce_segments(RangeGradOp{g, x, dx, table, ratio, range_grad, channels, inner}, channels, inner);
}

}  // namespace zsq::cuda
