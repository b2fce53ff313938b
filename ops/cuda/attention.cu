// Flash-attention-style softmax attention on the GPU (see ops/cuda/attention.h), fp32 throughout.
//
// Every kernel works on 64 x 64 tiles of the score matrix with 256 threads as a 16 x 16 grid: thread
// (ty, tx) owns tile rows ty*4 + i (i < 4) and columns tx + 16 j (j < 4), so each tile row lives in one
// half-warp and row reductions are four shuffles. Two building blocks do all the arithmetic:
//   scores      acc = A B^T for two row-major blocks of 64 rows (rows of q, k, v or grad_out), the
//               shared length staged through shared memory 32 columns at a time;
//   accumulate  out += P G[:, chunk] for the 64 x 64 tile P in shared memory and 64 rows of a
//               row-major matrix G, output columns e0 + tx + 16 j (j < JV).
// Forward, per (batch, 64 queries, chunk of Dv): for each key tile S = scale q k^T, online softmax
// (running max m and sum l), O = O exp(m_old - m_new) + P v; at the end out = O / l, lse = m + log l.
// Backward recomputes the tiles from lse (P = exp(S - lse), delta = rowsum(dO * out), dS = P (dP - delta),
// dP = dO v^T) in two kernels without atomics: per key tile, dV = sum P^T dO and dK = scale sum dS^T q;
// per query tile, dQ = scale sum dS k. Output widths above 64 are split into chunks over blockIdx.y, each
// recomputing the scores: the models pair a wide D with a short sequence (ZAQ's channel relation), so the
// repeated work stays small while the accumulators stay in registers (at most 128 per thread: two
// blocks per multiprocessor, no spills).
#include <algorithm>
#include <cmath>

#include "ops/cuda/attention.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::cuda {

namespace {

constexpr int kTile = 64;                 // queries and keys per tile
constexpr int kBlockThreads = 256;        // 16 x 16
constexpr int kChunk = 32;                // shared length staged per step of scores()
constexpr int kStageStride = kChunk + 4;  // float4-aligned rows; conflict-free float4 reads
constexpr int kProbStride = kTile + 4;    // rows of the P tile: the two half-warps hit other banks
constexpr int kAccRows = 32;              // rows of G staged per step of accumulate()
constexpr int kMaxWidth = 64;             // output columns per block (JV = 4)
constexpr int kMaxGridYZ = 65535;

struct alignas(16) Shared {
  float a[kTile * kStageStride];
  float b[kTile * kStageStride];
  float p[kTile * kProbStride];
  float c[kAccRows * kMaxWidth];
};

struct Dims {
  int Nq, Nk, D, Dv;
};

__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// dst[r * kStageStride + l] = src[r * ld + l0 + l] for r < 64, l < kChunk; zero past `rows` and `width`.
__device__ __forceinline__ void stage_rows(float* dst, const float* __restrict__ src, int rows, int ld,
                                           int l0, int width) {
  for (int e = threadIdx.x; e < kTile * kChunk; e += kBlockThreads) {
    const int r = e / kChunk, l = e % kChunk;
    dst[r * kStageStride + l] = r < rows && l < width ? src[static_cast<std::size_t>(r) * ld + l0 + l] : 0.0f;
  }
}

// acc[i][j] = sum_l A[ty*4 + i][l] * B[tx + 16 j][l], l < L, for row-major blocks A (a_rows valid rows)
// and B (b_rows valid rows), both with row stride L; missing rows read as zero. load_a = false reuses the
// A block already in shared memory (only valid when L <= kChunk and the same A was staged last time).
// Starts with a barrier, so the caller may then overwrite the P tile that earlier accumulate() calls read.
__device__ __forceinline__ void scores(float (&acc)[4][4], const float* __restrict__ A, int a_rows,
                                       const float* __restrict__ B, int b_rows, int L, Shared& sm,
                                       bool load_a) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  if (L <= 0) __syncthreads();
  for (int l0 = 0; l0 < L; l0 += kChunk) {
    const int width = min(kChunk, L - l0);
    __syncthreads();
    if (load_a) stage_rows(sm.a, A, a_rows, L, l0, width);
    stage_rows(sm.b, B, b_rows, L, l0, width);
    __syncthreads();
    for (int l = 0; l < width; l += 4) {  // columns past width are staged as zeros
      float4 av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        av[i] = *reinterpret_cast<const float4*>(&sm.a[(ty * 4 + i) * kStageStride + l]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        bv[j] = *reinterpret_cast<const float4*>(&sm.b[(tx + 16 * j) * kStageStride + l]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float s = acc[i][j];
          s = fmaf(av[i].x, bv[j].x, s);
          s = fmaf(av[i].y, bv[j].y, s);
          s = fmaf(av[i].z, bv[j].z, s);
          s = fmaf(av[i].w, bv[j].w, s);
          acc[i][j] = s;
        }
    }
  }
}

// Stores a thread's 4 x 4 values as its part of the shared P tile.
__device__ __forceinline__ void store_tile(const float (&t)[4][4], Shared& sm) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) sm.p[(ty * 4 + i) * kProbStride + tx + 16 * j] = t[i][j];
}

