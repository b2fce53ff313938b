// The two-level reduction machinery shared by the CUDA reductions (reduce.cu), the moment-matching loss
// (moment_matching.cu) and the losses (loss.cu). Included by .cu files only.
//
// Every reduction is first normalized to the input's memory order (size-1 dims dropped, neighbours of
// the same kind merged), then run in one of two shapes:
//   rows:    the innermost memory dim is reduced (NCHW per-channel stats, row sums, full reductions).
//            A warp per (output, chunk of its inputs): lanes read consecutive addresses.
//   columns: the innermost memory dim is kept (channels_last per-channel stats, batch sums of [N, C]).
//            threadIdx.x walks the kept outputs (float4 when the run allows), threadIdx.y and blockIdx.y
//            walk the reduced rows; a shared-memory tree folds threadIdx.y.
// When one output has more inputs than one warp / block should read, the work is split into chunks
// whose double sums are written as partials and folded by a second kernel in a fixed order (two-level;
// no atomics, so the same input gives the same bits). An element operation (Op: how an input adds into
// the sums) and a finisher (Fin: what to do with an output's final sums) make each reduction.
#pragma once
#include <algorithm>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/reduce.h"

namespace zsq::cuda::reduce_detail {

using i64 = std::int64_t;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- geometry -----------------------------------------------------------------------------------

struct DimList {
  int n = 0;  // outermost first
  i64 size[kMaxReduceDims] = {};
  i64 in_stride[kMaxReduceDims] = {};
  i64 out_stride[kMaxReduceDims] = {};
};

// The reduction split into kept dims (which output, and where its inputs start) and reduced dims (the
// innermost reduced dim of length L and stride inner_stride, plus the outer reduced dims).
struct Geometry {
  DimList kept;
  DimList outer;
  i64 L = 1;
  i64 inner_stride = 0;
  i64 P = 1;                      // outputs
  i64 Q = 1;                      // inputs per output
  bool rows = true;               // innermost memory dim reduced
  i64 inner_kept_size = 1;        // columns: length of the innermost (kept) dim
  i64 inner_kept_out_stride = 0;  // columns: its output stride
};

inline ReduceLayout normalize(const ReduceLayout& in) {
  ReduceLayout out;
  for (int d = 0; d < in.ndim; ++d) {
    if (in.size[d] == 1) continue;
    if (out.ndim > 0) {
      const int l = out.ndim - 1;
      // x is dense, so neighbours always merge on the input side; kept ones must also be adjacent
      // in the output.
      if (out.reduced[l] == in.reduced[d] &&
          (in.reduced[d] || out.out_stride[l] == in.out_stride[d] * in.size[d])) {
        out.size[l] *= in.size[d];
        out.out_stride[l] = in.reduced[d] ? 0 : in.out_stride[d];
        continue;
      }
    }
    out.size[out.ndim] = in.size[d];
    out.out_stride[out.ndim] = in.reduced[d] ? 0 : in.out_stride[d];
    out.reduced[out.ndim] = in.reduced[d];
    ++out.ndim;
  }
  if (out.ndim == 0) {  // a single element
    out.ndim = 1;
    out.size[0] = 1;
    out.out_stride[0] = 0;
    out.reduced[0] = true;
  }
  return out;
}

inline Geometry make_geometry(const ReduceLayout& raw) {
  if (raw.ndim < 0 || raw.ndim > kMaxReduceDims) raise_error("reduce: at most 8 dims are supported on CUDA");
  const ReduceLayout d = normalize(raw);
  i64 in_stride[kMaxReduceDims] = {};
  i64 stride = 1;  // x is dense in memory order
  for (int k = d.ndim - 1; k >= 0; --k) {
    in_stride[k] = stride;
    stride *= d.size[k];
  }
  Geometry g;
  int last_reduced = -1;
  for (int k = 0; k < d.ndim; ++k)
    if (d.reduced[k]) last_reduced = k;
  for (int k = 0; k < d.ndim; ++k) {
    if (d.reduced[k]) {
      g.Q *= d.size[k];
      if (k == last_reduced) {
        g.L = d.size[k];
        g.inner_stride = in_stride[k];
      } else {
        DimList& o = g.outer;
        o.size[o.n] = d.size[k];
        o.in_stride[o.n] = in_stride[k];
        ++o.n;
      }
    } else {
      g.P *= d.size[k];
      DimList& o = g.kept;
      o.size[o.n] = d.size[k];
      o.in_stride[o.n] = in_stride[k];
      o.out_stride[o.n] = d.out_stride[k];
      ++o.n;
    }
  }
  g.rows = d.reduced[d.ndim - 1];
  if (!g.rows) {
    g.inner_kept_size = d.size[d.ndim - 1];
    g.inner_kept_out_stride = d.out_stride[d.ndim - 1];
  }
  return g;
}

__device__ __forceinline__ i64 imin(i64 a, i64 b) {
  return a < b ? a : b;
}

// Input offset and output index of kept position k (memory order).
__device__ __forceinline__ void kept_offsets(const DimList& d, i64 k, i64& in, i64& out) {
  in = 0;
  out = 0;
  for (int i = d.n - 1; i >= 0; --i) {
    const i64 idx = k % d.size[i];
    k /= d.size[i];
    in += idx * d.in_stride[i];
    out += idx * d.out_stride[i];
  }
}

__device__ __forceinline__ i64 outer_offset(const DimList& d, i64 q) {
  if (d.n == 0) return 0;
  if (d.n == 1) return q * d.in_stride[0];
  i64 off = 0;
  for (int i = d.n - 1; i >= 0; --i) {
    off += (q % d.size[i]) * d.in_stride[i];
    q /= d.size[i];
  }
  return off;
}

// Walks reduced positions r = q * L + l with a fixed step, dividing only when l wraps past L (once per
// run of the innermost reduced dim when step <= L).
struct ReducedWalker {
  i64 q, l, qoff;
  __device__ __forceinline__ void start(const Geometry& g, i64 r) {
    q = r / g.L;
    l = r - q * g.L;
    qoff = outer_offset(g.outer, q);
  }
  __device__ __forceinline__ i64 offset(const Geometry& g) const { return qoff + l * g.inner_stride; }
  __device__ __forceinline__ void advance(const Geometry& g, i64 step) {
    l += step;
    if (l >= g.L) {
      if (l < 2 * g.L) {
        l -= g.L;
        ++q;
      } else {
        q += l / g.L;
        l %= g.L;
      }
      qoff = outer_offset(g.outer, q);
    }
  }
};

// ---- accumulators and element operations ------------------------------------------------------------

template <int K>
struct Sums {
  double v[K];
};

template <int K>
__device__ __forceinline__ Sums<K> zero_sums() {
  Sums<K> s;
#pragma unroll
  for (int k = 0; k < K; ++k) s.v[k] = 0.0;
  return s;
}

// Sum over the warp, result in lane 0 (fixed order).
template <int K>
__device__ __forceinline__ Sums<K> warp_sum(Sums<K> a) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
#pragma unroll
    for (int k = 0; k < K; ++k) a.v[k] += __shfl_down_sync(kFullMask, a.v[k], offset);
  return a;
}

