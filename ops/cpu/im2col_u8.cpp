// im2col for u8 NHWC activations (see im2col_u8.h). For one output pixel and one kernel row, the taps
// are KW runs of C input bytes; inside the image (the common case) with dilation 1 they are one
// contiguous run of KW * C bytes. Runs are copied with masked AVX-512 loads and stores, which cost the
// same for 3 bytes or 64 and never touch bytes outside the run (no libc call per run).
#include "ops/cpu/im2col_u8.h"

#include <immintrin.h>

#include <algorithm>

#include "engine/check.h"

namespace zsq::ops::cpu {

namespace {
inline __mmask64 first_bytes(std::int64_t n) {
  return _bzhi_u64(~0ull, static_cast<unsigned>(n));
}  // n < 64

inline void copy_run(std::uint8_t* dst, const std::uint8_t* src, std::int64_t n) {
  for (; n >= 64; n -= 64, src += 64, dst += 64) _mm512_storeu_si512(dst, _mm512_loadu_si512(src));
  if (n > 0) {
    const __mmask64 m = first_bytes(n);
    _mm512_mask_storeu_epi8(dst, m, _mm512_maskz_loadu_epi8(m, src));
  }
}

inline void fill_run(std::uint8_t* dst, __m512i value, std::int64_t n) {
  for (; n >= 64; n -= 64, dst += 64) _mm512_storeu_si512(dst, value);
  if (n > 0) _mm512_mask_storeu_epi8(dst, first_bytes(n), value);
}

}  // namespace

void check_im2col_shape(const Im2colShape& s) {
  const Conv2dParams& p = s.p;
  ZSQ_CHECK(p.groups == 1, "im2col_nhwc_u8: grouped convolution (groups={}) is not supported", p.groups);
  ZSQ_CHECK((s.n >= 1 && s.h >= 1 && s.w >= 1 && s.c >= 1 && s.kh >= 1 && s.kw >= 1),
            "im2col_nhwc_u8: sizes must be positive, got n={} h={} w={} c={} kernel {}x{}", s.n, s.h, s.w,
            s.c, s.kh, s.kw);
  ZSQ_CHECK((p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 &&
             p.pad_w >= 0),
            "im2col_nhwc_u8: bad stride/dilation/padding");
  ZSQ_CHECK(s.oh() >= 1 && s.ow() >= 1, "im2col_nhwc_u8: the kernel is larger than the padded input");
}

void im2col_nhwc_u8_rows(const std::uint8_t* src, const Im2colShape& s, std::uint8_t pad_value,
                         std::int64_t row_begin, std::int64_t row_end, std::uint8_t* dst) {
  const Conv2dParams& p = s.p;
  const std::int64_t oh = s.oh(), ow = s.ow(), c = s.c;
  const std::int64_t window = s.kw * c;  // bytes of one kernel row
  const bool contiguous_window = p.dilation_w == 1;
  const __m512i pad = _mm512_set1_epi8(static_cast<char>(pad_value));
  std::uint8_t* out = dst;
  // (n, y, x) of row_begin, then stepped along: no divisions per row.
  std::int64_t n = row_begin / (oh * ow), y = row_begin / ow % oh, x = row_begin % ow;
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const std::uint8_t* image = src + n * s.h * s.w * c;
    const std::int64_t x0 = x * p.stride_w - p.pad_w;
    const bool inside_x = contiguous_window && x0 >= 0 && x0 + s.kw <= s.w;
    for (std::int64_t i = 0; i < s.kh; ++i, out += window) {
      const std::int64_t iy = y * p.stride_h - p.pad_h + i * p.dilation_h;
      if (iy < 0 || iy >= s.h) {
        fill_run(out, pad, window);
      } else if (inside_x) {
        copy_run(out, image + (iy * s.w + x0) * c, window);
      } else {
        for (std::int64_t j = 0; j < s.kw; ++j) {
          const std::int64_t ix = x0 + j * p.dilation_w;
          if (ix < 0 || ix >= s.w)
            fill_run(out + j * c, pad, c);
          else
            copy_run(out + j * c, image + (iy * s.w + ix) * c, c);
        }
      }
    }
    if (++x == ow) {
      x = 0;
      if (++y == oh) {
        y = 0;
        ++n;
      }
    }
  }
}

void im2col_nhwc_u8(const std::uint8_t* src, const Im2colShape& s, std::uint8_t pad_value,
                    std::uint8_t* dst) {
  check_im2col_shape(s);
  const std::int64_t rows = s.rows(), cols = s.cols();
  constexpr std::int64_t kRowsPerTask = 256;
  const std::int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t r0 = t * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
    im2col_nhwc_u8_rows(src, s, pad_value, r0, r1, dst + r0 * cols);
  }
}

}  // namespace zsq::ops::cpu
