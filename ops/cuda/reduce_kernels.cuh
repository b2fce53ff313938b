// The two-level reduction machinery shared by the CUDA reductions (reduce.cu), the moment-matching loss
// (moment_matching.cu) and the losses (loss.cu). Included by .cu files only.
//
// Every reduction is first normalized to the input's memory order (size-1 dims dropped, neighbours of
// the same kind merged), then run in one of two shapes:
//   rows:    the innermost memory dim is reduced (NCHW per-channel stats, row sums, full reductions).
//            A warp per (output, chunk of its inputs): lanes read consecutive addresses, float4 when
//            the innermost dim is a multiple of 4 long (every run then starts 16-byte aligned).
//   columns: the innermost memory dim is kept (channels_last per-channel stats, batch sums of [N, C]).
//            threadIdx.x walks the kept outputs (float4 when the run allows), threadIdx.y and blockIdx.y
//            walk the reduced rows; a shared-memory tree folds threadIdx.y.
// Each thread keeps four independent loads in flight (walk_reduced), and the grid is one wave of the
// blocks the chip holds at once (from the occupancy of the kernel instance), split evenly, so the read
// streams at DRAM speed with no half-empty last wave. When one output has more inputs than one warp /
// block should read, the work is split into chunks whose double sums are written as partials
// ([output][chunk], contiguous per output) and folded by a second kernel in a fixed order (two-level; no
// atomics, so the same input gives the same bits). An element operation (Op: how an input adds into the
// sums) and a finisher (Fin: what to do with an output's final sums) make each reduction.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/reduce.h"
#include "ops/cuda/scratch.h"

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

// An Op has `static constexpr int K` (sums per output) and either
//   add(Sums<K>&, float v, i64 o)                    the sums of output o take input v, or
//   add(Sums<K>&, float v, float shift, i64 o)       with `static constexpr bool kShifted = true`: shift is
//                                                    output o's first input (reduced index 0), the same
//                                                    value in every thread, so partial sums still add.
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

template <int K>
__device__ __forceinline__ void add_sums(Sums<K>& a, const Sums<K>& b) {
#pragma unroll
  for (int k = 0; k < K; ++k) a.v[k] += b.v[k];
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

template <class Op, class = void>
struct ShiftedOp : std::false_type {};
template <class Op>
struct ShiftedOp<Op, std::void_t<decltype(Op::kShifted)>> : std::bool_constant<Op::kShifted> {};

template <class Op>
__device__ __forceinline__ void add_input(const Op& op, Sums<Op::K>& a, float v, float shift, i64 o) {
  if constexpr (ShiftedOp<Op>::value)
    op.add(a, v, shift, o);
  else
    op.add(a, v, o);
}

// V consecutive floats of x (V = 4: one 16-byte load; the caller guarantees the alignment).
template <int V>
struct Vec {
  float v[V];
};

template <int V>
__device__ __forceinline__ Vec<V> load_vec(const float* p) {
  Vec<V> r;
  if constexpr (V == 4) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p));
    r.v[0] = f.x;
    r.v[1] = f.y;
    r.v[2] = f.z;
    r.v[3] = f.w;
  } else {
    static_assert(V == 1);
    r.v[0] = __ldg(p);
  }
  return r;
}

// walk_reduced's path for several reduced dims (g.outer.n > 0): four walkers, one per load in flight.
template <int V, int Scale, class Visit>
__device__ __forceinline__ void walk_outer(const Geometry& g, const float* first, i64 r, i64 n, i64 step,
                                           Visit& visit) {
  ReducedWalker w0;
  w0.start(g, r);
  if (n >= 4) {
    ReducedWalker w1, w2, w3;
    w1.start(g, r + step);
    w2.start(g, r + 2 * step);
    w3.start(g, r + 3 * step);
    for (; n >= 4; n -= 4) {
      const Vec<V> a = load_vec<V>(first + w0.offset(g) * Scale),
                   b = load_vec<V>(first + w1.offset(g) * Scale),
                   c = load_vec<V>(first + w2.offset(g) * Scale),
                   d = load_vec<V>(first + w3.offset(g) * Scale);
      visit(a);
      visit(b);
      visit(c);
      visit(d);
      w0.advance(g, 4 * step);
      w1.advance(g, 4 * step);
      w2.advance(g, 4 * step);
      w3.advance(g, 4 * step);
    }
  }
  for (; n > 0; --n) {  // w0 is at the next position
    visit(load_vec<V>(first + w0.offset(g) * Scale));
    w0.advance(g, step);
  }
}

