// Softmax family and losses on the GPU.
//
// Row-wise ops (softmax, log_softmax, cross entropy) give each row of [rows, cols] to a group of W
// warps: one warp when cols <= 1024 (eight rows per block), a whole block otherwise. Groups reduce with
// xor shuffles, so every thread ends with the same bits, and sum in double like the CPU path.
// Element-wise losses (mse, l1, kl_div) sum per thread in double over a grid-stride loop (float4 loads
// where aligned), then per block, then one block folds the block partials in a fixed order.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "ops/cuda/loss.h"
#include "ops/cuda/reduce_kernels.cuh"

namespace zsq::cuda {

using namespace reduce_detail;

namespace {

constexpr int kSmallRowCols = 1024;  // up to this many columns a row gets one warp
constexpr int kMaxPartials = 1024;   // blocks of an element-wise sum (partials folded by one block)

// ---- row groups ---------------------------------------------------------------------------------

template <int W>
struct Group {
  static constexpr int kThreads = 32 * W;
  static constexpr int kRowsPerBlock = kBlock / kThreads;
  int tid;  // thread within the row's group
  i64 row;
  __device__ Group() {
    tid = static_cast<int>(threadIdx.x) % kThreads;
    row = blockIdx.x * static_cast<i64>(kRowsPerBlock) + static_cast<int>(threadIdx.x) / kThreads;
  }
};

// Across the group, the same result in every thread. With W > 1 a block is one row and shared holds W
// values; the trailing barrier lets the next call reuse it.
template <int W>
__device__ __forceinline__ double group_sum(double v, double* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  if constexpr (W == 1) {
    return v;
  } else {
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < W; ++w) total += shared[w];
    __syncthreads();
    return total;
  }
}

template <int W>
__device__ __forceinline__ float group_max(float v, double* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  if constexpr (W == 1) {
    return v;
  } else {
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = static_cast<float>(shared[0]);
#pragma unroll
    for (int w = 1; w < W; ++w) m = fmaxf(m, static_cast<float>(shared[w]));
    __syncthreads();
    return m;
  }
}

// Row maximum and log(sum(exp(x - max))), as the CPU's row_stats: exp in float, the sum in double.
struct RowStats {
  float max, log_sum;
};

template <int W>
__device__ __forceinline__ RowStats row_stats(const float* __restrict__ xr, i64 cols, int tid,
                                              double* shared) {
  float m = -INFINITY;
  for (i64 j = tid; j < cols; j += Group<W>::kThreads) m = fmaxf(m, xr[j]);
  m = group_max<W>(m, shared);
  if (isinf(m)) return {m, 0.0f};  // all -inf (or a +inf entry); uniform across the group
  double s = 0.0;
  for (i64 j = tid; j < cols; j += Group<W>::kThreads) s += static_cast<double>(expf(xr[j] - m));
  s = group_sum<W>(s, shared);
  return {m, static_cast<float>(log(s))};
}

template <int W, bool kLog>
__global__ void __launch_bounds__(kBlock)
    softmax_kernel(const float* __restrict__ x, i64 rows, i64 cols, float* __restrict__ y) {
  __shared__ double shared[W];
  const Group<W> grp;
  if (grp.row >= rows) return;  // only with W == 1 (a W > 1 grid has exactly one block per row)
  const float* xr = x + grp.row * cols;
  float* yr = y + grp.row * cols;
  const RowStats st = row_stats<W>(xr, cols, grp.tid, shared);
  for (i64 j = grp.tid; j < cols; j += Group<W>::kThreads) {
    const float v = (xr[j] - st.max) - st.log_sum;
    yr[j] = kLog ? v : expf(v);
  }
}

template <int W, bool kLog>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_kernel(const float* __restrict__ g, const float* __restrict__ y, i64 rows, i64 cols,
                            float* __restrict__ gx) {
  __shared__ double shared[W];
  const Group<W> grp;
  if (grp.row >= rows) return;
  const float* gr = g + grp.row * cols;
  const float* yr = y + grp.row * cols;
  float* out = gx + grp.row * cols;
  double s = 0.0;  // softmax: sum(g * y); log_softmax: sum(g)
  for (i64 j = grp.tid; j < cols; j += Group<W>::kThreads)
    s += kLog ? static_cast<double>(gr[j]) : static_cast<double>(gr[j] * yr[j]);
  const float total = static_cast<float>(group_sum<W>(s, shared));
  for (i64 j = grp.tid; j < cols; j += Group<W>::kThreads)
    out[j] = kLog ? gr[j] - expf(yr[j]) * total : yr[j] * (gr[j] - total);
}

// Per row: row_stats and the smoothed cross entropy
//   log_sum - (1 - eps) (x[label] - max) - eps / K * sum_j (x_j - max)   (NaN for a bad label).
template <int W>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_kernel(const float* __restrict__ x, const std::int32_t* __restrict__ labels, i64 rows,
                         i64 cols, double eps, float* __restrict__ row_stats_out,
                         double* __restrict__ terms) {
  __shared__ double shared[W];
  const Group<W> grp;
  if (grp.row >= rows) return;
  const float* xr = x + grp.row * cols;
  const RowStats st = row_stats<W>(xr, cols, grp.tid, shared);
  double row_sum = 0.0;
  if (eps > 0.0) {
    for (i64 j = grp.tid; j < cols; j += Group<W>::kThreads) row_sum += static_cast<double>(xr[j] - st.max);
    row_sum = group_sum<W>(row_sum, shared);
  }
  if (grp.tid == 0) {
    const std::int32_t label = labels[grp.row];
    const bool valid = label >= 0 && label < cols;
    row_stats_out[2 * grp.row] = st.max;
    row_stats_out[2 * grp.row + 1] = st.log_sum;
    terms[grp.row] = valid ? static_cast<double>(st.log_sum) -
                                 (1.0 - eps) * static_cast<double>(xr[label] - st.max) -
                                 eps / static_cast<double>(cols) * row_sum
                           : NAN;
  }
}

// gx = scale (p - eps/K) - [j == label] scale (1 - eps), scale = g / rows.
__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_kernel(const float* __restrict__ g, const float* __restrict__ x,
                                  const std::int32_t* __restrict__ labels, const float* __restrict__ stats,
                                  i64 rows, i64 cols, float off, float on, float* __restrict__ gx) {
  const float scale = g[0] / static_cast<float>(rows);
  const i64 n = rows * cols;
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 r = i / cols, j = i - r * cols;
    const std::int32_t label = labels[r];
    float v = scale * (expf((x[i] - stats[2 * r]) - stats[2 * r + 1]) - off);
    if (label < 0 || label >= cols)
      v = NAN;
    else if (j == label)
      v -= scale * on;
    gx[i] = v;
  }
}