// ---- reduction kernels ----------------------------------------------------------------------------

constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / 32;

template <class Op, class Fin>
__global__ void __launch_bounds__(kBlock)
    reduce_rows_kernel(const float* __restrict__ x, Geometry g, i64 splits, i64 chunk, Op op, Fin fin,
                       Sums<Op::K>* __restrict__ partial) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const i64 warps = (static_cast<i64>(gridDim.x) * blockDim.x) >> 5;
  for (i64 item = (blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x) >> 5; item < g.P * splits;
       item += warps) {
    const i64 k = item / splits, s = item - k * splits;
    i64 base, o;
    kept_offsets(g.kept, k, base, o);
    Sums<Op::K> acc = zero_sums<Op::K>();
    const i64 r1 = imin(g.Q, (s + 1) * chunk);
    i64 r = s * chunk + lane;
    if (g.outer.n == 0) {
      // One reduced dim (full reductions, row sums): contiguous, unrolled so loads overlap.
#pragma unroll 4
      for (; r < r1; r += 32) op.add(acc, x[base + r], o);
    } else if (r < r1) {
      ReducedWalker w;
      w.start(g, r);
      for (; r < r1; r += 32) {
        op.add(acc, x[base + w.offset(g)], o);
        w.advance(g, 32);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      if (splits == 1)
        fin(o, acc);
      else
        partial[s * g.P + o] = acc;
    }
  }
}

