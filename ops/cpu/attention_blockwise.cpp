// Flash-attention-style softmax attention on the CPU (see ops/attention.h): the N x N score matrix is
// only ever seen one [kBlockQ x kBlockK] tile at a time.
//
// Forward, per (batch, query block): Qs = scale * q rows; for each key block, S = Qs K^T (register-
// blocked AVX-512 GEMM against a transposed, 16-padded copy of k so key columns are contiguous), then
// the online softmax: m' = max(m, rowmax S), P = exp(S - m'), l = l exp(m - m') + rowsum P,
// O = O exp(m - m') + P V. At the end out = O / l and lse = m + log l.
//
// Backward recomputes each tile: P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P (dP - delta) with
// delta = rowsum(dO * out), dQ += scale dS K, dK += dS^T Qs (Qs carries the scale). Every product is one
// GEMM micro-kernel C (+)= A B, where A is read through (row, column) strides, so P^T and dS^T are the
// tiles themselves read transposed. Tasks are (batch, range of query blocks); dK and dV of a batch are
// written by one task when the batch count covers the threads, otherwise each task owns a private
// [Nk, D] accumulator and they are summed afterwards. Memory beyond the inputs and outputs: those
// private accumulators and, per thread, tiles and a transposed copy of one sample's k (and v); never
// O(N^2).
// GCC 12 reports -Wmaybe-uninitialized inside the intrinsics headers (GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/attention.h"

#ifndef __AVX512F__
#error "ops/cpu/attention_blockwise.cpp needs AVX-512F (the build uses -march=x86-64-v4)"
#endif

namespace zsq::ops::blockwise {
namespace {

using i64 = std::int64_t;
constexpr i64 kLanes = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kBlockK % kLanes == 0, "key blocks must be whole vectors");

i64 round_up(i64 n, i64 m) {
  return (n + m - 1) / m * m;
}
i64 ceil_div(i64 n, i64 m) {
  return (n + m - 1) / m;
}

// Lanes [0, n) of a vector, n in [0, 16].
__mmask16 lanes(i64 n) {
  return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// exp(x) for x in [-87.3, 88.7] (clamped outside): Cody-Waite range reduction by ln 2 and the Cephes
// degree-6 polynomial, about 2 ulp. Results never drop below the smallest normal float.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.33654f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.72283f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// C[m, n] (+)= sum_k A[m * ars + k * acs] * B[k * ldb + n] for m < MR, n < 16 * NV (the last vector
// masked by `last`), k < K. Accumulators stay in registers over the whole k loop.
template <int MR, int NV, bool ACC>
void micro(const float* a, i64 ars, i64 acs, const float* b, i64 ldb, float* c, i64 ldc, i64 K,
           __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = ACC ? _mm512_maskz_loadu_ps(v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF),
                                              c + r * ldc + v * kLanes)
                      : _mm512_setzero_ps();
  for (i64 kk = 0; kk < K; ++kk) {
    const float* brow = b + kk * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] =
          v == NV - 1 ? _mm512_maskz_loadu_ps(last, brow + v * kLanes) : _mm512_loadu_ps(brow + v * kLanes);
    const float* acol = a + kk * acs;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(acol[r * ars]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + v * kLanes;
      if (v == NV - 1)
        _mm512_mask_storeu_ps(dst, last, acc[r][v]);
      else
        _mm512_storeu_ps(dst, acc[r][v]);
    }
}

// All M rows of one column panel of up to 16 * NV columns.
template <int NV, bool ACC>
void panel(i64 M, i64 K, const float* a, i64 ars, i64 acs, const float* b, i64 ldb, float* c, i64 ldc,
           __mmask16 last) {
  constexpr int MR = NV == 1 ? 8 : 6;
  i64 m = 0;
  for (; m + MR <= M; m += MR) micro<MR, NV, ACC>(a + m * ars, ars, acs, b, ldb, c + m * ldc, ldc, K, last);
  if (m + 4 <= M) {
    micro<4, NV, ACC>(a + m * ars, ars, acs, b, ldb, c + m * ldc, ldc, K, last);
    m += 4;
  }
  if (m + 2 <= M) {
    micro<2, NV, ACC>(a + m * ars, ars, acs, b, ldb, c + m * ldc, ldc, K, last);
    m += 2;
  }
  if (m < M) micro<1, NV, ACC>(a + m * ars, ars, acs, b, ldb, c + m * ldc, ldc, K, last);
}

// C [M x N] (row stride ldc) (+)= A [M x K] (element (m, k) at a[m * ars + k * acs]) * B [K x N] (row
// stride ldb). Columns past N in a partial vector are neither read nor written.
template <bool ACC>
void gemm(i64 M, i64 N, i64 K, const float* a, i64 ars, i64 acs, const float* b, i64 ldb, float* c, i64 ldc) {
  for (i64 n0 = 0; n0 < N; n0 += 4 * kLanes) {
    const i64 width = std::min(4 * kLanes, N - n0);
    const i64 nv = ceil_div(width, kLanes);
    const __mmask16 last = lanes(width - (nv - 1) * kLanes);
    switch (nv) {
      case 1:
        panel<1, ACC>(M, K, a, ars, acs, b + n0, ldb, c + n0, ldc, last);
        break;
      case 2:
        panel<2, ACC>(M, K, a, ars, acs, b + n0, ldb, c + n0, ldc, last);
        break;
      case 3:
        panel<3, ACC>(M, K, a, ars, acs, b + n0, ldb, c + n0, ldc, last);
        break;
      default:
        panel<4, ACC>(M, K, a, ars, acs, b + n0, ldb, c + n0, ldc, last);
        break;
    }
  }
}

// t [cols, ld] with t[c, r] = m[r, c] for r < rows (one sample); columns from rows to ld are left as
// they are (zero from the buffer's allocation).
void transpose_into(const float* m, i64 rows, i64 cols, i64 ld, float* t) {
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c) t[c * ld + r] = m[r * cols + c];
}

