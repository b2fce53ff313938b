// Integer convolution as im2col + GEMM: im2col_nhwc_u8 followed by the int4 kernel (and the oneDNN int8
// matmul), and the blocked conv2d_u8s4s32 / conv2d_u8s4f32, equal a direct convolution loop over NHWC u8
// activations and OHWI weights, padding included.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/rng.h"
#include "ops/cpu/conv2d_int4.h"
#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/im2col_u8.h"
#include "ops/cpu/matmul_int8_dnnl.h"

using namespace zsq;
using namespace zsq::ops;

namespace {
// out[n, oh, ow, o] = sum over (kh, kw, c) of x (or pad outside the image) * w[o, kh, kw, c].
std::vector<std::int32_t> direct_conv(const std::vector<std::uint8_t>& x, const std::vector<std::int8_t>& w,
                                      std::int64_t o_count, const cpu::Im2colShape& s, std::uint8_t pad) {
  const auto& p = s.p;
  std::vector<std::int32_t> out(static_cast<std::size_t>(s.rows() * o_count));
  std::size_t idx = 0;
  for (std::int64_t n = 0; n < s.n; ++n)
    for (std::int64_t y = 0; y < s.oh(); ++y)
      for (std::int64_t xo = 0; xo < s.ow(); ++xo)
        for (std::int64_t o = 0; o < o_count; ++o) {
          std::int64_t acc = 0;
          for (std::int64_t i = 0; i < s.kh; ++i)
            for (std::int64_t j = 0; j < s.kw; ++j)
              for (std::int64_t c = 0; c < s.c; ++c) {
                const std::int64_t iy = y * p.stride_h - p.pad_h + i * p.dilation_h;
                const std::int64_t ix = xo * p.stride_w - p.pad_w + j * p.dilation_w;
                const bool inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
                const std::int64_t v =
                    inside ? x[static_cast<std::size_t>(((n * s.h + iy) * s.w + ix) * s.c + c)] : pad;
                acc += v * w[static_cast<std::size_t>(((o * s.kh + i) * s.kw + j) * s.c + c)];
              }
          out[idx++] = static_cast<std::int32_t>(acc);
        }
  return out;
}
}  // namespace

TEST_CASE("im2col + int4 GEMM / int8 matmul equal a direct convolution (NHWC u8, OHWI weights)") {
  Rng rng(21);
  struct Case {
    std::int64_t n, h, w, c, o, k, stride, pad, dilation;
    std::uint8_t pad_value;
  };
  for (const Case& t : std::vector<Case>{{2, 5, 7, 3, 5, 3, 1, 1, 1, 0},
                                         {1, 8, 8, 16, 32, 3, 2, 1, 1, 0},
                                         {2, 6, 6, 1, 16, 3, 1, 1, 1, 0},
                                         {2, 8, 8, 16, 32, 1, 2, 0, 1, 0},
                                         {1, 9, 9, 4, 7, 3, 1, 2, 2, 7},
                                         {1, 4, 4, 2, 3, 3, 1, 1, 1, 255}}) {
    CAPTURE(t.h);
    CAPTURE(t.c);
    CAPTURE(t.o);
    CAPTURE(t.k);
    CAPTURE(t.stride);
    CAPTURE(static_cast<int>(t.pad_value));
    const cpu::Im2colShape s{.n = t.n,
                             .h = t.h,
                             .w = t.w,
                             .c = t.c,
                             .kh = t.k,
                             .kw = t.k,
                             .p = {t.stride, t.stride, t.pad, t.pad, t.dilation, t.dilation, 1}};
    std::vector<std::uint8_t> x(static_cast<std::size_t>(t.n * t.h * t.w * t.c));
    for (auto& v : x) v = static_cast<std::uint8_t>(rng.below(256));
    std::vector<std::int8_t> w(static_cast<std::size_t>(t.o * s.cols()));
    for (auto& v : w) v = static_cast<std::int8_t>(static_cast<int>(rng.below(16)) - 8);
    const auto ref = direct_conv(x, w, t.o, s, t.pad_value);

    std::vector<std::uint8_t> a(static_cast<std::size_t>(s.rows() * s.cols()));
    cpu::im2col_nhwc_u8(x.data(), s, t.pad_value, a.data());
    std::vector<std::int32_t> got(ref.size());
    cpu::gemm_u8s4s32(a.data(), s.rows(), s.cols(), cpu::pack_int4_weights(w.data(), t.o, s.cols(), s.cols()),
                      got.data(), t.o);
    CHECK(got == ref);
    std::vector<std::int32_t> got8(ref.size());
    cpu::matmul_u8s8s32(a.data(), s.rows(), s.cols(),
                        cpu::pack_int8_matmul_weights(w.data(), t.o, s.cols(), s.cols()), got8.data(), t.o);
    CHECK(got8 == ref);
    const auto packed = cpu::pack_int4_weights(w.data(), t.o, s.cols(), s.cols());
    std::vector<std::int32_t> blocked(ref.size());
    cpu::conv2d_u8s4s32(x.data(), s, t.pad_value, packed, blocked.data());
    CHECK(blocked == ref);
  }
  cpu::Im2colShape grouped;
  grouped.p.groups = 2;
  std::uint8_t byte = 0;
  CHECK_THROWS_AS(cpu::im2col_nhwc_u8(&byte, grouped, 0, &byte), Error);
  cpu::Im2colShape too_big;
  too_big.h = too_big.w = 2;
  too_big.kh = too_big.kw = 5;
  CHECK_THROWS_AS(cpu::im2col_nhwc_u8(&byte, too_big, 0, &byte), Error);
}