// Sums terms[0, n) in one block (fixed order) and writes total / divisor.
__global__ void __launch_bounds__(kBlock)
    fold_kernel(const double* __restrict__ terms, i64 n, double divisor, float* __restrict__ out) {
  __shared__ double warp_totals[kWarpsPerBlock];
  Sums<1> acc = zero_sums<1>();
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) acc.v[0] += terms[i];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x >> 5] = acc.v[0];
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_totals[w];
    out[0] = static_cast<float>(total / divisor);
  }
}

// ---- element-wise losses ------------------------------------------------------------------------

template <PairLoss kKind>
__device__ __forceinline__ double pair_term(float a, float b) {
  if constexpr (kKind == PairLoss::mse) {
    const double d = static_cast<double>(a) - b;
    return d * d;
  } else if constexpr (kKind == PairLoss::l1) {
    return fabs(static_cast<double>(a) - b);
  } else {
    // PyTorch's xlogy(t, t) - t * x with xlogy(0, 0) = 0 (t < 0 gives NaN); a = x, b = t.
    const double t = b;
    const double tlogt = t > 0.0 ? t * log(t) : (t == 0.0 ? 0.0 : NAN);
    return tlogt - t * static_cast<double>(a);
  }
}

template <PairLoss kKind>
__global__ void __launch_bounds__(kBlock)
    pair_sum_kernel(const float* __restrict__ a, const float* __restrict__ b, i64 n, i64 vec_units,
                    double* __restrict__ partial) {
  __shared__ double warp_totals[kWarpsPerBlock];
  const i64 start = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
  const i64 step = static_cast<i64>(gridDim.x) * blockDim.x;
  double s = 0.0;
  for (i64 u = start; u < vec_units; u += step) {
    const float4 va = reinterpret_cast<const float4*>(a)[u];
    const float4 vb = reinterpret_cast<const float4*>(b)[u];
    s += pair_term<kKind>(va.x, vb.x) + pair_term<kKind>(va.y, vb.y) + pair_term<kKind>(va.z, vb.z) +
         pair_term<kKind>(va.w, vb.w);
  }
  for (i64 i = vec_units * 4 + start; i < n; i += step) s += pair_term<kKind>(a[i], b[i]);
  Sums<1> acc{{s}};
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x >> 5] = acc.v[0];
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_totals[w];
    partial[blockIdx.x] = total;
  }
}

