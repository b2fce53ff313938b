// Pooling and nearest upsampling kernels (launchers declared in ops/cuda/pool.h).
//
// Global pooling reduces each (n, c) over its S positions. Contiguous input: one warp per plane, lanes
// striding along the plane (coalesced). Channels-last input: 32 channels x 8 position rows per block,
// so each warp reads 32 consecutive channels of one position. When that gives too few blocks to fill
// the GPU (small N*C, large S), S is split into chunks whose partials a second kernel combines in chunk
// order: two levels, no atomics. Windowed pooling runs one thread per output element in the output's
// memory order (coalesced writes; for channels-last the reads are coalesced too), and its backward one
// thread per input element gathering from the windows that contain it, so it needs no atomics and no
// zero fill.
#include <climits>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/pool.h"
#include "ops/cuda/scratch.h"

namespace zsq::cuda {

namespace {
using i64 = std::int64_t;

constexpr int kWarp = 32;
constexpr std::int32_t kNoIndex = INT_MAX;  // "no element seen yet"; loses every tie-break

__device__ __forceinline__ i64 first_index() {
  return blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ i64 grid_stride() {
  return static_cast<i64>(gridDim.x) * blockDim.x;
}

// Running reduction state. Max keeps the first maximum: a later element replaces it only when
// strictly greater, and partial results merge by value, then by the smaller position.
template <bool Max>
struct Acc {
  float value = Max ? -INFINITY : 0.0f;
  std::int32_t index = kNoIndex;

  __device__ __forceinline__ void add(float e, std::int32_t s) {  // elements arrive in increasing s
    if constexpr (Max) {
      if (e > value || index == kNoIndex) value = e, index = s;
    } else {
      value += e;
    }
  }
  __device__ __forceinline__ void merge(float other_value, std::int32_t other_index) {
    if constexpr (Max) {
      if (other_value > value || (other_value == value && other_index < index))
        value = other_value, index = other_index;
    } else {
      value += other_value;
    }
  }
  __device__ __forceinline__ void warp_reduce() {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float v = __shfl_xor_sync(0xffffffffu, value, offset);
      const std::int32_t i = __shfl_xor_sync(0xffffffffu, index, offset);
      merge(v, i);
    }
  }
};

// Where a reduction writes: the final [N*C] outputs (splits == 1, scale applied), or [N*C, splits]
// partials for the combine kernel (scale 1).
struct ReduceTarget {
  float* value;
  std::int32_t* index;  // may be null (average, or max without backward)
  float scale;
};

struct ReduceShape {
  i64 N, C, S;
  i64 chunk;   // positions per split
  int splits;  // ceil(S / chunk)
};

template <bool Max>
__device__ __forceinline__ void store(const ReduceTarget& t, i64 at, const Acc<Max>& acc) {
  t.value[at] = Max ? acc.value : acc.value * t.scale;
  if (Max && t.index != nullptr) t.index[at] = acc.index;
}

// One warp per (plane, split); blockDim.x is a multiple of 32.
template <bool Max>
__global__ void reduce_planes_contiguous(const float* __restrict__ x, ReduceTarget t, ReduceShape r) {
  const i64 item = blockIdx.x * static_cast<i64>(blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (item >= r.N * r.C * r.splits) return;  // warp-uniform: the whole warp leaves together
  const i64 plane = item / r.splits, split = item % r.splits;
  const i64 begin = split * r.chunk, end = min(r.S, begin + r.chunk);
  const float* __restrict__ p = x + plane * r.S;
  Acc<Max> acc;
  for (i64 s = begin + lane; s < end; s += kWarp) acc.add(p[s], static_cast<std::int32_t>(s));
  acc.warp_reduce();
  if (lane == 0) store(t, item, acc);
}

// Block (32, 8) per (n, 32-channel group, split): thread (tx, ty) reads channel tx of positions ty,
// ty + 8, ...; the 8 rows then merge through shared memory in row order.
constexpr int kRows = 8;
template <bool Max>
__global__ void reduce_planes_channels_last(const float* __restrict__ x, ReduceTarget t, ReduceShape r) {
  __shared__ float shared_value[kRows][kWarp + 1];
  __shared__ std::int32_t shared_index[kRows][kWarp + 1];
  const i64 channel_groups = (r.C + kWarp - 1) / kWarp;
  i64 item = blockIdx.x;
  const i64 split = item % r.splits;
  item /= r.splits;
  const i64 group = item % channel_groups, n = item / channel_groups;
  const i64 c = group * kWarp + threadIdx.x;
  const bool valid = c < r.C;
  const i64 begin = split * r.chunk, end = min(r.S, begin + r.chunk);
  Acc<Max> acc;
  if (valid)
    for (i64 s = begin + threadIdx.y; s < end; s += kRows)
      acc.add(x[(n * r.S + s) * r.C + c], static_cast<std::int32_t>(s));
  shared_value[threadIdx.y][threadIdx.x] = acc.value;
  shared_index[threadIdx.y][threadIdx.x] = acc.index;
  __syncthreads();
  if (threadIdx.y != 0 || !valid) return;
  for (int row = 1; row < kRows; ++row)
    acc.merge(shared_value[row][threadIdx.x], shared_index[row][threadIdx.x]);
  store(t, (n * r.C + c) * r.splits + split, acc);
}

// Second level: one thread per (n, c) merges its splits in order.
template <bool Max>
__global__ void combine_splits(const float* __restrict__ part_value,
                               const std::int32_t* __restrict__ part_index, ReduceTarget t, i64 planes,
                               int splits) {
  for (i64 p = first_index(); p < planes; p += grid_stride()) {
    Acc<Max> acc;
    for (int k = 0; k < splits; ++k)
      acc.merge(part_value[p * splits + k], Max ? part_index[p * splits + k] : 0);
    store(t, p, acc);
  }
}

// Splits S when the unsplit grid would leave most of the GPU idle, keeping at least min_chunk
// positions per split so each thread still streams several elements.
ReduceShape plan_reduce(i64 N, i64 C, i64 S, i64 items, i64 items_per_block, i64 min_chunk) {
  const i64 target_items = static_cast<i64>(multiprocessor_count()) * 4 * items_per_block;
  i64 splits = 1;
  if (items < target_items && S > min_chunk) {
    splits = (target_items + items - 1) / items;
    const i64 most = (S + min_chunk - 1) / min_chunk;
    if (splits > most) splits = most;
  }
  const i64 chunk = (S + splits - 1) / splits;
  splits = (S + chunk - 1) / chunk;
  return {N, C, S, chunk, static_cast<int>(splits)};
}

template <bool Max>
void global_reduce(const float* x, float* out, std::int32_t* argmax, i64 N, i64 C, i64 S,
                   bool channels_last) {
  if (N * C == 0 || S == 0) return;
  const i64 warps_per_block = kThreads / kWarp;
  const i64 channel_groups = (C + kWarp - 1) / kWarp;
  const ReduceShape r = channels_last ? plan_reduce(N, C, S, N * channel_groups, 1, 128)
                                      : plan_reduce(N, C, S, N * C, warps_per_block, 1024);
  const ReduceTarget final_target{out, argmax, 1.0f / static_cast<float>(S)};
  auto launch = [&](const ReduceTarget& t) {
    if (channels_last) {
      const i64 blocks = N * channel_groups * r.splits;
      reduce_planes_channels_last<Max>
          <<<static_cast<unsigned>(blocks), dim3(kWarp, kRows), 0, stream()>>>(x, t, r);
    } else {
      const i64 blocks = (N * C * r.splits + warps_per_block - 1) / warps_per_block;
      reduce_planes_contiguous<Max><<<static_cast<unsigned>(blocks), kThreads, 0, stream()>>>(x, t, r);
    }
    ZSQ_CUDA_LAUNCH_CHECK();
  };
  if (r.splits == 1) {
    launch(final_target);
    return;
  }
  // One block for both partial arrays: values first, then (max only) positions.
  const i64 parts = N * C * r.splits;
  Scratch scratch(static_cast<std::size_t>(parts) * (sizeof(float) + (Max ? sizeof(std::int32_t) : 0)));
  auto* part_value = static_cast<float*>(scratch.get());
  auto* part_index = Max ? reinterpret_cast<std::int32_t*>(part_value + parts) : nullptr;
  launch({part_value, part_index, 1.0f});
  combine_splits<Max>
      <<<grid_for(N * C), kThreads, 0, stream()>>>(part_value, part_index, final_target, N * C, r.splits);
  ZSQ_CUDA_LAUNCH_CHECK();
}

// Index of (n, c) for element i of a [N, C, S] tensor in memory order.
__device__ __forceinline__ i64 plane_of(i64 i, i64 C, i64 S, bool channels_last) {
  return channels_last ? (i / (S * C)) * C + i % C : i / S;
}

__global__ void global_avg_backward_kernel(const float* __restrict__ go, float* __restrict__ gx, i64 n, i64 C,
                                           i64 S, bool channels_last, float scale) {
  for (i64 i = first_index(); i < n; i += grid_stride()) gx[i] = go[plane_of(i, C, S, channels_last)] * scale;
}

__global__ void global_max_backward_kernel(const float* __restrict__ go,
                                           const std::int32_t* __restrict__ argmax, float* __restrict__ gx,
                                           i64 n, i64 C, i64 S, bool channels_last) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    const i64 p = plane_of(i, C, S, channels_last);
    const i64 s = channels_last ? (i / C) % S : i % S;
    gx[i] = s == argmax[p] ? go[p] : 0.0f;
  }
}

// (n, c, h, w) of element i of a [N, C, H, W] tensor in memory order.
struct Coord {
  i64 n, c, h, w;
};
template <bool ChannelsLast>
__device__ __forceinline__ Coord coord_of(i64 i, i64 C, i64 H, i64 W) {
  Coord k;
  if constexpr (ChannelsLast) {
    k.c = i % C;
    i /= C;
    k.w = i % W;
    i /= W;
    k.h = i % H;
    k.n = i / H;
  } else {
    k.w = i % W;
    i /= W;
    k.h = i % H;
    i /= H;
    k.c = i % C;
    k.n = i / C;
  }
  return k;
}

// Offset of (n, c, 0, 0) and the h and w strides of a [N, C, H, W] tensor.
struct Plane {
  i64 base, stride_h, stride_w;
};
template <bool ChannelsLast>
__device__ __forceinline__ Plane plane_at(i64 n, i64 c, i64 C, i64 H, i64 W) {
  if constexpr (ChannelsLast) return {n * H * W * C + c, W * C, C};
  return {(n * C + c) * H * W, W, 1};
}

template <bool Max, bool ChannelsLast>
__global__ void pool2d_forward_kernel(const float* __restrict__ x, float* __restrict__ out,
                                      std::int32_t* __restrict__ argmax, PoolGeometry g, i64 total) {
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    const Coord o = coord_of<ChannelsLast>(i, g.C, g.OH, g.OW);
    const i64 hs = o.h * g.stride_h - g.pad_h, ws = o.w * g.stride_w - g.pad_w;
    const i64 h0 = max(hs, i64{0}), h1 = min(hs + g.kernel_h, g.H);
    const i64 w0 = max(ws, i64{0}), w1 = min(ws + g.kernel_w, g.W);
    const Plane in = plane_at<ChannelsLast>(o.n, o.c, g.C, g.H, g.W);
    if constexpr (Max) {
      float best = x[in.base + h0 * in.stride_h + w0 * in.stride_w];
      i64 at = h0 * g.W + w0;
      for (i64 h = h0; h < h1; ++h)
        for (i64 w = w0; w < w1; ++w) {
          const float e = x[in.base + h * in.stride_h + w * in.stride_w];
          if (e > best) best = e, at = h * g.W + w;
        }
      out[i] = best;
      if (argmax != nullptr) argmax[i] = static_cast<std::int32_t>(at);
    } else {
      float sum = 0.0f;
      for (i64 h = h0; h < h1; ++h)
        for (i64 w = w0; w < w1; ++w) sum += x[in.base + h * in.stride_h + w * in.stride_w];
      out[i] = sum / static_cast<float>((h1 - h0) * (w1 - w0));
    }
  }
}

