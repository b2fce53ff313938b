// The int4-weight GEMM: AVX-512 VNNI (vpdpbusd) over weights that stay 4-bit in memory.
//
// Unpacking without a lookup table: a byte holds two two's-complement nibbles. `byte & 0xF0`, read as
// int8, is exactly 16 * (high nibble), and `(byte << 4) & 0xF0` is 16 * (low nibble), so each 64-byte
// Int4Block becomes the signed vpdpbusd operands of two k-groups (4 k values x 16 columns each) in three
// instructions (shift, and, and). The accumulators then hold 16 * the true sum, which an arithmetic
// shift by 4 undoes exactly. That bounds one accumulation run: |16 * a * w| <= 255 * 128 per product,
// so a run of at most kMaxRunK = 32768 k values stays inside int32; longer K is split into runs whose
// (exact, shifted) sums are added in int32.
//
// Blocking: a micro-kernel computes MR rows x NB column blocks (16 columns each) with MR * NB <= 14
// zmm accumulators (kRowsFor), broadcasting 4 bytes of an A row (the unsigned operand) per k-group. Tasks are
// tiles of rows x column blocks, split statically across OpenMP threads; inside a task the K range is cut
// into chunks so the weights of one column group stay in L2 while every row block of the tile reuses them.
// For small M (the memory-bound case) a task is one column group and all rows, so each weight byte
// comes from memory exactly once. A is never read past row end: the K tail (k % 8 values) of each row
// is copied into a zeroed buffer and multiplied by the zero-padded weights.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 intrinsics headers, see fake_quant_avx512.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "engine/check.h"
#include "ops/cpu/gemm_int4.h"

#if !defined(__AVX512F__) || !defined(__AVX512BW__)
#error "ops/cpu/gemm_int4_avx512.cpp needs AVX-512 F/BW (the build uses -march=x86-64-v4)"
#endif

// x86-64-v4 stops at AVX-512 F/CD/BW/DQ/VL: VNNI is enabled for this file's kernels only, and checked at
// run time (has_avx512_vnni) before any of them runs.
#pragma GCC push_options
#pragma GCC target("avx512vnni")

