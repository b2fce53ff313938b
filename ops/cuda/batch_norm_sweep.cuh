// The per-channel sweeps behind zsq's batch-norm kernels (batch_norm_kernels.cu): how a dense
// [outer, channels, inner] activation is walked, reduced per channel and rewritten element by element.
// Included by batch_norm_kernels.cu only; the element operations (what is summed, what is written) come
// from there as small structs (Terms, Apply, Fin).
//
// Two shapes, chosen from the layout:
//   planes  (inner > 1, NCHW): block (c, s) walks chunk s of channel c's values, which are runs of
//           `inner` contiguous floats; lanes read consecutive addresses, float4 when inner % 4 == 0.
//   columns (inner == 1, NHWC / [N, C]): threadIdx.x walks adjacent channels (float4 when C % 4 == 0),
//           threadIdx.y and blockIdx.y walk rows; a shared-memory tree folds threadIdx.y.
// A thread's channels are fixed for the whole sweep, so per-channel parameters are loaded once, and a
// thread loads kUnroll units of every input before it uses any, so that several loads are in flight.
// Grids fill one wave of resident blocks (from the kernel's occupancy) and no more.
// Reductions: each thread sums kUnroll units in float, adds that into double accumulators, and blocks
// write double partials that one warp per channel folds in a fixed order: no atomics, deterministic.
#pragma once
#include <cstdint>

#include "ops/cuda/batch_norm_kernels.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/scratch.h"

namespace zsq::cuda::batch_norm_detail {

using i64 = std::int64_t;
constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Units (a float or a float4) a thread handles between two flushes of its float sums; also the loads
// it keeps in flight.
constexpr int kUnroll = 4;

// ---- geometry -------------------------------------------------------------------------------------

struct Sweep {
  i64 outer = 0, channels = 0, inner = 1;
  bool planes = true;
  int vec = 1;     // floats per unit: 4 (float4) or 1
  i64 splits = 1;  // blocks per channel (planes) or per channel tile (columns)
  // planes: channel c's units u = o * inner_units + w start at o * plane_stride + c * inner + w * vec.
  i64 inner_units = 1, units = 0, chunk = 0, plane_stride = 0;
  i64 step_w = 0;  // kBlock units = step_o whole planes + step_w units
  i64 jump = 0;    // offset change for kBlock units without a wrap
  i64 wrap = 0;    // extra offset change when w wraps into the next plane
  // columns
  int bx = 1, by = kBlock;
  i64 tiles = 1, row_chunk = 0, row_jump = 0;
};

inline i64 ceil_div(i64 a, i64 b) {
  return (a + b - 1) / b;
}
inline i64 clamp64(i64 v, i64 lo, i64 hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}
inline bool aligned16(const void* p) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// The walk's geometry; the split into blocks comes later (split_for), from the kernel's occupancy.
// `aligned`: every pointer of the op is 16-byte aligned (float4 then only needs the run length).
inline Sweep make_sweep(const BatchNormLayout& layout, bool aligned) {
  Sweep s;
  s.outer = layout.outer;
  s.channels = layout.channels;
  s.inner = layout.inner;
  if (s.outer < 1 || s.channels < 1 || s.inner < 1) raise_error("batch_norm (CUDA): empty layout");
  if (s.channels == 1) {  // one channel: all values are one run
    s.inner *= s.outer;
    s.outer = 1;
  }
  s.planes = s.inner > 1;
  if (s.planes) {
    if (s.channels > 0x7fffffff) raise_error("batch_norm (CUDA): too many channels for one grid");
    s.vec = aligned && s.inner % 4 == 0 ? 4 : 1;
    s.inner_units = s.inner / s.vec;
    s.units = s.outer * s.inner_units;
    s.plane_stride = s.channels * s.inner;
    const i64 step_o = kBlock / s.inner_units;
    s.step_w = kBlock % s.inner_units;
    s.jump = step_o * s.plane_stride + s.step_w * s.vec;
    s.wrap = s.plane_stride - s.inner;
    return s;
  }
  s.vec = aligned && s.channels % 4 == 0 ? 4 : 1;
  const i64 channel_units = s.channels / s.vec;
  while (s.bx < 32 && s.bx < channel_units) s.bx *= 2;
  s.by = kBlock / s.bx;
  s.tiles = ceil_div(channel_units, s.bx);
  if (s.tiles > 0x7fffffff) raise_error("batch_norm (CUDA): too many channels for one grid");
  s.row_jump = static_cast<i64>(s.by) * s.channels;
  return s;
}

// Splits each channel (tile) into as many blocks as fill `wave` (the blocks resident at once) without
// starting a second, mostly idle wave, each thread keeping at least kUnroll units when there are enough.
inline Sweep split_for(Sweep s, i64 wave) {
  if (s.planes) {
    const i64 most = clamp64(ceil_div(s.units, static_cast<i64>(kBlock) * kUnroll), 1, 65535);
    s.splits = clamp64(wave / s.channels, 1, most);
    s.chunk = ceil_div(s.units, s.splits);
    s.splits = ceil_div(s.units, s.chunk);
  } else {
    const i64 most = clamp64(ceil_div(s.outer, static_cast<i64>(s.by) * kUnroll), 1, 65535);
    s.splits = clamp64(wave / s.tiles, 1, most);
    s.row_chunk = ceil_div(s.outer, s.splits);
    s.splits = ceil_div(s.outer, s.row_chunk);
  }
  return s;
}

__device__ __forceinline__ i64 imin(i64 a, i64 b) {
  return a < b ? a : b;
}

// A thread's walk over its block's chunk of one channel (planes): units u, u + kBlock, ... below end,
// without a division per step.
template <int V>
struct PlaneCursor {
  i64 u, end, off, w;
  __device__ __forceinline__ void start(const Sweep& s, i64 c) {
    const i64 begin = static_cast<i64>(blockIdx.y) * s.chunk;
    end = imin(s.units, begin + s.chunk);
    u = begin + threadIdx.x;
    const i64 o = u / s.inner_units;
    w = u - o * s.inner_units;
    off = o * s.plane_stride + c * s.inner + w * V;
  }
  __device__ __forceinline__ bool valid() const { return u < end; }
  __device__ __forceinline__ void advance(const Sweep& s) {
    u += kBlock;
    off += s.jump;
    w += s.step_w;
    if (w >= s.inner_units) {
      w -= s.inner_units;
      off += s.wrap;
    }
  }
};

// A thread's walk over rows (columns): rows r, r + by, ... of its block's row chunk; off is the row's
// first channel of the thread's unit c.
struct RowCursor {
  i64 r, end, off;
  __device__ __forceinline__ void start(const Sweep& s, i64 c) {
    const i64 begin = static_cast<i64>(blockIdx.y) * s.row_chunk;
    end = imin(s.outer, begin + s.row_chunk);
    r = begin + threadIdx.y;
    off = r * s.channels + c;
  }
  __device__ __forceinline__ bool valid() const { return r < end; }
  __device__ __forceinline__ void advance(const Sweep& s) {
    r += s.by;
    off += s.row_jump;
  }
};

// ---- loads and stores -----------------------------------------------------------------------------

template <int V>
__device__ __forceinline__ void load(const float* p, i64 i, float (&v)[V]) {
  if constexpr (V == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p + i);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
  } else {
    v[0] = p[i];
  }
}