// Output rows oh whose window [oh*stride - pad, oh*stride - pad + kernel) contains input row i.
__device__ __forceinline__ void windows_containing(i64 i, i64 kernel, i64 stride, i64 pad, i64 out_size,
                                                   i64& first, i64& last) {
  first = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  last = min((i + pad) / stride, out_size - 1);
}

template <bool Max, bool ChannelsLast>
__global__ void pool2d_backward_kernel(const float* __restrict__ go, const std::int32_t* __restrict__ argmax,
                                       float* __restrict__ gx, PoolGeometry g, i64 total) {
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    const Coord k = coord_of<ChannelsLast>(i, g.C, g.H, g.W);
    i64 oh0, oh1, ow0, ow1;
    windows_containing(k.h, g.kernel_h, g.stride_h, g.pad_h, g.OH, oh0, oh1);
    windows_containing(k.w, g.kernel_w, g.stride_w, g.pad_w, g.OW, ow0, ow1);
    const Plane out = plane_at<ChannelsLast>(k.n, k.c, g.C, g.OH, g.OW);
    const auto self = static_cast<std::int32_t>(k.h * g.W + k.w);
    float acc = 0.0f;
    for (i64 oh = oh0; oh <= oh1; ++oh)
      for (i64 ow = ow0; ow <= ow1; ++ow) {
        const i64 at = out.base + oh * out.stride_h + ow * out.stride_w;
        if constexpr (Max) {
          if (argmax[at] == self) acc += go[at];
        } else {
          const i64 hs = oh * g.stride_h - g.pad_h, ws = ow * g.stride_w - g.pad_w;
          const i64 count =
              (min(hs + g.kernel_h, g.H) - max(hs, i64{0})) * (min(ws + g.kernel_w, g.W) - max(ws, i64{0}));
          acc += go[at] / static_cast<float>(count);
        }
      }
    gx[i] = acc;
  }
}

