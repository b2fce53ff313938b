// oneDNN int8 matmul (u8 x s8) against the naive integer reference: exact in int32, close through the
// f32 epilogue (per-column scales, bias, ReLU); weights packed once and reused across M.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/rng.h"
#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/matmul_int8_dnnl.h"

using namespace zsq;
using namespace zsq::ops;

namespace {
template <typename T>
std::vector<T> random_ints(std::int64_t count, int lo, int hi, Rng& rng) {
  std::vector<T> v(static_cast<std::size_t>(count));
  for (auto& x : v)
    x = static_cast<T>(lo + static_cast<int>(rng.below(static_cast<std::uint64_t>(hi - lo + 1))));
  return v;
}
}  // namespace

TEST_CASE("int8 matmul equals the reference exactly, weights packed once for every M") {
  Rng rng(11);
  const int saved = omp_get_max_threads();
  for (auto [n, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {1, 1}, {3, 17}, {17, 3}, {31, 100}, {100, 33}, {257, 257}, {64, 576}}) {
    const auto w = random_ints<std::int8_t>(n * k, -128, 127, rng);
    const auto packed = cpu::pack_int8_matmul_weights(w.data(), n, k, k);
    CHECK(packed.n == n);
    CHECK(packed.k == k);
    for (std::int64_t m : {1, 2, 7, 16, 33}) {
      for (int threads : {1, 2}) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        CAPTURE(threads);
        omp_set_num_threads(threads);
        const std::int64_t lda = k + 5, ldc = n + 2;
        const auto a = random_ints<std::uint8_t>(m * lda, 0, 255, rng);
        std::vector<std::int32_t> ref(static_cast<std::size_t>(m * ldc), -3), got(ref.size(), -3);
        ref::gemm_u8s8s32(a.data(), m, k, lda, w.data(), n, k, ref.data(), ldc);
        cpu::matmul_u8s8s32(a.data(), m, lda, packed, got.data(), ldc);
        CHECK(got == ref);
      }
    }
  }
  omp_set_num_threads(saved);
  // Extremes: 255 * -128 and 255 * 127 summed over K.
  const std::int64_t k = 1000, n = 5;
  for (int wv : {-128, 127}) {
    const std::vector<std::int8_t> w(static_cast<std::size_t>(n * k), static_cast<std::int8_t>(wv));
    const std::vector<std::uint8_t> a(static_cast<std::size_t>(2 * k), 255);
    std::vector<std::int32_t> got(static_cast<std::size_t>(2 * n));
    cpu::matmul_u8s8s32(a.data(), 2, k, cpu::pack_int8_matmul_weights(w.data(), n, k, k), got.data(), n);
    for (auto v : got) CHECK(v == 255 * wv * k);
  }
}

TEST_CASE("int8 matmul f32 epilogue (scale, bias, relu) matches the reference; impl info is reported") {
  Rng rng(12);
  for (auto [m, n, k] : std::vector<std::array<std::int64_t, 3>>{{1, 1, 1}, {5, 33, 70}, {16, 100, 257}})
    for (bool with_bias : {false, true})
      for (bool relu : {false, true}) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        CAPTURE(with_bias);
        CAPTURE(relu);
        const auto w = random_ints<std::int8_t>(n * k, -128, 127, rng);
        const auto a = random_ints<std::uint8_t>(m * k, 0, 255, rng);
        std::vector<float> scale(static_cast<std::size_t>(n)), bias(scale.size());
        for (auto& s : scale) s = 1e-4f * (0.5f + rng.uniform());
        for (auto& b : bias) b = rng.normal();
        std::vector<float> ref(static_cast<std::size_t>(m * n)), got(ref.size());
        ref::gemm_u8s8f32(a.data(), m, k, k, w.data(), n, k, scale.data(), with_bias ? bias.data() : nullptr,
                          relu, ref.data(), n);
        const auto packed = cpu::pack_int8_matmul_weights(w.data(), n, k, k);
        cpu::matmul_u8s8f32(
            a.data(), m, k, packed,
            {.col_scale = scale.data(), .col_bias = with_bias ? bias.data() : nullptr, .relu = relu},
            got.data(), n);
        for (std::size_t i = 0; i < got.size(); ++i)
          REQUIRE_MESSAGE(std::abs(got[i] - ref[i]) <= 1e-5 * std::abs(ref[i]) + 1e-5,
                          "at " << i << ": got " << got[i] << " ref " << ref[i]);
        CHECK_FALSE(cpu::matmul_int8_impl_info(m, k, packed, true, with_bias, relu).empty());
      }
  const std::vector<std::int8_t> w{1, 2, 3, 4};
  const auto packed = cpu::pack_int8_matmul_weights(w.data(), 2, 2, 2);
  MESSAGE("oneDNN int8 matmul at M=16: " << cpu::matmul_int8_impl_info(16, 2, packed, false));
  std::uint8_t a[2] = {1, 1};
  float out[2];
  CHECK_THROWS_AS(cpu::matmul_u8s8f32(a, 1, 2, packed, {}, out, 2), Error);  // no scales
  CHECK_THROWS_AS(cpu::pack_int8_matmul_weights(w.data(), 2, 2, 1), Error);  // ldw < k
  CHECK_THROWS_AS(cpu::matmul_u8s8s32(a, 1, 1, packed, nullptr, 2), Error);  // lda < k
}