// Gradients of the element-wise losses: (ga, gb) for one element pair given the scale.
template <PairLoss kKind>
__device__ __forceinline__ void pair_grad(float a, float b, float scale, float& ga, float& gb) {
  if constexpr (kKind == PairLoss::mse) {
    ga = (a - b) * scale;
    gb = -ga;
  } else if constexpr (kKind == PairLoss::l1) {
    // Subgradient 0 where a == b.
    ga = a > b ? scale : (a < b ? -scale : 0.0f);
    gb = a > b ? -scale : (a < b ? scale : 0.0f);
  } else {
    // a = log_input x, b = target t: d/dx = -t, d/dt = log t + 1 - x (the 0 log 0 term is constant).
    ga = -b * scale;
    gb = ((b > 0.0f ? logf(b) + 1.0f : 0.0f) - a) * scale;
  }
}

// scale = factor * g[0] / denom (the CPU's float arithmetic); ga / gb may be null.
template <PairLoss kKind>
__global__ void __launch_bounds__(kBlock)
    pair_backward_kernel(const float* __restrict__ g, const float* __restrict__ a,
                         const float* __restrict__ b, i64 n, i64 vec_units, float factor, float denom,
                         float* __restrict__ ga, float* __restrict__ gb) {
  const float scale = factor * g[0] / denom;
  const i64 start = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
  const i64 step = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 u = start; u < vec_units; u += step) {
    const float4 va = reinterpret_cast<const float4*>(a)[u];
    const float4 vb = reinterpret_cast<const float4*>(b)[u];
    float4 ra, rb;
    pair_grad<kKind>(va.x, vb.x, scale, ra.x, rb.x);
    pair_grad<kKind>(va.y, vb.y, scale, ra.y, rb.y);
    pair_grad<kKind>(va.z, vb.z, scale, ra.z, rb.z);
    pair_grad<kKind>(va.w, vb.w, scale, ra.w, rb.w);
    if (ga != nullptr) reinterpret_cast<float4*>(ga)[u] = ra;
    if (gb != nullptr) reinterpret_cast<float4*>(gb)[u] = rb;
  }
  for (i64 i = vec_units * 4 + start; i < n; i += step) {
    float ra, rb;
    pair_grad<kKind>(a[i], b[i], scale, ra, rb);
    if (ga != nullptr) ga[i] = ra;
    if (gb != nullptr) gb[i] = rb;
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// float4 units when every pointer is 16-byte aligned (null ones do not count), else 0.
i64 vec_units_for(i64 n, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && !aligned16(p)) return 0;
  return n / 4;
}