template <bool Max>
void launch_pool2d_forward(const float* x, float* out, std::int32_t* argmax, const PoolGeometry& g) {
  const i64 total = g.N * g.C * g.OH * g.OW;
  if (total == 0) return;
  if (g.channels_last)
    pool2d_forward_kernel<Max, true><<<grid_for(total), kThreads, 0, stream()>>>(x, out, argmax, g, total);
  else
    pool2d_forward_kernel<Max, false><<<grid_for(total), kThreads, 0, stream()>>>(x, out, argmax, g, total);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <bool Max>
void launch_pool2d_backward(const float* go, const std::int32_t* argmax, float* gx, const PoolGeometry& g) {
  const i64 total = g.N * g.C * g.H * g.W;
  if (total == 0) return;
  if (g.channels_last)
    pool2d_backward_kernel<Max, true><<<grid_for(total), kThreads, 0, stream()>>>(go, argmax, gx, g, total);
  else
    pool2d_backward_kernel<Max, false><<<grid_for(total), kThreads, 0, stream()>>>(go, argmax, gx, g, total);
  ZSQ_CUDA_LAUNCH_CHECK();
}

// Upsampling: one thread per input element (memory order) writes its 2x2 output block, or sums it for
// the backward in the CPU loop's order, (top-left + top-right) + (bottom-left + bottom-right).
// pairs: contiguous rows are 8-byte aligned (row 2h of a plane starts at an even offset since OW is
// even; the tensor's base must be too), so each horizontal pair moves as one float2.
template <bool ChannelsLast>
__global__ void upsample_forward_kernel(const float* __restrict__ x, float* __restrict__ out, i64 total,
                                        i64 C, i64 H, i64 W, bool pairs) {
  const i64 OW = 2 * W;
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    const Coord k = coord_of<ChannelsLast>(i, C, H, W);
    const float v = x[i];
    if constexpr (ChannelsLast) {
      float* top = out + ((k.n * 2 * H + 2 * k.h) * OW + 2 * k.w) * C + k.c;
      float* bottom = top + OW * C;
      top[0] = v;
      top[C] = v;
      bottom[0] = v;
      bottom[C] = v;
    } else {
      float* top = out + ((k.n * C + k.c) * 2 * H + 2 * k.h) * OW + 2 * k.w;
      if (pairs) {
        const float2 pair = make_float2(v, v);
        reinterpret_cast<float2*>(top)[0] = pair;
        reinterpret_cast<float2*>(top + OW)[0] = pair;
      } else {
        top[0] = v;
        top[1] = v;
        top[OW] = v;
        top[OW + 1] = v;
      }
    }
  }
}