// blockDim = (bx, by), bx * by == kBlock, by a power of two; dynamic shared memory kBlock * V * K doubles.
template <int V, class Op, class Fin>
__global__ void __launch_bounds__(kBlock)
    reduce_columns_kernel(const float* __restrict__ x, Geometry g, i64 chunk, Op op, Fin fin,
                          Sums<Op::K>* __restrict__ partial) {
  constexpr int K = Op::K;
  extern __shared__ double shared[];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int bx = static_cast<int>(blockDim.x), by = static_cast<int>(blockDim.y);
  const i64 k = (blockIdx.x * static_cast<i64>(bx) + tx) * V;
  const bool valid = k < g.P;
  const i64 os = g.inner_kept_out_stride;
  Sums<K> acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = zero_sums<K>();
  i64 base = 0, o = 0;
  if (valid) {
    kept_offsets(g.kept, k, base, o);
    const i64 s = blockIdx.y;
    const i64 r1 = imin(g.Q, (s + 1) * chunk);
    i64 r = s * chunk + ty;
    auto add_at = [&](const float* p) {
      if constexpr (V == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        op.add(acc[0], v.x, o);
        op.add(acc[1], v.y, o + os);
        op.add(acc[2], v.z, o + 2 * os);
        op.add(acc[3], v.w, o + 3 * os);
      } else {
        op.add(acc[0], *p, o);
      }
    };
    if (g.outer.n == 0) {
      // One reduced dim (channels_last per-channel stats, batch sums): a fixed stride, unrolled so
      // loads overlap.
#pragma unroll 4
      for (; r < r1; r += by) add_at(x + base + r * g.inner_stride);
    } else if (r < r1) {
      ReducedWalker w;
      w.start(g, r);
      for (; r < r1; r += by) {
        add_at(x + base + w.offset(g));
        w.advance(g, by);
      }
    }
  }
  double* mine = shared + static_cast<i64>(ty * bx + tx) * V * K;
#pragma unroll
  for (int j = 0; j < V; ++j)
#pragma unroll
    for (int kk = 0; kk < K; ++kk) mine[j * K + kk] = acc[j].v[kk];
  __syncthreads();
  for (int stride = by / 2; stride > 0; stride >>= 1) {
    if (ty < stride) {
      const double* other = shared + static_cast<i64>((ty + stride) * bx + tx) * V * K;
#pragma unroll
      for (int i = 0; i < V * K; ++i) mine[i] += other[i];
    }
    __syncthreads();
  }
  if (ty == 0 && valid) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      Sums<K> t;
#pragma unroll
      for (int kk = 0; kk < K; ++kk) t.v[kk] = mine[j * K + kk];
      if (gridDim.y == 1)
        fin(o + j * os, t);
      else
        partial[blockIdx.y * g.P + o + j * os] = t;
    }
  }
}

// Folds the partials of each output (a warp per output, fixed order).
template <int K, class Fin>
__global__ void __launch_bounds__(kBlock)
    combine_kernel(const Sums<K>* __restrict__ partial, i64 P, i64 splits, Fin fin) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const i64 warps = (static_cast<i64>(gridDim.x) * blockDim.x) >> 5;
  for (i64 o = (blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x) >> 5; o < P; o += warps) {
    Sums<K> acc = zero_sums<K>();
    for (i64 s = lane; s < splits; s += 32)
#pragma unroll
      for (int k = 0; k < K; ++k) acc.v[k] += partial[s * P + o].v[k];
    acc = warp_sum(acc);
    if (lane == 0) fin(o, acc);
  }
}