namespace zsq::ops::cpu {
namespace {

constexpr std::int64_t kMaxRunK = 32768;     // k values per int32 accumulation run (see above)
constexpr std::int64_t kChunkSteps = 256;    // k-steps per chunk when row blocks share weights (2048 k)
constexpr std::int64_t kRowTile = 84;        // rows per task when M is large (a multiple of every MR)
constexpr std::int64_t kColTileBlocks = 16;  // column blocks per task when M is large (256 columns)
constexpr int kMaxNb = 4;
constexpr int kMaxMr = 12;
// Rows per micro-kernel for NB column blocks. GCC 12 spills accumulators beyond ~16 (measured: tiles
// of 24 accumulators ran at about 80% of the speed of 4 x 3), so the tiles stay at 12-14 accumulators.
constexpr std::array<int, kMaxNb + 1> kRowsFor = {0, kMaxMr, 7, 4, 3};
// Weights run ahead of use by this many blocks (1 KiB per stream) in the memory-bound kernels.
constexpr std::int64_t kPrefetchBlocks = 16;

// Where one micro-tile's results go.
struct TileOut {
  std::int32_t* part = nullptr;  // int32 sums: C itself (s32 output) or a scratch tile (f32 output)
  std::int64_t ld_part = 0;
  float* out = nullptr;  // f32 output of the last chunk, or null for s32 output
  std::int64_t ld_out = 0;
  const float* scale = nullptr;  // already offset to the tile's first column
  const float* bias = nullptr;
  bool relu = false;
  bool first = true, last = true;  // first chunk: no earlier sums; last chunk: apply the epilogue
  std::int64_t cols = 0;           // valid columns from the tile's first column
};

inline __mmask16 col_mask(std::int64_t valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1u);
}

inline __m512i broadcast_u32(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

// acc[MR][NB] over `steps` k-steps of A (row stride lda, k-step s at a + 8 s) and of the weight panels
// w + j * panel_stride (j < NB), then, if tail is set, one more k-step read from tail (MR rows of 8
// zero-padded bytes). Writes through `o`.
// Every loop over rows and column blocks is unrolled: acc must be addressed with constant indices only,
// or GCC keeps the whole array in memory.
template <int MR, int NB>
void micro(const std::uint8_t* a, std::int64_t lda, std::int64_t steps, const std::uint8_t* tail,
           const Int4Block* w, std::int64_t panel_stride, const TileOut& o) {
  __m512i acc[MR][NB];
#pragma GCC unroll 16
  for (auto& row : acc)
#pragma GCC unroll 16
    for (auto& v : row) v = _mm512_setzero_si512();
  const __m512i high = _mm512_set1_epi8(static_cast<char>(0xF0));

  auto step = [&](const std::uint8_t* ak, std::int64_t ld, const Int4Block* wk) {
    __m512i wv[NB];
    if constexpr (MR <= 4) {  // few rows: memory-bound, keep the weight streams ahead
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wk + j * panel_stride + kPrefetchBlocks), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j)  // k + 0..3: the low nibbles, moved up
      wv[j] = _mm512_and_si512(_mm512_slli_epi16(_mm512_load_si512(wk + j * panel_stride), 4), high);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512i av = broadcast_u32(ak + r * ld);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, wv[j]);
    }
    // Reload the blocks rather than keep them: left to itself GCC reuses the first loads, which keeps NB
    // more registers live across the k-group and spills accumulators. The empty asm hides the equality.
    const Int4Block* wk2 = wk;
    asm("" : "+r"(wk2));
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j)  // k + 4..7: the high nibbles in place
      wv[j] = _mm512_and_si512(_mm512_load_si512(wk2 + j * panel_stride), high);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512i av = broadcast_u32(ak + r * ld + 4);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, wv[j]);
    }
  };
  for (std::int64_t s = 0; s < steps; ++s) step(a + s * kInt4KStep, lda, w + s);
  if (tail != nullptr) step(tail, kInt4KStep, w + steps);

  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int j = 0; j < NB; ++j) {
    const std::int64_t col = j * kInt4ColBlock;
    if (col >= o.cols) break;
    const __mmask16 m = col_mask(o.cols - col);
    __m512 scale = zero, bias = zero;
    if (o.last && o.out != nullptr) {
      scale = _mm512_maskz_loadu_ps(m, o.scale + col);
      if (o.bias != nullptr) bias = _mm512_maskz_loadu_ps(m, o.bias + col);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512i v = _mm512_srai_epi32(acc[r][j], 4);  // exact: the sum is a multiple of 16
      std::int32_t* p = o.part + r * o.ld_part + col;
      if (!o.first) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(m, p));
      if (!o.last || o.out == nullptr) {
        _mm512_mask_storeu_epi32(p, m, v);
        continue;
      }
      __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), scale, bias);
      if (o.relu) f = _mm512_max_ps(f, zero);
      _mm512_mask_storeu_ps(o.out + r * o.ld_out + col, m, f);
    }
  }
}

using MicroFn = void (*)(const std::uint8_t*, std::int64_t, std::int64_t, const std::uint8_t*,
                         const Int4Block*, std::int64_t, const TileOut&);

template <int NB, int... Rows>
constexpr std::array<MicroFn, kMaxMr + 1> row_table(std::integer_sequence<int, Rows...>) {
  // Entry r runs r rows; rows beyond kRowsFor[NB] are never dispatched (they would spill).
  return {nullptr, (Rows + 1 <= kRowsFor[NB] ? &micro<std::min(Rows + 1, kRowsFor[NB]), NB> : nullptr)...};
}