template <PairLoss kKind>
void launch_pair_sum(const float* a, const float* b, i64 n, double divisor, float* loss) {
  const i64 vec = vec_units_for(n, {a, b});
  const int blocks = std::min(grid_for(vec > 0 ? vec : n), kMaxPartials);
  Scratch partial(static_cast<std::size_t>(blocks) * sizeof(double));
  pair_sum_kernel<kKind><<<blocks, kBlock, 0, stream()>>>(a, b, n, vec, partial.as<double>());
  ZSQ_CUDA_LAUNCH_CHECK();
  fold_kernel<<<1, kBlock, 0, stream()>>>(partial.as<double>(), blocks, divisor, loss);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <PairLoss kKind>
void launch_pair_backward(const float* g, const float* a, const float* b, i64 n, float factor, float denom,
                          float* ga, float* gb) {
  if (n == 0 || (ga == nullptr && gb == nullptr)) return;
  const i64 vec = vec_units_for(n, {a, b, ga, gb});
  pair_backward_kernel<kKind>
      <<<grid_for(vec > 0 ? vec : n), kBlock, 0, stream()>>>(g, a, b, n, vec, factor, denom, ga, gb);
  ZSQ_CUDA_LAUNCH_CHECK();
}

// ---- embedding ----------------------------------------------------------------------------------

__global__ void __launch_bounds__(kBlock)
    embedding_kernel(const float* __restrict__ table, const std::int32_t* __restrict__ indices, i64 n,
                     i64 vocab, i64 dim, float* __restrict__ out) {
  const i64 total = n * dim;
  for (i64 e = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 i = e / dim, j = e - i * dim;
    const std::int32_t idx = indices[i];
    out[e] = idx >= 0 && idx < vocab ? table[idx * dim + j] : NAN;
  }
}

// Rows of g scattered into the table; repeated indices add up through atomics (their order, and so the
// last bits of a repeated row, may vary from run to run).
__global__ void __launch_bounds__(kBlock)
    embedding_backward_kernel(const float* __restrict__ g, const std::int32_t* __restrict__ indices, i64 n,
                              i64 vocab, i64 dim, float* __restrict__ grad_table) {
  const i64 total = n * dim;
  for (i64 e = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 i = e / dim, j = e - i * dim;
    const std::int32_t idx = indices[i];
    if (idx >= 0 && idx < vocab) atomicAdd(grad_table + idx * dim + j, g[e]);
  }
}

}  // namespace