// visit(Vec<V>) for the reduced positions r, r + step, ... below r1 of the output whose inputs start at
// `first`, in that order. Positions and strides of g are in units of Scale floats. Four loads are issued
// before their values are used, so each thread keeps 64 bytes (V = 4) in flight. Walk (g.outer.n > 0)
// is a template argument: the one-dim path then needs no walker registers, so more blocks fit.
template <int V, int Scale, bool Walk, class Visit>
__device__ __forceinline__ void walk_reduced(const Geometry& g, const float* first, i64 r, i64 r1, i64 step,
                                             Visit&& visit) {
  if (r >= r1) return;
  i64 n = (r1 - r + step - 1) / step;
  if constexpr (!Walk) {
    // One reduced dim (full reductions, row sums, channels_last per-channel stats): a fixed stride.
    const i64 jump = step * g.inner_stride * Scale;
    const float* p = first + r * g.inner_stride * Scale;
    for (; n >= 4; n -= 4, p += 4 * jump) {
      const Vec<V> a = load_vec<V>(p), b = load_vec<V>(p + jump), c = load_vec<V>(p + 2 * jump),
                   d = load_vec<V>(p + 3 * jump);
      visit(a);
      visit(b);
      visit(c);
      visit(d);
    }
    for (; n > 0; --n, p += jump) visit(load_vec<V>(p));
  } else {
    walk_outer<V, Scale>(g, first, r, n, step, visit);
  }
}

// ---- reduction kernels ----------------------------------------------------------------------------

constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / 32;

// Rows: g in units of V floats (V = 4: L, Q and every stride divided by 4). A warp per (output, chunk).
template <int V, bool Walk, class Op, class Fin>
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
    const float* first = x + base * V;
    const float shift = ShiftedOp<Op>::value ? __ldg(first) : 0.0f;
    Sums<Op::K> acc = zero_sums<Op::K>();
    walk_reduced<V, V, Walk>(g, first, s * chunk + lane, imin(g.Q, (s + 1) * chunk), 32,
                             [&](const Vec<V>& u) {
#pragma unroll
                               for (int j = 0; j < V; ++j) add_input(op, acc, u.v[j], shift, o);
                             });
    acc = warp_sum(acc);
    if (lane == 0) {
      if (splits == 1)
        fin(o, acc);
      else
        partial[o * splits + s] = acc;
    }
  }
}

// Columns: blockDim = (bx, by), bx * by == kBlock, by a power of two; blockIdx.y is the chunk of reduced
// rows; dynamic shared memory kBlock * V * K doubles. Thread tx owns V consecutive kept outputs.
template <int V, bool Walk, class Op, class Fin>
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
  const i64 s = blockIdx.y, splits = gridDim.y;
  Sums<K> acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = zero_sums<K>();
  i64 base = 0, o = 0;
  if (valid) {
    kept_offsets(g.kept, k, base, o);
    const float* first = x + base;
    float shift[V];
#pragma unroll
    for (int j = 0; j < V; ++j) shift[j] = ShiftedOp<Op>::value ? __ldg(first + j) : 0.0f;
    walk_reduced<V, 1, Walk>(g, first, s * chunk + ty, imin(g.Q, (s + 1) * chunk), by, [&](const Vec<V>& u) {
#pragma unroll
      for (int j = 0; j < V; ++j) add_input(op, acc[j], u.v[j], shift[j], o + j * os);
    });
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
      if (splits == 1)
        fin(o + j * os, t);
      else
        partial[(o + j * os) * splits + s] = t;
    }
  }
}