const std::array<std::array<MicroFn, kMaxMr + 1>, kMaxNb + 1> kMicro = {
    std::array<MicroFn, kMaxMr + 1>{}, row_table<1>(std::make_integer_sequence<int, kMaxMr>{}),
    row_table<2>(std::make_integer_sequence<int, kMaxMr>{}),
    row_table<3>(std::make_integer_sequence<int, kMaxMr>{}),
    row_table<4>(std::make_integer_sequence<int, kMaxMr>{})};

struct Plan {
  int nb = 1, mr = 1;
  std::int64_t row_tile = 1, col_tile = 1;  // rows, column blocks per task
  std::int64_t m_tiles = 1, n_tiles = 1;
};

Plan make_plan(std::int64_t m, std::int64_t col_blocks, int threads) {
  Plan p;
  // 4 rows x 3 column blocks by default; with at most 3 rows, 4 weight panels stream at once.
  p.nb = static_cast<int>(std::min<std::int64_t>(m <= kRowsFor[kMaxNb] ? kMaxNb : 3, col_blocks));
  p.mr = kRowsFor[static_cast<std::size_t>(p.nb)];
  if (m <= kRowTile) {
    // Small M: all rows in one task, one column group per task, so weights are read once.
    p.row_tile = m;
    p.col_tile = p.nb;
  } else {
    p.row_tile = kRowTile;
    p.col_tile = std::min(col_blocks, kColTileBlocks / p.nb * p.nb);
  }
  p.m_tiles = (m + p.row_tile - 1) / p.row_tile;
  p.n_tiles = (col_blocks + p.col_tile - 1) / p.col_tile;
  if (p.m_tiles * p.n_tiles < threads && m > p.mr) {  // too few tasks: cut rows finer
    const std::int64_t rows = (m + threads - 1) / threads;
    p.row_tile = std::max<std::int64_t>(p.mr, (rows + p.mr - 1) / p.mr * p.mr);
    p.m_tiles = (m + p.row_tile - 1) / p.row_tile;
  }
  return p;
}

// One task: rows [m0, m1) x column blocks [cb0, cb1).
void run_tile(const std::uint8_t* a, std::int64_t lda, const Int4PackedWeights& w, const Plan& plan,
              std::int64_t m0, std::int64_t m1, std::int64_t cb0, std::int64_t cb1, std::int32_t* c,
              std::int64_t ldc, const GemmEpilogue* e, float* out, std::int64_t ldo) {
  const std::int64_t steps = w.k_steps(), full_steps = w.k / kInt4KStep;
  const bool has_tail = w.k % kInt4KStep != 0;
  const std::int64_t rows = m1 - m0;
  // Row blocks share a chunk's weights through the cache; a single row block needs no chunking.
  const std::int64_t chunk = rows > plan.mr ? kChunkSteps : kMaxRunK / kInt4KStep;
  const bool chunked = chunk < steps;

  // f32 output over several chunks keeps its int32 partial sums in a per-thread scratch tile.
  const std::int64_t ld_scratch = (cb1 - cb0) * kInt4ColBlock;
  thread_local std::vector<std::int32_t> scratch;
  if (out != nullptr && chunked) scratch.resize(static_cast<std::size_t>(rows * ld_scratch));

  // The K tail of every row, zero-padded to a whole k-step.
  thread_local std::vector<std::uint8_t> tails;
  if (has_tail) {
    tails.assign(static_cast<std::size_t>(rows * kInt4KStep), 0);
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(tails.data() + r * kInt4KStep, a + (m0 + r) * lda + full_steps * kInt4KStep,
                  static_cast<std::size_t>(w.k - full_steps * kInt4KStep));
  }

  for (std::int64_t k0 = 0; k0 < steps; k0 += chunk) {
    const std::int64_t k1 = std::min(steps, k0 + chunk);
    const bool last = k1 == steps;
    const std::int64_t direct = std::min(k1, full_steps) - k0;  // k-steps read straight from A
    for (std::int64_t cb = cb0; cb < cb1; cb += plan.nb) {
      const int nb = static_cast<int>(std::min<std::int64_t>(plan.nb, cb1 - cb));
      const std::int64_t col = cb * kInt4ColBlock;
      for (std::int64_t r0 = m0; r0 < m1; r0 += plan.mr) {
        const int mr = static_cast<int>(std::min<std::int64_t>(plan.mr, m1 - r0));
        TileOut o;
        o.first = k0 == 0;
        o.last = last;
        o.cols = std::min<std::int64_t>(nb * kInt4ColBlock, w.n - col);
        if (out == nullptr) {
          o.part = c + r0 * ldc + col;
          o.ld_part = ldc;
        } else {
          if (chunked) {
            o.part = scratch.data() + (r0 - m0) * ld_scratch + (col - cb0 * kInt4ColBlock);
            o.ld_part = ld_scratch;
          }
          o.out = out + r0 * ldo + col;
          o.ld_out = ldo;
          o.scale = e->col_scale + col;
          o.bias = e->col_bias != nullptr ? e->col_bias + col : nullptr;
          o.relu = e->relu;
        }
        const std::uint8_t* tail = last && has_tail ? tails.data() + (r0 - m0) * kInt4KStep : nullptr;
        kMicro[static_cast<std::size_t>(nb)][static_cast<std::size_t>(mr)](
            a + r0 * lda + k0 * kInt4KStep, lda, direct, tail, w.panel(cb) + k0, steps, o);
      }
    }
  }
}

