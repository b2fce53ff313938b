// Hand-written AVX-512 kernels for fake quantization (see ops/fake_quant.h for the grid and why these
// agree bit for bit with ops/cpu/ref_fake_quant.cpp).
//
// Every kernel sees memory as `channels` contiguous blocks of `inner` floats (a per-tensor call is one
// block; a per-channel call splits dim 0, which is outermost in both 4-D memory formats). Large inputs
// are split across OpenMP threads into one flat range each, with boundaries on 64-byte lines; a range
// is then walked channel segment by channel segment, 16 floats at a time, with a masked tail.
// GCC 12 reports -Wmaybe-uninitialized inside the intrinsics headers (their _mm512_undefined_ps()
// self-initialization; GCC bug 105593, fixed in 13). The state is location-based, so this must come first.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/fake_quant.h"

#ifndef __AVX512F__
#error "ops/cpu/fake_quant_avx512.cpp needs AVX-512F (the build uses -march=x86-64-v4)"
#endif

namespace zsq::ops::avx512 {
namespace {

constexpr std::int64_t kLanes = 16;

__mmask16 tail_mask(std::int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}  // 0 < n < 16

// f(begin, end, id) on disjoint ranges covering [0, n): one per thread (id = its thread number, below
// omp_get_max_threads()), or a single serial call with id 0 when n is small.
template <typename F>
void for_chunks(std::int64_t n, F f) {
  if (n <= cpu::kParallelThreshold) {
    f(std::int64_t{0}, n, std::int64_t{0});
    return;
  }
#pragma omp parallel
  {
    const std::int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const std::int64_t lines = (n + kLanes - 1) / kLanes;
    const std::int64_t begin = lines * id / threads * kLanes;
    const std::int64_t end = std::min(n, lines * (id + 1) / threads * kLanes);
    if (begin < end) f(begin, end, id);
  }
}

// seg(c, from, to) for each piece of [begin, end) inside one channel block.
template <typename F>
void for_segments(std::int64_t begin, std::int64_t end, std::int64_t inner, F seg) {
  std::int64_t c = begin / inner;
  for (std::int64_t pos = begin; pos < end; ++c) {
    const std::int64_t stop = std::min(end, (c + 1) * inner);
    seg(c, pos, stop);
    pos = stop;
  }
}

// clamp(round_half_even(v / d), lo, hi) * d. max/min operand order matches the reference's
// `q < lo ? lo : q` and `q > hi ? hi : q`, so a NaN stays NaN in both.
inline __m512 quant16(__m512 v, __m512 d, __m512 lo, __m512 hi) {
  __m512 q = _mm512_roundscale_ps(_mm512_div_ps(v, d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm512_min_ps(hi, _mm512_max_ps(lo, q));
  return _mm512_mul_ps(q, d);
}

void quant_segment(const float* x, float* out, std::int64_t n, float delta, float qmin, float qmax) {
  const __m512 d = _mm512_set1_ps(delta), lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
  std::int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + kLanes);
    _mm512_storeu_ps(out + i, quant16(a, d, lo, hi));
    _mm512_storeu_ps(out + i + kLanes, quant16(b, d, lo, hi));
  }
  for (; i + kLanes <= n; i += kLanes) _mm512_storeu_ps(out + i, quant16(_mm512_loadu_ps(x + i), d, lo, hi));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, quant16(_mm512_maskz_loadu_ps(m, x + i), d, lo, hi));
  }
}

void ste_segment(const float* g, const float* x, float* out, std::int64_t n, float lo_edge, float hi_edge) {
  const __m512 lo = _mm512_set1_ps(lo_edge), hi = _mm512_set1_ps(hi_edge);
  auto one = [&](__m512 v, __m512 gv) {
    const __mmask16 in = _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, hi, _CMP_LE_OQ);
    return _mm512_maskz_mov_ps(in, gv);
  };
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    _mm512_storeu_ps(out + i, one(_mm512_loadu_ps(x + i), _mm512_loadu_ps(g + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, one(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, g + i)));
  }
}