template <int V>
__device__ __forceinline__ void store(float* p, i64 i, const float (&v)[V]) {
  if constexpr (V == 4)
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
  else
    p[i] = v[0];
}

// The V elements at i of every input the op reads (a null input is skipped: the op does not use it).
template <int V, int L>
__device__ __forceinline__ void load_inputs(const float* const (&src)[L], i64 i, float (&v)[L][V]) {
#pragma unroll
  for (int l = 0; l < L; ++l)
    if (src[l] != nullptr) load<V>(src[l], i, v[l]);
}

// ---- sweeps ---------------------------------------------------------------------------------------

// Loads the next kUnroll units of the cursor's walk (ok[k]: unit k exists) and remembers their offsets.
template <int V, class Op, class Cursor>
__device__ __forceinline__ void load_units(const Op& op, const Sweep& s, Cursor& cur,
                                           float (&v)[kUnroll][Op::kLoads][V], i64 (&off)[kUnroll],
                                           bool (&ok)[kUnroll]) {
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    ok[k] = cur.valid();
    off[k] = cur.off;
    if (ok[k]) {
      load_inputs<V>(op.src, cur.off, v[k]);
      cur.advance(s);
    }
  }
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

template <int V>
__device__ __forceinline__ float pairwise_sum(const float (&v)[V]) {
  if constexpr (V == 4)
    return (v[0] + v[1]) + (v[2] + v[3]);
  else
    return v[0];
}