// A per-thread transposed, 16-padded copy of one sample of k or v, rebuilt only when the batch changes
// (a thread's consecutive tasks mostly share a batch).
class TransposedSample {
 public:
  TransposedSample(const float* m, i64 rows, i64 cols, i64 ld)
      : m_(m), rows_(rows), cols_(cols), ld_(ld), t_(static_cast<std::size_t>(cols * ld), 0.0f) {}
  const float* get(i64 b) {
    if (b != batch_) {
      transpose_into(m_ + b * rows_ * cols_, rows_, cols_, ld_, t_.data());
      batch_ = b;
    }
    return t_.data();
  }

 private:
  const float* m_;
  i64 rows_, cols_, ld_;
  std::vector<float> t_;
  i64 batch_ = -1;
};

// Mask of the valid lanes of the vector starting at column c of a tile with bk valid columns.
__mmask16 tile_mask(i64 c, i64 bk) {
  return lanes(bk - c);
}

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr i64 kParallelWork = 1 << 16;

}  // namespace

void forward(const Dims& d, const float* q, const float* k, const float* v, float scale, float* out,
             float* lse) {
  const i64 B = d.B, Nq = d.Nq, Nk = d.Nk, D = d.D, Dv = d.Dv;
  if (B == 0 || Nq == 0) return;
  const i64 Nkp = round_up(Nk, kLanes);
  const i64 nqb = ceil_div(Nq, kBlockQ);
  const i64 tasks = B * nqb;
  const bool parallel = tasks > 1 && B * Nq * Nk * (D + Dv) > kParallelWork;
#pragma omp parallel if (parallel)
  {
    TransposedSample kt(k, Nk, D, Nkp);
    std::vector<float> qs(static_cast<std::size_t>(kBlockQ * D));
    std::vector<float> s(static_cast<std::size_t>(kBlockQ * kBlockK));
    std::vector<float> acc(static_cast<std::size_t>(kBlockQ * Dv));
    std::vector<float> mx(static_cast<std::size_t>(kBlockQ)), sum(static_cast<std::size_t>(kBlockQ));
#pragma omp for schedule(dynamic, 1)
    for (i64 t = 0; t < tasks; ++t) {
      const i64 b = t / nqb, i0 = (t % nqb) * kBlockQ;
      const i64 rows = std::min(kBlockQ, Nq - i0);
      const float* qb = q + (b * Nq + i0) * D;
      const float* ktb = kt.get(b);
      for (i64 e = 0; e < rows * D; ++e) qs[static_cast<std::size_t>(e)] = scale * qb[e];
      std::fill(mx.begin(), mx.end(), kNegInf);
      std::fill(sum.begin(), sum.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (i64 j0 = 0; j0 < Nk; j0 += kBlockK) {
        const i64 bk = std::min(kBlockK, Nk - j0), bkp = round_up(bk, kLanes);
        gemm<false>(rows, bkp, D, qs.data(), D, 1, ktb + j0, Nkp, s.data(), kBlockK);
        for (i64 r = 0; r < rows; ++r) {
          float* srow = s.data() + r * kBlockK;
          __m512 vmax = _mm512_set1_ps(kNegInf);
          for (i64 c = 0; c < bkp; c += kLanes)
            vmax = _mm512_mask_max_ps(vmax, tile_mask(c, bk), vmax, _mm512_loadu_ps(srow + c));
          const float m_old = mx[static_cast<std::size_t>(r)];
          const float m_new = std::max(m_old, _mm512_reduce_max_ps(vmax));
          const float corr = std::exp(m_old - m_new);  // 0 on the first block (m_old = -inf)
          const __m512 vm = _mm512_set1_ps(m_new);
          __m512 vsum = _mm512_setzero_ps();
          for (i64 c = 0; c < bkp; c += kLanes) {
            const __m512 p =
                _mm512_maskz_mov_ps(tile_mask(c, bk), exp512(_mm512_sub_ps(_mm512_loadu_ps(srow + c), vm)));
            _mm512_storeu_ps(srow + c, p);
            vsum = _mm512_add_ps(vsum, p);
          }
          sum[static_cast<std::size_t>(r)] =
              sum[static_cast<std::size_t>(r)] * corr + _mm512_reduce_add_ps(vsum);
          mx[static_cast<std::size_t>(r)] = m_new;
          if (corr != 1.0f) {
            float* arow = acc.data() + r * Dv;
            for (i64 e = 0; e < Dv; ++e) arow[e] *= corr;
          }
        }
        gemm<true>(rows, Dv, bk, s.data(), kBlockK, 1, v + (b * Nk + j0) * Dv, Dv, acc.data(), Dv);
      }
      for (i64 r = 0; r < rows; ++r) {
        const float l = sum[static_cast<std::size_t>(r)];
        const float inv = 1.0f / l;
        const float* arow = acc.data() + r * Dv;
        float* orow = out + (b * Nq + i0 + r) * Dv;
        for (i64 e = 0; e < Dv; ++e) orow[e] = arow[e] * inv;
        lse[b * Nq + i0 + r] = mx[static_cast<std::size_t>(r)] + std::log(l);
      }
    }
  }
}

void backward(const Dims& d, const float* grad_out, const float* q, const float* k, const float* v,
              const float* out, const float* lse, float scale, float* dq, float* dk, float* dv) {
  const i64 B = d.B, Nq = d.Nq, Nk = d.Nk, D = d.D, Dv = d.Dv;
  if (B == 0) return;
  const bool need_ds = dq != nullptr || dk != nullptr;
  const i64 Nkp = round_up(Nk, kLanes);
  const i64 nqb = ceil_div(Nq, kBlockQ);
  const i64 threads = omp_get_max_threads();
  const bool parallel = B * nqb > 1 && B * Nq * Nk * (D + Dv) > kParallelWork && threads > 1;
  // Split a batch's query blocks over several tasks only when batches alone cannot feed the threads.
  const i64 chunks =
      parallel && B < 2 * threads ? std::max<i64>(1, std::min(nqb, ceil_div(2 * threads, B))) : 1;
  const i64 tasks = B * chunks;
  const bool private_acc = chunks > 1;
  std::vector<float> pdk(private_acc && dk != nullptr ? static_cast<std::size_t>(tasks * Nk * D) : 0, 0.0f);
  std::vector<float> pdv(private_acc && dv != nullptr ? static_cast<std::size_t>(tasks * Nk * Dv) : 0, 0.0f);

#pragma omp parallel if (parallel)
  {
    TransposedSample kt(k, Nk, D, Nkp);
    TransposedSample vt(v, Nk, need_ds ? Dv : 0, Nkp);
    std::vector<float> qs(static_cast<std::size_t>(kBlockQ * D));
    std::vector<float> s(static_cast<std::size_t>(kBlockQ * kBlockK));
    std::vector<float> dp(need_ds ? static_cast<std::size_t>(kBlockQ * kBlockK) : 0);
    std::vector<float> dqacc(dq != nullptr ? static_cast<std::size_t>(kBlockQ * D) : 0);
    std::vector<float> delta(static_cast<std::size_t>(kBlockQ));
#pragma omp for schedule(dynamic, 1)
    for (i64 t = 0; t < tasks; ++t) {
      const i64 b = t / chunks, c = t % chunks;
      float* dkb = dk == nullptr ? nullptr : private_acc ? pdk.data() + t * Nk * D : dk + b * Nk * D;
      float* dvb = dv == nullptr ? nullptr : private_acc ? pdv.data() + t * Nk * Dv : dv + b * Nk * Dv;
      if (!private_acc) {
        if (dkb != nullptr) std::fill(dkb, dkb + Nk * D, 0.0f);
        if (dvb != nullptr) std::fill(dvb, dvb + Nk * Dv, 0.0f);
      }
      const float* ktb = kt.get(b);
      const float* vtb = need_ds ? vt.get(b) : nullptr;
      for (i64 qb = c * nqb / chunks; qb < (c + 1) * nqb / chunks; ++qb) {
        const i64 i0 = qb * kBlockQ, rows = std::min(kBlockQ, Nq - i0);
        const float* qrows = q + (b * Nq + i0) * D;
        for (i64 e = 0; e < rows * D; ++e) qs[static_cast<std::size_t>(e)] = scale * qrows[e];
        const float* dob = grad_out + (b * Nq + i0) * Dv;
        const float* lseb = lse + b * Nq + i0;
        if (need_ds)
          for (i64 r = 0; r < rows; ++r) {
            const float* orow = out + (b * Nq + i0 + r) * Dv;
            float acc = 0.0f;
            for (i64 e = 0; e < Dv; ++e) acc += dob[r * Dv + e] * orow[e];
            delta[static_cast<std::size_t>(r)] = acc;
          }
        if (dq != nullptr) std::fill(dqacc.begin(), dqacc.end(), 0.0f);
        for (i64 j0 = 0; j0 < Nk; j0 += kBlockK) {
          const i64 bk = std::min(kBlockK, Nk - j0), bkp = round_up(bk, kLanes);
          gemm<false>(rows, bkp, D, qs.data(), D, 1, ktb + j0, Nkp, s.data(), kBlockK);
          for (i64 r = 0; r < rows; ++r) {
            float* srow = s.data() + r * kBlockK;
            const __m512 vl = _mm512_set1_ps(lseb[r]);
            for (i64 cc = 0; cc < bkp; cc += kLanes)
              _mm512_storeu_ps(srow + cc,
                               _mm512_maskz_mov_ps(tile_mask(cc, bk),
                                                   exp512(_mm512_sub_ps(_mm512_loadu_ps(srow + cc), vl))));
          }
          // dV[j0 + j] += sum_r P[r, j] dO[r]: A = P read transposed.
          if (dvb != nullptr) gemm<true>(bk, Dv, rows, s.data(), 1, kBlockK, dob, Dv, dvb + j0 * Dv, Dv);
          if (!need_ds) continue;
          gemm<false>(rows, bkp, Dv, dob, Dv, 1, vtb + j0, Nkp, dp.data(), kBlockK);
          for (i64 r = 0; r < rows; ++r) {
            const float* prow = s.data() + r * kBlockK;
            float* dsrow = dp.data() + r * kBlockK;
            const __m512 vd = _mm512_set1_ps(delta[static_cast<std::size_t>(r)]);
            for (i64 cc = 0; cc < bkp; cc += kLanes)
              _mm512_storeu_ps(dsrow + cc, _mm512_mul_ps(_mm512_loadu_ps(prow + cc),
                                                         _mm512_sub_ps(_mm512_loadu_ps(dsrow + cc), vd)));
          }
          if (dq != nullptr)
            gemm<true>(rows, D, bk, dp.data(), kBlockK, 1, k + (b * Nk + j0) * D, D, dqacc.data(), D);
          if (dkb != nullptr) gemm<true>(bk, D, rows, dp.data(), 1, kBlockK, qs.data(), D, dkb + j0 * D, D);
        }
        if (dq != nullptr) {
          float* dqrows = dq + (b * Nq + i0) * D;
          for (i64 e = 0; e < rows * D; ++e) dqrows[e] = scale * dqacc[static_cast<std::size_t>(e)];
        }
      }
    }
  }

  if (!private_acc) return;
  // Sum the per-task accumulators of each batch.
  auto reduce = [&](const std::vector<float>& priv, float* dst, i64 width) {
    const i64 per_batch = Nk * width;
#pragma omp parallel for schedule(static) if (parallel)
    for (i64 e = 0; e < B * per_batch; ++e) {
      const i64 b = e / per_batch, off = e % per_batch;
      float acc = 0.0f;
      for (i64 c = 0; c < chunks; ++c)
        acc += priv[static_cast<std::size_t>((b * chunks + c) * per_batch + off)];
      dst[e] = acc;
    }
  };
  if (dk != nullptr) reduce(pdk, dk, D);
  if (dv != nullptr) reduce(pdv, dv, Dv);
}

}  // namespace zsq::ops::blockwise