TEST_CASE("blocked int4 convolution: many blocks, 1 and 2 threads, f32 epilogue, 1x1 without im2col") {
  Rng rng(22);
  struct Case {
    std::int64_t n, hw, c, o, k, stride, pad;
  };
  const int saved = omp_get_max_threads();
  for (const Case& t : std::vector<Case>{{8, 32, 1, 16, 3, 1, 1},
                                         {4, 32, 16, 16, 3, 1, 1},
                                         {4, 16, 32, 64, 3, 2, 1},
                                         {3, 16, 32, 64, 1, 2, 0},
                                         {3, 9, 24, 40, 1, 1, 0}}) {
    CAPTURE(t.c);
    CAPTURE(t.o);
    CAPTURE(t.k);
    CAPTURE(t.stride);
    const cpu::Im2colShape s{.n = t.n,
                             .h = t.hw,
                             .w = t.hw,
                             .c = t.c,
                             .kh = t.k,
                             .kw = t.k,
                             .p = {t.stride, t.stride, t.pad, t.pad, 1, 1, 1}};
    std::vector<std::uint8_t> x(static_cast<std::size_t>(t.n * t.hw * t.hw * t.c));
    for (auto& v : x) v = static_cast<std::uint8_t>(rng.below(256));
    std::vector<std::int8_t> w(static_cast<std::size_t>(t.o * s.cols()));
    for (auto& v : w) v = static_cast<std::int8_t>(static_cast<int>(rng.below(16)) - 8);
    const auto ref = direct_conv(x, w, t.o, s, 0);
    std::vector<float> scale(static_cast<std::size_t>(t.o)), bias(scale.size());
    for (auto& v : scale) v = 1e-3f * (0.5f + rng.uniform());
    for (auto& v : bias) v = rng.normal();
    const auto packed = cpu::pack_int4_weights(w.data(), t.o, s.cols(), s.cols());
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      omp_set_num_threads(threads);
      std::vector<std::int32_t> got(ref.size(), -1);
      cpu::conv2d_u8s4s32(x.data(), s, 0, packed, got.data());
      CHECK(got == ref);
      std::vector<float> f(ref.size());
      cpu::conv2d_u8s4f32(x.data(), s, 0, packed,
                          {.col_scale = scale.data(), .col_bias = bias.data(), .relu = true}, f.data());
      std::size_t bad = 0;
      for (std::size_t i = 0; i < f.size(); ++i) {
        const std::size_t col = i % static_cast<std::size_t>(t.o);
        const float want = std::max(0.0f, scale[col] * static_cast<float>(ref[i]) + bias[col]);
        if (std::abs(f[i] - want) > 1e-5f * std::abs(want) + 1e-5f) ++bad;
      }
      CHECK(bad == 0);
    }
  }
  omp_set_num_threads(saved);
  std::vector<std::int8_t> w(16 * 9, 1);
  const auto packed = cpu::pack_int4_weights(w.data(), 16, 9, 9);
  const cpu::Im2colShape wrong_c{
      .n = 1, .h = 4, .w = 4, .c = 2, .kh = 3, .kw = 3, .p = {1, 1, 1, 1, 1, 1, 1}};
  std::vector<std::uint8_t> x(32);
  std::vector<std::int32_t> y(16 * 16);
  CHECK_THROWS_AS(cpu::conv2d_u8s4s32(x.data(), wrong_c, 0, packed, y.data()), Error);  // K = 18, not 9
}