__device__ __forceinline__ float component(const float4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// out[i][j] += sum_c P[ty*4 + i][c] * G[c][e0 + tx + 16 j] over the g_rows (>= 1) rows of the row-major
// block G (row stride ld); columns at or past `width` read as zero. P is the tile in sm.p, which every
// column c >= g_rows of must hold finite values. Starts with a barrier, so the caller's P is complete.
template <int JV>
__device__ __forceinline__ void accumulate(float (&out)[4][JV], const float* __restrict__ G, int g_rows,
                                           int ld, int e0, int width, Shared& sm) {
  constexpr int kWidth = 16 * JV;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int c0 = 0; c0 < g_rows; c0 += kAccRows) {
    __syncthreads();
    for (int e = threadIdx.x; e < kAccRows * kWidth; e += kBlockThreads) {
      const int r = e / kWidth, col = e % kWidth;
      sm.c[e] =
          c0 + r < g_rows && e0 + col < width ? G[static_cast<std::size_t>(c0 + r) * ld + e0 + col] : 0.0f;
    }
    __syncthreads();
    const int rows = min(kAccRows, g_rows - c0);
    for (int c = 0; c < rows; c += 4) {  // rows past g_rows are staged as zeros
      float4 pv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        pv[i] = *reinterpret_cast<const float4*>(&sm.p[(ty * 4 + i) * kProbStride + c0 + c]);
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < JV; ++j) {
          const float g = sm.c[(c + k) * kWidth + tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; ++i) out[i][j] = fmaf(component(pv[i], k), g, out[i][j]);
        }
    }
  }
}

// grid (query tiles, Dv chunks, batch).
template <int JV>
__global__ void __launch_bounds__(kBlockThreads, 2)
    forward_kernel(Dims d, const float* __restrict__ q, const float* __restrict__ k,
                   const float* __restrict__ v, float scale, float* __restrict__ out,
                   float* __restrict__ lse) {
  __shared__ Shared sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const std::size_t b = blockIdx.z;
  const int q0 = blockIdx.x * kTile, e0 = blockIdx.y * 16 * JV;
  const int q_rows = min(kTile, d.Nq - q0);
  const float* qb = q + (b * d.Nq + q0) * d.D;
  const float* kb = k + b * d.Nk * d.D;
  const float* vb = v + b * d.Nk * d.Dv;
  // With D <= kChunk the query block is staged once and stays in sm.a for every key tile.
  const bool q_resident = d.D <= kChunk;
  float o[4][JV], m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < JV; ++j) o[i][j] = 0.0f;
  }
  for (int k0 = 0; k0 < d.Nk; k0 += kTile) {
    const int k_rows = min(kTile, d.Nk - k0);
    float s[4][4];
    scores(s, qb, q_rows, kb + static_cast<std::size_t>(k0) * d.D, k_rows, d.D, sm, !q_resident || k0 == 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float row_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = tx + 16 * j < k_rows ? s[i][j] * scale : -INFINITY;
        row_max = fmaxf(row_max, s[i][j]);
      }
      // Finite: every key tile holds at least one key. corr is 0 on the first tile (m = -inf).
      const float m_new = fmaxf(m[i], half_warp_max(row_max));
      const float corr = expf(m[i] - m_new);
      float row_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = expf(s[i][j] - m_new);
        row_sum += s[i][j];
      }
      l[i] = l[i] * corr + half_warp_sum(row_sum);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < JV; ++j) o[i][j] *= corr;
    }
    store_tile(s, sm);
    accumulate<JV>(o, vb + static_cast<std::size_t>(k0) * d.Dv, k_rows, d.Dv, e0, d.Dv, sm);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= q_rows) continue;
    float* orow = out + (b * d.Nq + q0 + r) * d.Dv;