// Device memory from the caching allocator for the duration of a launcher. Freeing right after the
// launches is safe: all zsq work is on one stream, so a later user of the block runs after them.
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) {
    ZSQ_CUDA_CHECK(cudaGetDevice(&device_));
    if (bytes > 0) ptr_ = alloc(bytes, device_);
  }
  ~Scratch() {
    if (ptr_ != nullptr) cuda::free(ptr_, device_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  int device_ = 0;
};

inline i64 ceil_div(i64 a, i64 b) {
  return (a + b - 1) / b;
}

inline int blocks_for_items(i64 items, int items_per_block) {
  const i64 cap = static_cast<i64>(multiprocessor_count()) * 32;
  return static_cast<int>(std::clamp<i64>(ceil_div(items, items_per_block), 1, cap));
}

template <class Op, class Fin>
void run_reduction(const float* x, const Geometry& g, Op op, Fin fin) {
  constexpr int K = Op::K;
  if (g.P == 0) return;
  const i64 sms = multiprocessor_count();
  if (g.rows) {
    // Enough warps to fill the chip; each one reads at least 512 inputs.
    const i64 target_warps = sms * 64;
    i64 splits = 1;
    if (g.P < target_warps)
      splits = std::clamp<i64>(std::min(ceil_div(target_warps, g.P), ceil_div(g.Q, 512)), 1, g.Q);
    const i64 chunk = ceil_div(g.Q, splits);
    splits = ceil_div(g.Q, chunk);
    Scratch partial(splits > 1 ? static_cast<std::size_t>(g.P * splits) * sizeof(Sums<K>) : 0);
    reduce_rows_kernel<<<blocks_for_items(g.P * splits, kWarpsPerBlock), kBlock, 0, stream()>>>(
        x, g, splits, chunk, op, fin, partial.as<Sums<K>>());
    ZSQ_CUDA_LAUNCH_CHECK();
    if (splits > 1) {
      combine_kernel<<<blocks_for_items(g.P, kWarpsPerBlock), kBlock, 0, stream()>>>(partial.as<Sums<K>>(),
                                                                                     g.P, splits, fin);
      ZSQ_CUDA_LAUNCH_CHECK();
    }
    return;
  }
  // Columns: float4 along the kept run when it is a multiple of 4 long and x is 16-byte aligned (every
  // other stride is then a multiple of 4 as well).
  const bool vec4 = g.inner_kept_size % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
  const int V = vec4 ? 4 : 1;
  const i64 units = g.P / V;
  int bx = 1;
  while (bx < 32 && bx < units) bx *= 2;
  const int by = kBlock / bx;
  const i64 blocks_x = ceil_div(units, bx);
  // Enough blocks to fill the chip (8 resident per SM); each thread reads at least 4 rows.
  const i64 target_blocks = sms * 8;
  i64 splits = 1;
  if (blocks_x < target_blocks)
    splits = std::clamp<i64>(
        std::min(ceil_div(target_blocks, blocks_x), ceil_div(g.Q, static_cast<i64>(by) * 4)), 1, 65535);
  const i64 chunk = ceil_div(g.Q, splits);
  splits = ceil_div(g.Q, chunk);
  if (blocks_x > 0x7fffffff) raise_error("reduce: too many outputs for one CUDA grid");
  Scratch partial(splits > 1 ? static_cast<std::size_t>(g.P * splits) * sizeof(Sums<K>) : 0);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(splits));
  const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  const std::size_t shared_bytes = static_cast<std::size_t>(kBlock) * V * K * sizeof(double);
  if (vec4)
    reduce_columns_kernel<4>
        <<<grid, block, shared_bytes, stream()>>>(x, g, chunk, op, fin, partial.as<Sums<K>>());
  else
    reduce_columns_kernel<1>
        <<<grid, block, shared_bytes, stream()>>>(x, g, chunk, op, fin, partial.as<Sums<K>>());
  ZSQ_CUDA_LAUNCH_CHECK();
  if (splits > 1) {
    combine_kernel<<<blocks_for_items(g.P, kWarpsPerBlock), kBlock, 0, stream()>>>(partial.as<Sums<K>>(), g.P,
                                                                                   splits, fin);
    ZSQ_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace zsq::cuda::reduce_detail