// Folds the partials of each output (partial[o * splits + s]) with a group of G threads per output: G = 32
// (a warp) for a few partials, G = kBlock (the block) for many, so the loads of one output are spread
// over enough threads to be issued together. Fixed order: each thread sums s = t, t + G, ... in turn,
// then a fixed tree.
template <int K, int G, class Fin>
__global__ void __launch_bounds__(kBlock)
    combine_kernel(const Sums<K>* __restrict__ partial, i64 P, i64 splits, Fin fin) {
  static_assert(G == 32 || G == kBlock);
  constexpr int kGroups = kBlock / G;
  __shared__ Sums<K> warp_totals[kWarpsPerBlock];
  const int t = static_cast<int>(threadIdx.x) % G;
  // o is the same for every thread of a group, so with G = kBlock the whole block takes the barriers.
  for (i64 o = blockIdx.x * static_cast<i64>(kGroups) + static_cast<int>(threadIdx.x) / G; o < P;
       o += static_cast<i64>(gridDim.x) * kGroups) {
    const Sums<K>* p = partial + o * splits;
    Sums<K> acc = zero_sums<K>();
    i64 i = t;
    for (; i + 3 * G < splits; i += 4 * G) {
      const Sums<K> a = p[i], b = p[i + G], c = p[i + 2 * G], d = p[i + 3 * G];
      add_sums(acc, a);
      add_sums(acc, b);
      add_sums(acc, c);
      add_sums(acc, d);
    }
    for (; i < splits; i += G) add_sums(acc, p[i]);
    acc = warp_sum(acc);
    if constexpr (G == 32) {
      if (t == 0) fin(o, acc);
    } else {
      const int warp = static_cast<int>(threadIdx.x) >> 5;
      if ((threadIdx.x & 31) == 0) warp_totals[warp] = acc;
      __syncthreads();
      if (threadIdx.x == 0) {
        Sums<K> total = warp_totals[0];
        for (int w = 1; w < kWarpsPerBlock; ++w) add_sums(total, warp_totals[w]);
        fin(o, total);
      }
      __syncthreads();  // warp_totals is rewritten for the next output
    }
  }
}

inline i64 ceil_div(i64 a, i64 b) {
  return (a + b - 1) / b;
}

inline i64 round_up(i64 a, i64 b) {
  return ceil_div(a, b) * b;
}

inline int blocks_for_items(i64 items, int items_per_block) {
  const i64 cap = static_cast<i64>(multiprocessor_count()) * 32;
  return static_cast<int>(std::clamp<i64>(ceil_div(items, items_per_block), 1, cap));
}

// Blocks of `kernel` (kBlock threads, `shared_bytes` of dynamic shared memory) one multiprocessor holds
// at once: registers and shared memory differ per Op, so the wave is sized per kernel instance.
template <class Kernel>
int resident_blocks_per_sm(Kernel kernel, std::size_t shared_bytes) {
  int blocks = 0;
  ZSQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kBlock, shared_bytes));
  return std::max(blocks, 1);
}