#pragma unroll
    for (int j = 0; j < JV; ++j) {
      const int e = e0 + tx + 16 * j;
      if (e < d.Dv) orow[e] = o[i][j] / l[i];
    }
    if (blockIdx.y == 0 && tx == 0) lse[b * d.Nq + q0 + r] = m[i] + logf(l[i]);
  }
}

// delta[r] = sum_e a[r, e] * b[r, e]: one warp per row.
__global__ void row_dot_kernel(const float* __restrict__ a, const float* __restrict__ b,
                               float* __restrict__ delta, std::int64_t rows, int width) {
  const int lane = threadIdx.x % 32;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  for (std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const float* ar = a + r * width;
    const float* br = b + r * width;
    float acc = 0.0f;
    for (int e = lane; e < width; e += 32) acc = fmaf(ar[e], br[e], acc);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) delta[r] = acc;
  }
}

// dK and dV of one key tile: grid (key tiles, output chunks, batch). Tile rows are keys and columns
// queries, so P^T and dS^T come out of scores() directly. dk or dv may be null (not wanted).
template <int JV>
__global__ void __launch_bounds__(kBlockThreads, 2)
    key_grads_kernel(Dims d, const float* __restrict__ grad_out, const float* __restrict__ q,
                     const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
                     const float* __restrict__ delta, float scale, float* __restrict__ dk,
                     float* __restrict__ dv) {
  const int e0 = blockIdx.y * 16 * JV;
  const bool do_dv = dv != nullptr && e0 < d.Dv;
  const bool do_dk = dk != nullptr && e0 < d.D;
  if (!do_dv && !do_dk) return;  // the same for the whole block, before any barrier
  __shared__ Shared sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const std::size_t b = blockIdx.z;
  const int k0 = blockIdx.x * kTile;
  const int k_rows = min(kTile, d.Nk - k0);
  const float* kb = k + (b * d.Nk + k0) * d.D;
  const float* vb = v + (b * d.Nk + k0) * d.Dv;
  float dk_acc[4][JV], dv_acc[4][JV];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < JV; ++j) dk_acc[i][j] = dv_acc[i][j] = 0.0f;
  for (int q0 = 0; q0 < d.Nq; q0 += kTile) {
    const int q_rows = min(kTile, d.Nq - q0);
    const float* qb = q + (b * d.Nq + q0) * d.D;
    const float* dob = grad_out + (b * d.Nq + q0) * d.Dv;
    float p[4][4];
    scores(p, kb, k_rows, qb, q_rows, d.D, sm, true);
    float delta_j[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = tx + 16 * j;
      const bool valid = c < q_rows;
      const float lse_c = valid ? lse[b * d.Nq + q0 + c] : 0.0f;
      delta_j[j] = valid && do_dk ? delta[b * d.Nq + q0 + c] : 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i][j] = valid ? expf(p[i][j] * scale - lse_c) : 0.0f;
    }
    if (do_dv) {
      store_tile(p, sm);
      accumulate<JV>(dv_acc, dob, q_rows, d.Dv, e0, d.Dv, sm);
    }
    if (do_dk) {
      float dp[4][4];
      scores(dp, vb, k_rows, dob, q_rows, d.Dv, sm, true);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) dp[i][j] = p[i][j] * (dp[i][j] - delta_j[j]);
      store_tile(dp, sm);
      accumulate<JV>(dk_acc, qb, q_rows, d.D, e0, d.D, sm);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= k_rows) continue;
#pragma unroll
    for (int j = 0; j < JV; ++j) {
      const int e = e0 + tx + 16 * j;
      if (do_dk && e < d.D) dk[(b * d.Nk + k0 + r) * d.D + e] = scale * dk_acc[i][j];
      if (do_dv && e < d.Dv) dv[(b * d.Nk + k0 + r) * d.Dv + e] = dv_acc[i][j];
    }
  }
}

