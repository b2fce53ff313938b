// Naive integer GEMM loops: the oracle for the int4 kernel and the oneDNN int8 matmul. Never optimized.
#include <algorithm>

#include "engine/check.h"
#include "ops/cpu/gemm_int4.h"

namespace zsq::ops::ref {

namespace {
void check_shapes(std::int64_t m, std::int64_t k, std::int64_t lda, std::int64_t n, std::int64_t ldw,
                  std::int64_t ldc) {
  ZSQ_CHECK(m >= 0 && n >= 0 && k >= 0, "ref gemm: negative size m={} n={} k={}", m, n, k);
  ZSQ_CHECK(lda >= k && ldw >= k && ldc >= n,
            "ref gemm: strides lda={} ldw={} ldc={} too small for k={} n={}", lda, ldw, ldc, k, n);
}

std::int64_t dot(const std::uint8_t* a, const std::int8_t* w, std::int64_t k) {
  std::int64_t acc = 0;
  for (std::int64_t t = 0; t < k; ++t) acc += static_cast<std::int64_t>(a[t]) * w[t];
  return acc;
}
}  // namespace

void gemm_u8s8s32(const std::uint8_t* a, std::int64_t m, std::int64_t k, std::int64_t lda,
                  const std::int8_t* w, std::int64_t n, std::int64_t ldw, std::int32_t* c, std::int64_t ldc) {
  check_shapes(m, k, lda, n, ldw, ldc);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      c[i * ldc + j] = static_cast<std::int32_t>(dot(a + i * lda, w + j * ldw, k));
}

void gemm_u8s8f32(const std::uint8_t* a, std::int64_t m, std::int64_t k, std::int64_t lda,
                  const std::int8_t* w, std::int64_t n, std::int64_t ldw, const float* col_scale,
                  const float* col_bias, bool relu, float* out, std::int64_t ldo) {
  check_shapes(m, k, lda, n, ldw, ldo);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const auto acc = static_cast<std::int32_t>(dot(a + i * lda, w + j * ldw, k));
      float v = col_scale[j] * static_cast<float>(acc) + (col_bias != nullptr ? col_bias[j] : 0.0f);
      out[i * ldo + j] = relu ? std::max(v, 0.0f) : v;
    }
}

}  // namespace zsq::ops::ref