void run(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int4PackedWeights& w, std::int32_t* c,
         std::int64_t ldc, const GemmEpilogue* e, float* out, std::int64_t ldo) {
  ZSQ_CHECK(has_avx512_vnni(), "int4 gemm: this CPU has no AVX-512 VNNI (vpdpbusd)");
  ZSQ_CHECK(w.n >= 1 && w.k >= 1 && w.storage.defined(), "int4 gemm: weights are not packed (n={}, k={})",
            w.n, w.k);
  ZSQ_CHECK(m >= 0, "int4 gemm: negative row count {}", m);
  ZSQ_CHECK(lda >= w.k, "int4 gemm: lda={} is smaller than k={}", lda, w.k);
  if (m == 0) return;
  // Called from inside a parallel region (e.g. a blocked convolution), run on the calling thread.
  const bool nested = omp_in_parallel() != 0;
  const Plan plan = make_plan(m, w.col_blocks(), nested ? 1 : omp_get_max_threads());
  const std::int64_t tasks = plan.m_tiles * plan.n_tiles;
#pragma omp parallel for collapse(2) schedule(static) if (tasks > 1 && !nested)
  for (std::int64_t mt = 0; mt < plan.m_tiles; ++mt)
    for (std::int64_t nt = 0; nt < plan.n_tiles; ++nt) {
      const std::int64_t m0 = mt * plan.row_tile, cb0 = nt * plan.col_tile;
      run_tile(a, lda, w, plan, m0, std::min(m, m0 + plan.row_tile), cb0,
               std::min(w.col_blocks(), cb0 + plan.col_tile), c, ldc, e, out, ldo);
    }
}

}  // namespace

bool has_avx512_vnni() {
  return __builtin_cpu_supports("avx512vnni");
}

void gemm_u8s4s32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int4PackedWeights& w,
                  std::int32_t* c, std::int64_t ldc) {
  ZSQ_CHECK(ldc >= w.n, "gemm_u8s4s32: ldc={} is smaller than n={}", ldc, w.n);
  run(a, m, lda, w, c, ldc, nullptr, nullptr, 0);
}

void gemm_u8s4f32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int4PackedWeights& w,
                  const GemmEpilogue& epilogue, float* out, std::int64_t ldo) {
  ZSQ_CHECK(epilogue.col_scale != nullptr, "gemm_u8s4f32: col_scale is required");
  ZSQ_CHECK(ldo >= w.n, "gemm_u8s4f32: ldo={} is smaller than n={}", ldo, w.n);
  run(a, m, lda, w, nullptr, 0, &epilogue, out, ldo);
}

}  // namespace zsq::ops::cpu

#pragma GCC pop_options