// Min and max of n > 0 floats.
void min_max_segment(const float* w, std::int64_t n, float& mn, float& mx) {
  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 lo2 = lo, hi2 = hi;
  std::int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m512 a = _mm512_loadu_ps(w + i), b = _mm512_loadu_ps(w + i + kLanes);
    lo = _mm512_min_ps(lo, a);
    hi = _mm512_max_ps(hi, a);
    lo2 = _mm512_min_ps(lo2, b);
    hi2 = _mm512_max_ps(hi2, b);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 a = _mm512_loadu_ps(w + i);
    lo = _mm512_min_ps(lo, a);
    hi = _mm512_max_ps(hi, a);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 a = _mm512_maskz_loadu_ps(m, w + i);
    lo = _mm512_mask_min_ps(lo, m, lo, a);
    hi = _mm512_mask_max_ps(hi, m, hi, a);
  }
  mn = _mm512_reduce_min_ps(_mm512_min_ps(lo, lo2));
  mx = _mm512_reduce_max_ps(_mm512_max_ps(hi, hi2));
}

}  // namespace

void fake_quant(const float* x, float* out, std::int64_t channels, std::int64_t inner, const float* delta,
                const float* qmin, const float* qmax) {
  if (channels <= 0 || inner <= 0) return;
  for_chunks(channels * inner, [&](std::int64_t begin, std::int64_t end, std::int64_t) {
    for_segments(begin, end, inner, [&](std::int64_t c, std::int64_t from, std::int64_t to) {
      quant_segment(x + from, out + from, to - from, delta[c], qmin[c], qmax[c]);
    });
  });
}

void clipped_ste_backward(const float* g, const float* x, float* out, std::int64_t channels,
                          std::int64_t inner, const float* lo_edge, const float* hi_edge) {
  if (channels <= 0 || inner <= 0) return;
  for_chunks(channels * inner, [&](std::int64_t begin, std::int64_t end, std::int64_t) {
    for_segments(begin, end, inner, [&](std::int64_t c, std::int64_t from, std::int64_t to) {
      ste_segment(g + from, x + from, out + from, to - from, lo_edge[c], hi_edge[c]);
    });
  });
}

void channel_min_max(const float* w, std::int64_t channels, std::int64_t inner, float* mn, float* mx) {
  if (channels <= 0) return;
  if (inner <= 0) {
    std::fill(mn, mn + channels, 0.0f);
    std::fill(mx, mx + channels, 0.0f);
    return;
  }
  // A channel that lies wholly inside one thread's range is written by that thread alone; the (at most
  // two) channels cut by a range boundary leave partial results that are merged afterwards, serially.
  struct Partial {
    std::int64_t c;
    float mn, mx;
  };
  const int max_threads = omp_get_max_threads();
  std::vector<Partial> partials(static_cast<std::size_t>(2 * max_threads), Partial{-1, 0.0f, 0.0f});
  for (std::int64_t c = 0; c < channels; ++c) {
    mn[c] = std::numeric_limits<float>::infinity();
    mx[c] = -std::numeric_limits<float>::infinity();
  }
  for_chunks(channels * inner, [&](std::int64_t begin, std::int64_t end, std::int64_t id) {
    const auto slot = 2 * static_cast<std::size_t>(id);
    for_segments(begin, end, inner, [&](std::int64_t c, std::int64_t from, std::int64_t to) {
      float lo, hi;
      min_max_segment(w + from, to - from, lo, hi);
      if (to - from == inner) {
        mn[c] = lo;
        mx[c] = hi;
      } else {
        partials[slot + (from == begin ? 0 : 1)] = Partial{c, lo, hi};
      }
    });
  });
  for (const auto& p : partials)
    if (p.c >= 0) {
      mn[p.c] = std::min(mn[p.c], p.mn);
      mx[p.c] = std::max(mx[p.c], p.mx);
    }
  for (std::int64_t c = 0; c < channels; ++c) {  // -0.0 -> +0.0, so lane order cannot show
    mn[c] += 0.0f;
    mx[c] += 0.0f;
  }
}

}  // namespace zsq::ops::avx512