// dQ of one query tile: grid (query tiles, D chunks, batch).
template <int JV>
__global__ void __launch_bounds__(kBlockThreads, 2)
    query_grads_kernel(Dims d, const float* __restrict__ grad_out, const float* __restrict__ q,
                       const float* __restrict__ k, const float* __restrict__ v,
                       const float* __restrict__ lse, const float* __restrict__ delta, float scale,
                       float* __restrict__ dq) {
  __shared__ Shared sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const std::size_t b = blockIdx.z;
  const int q0 = blockIdx.x * kTile, e0 = blockIdx.y * 16 * JV;
  const int q_rows = min(kTile, d.Nq - q0);
  const float* qb = q + (b * d.Nq + q0) * d.D;
  const float* dob = grad_out + (b * d.Nq + q0) * d.Dv;
  float lse_i[4], delta_i[4], acc[4][JV];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    lse_i[i] = r < q_rows ? lse[b * d.Nq + q0 + r] : 0.0f;
    delta_i[i] = r < q_rows ? delta[b * d.Nq + q0 + r] : 0.0f;
#pragma unroll
    for (int j = 0; j < JV; ++j) acc[i][j] = 0.0f;
  }
  for (int k0 = 0; k0 < d.Nk; k0 += kTile) {
    const int k_rows = min(kTile, d.Nk - k0);
    const float* kb = k + (b * d.Nk + k0) * d.D;
    const float* vb = v + (b * d.Nk + k0) * d.Dv;
    float p[4][4], dp[4][4];
    scores(p, qb, q_rows, kb, k_rows, d.D, sm, true);
    scores(dp, dob, q_rows, vb, k_rows, d.Dv, sm, true);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float pij = tx + 16 * j < k_rows ? expf(p[i][j] * scale - lse_i[i]) : 0.0f;
        dp[i][j] = pij * (dp[i][j] - delta_i[i]);
      }
    store_tile(dp, sm);
    accumulate<JV>(acc, kb, k_rows, d.D, e0, d.D, sm);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= q_rows) continue;
#pragma unroll
    for (int j = 0; j < JV; ++j) {
      const int e = e0 + tx + 16 * j;
      if (e < d.D) dq[(b * d.Nq + q0 + r) * d.D + e] = scale * acc[i][j];
    }
  }
}

// Accumulator columns per thread for an output of `width` columns: blocks cover 16, 32 or 64 of them.
int columns_per_thread(std::int64_t width) {
  return width <= 16 ? 1 : width <= 32 ? 2 : 4;
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

Dims checked_dims(const AttentionDims& d) {
  constexpr std::int64_t kMax = 1LL << 30;
  if (d.B < 0 || d.Nq < 0 || d.Nk < 1 || d.D < 0 || d.Dv < 0)
    raise_error("attention (CUDA): negative sizes or an empty key set");
  if (d.Nq > kMax || d.Nk > kMax || d.D > kMax || d.Dv > kMax)
    raise_error("attention (CUDA): a sequence length or feature size exceeds 2^30");
  return {static_cast<int>(d.Nq), static_cast<int>(d.Nk), static_cast<int>(d.D), static_cast<int>(d.Dv)};
}

// Calls launch(first batch, batch count) over slices of at most kMaxGridYZ samples (gridDim.z's limit).
template <typename F>
void for_batch_slices(std::int64_t B, F launch) {
  for (std::int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ)
    launch(b0, static_cast<unsigned>(std::min<std::int64_t>(kMaxGridYZ, B - b0)));
}

}  // namespace

void attention_forward(const AttentionDims& d, const float* q, const float* k, const float* v, float scale,
                       float* out, float* lse) {
  const Dims dims = checked_dims(d);
  if (d.B == 0 || d.Nq == 0) return;
  const int jv = columns_per_thread(d.Dv);
  const auto chunks = std::max<std::int64_t>(1, ceil_div(d.Dv, 16 * jv));
  const auto tiles = ceil_div(d.Nq, kTile);
  if (chunks > kMaxGridYZ) raise_error("attention (CUDA): value width too large");
  for_batch_slices(d.B, [&](std::int64_t b0, unsigned nb) {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks), nb);
    const float* qs = q + b0 * d.Nq * d.D;
    const float* ks = k + b0 * d.Nk * d.D;
    const float* vs = v + b0 * d.Nk * d.Dv;
    float* os = out + b0 * d.Nq * d.Dv;
    float* ls = lse + b0 * d.Nq;
    switch (jv) {
      case 1:
        forward_kernel<1><<<grid, kBlockThreads, 0, stream()>>>(dims, qs, ks, vs, scale, os, ls);
        break;
      case 2:
        forward_kernel<2><<<grid, kBlockThreads, 0, stream()>>>(dims, qs, ks, vs, scale, os, ls);
        break;
      default:
        forward_kernel<4><<<grid, kBlockThreads, 0, stream()>>>(dims, qs, ks, vs, scale, os, ls);
        break;
    }
    ZSQ_CUDA_LAUNCH_CHECK();
  });
}