void softmax_rows(const float* x, std::int64_t rows, std::int64_t cols, bool log, float* y) {
  if (rows * cols == 0) return;
  if (cols <= kSmallRowCols) {
    const auto grid = static_cast<unsigned>(ceil_div(rows, Group<1>::kRowsPerBlock));
    if (log)
      softmax_kernel<1, true><<<grid, kBlock, 0, stream()>>>(x, rows, cols, y);
    else
      softmax_kernel<1, false><<<grid, kBlock, 0, stream()>>>(x, rows, cols, y);
  } else {
    const auto grid = static_cast<unsigned>(rows);
    if (log)
      softmax_kernel<8, true><<<grid, kBlock, 0, stream()>>>(x, rows, cols, y);
    else
      softmax_kernel<8, false><<<grid, kBlock, 0, stream()>>>(x, rows, cols, y);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

namespace {
template <bool kLog>
void launch_softmax_backward(const float* g, const float* y, i64 rows, i64 cols, float* gx) {
  if (rows * cols == 0) return;
  if (cols <= kSmallRowCols)
    softmax_backward_kernel<1, kLog>
        <<<static_cast<unsigned>(ceil_div(rows, Group<1>::kRowsPerBlock)), kBlock, 0, stream()>>>(g, y, rows,
                                                                                                  cols, gx);
  else
    softmax_backward_kernel<8, kLog>
        <<<static_cast<unsigned>(rows), kBlock, 0, stream()>>>(g, y, rows, cols, gx);
  ZSQ_CUDA_LAUNCH_CHECK();
}
}  // namespace

void softmax_backward(const float* g, const float* y, std::int64_t rows, std::int64_t cols, float* gx) {
  launch_softmax_backward<false>(g, y, rows, cols, gx);
}

void log_softmax_backward(const float* g, const float* y, std::int64_t rows, std::int64_t cols, float* gx) {
  launch_softmax_backward<true>(g, y, rows, cols, gx);
}

void cross_entropy_forward(const float* logits, const std::int32_t* labels, std::int64_t rows,
                           std::int64_t cols, float label_smoothing, float* row_stats, float* loss) {
  if (rows == 0) {  // the mean over no rows, as on the CPU
    fill_f32(loss, 1, NAN);
    return;
  }
  Scratch terms(static_cast<std::size_t>(rows) * sizeof(double));
  const double eps = label_smoothing;
  if (cols <= kSmallRowCols)
    cross_entropy_kernel<1>
        <<<static_cast<unsigned>(ceil_div(rows, Group<1>::kRowsPerBlock)), kBlock, 0, stream()>>>(
            logits, labels, rows, cols, eps, row_stats, terms.as<double>());
  else
    cross_entropy_kernel<8><<<static_cast<unsigned>(rows), kBlock, 0, stream()>>>(
        logits, labels, rows, cols, eps, row_stats, terms.as<double>());
  ZSQ_CUDA_LAUNCH_CHECK();
  fold_kernel<<<1, kBlock, 0, stream()>>>(terms.as<double>(), rows, static_cast<double>(rows), loss);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void cross_entropy_backward(const float* g, const float* logits, const std::int32_t* labels,
                            const float* row_stats, std::int64_t rows, std::int64_t cols,
                            float label_smoothing, float* gx) {
  if (rows * cols == 0) return;
  const double eps = label_smoothing;
  const auto off = static_cast<float>(eps / static_cast<double>(cols));
  const auto on = static_cast<float>(1.0 - eps);
  cross_entropy_backward_kernel<<<grid_for(rows * cols), kBlock, 0, stream()>>>(g, logits, labels, row_stats,
                                                                                rows, cols, off, on, gx);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void pair_loss_forward(PairLoss kind, const float* a, const float* b, std::int64_t n, double divisor,
                       float* loss) {
  switch (kind) {
    case PairLoss::mse:
      return launch_pair_sum<PairLoss::mse>(a, b, n, divisor, loss);
    case PairLoss::l1:
      return launch_pair_sum<PairLoss::l1>(a, b, n, divisor, loss);
    case PairLoss::kl_div:
      return launch_pair_sum<PairLoss::kl_div>(a, b, n, divisor, loss);
  }
}

void mse_backward(const float* g, const float* a, const float* b, std::int64_t n, float* ga, float* gb) {
  launch_pair_backward<PairLoss::mse>(g, a, b, n, 2.0f, static_cast<float>(n), ga, gb);
}

void l1_backward(const float* g, const float* a, const float* b, std::int64_t n, float* ga, float* gb) {
  launch_pair_backward<PairLoss::l1>(g, a, b, n, 1.0f, static_cast<float>(n), ga, gb);
}

void kl_div_backward(const float* g, const float* x, const float* t, std::int64_t n, float batch, float* gx,
                     float* gt) {
  launch_pair_backward<PairLoss::kl_div>(g, x, t, n, 1.0f, batch, gx, gt);
}

void embedding_forward(const float* table, const std::int32_t* indices, std::int64_t n, std::int64_t vocab,
                       std::int64_t dim, float* out) {
  if (n * dim == 0) return;
  embedding_kernel<<<grid_for(n * dim), kBlock, 0, stream()>>>(table, indices, n, vocab, dim, out);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void embedding_backward(const float* g, const std::int32_t* indices, std::int64_t n, std::int64_t vocab,
                        std::int64_t dim, float* grad_table) {
  if (n * dim == 0) return;
  embedding_backward_kernel<<<grid_for(n * dim), kBlock, 0, stream()>>>(g, indices, n, vocab, dim,
                                                                        grad_table);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