template <int K, class Fin>
void combine_partials(const Sums<K>* partial, i64 P, i64 splits, Fin fin) {
  if (splits > 64) {
    combine_kernel<K, kBlock><<<blocks_for_items(P, 1), kBlock, 0, stream()>>>(partial, P, splits, fin);
  } else {
    combine_kernel<K, 32>
        <<<blocks_for_items(P, kWarpsPerBlock), kBlock, 0, stream()>>>(partial, P, splits, fin);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

// g in units of V floats: the rows kernel then walks float4s (V = 4 only when L % 4 == 0).
inline Geometry in_units(Geometry g, int V) {
  if (V == 1) return g;
  g.L /= V;
  g.Q /= V;
  for (int i = 0; i < g.kept.n; ++i) g.kept.in_stride[i] /= V;
  for (int i = 0; i < g.outer.n; ++i) g.outer.in_stride[i] /= V;
  return g;
}

template <int V, bool Walk, class Op, class Fin>
void run_rows(const float* x, const Geometry& g, Op op, Fin fin) {
  constexpr int K = Op::K;
  const auto kernel = reduce_rows_kernel<V, Walk, Op, Fin>;
  static const int per_sm = resident_blocks_per_sm(kernel, 0);
  const i64 resident_blocks = static_cast<i64>(multiprocessor_count()) * per_sm;
  const i64 resident_warps = resident_blocks * kWarpsPerBlock;
  // One wave of warps: split each output's inputs when there are fewer outputs than warps, each chunk
  // at least four loads per lane.
  i64 splits = 1;
  if (g.P < resident_warps)
    splits = std::clamp<i64>(resident_warps / g.P, 1, std::max<i64>(1, ceil_div(g.Q, 32 * 4)));
  const i64 chunk = std::max<i64>(32, round_up(ceil_div(g.Q, splits), 32));
  splits = std::max<i64>(1, ceil_div(g.Q, chunk));
  Scratch partial(splits > 1 ? static_cast<std::size_t>(g.P * splits) * sizeof(Sums<K>) : 0);
  const int grid =
      static_cast<int>(std::clamp<i64>(ceil_div(g.P * splits, kWarpsPerBlock), 1, resident_blocks));
  kernel<<<grid, kBlock, 0, stream()>>>(x, g, splits, chunk, op, fin, partial.as<Sums<K>>());
  ZSQ_CUDA_LAUNCH_CHECK();
  if (splits > 1) combine_partials<K>(partial.as<Sums<K>>(), g.P, splits, fin);
}

template <int V, bool Walk, class Op, class Fin>
void run_columns(const float* x, const Geometry& g, Op op, Fin fin) {
  constexpr int K = Op::K;
  const auto kernel = reduce_columns_kernel<V, Walk, Op, Fin>;
  const std::size_t shared_bytes = static_cast<std::size_t>(kBlock) * V * K * sizeof(double);
  static const int per_sm = resident_blocks_per_sm(kernel, shared_bytes);
  const i64 resident_blocks = static_cast<i64>(multiprocessor_count()) * per_sm;
  const i64 units = g.P / V;
  int bx = 1;
  while (bx < 32 && bx < units) bx *= 2;
  const int by = kBlock / bx;
  const i64 blocks_x = ceil_div(units, bx);
  if (blocks_x > 0x7fffffff) raise_error("reduce: too many outputs for one CUDA grid");
  // One wave of blocks: the reduced rows split evenly over the blocks the chip holds beside blocks_x,
  // each thread reading at least four rows.
  i64 splits = 1;
  if (blocks_x < resident_blocks)
    splits = std::clamp<i64>(resident_blocks / blocks_x, 1,
                             std::clamp<i64>(ceil_div(g.Q, static_cast<i64>(by) * 4), 1, 65535));
  const i64 chunk = std::max<i64>(by, round_up(ceil_div(g.Q, splits), by));
  splits = std::max<i64>(1, ceil_div(g.Q, chunk));
  Scratch partial(splits > 1 ? static_cast<std::size_t>(g.P * splits) * sizeof(Sums<K>) : 0);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(splits));
  const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  kernel<<<grid, block, shared_bytes, stream()>>>(x, g, chunk, op, fin, partial.as<Sums<K>>());
  ZSQ_CUDA_LAUNCH_CHECK();
  if (splits > 1) combine_partials<K>(partial.as<Sums<K>>(), g.P, splits, fin);
}

template <int V, class Op, class Fin>
void run_shape(const float* x, const Geometry& g, Op op, Fin fin) {
  const bool walk = g.outer.n > 0;
  if (g.rows) {
    if (walk)
      run_rows<V, true>(x, in_units(g, V), op, fin);
    else
      run_rows<V, false>(x, in_units(g, V), op, fin);
  } else {
    if (walk)
      run_columns<V, true>(x, g, op, fin);
    else
      run_columns<V, false>(x, g, op, fin);
  }
}

template <class Op, class Fin>
void run_reduction(const float* x, const Geometry& g, Op op, Fin fin) {
  if (g.P == 0) return;
  // float4 loads when x is 16-byte aligned and the innermost dim is a multiple of 4 long: every other
  // stride is then a multiple of 4 as well, so each run (rows) or group of 4 kept outputs (columns)
  // starts aligned.
  const bool vec4 =
      reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && (g.rows ? g.L % 4 == 0 : g.inner_kept_size % 4 == 0);
  if (vec4)
    run_shape<4>(x, g, op, fin);
  else
    run_shape<1>(x, g, op, fin);
}

}  // namespace zsq::cuda::reduce_detail