// Grid (channels, splits), kBlock threads; writes partial[split * channels + c] = (sum a, sum b).
template <int V, class Terms>
__global__ void __launch_bounds__(kBlock)
    reduce_planes_kernel(Sweep s, Terms op, double2* __restrict__ partial) {
  __shared__ double warp_a[kWarps], warp_b[kWarps];
  const i64 c = blockIdx.x;
  typename Terms::State st[V];
  const typename Terms::State one = op.state(c);
#pragma unroll
  for (int j = 0; j < V; ++j) st[j] = one;
  double sum_a = 0.0, sum_b = 0.0;
  PlaneCursor<V> cur;
  cur.start(s, c);
  while (cur.valid()) {
    float v[kUnroll][Terms::kLoads][V];
    i64 off[kUnroll];
    bool ok[kUnroll];
    load_units<V>(op, s, cur, v, off, ok);
    float run_a = 0.0f, run_b = 0.0f;
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      if (ok[k]) {
        float a[V], b[V];
        op.template terms<V>(v[k], st, a, b);
        run_a += pairwise_sum<V>(a);
        run_b += pairwise_sum<V>(b);
      }
    }
    sum_a += run_a;
    sum_b += run_b;
  }
  sum_a = warp_sum(sum_a);
  sum_b = warp_sum(sum_b);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  if (lane == 0) {
    warp_a[warp] = sum_a;
    warp_b[warp] = sum_b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total_a = 0.0, total_b = 0.0;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) {
      total_a += warp_a[k];
      total_b += warp_b[k];
    }
    partial[blockIdx.y * s.channels + c] = make_double2(total_a, total_b);
  }
}

// Grid (tiles, splits), block (bx, by) with by a power of two; dynamic shared memory kBlock * 2 * V
// doubles. Writes partial[split * channels + c] for the block's channels.
template <int V, class Terms>
__global__ void __launch_bounds__(kBlock)
    reduce_columns_kernel(Sweep s, Terms op, double2* __restrict__ partial) {
  extern __shared__ double shared[];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const i64 c = (static_cast<i64>(blockIdx.x) * s.bx + tx) * V;
  const bool valid = c < s.channels;  // channels % V == 0
  double sum_a[V], sum_b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) sum_a[j] = sum_b[j] = 0.0;
  if (valid) {
    typename Terms::State st[V];
#pragma unroll
    for (int j = 0; j < V; ++j) st[j] = op.state(c + j);
    RowCursor cur;
    cur.start(s, c);
    while (cur.valid()) {
      float v[kUnroll][Terms::kLoads][V];
      i64 off[kUnroll];
      bool ok[kUnroll];
      load_units<V>(op, s, cur, v, off, ok);
      float run_a[V], run_b[V];
#pragma unroll
      for (int j = 0; j < V; ++j) run_a[j] = run_b[j] = 0.0f;
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (ok[k]) {
          float a[V], b[V];
          op.template terms<V>(v[k], st, a, b);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            run_a[j] += a[j];
            run_b[j] += b[j];
          }
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        sum_a[j] += run_a[j];
        sum_b[j] += run_b[j];
      }
    }
  }
  double* mine = shared + static_cast<i64>(ty * s.bx + tx) * 2 * V;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    mine[2 * j] = sum_a[j];
    mine[2 * j + 1] = sum_b[j];
  }
  __syncthreads();
  for (int stride = s.by / 2; stride > 0; stride >>= 1) {
    if (ty < stride) {
      const double* other = shared + static_cast<i64>((ty + stride) * s.bx + tx) * 2 * V;
#pragma unroll
      for (int k = 0; k < 2 * V; ++k) mine[k] += other[k];
    }
    __syncthreads();
  }
  if (ty == 0 && valid) {
#pragma unroll
    for (int j = 0; j < V; ++j)
      partial[blockIdx.y * s.channels + c + j] = make_double2(mine[2 * j], mine[2 * j + 1]);
  }
}

// One warp per channel folds its `splits` partials (fixed order) and hands the sums to fin.
template <class Fin>
__global__ void __launch_bounds__(kBlock)
    finish_kernel(const double2* __restrict__ partial, i64 splits, i64 channels, Fin fin) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const i64 warps = (static_cast<i64>(gridDim.x) * blockDim.x) >> 5;
  for (i64 c = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; c < channels; c += warps) {
    double a = 0.0, b = 0.0;
    for (i64 k = lane; k < splits; k += 32) {
      const double2 p = partial[k * channels + c];
      a += p.x;
      b += p.y;
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) fin(c, a, b);
  }
}

template <int V, class Apply>
__global__ void __launch_bounds__(kBlock) apply_planes_kernel(Sweep s, Apply op) {
  const i64 c = blockIdx.x;
  typename Apply::State st[V];
  const typename Apply::State one = op.state(c);
#pragma unroll
  for (int j = 0; j < V; ++j) st[j] = one;
  PlaneCursor<V> cur;
  cur.start(s, c);
  while (cur.valid()) {
    float v[kUnroll][Apply::kLoads][V];
    i64 off[kUnroll];
    bool ok[kUnroll];
    load_units<V>(op, s, cur, v, off, ok);
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (ok[k]) op.template apply<V>(off[k], v[k], st);
  }
}