template <bool ChannelsLast>
__global__ void upsample_backward_kernel(const float* __restrict__ go, float* __restrict__ gx, i64 total,
                                         i64 C, i64 H, i64 W, bool pairs) {
  const i64 OW = 2 * W;
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    const Coord k = coord_of<ChannelsLast>(i, C, H, W);
    if constexpr (ChannelsLast) {
      const float* top = go + ((k.n * 2 * H + 2 * k.h) * OW + 2 * k.w) * C + k.c;
      const float* bottom = top + OW * C;
      gx[i] = (top[0] + top[C]) + (bottom[0] + bottom[C]);
    } else {
      const float* top = go + ((k.n * C + k.c) * 2 * H + 2 * k.h) * OW + 2 * k.w;
      if (pairs) {
        const float2 t = reinterpret_cast<const float2*>(top)[0],
                     b = reinterpret_cast<const float2*>(top + OW)[0];
        gx[i] = (t.x + t.y) + (b.x + b.y);
      } else {
        gx[i] = (top[0] + top[1]) + (top[OW] + top[OW + 1]);
      }
    }
  }
}

bool aligned8(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 7u) == 0;
}
}  // namespace

void global_avg_pool_forward(const float* x, float* out, std::int64_t N, std::int64_t C, std::int64_t S,
                             bool channels_last) {
  global_reduce<false>(x, out, nullptr, N, C, S, channels_last);
}