void attention_backward(const AttentionDims& d, const float* grad_out, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, float scale, float* delta,
                        float* dq, float* dk, float* dv) {
  const Dims dims = checked_dims(d);
  if (d.B == 0) return;
  // Empty gradients need no work.
  if (d.Nq == 0 || d.D == 0) dq = nullptr;
  if (d.D == 0) dk = nullptr;
  if (d.Dv == 0) dv = nullptr;
  if (d.Nq == 0) {  // no query: the key gradients are sums over nothing
    if (dk != nullptr) fill_f32(dk, d.B * d.Nk * d.D, 0.0f);
    if (dv != nullptr) fill_f32(dv, d.B * d.Nk * d.Dv, 0.0f);
    return;
  }
  if (dq == nullptr && dk == nullptr && dv == nullptr) return;
  if (dq != nullptr || dk != nullptr) {
    const std::int64_t rows = d.B * d.Nq;  // one warp each
    row_dot_kernel<<<grid_for(rows * 32), kBlockThreads, 0, stream()>>>(grad_out, out, delta, rows,
                                                                        static_cast<int>(d.Dv));
    ZSQ_CUDA_LAUNCH_CHECK();
  }
  if (dk != nullptr || dv != nullptr) {
    const int jv = columns_per_thread(std::max(dk != nullptr ? d.D : 0, dv != nullptr ? d.Dv : 0));
    const auto chunks = std::max<std::int64_t>(
        1, std::max(dk != nullptr ? ceil_div(d.D, 16 * jv) : 0, dv != nullptr ? ceil_div(d.Dv, 16 * jv) : 0));
    if (chunks > kMaxGridYZ) raise_error("attention (CUDA): feature width too large");
    const auto tiles = ceil_div(d.Nk, kTile);
    for_batch_slices(d.B, [&](std::int64_t b0, unsigned nb) {
      const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks), nb);
      const float* go = grad_out + b0 * d.Nq * d.Dv;
      const float* qs = q + b0 * d.Nq * d.D;
      const float* ks = k + b0 * d.Nk * d.D;
      const float* vs = v + b0 * d.Nk * d.Dv;
      const float* ls = lse + b0 * d.Nq;
      const float* ds = delta + b0 * d.Nq;
      float* dks = dk != nullptr ? dk + b0 * d.Nk * d.D : nullptr;
      float* dvs = dv != nullptr ? dv + b0 * d.Nk * d.Dv : nullptr;
      switch (jv) {
        case 1:
          key_grads_kernel<1>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dks, dvs);
          break;
        case 2:
          key_grads_kernel<2>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dks, dvs);
          break;
        default:
          key_grads_kernel<4>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dks, dvs);
          break;
      }
      ZSQ_CUDA_LAUNCH_CHECK();
    });
  }
  if (dq != nullptr) {
    const int jv = columns_per_thread(d.D);
    const auto chunks = ceil_div(d.D, 16 * jv);
    if (chunks > kMaxGridYZ) raise_error("attention (CUDA): feature width too large");
    const auto tiles = ceil_div(d.Nq, kTile);
    for_batch_slices(d.B, [&](std::int64_t b0, unsigned nb) {
      const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks), nb);
      const float* go = grad_out + b0 * d.Nq * d.Dv;
      const float* qs = q + b0 * d.Nq * d.D;
      const float* ks = k + b0 * d.Nk * d.D;
      const float* vs = v + b0 * d.Nk * d.Dv;
      const float* ls = lse + b0 * d.Nq;
      const float* ds = delta + b0 * d.Nq;
      float* dqs = dq + b0 * d.Nq * d.D;
      switch (jv) {
        case 1:
          query_grads_kernel<1>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dqs);
          break;
        case 2:
          query_grads_kernel<2>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dqs);
          break;
        default:
          query_grads_kernel<4>
              <<<grid, kBlockThreads, 0, stream()>>>(dims, go, qs, ks, vs, ls, ds, scale, dqs);
          break;
      }
      ZSQ_CUDA_LAUNCH_CHECK();
    });
  }
}

}  // namespace zsq::cuda