template <int V, class Apply>
__global__ void __launch_bounds__(kBlock) apply_columns_kernel(Sweep s, Apply op) {
  const i64 c = (static_cast<i64>(blockIdx.x) * s.bx + threadIdx.x) * V;
  if (c >= s.channels) return;
  typename Apply::State st[V];
#pragma unroll
  for (int j = 0; j < V; ++j) st[j] = op.state(c + j);
  RowCursor cur;
  cur.start(s, c);
  while (cur.valid()) {
    float v[kUnroll][Apply::kLoads][V];
    i64 off[kUnroll];
    bool ok[kUnroll];
    load_units<V>(op, s, cur, v, off, ok);
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (ok[k]) op.template apply<V>(off[k], v[k], st);
  }
}

// ---- launch helpers -------------------------------------------------------------------------------

// Blocks of Kernel (kBlock threads) resident on the device at once, cached per kernel.
template <auto Kernel>
i64 wave_of(std::size_t shared_bytes) {
  static const int per_sm = [shared_bytes] {
    int n = 0;
    ZSQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kBlock, shared_bytes));
    return n < 1 ? 1 : n;
  }();
  return static_cast<i64>(per_sm) * multiprocessor_count();
}

inline std::size_t columns_shared_bytes(int vec) {
  return static_cast<std::size_t>(kBlock) * 2 * vec * sizeof(double);
}

// The reduction's sweep split for its kernel.
template <class Terms>
Sweep plan_reduce(const Sweep& s) {
  if (s.planes)
    return split_for(s, s.vec == 4 ? wave_of<reduce_planes_kernel<4, Terms>>(0)
                                   : wave_of<reduce_planes_kernel<1, Terms>>(0));
  return split_for(s, s.vec == 4 ? wave_of<reduce_columns_kernel<4, Terms>>(columns_shared_bytes(4))
                                 : wave_of<reduce_columns_kernel<1, Terms>>(columns_shared_bytes(1)));
}

inline dim3 sweep_grid(const Sweep& s) {
  return dim3(static_cast<unsigned>(s.planes ? s.channels : s.tiles), static_cast<unsigned>(s.splits));
}

// s from plan_reduce; partial holds s.splits * s.channels sums.
template <class Terms>
void run_reduce(const Sweep& s, const Terms& terms, double2* partial) {
  const dim3 grid = sweep_grid(s);
  if (s.planes) {
    if (s.vec == 4)
      reduce_planes_kernel<4><<<grid, kBlock, 0, stream()>>>(s, terms, partial);
    else
      reduce_planes_kernel<1><<<grid, kBlock, 0, stream()>>>(s, terms, partial);
  } else {
    const dim3 block(static_cast<unsigned>(s.bx), static_cast<unsigned>(s.by));
    if (s.vec == 4)
      reduce_columns_kernel<4><<<grid, block, columns_shared_bytes(4), stream()>>>(s, terms, partial);
    else
      reduce_columns_kernel<1><<<grid, block, columns_shared_bytes(1), stream()>>>(s, terms, partial);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <class Fin>
void run_finish(const double2* partial, i64 splits, i64 channels, const Fin& fin) {
  const int blocks =
      static_cast<int>(clamp64(ceil_div(channels, kWarps), 1, 32 * static_cast<i64>(multiprocessor_count())));
  finish_kernel<<<blocks, kBlock, 0, stream()>>>(partial, splits, channels, fin);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <class Apply>
void run_apply(const Sweep& geometry, const Apply& op) {
  if (geometry.planes) {
    if (geometry.vec == 4) {
      const Sweep s = split_for(geometry, wave_of<apply_planes_kernel<4, Apply>>(0));
      apply_planes_kernel<4><<<sweep_grid(s), kBlock, 0, stream()>>>(s, op);
    } else {
      const Sweep s = split_for(geometry, wave_of<apply_planes_kernel<1, Apply>>(0));
      apply_planes_kernel<1><<<sweep_grid(s), kBlock, 0, stream()>>>(s, op);
    }
  } else {
    const dim3 block(static_cast<unsigned>(geometry.bx), static_cast<unsigned>(geometry.by));
    if (geometry.vec == 4) {
      const Sweep s = split_for(geometry, wave_of<apply_columns_kernel<4, Apply>>(0));
      apply_columns_kernel<4><<<sweep_grid(s), block, 0, stream()>>>(s, op);
    } else {
      const Sweep s = split_for(geometry, wave_of<apply_columns_kernel<1, Apply>>(0));
      apply_columns_kernel<1><<<sweep_grid(s), block, 0, stream()>>>(s, op);
    }
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

inline std::size_t partial_bytes(const Sweep& s) {
  return static_cast<std::size_t>(s.splits * s.channels) * sizeof(double2);
}

}  // namespace zsq::cuda::batch_norm_detail