void global_max_pool_forward(const float* x, float* out, std::int32_t* argmax, std::int64_t N, std::int64_t C,
                             std::int64_t S, bool channels_last) {
  global_reduce<true>(x, out, argmax, N, C, S, channels_last);
}

void global_avg_pool_backward(const float* grad_out, float* grad_x, std::int64_t N, std::int64_t C,
                              std::int64_t S, bool channels_last) {
  const i64 n = N * C * S;
  if (n == 0) return;
  global_avg_backward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(grad_out, grad_x, n, C, S, channels_last,
                                                                     1.0f / static_cast<float>(S));
  ZSQ_CUDA_LAUNCH_CHECK();
}

void global_max_pool_backward(const float* grad_out, const std::int32_t* argmax, float* grad_x,
                              std::int64_t N, std::int64_t C, std::int64_t S, bool channels_last) {
  const i64 n = N * C * S;
  if (n == 0) return;
  global_max_backward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(grad_out, argmax, grad_x, n, C, S,
                                                                     channels_last);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void pool2d_forward(const float* x, float* out, std::int32_t* argmax, const PoolGeometry& g, bool max) {
  if (max)
    launch_pool2d_forward<true>(x, out, argmax, g);
  else
    launch_pool2d_forward<false>(x, out, nullptr, g);
}

void pool2d_backward(const float* grad_out, const std::int32_t* argmax, float* grad_x, const PoolGeometry& g,
                     bool max) {
  if (max && argmax == nullptr) raise_error("max_pool2d backward: no argmax saved by the forward pass");
  if (max)
    launch_pool2d_backward<true>(grad_out, argmax, grad_x, g);
  else
    launch_pool2d_backward<false>(grad_out, nullptr, grad_x, g);
}

void upsample_nearest2x_forward(const float* x, float* out, std::int64_t N, std::int64_t C, std::int64_t H,
                                std::int64_t W, bool channels_last) {
  const i64 total = N * C * H * W;
  if (total == 0) return;
  if (channels_last)
    upsample_forward_kernel<true><<<grid_for(total), kThreads, 0, stream()>>>(x, out, total, C, H, W, false);
  else
    upsample_forward_kernel<false>
        <<<grid_for(total), kThreads, 0, stream()>>>(x, out, total, C, H, W, aligned8(out));
  ZSQ_CUDA_LAUNCH_CHECK();
}

void upsample_nearest2x_backward(const float* grad_out, float* grad_x, std::int64_t N, std::int64_t C,
                                 std::int64_t H, std::int64_t W, bool channels_last) {
  const i64 total = N * C * H * W;
  if (total == 0) return;
  if (channels_last)
    upsample_backward_kernel<true>
        <<<grid_for(total), kThreads, 0, stream()>>>(grad_out, grad_x, total, C, H, W, false);
  else
    upsample_backward_kernel<false>
        <<<grid_for(total), kThreads, 0, stream()>>>(grad_out, grad_x, total, C, H, W, aligned8(grad_out));
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
