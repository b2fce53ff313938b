// Blocked im2col + int4 GEMM convolution (see conv2d_int4.h). One OpenMP region over row blocks; each
// thread fills its own im2col buffer and calls the GEMM, which runs on the calling thread inside a
// parallel region. Everything that can fail is checked before the region (exceptions must not cross it).
#include "ops/cpu/conv2d_int4.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "engine/check.h"

namespace zsq::ops::cpu {

namespace {
// im2col bytes per block: a quarter of a 1 MiB L2, leaving room for the output block and the weights.
constexpr std::int64_t kBlockBytes = 256 * 1024;
constexpr std::int64_t kRowMultiple = 84;  // whole row tiles of the GEMM (kRowTile there)

void run(const std::uint8_t* x, const Im2colShape& s, std::uint8_t pad_value, const Int4PackedWeights& w,
         std::int32_t* y_s32, const GemmEpilogue* e, float* y_f32) {
  check_im2col_shape(s);
  ZSQ_CHECK(has_avx512_vnni(), "int4 conv: this CPU has no AVX-512 VNNI (vpdpbusd)");
  ZSQ_CHECK(w.storage.defined() && w.k == s.cols(),
            "int4 conv: weights are [{}, {}], the convolution needs K = KH * KW * C = {}", w.n, w.k,
            s.cols());
  ZSQ_CHECK(e == nullptr || e->col_scale != nullptr, "int4 conv: col_scale is required");
  const std::int64_t rows = s.rows(), k = s.cols(), o = w.n;
  auto gemm = [&](const std::uint8_t* a, std::int64_t r0, std::int64_t count) {
    if (e == nullptr)
      gemm_u8s4s32(a, count, k, w, y_s32 + r0 * o, o);
    else
      gemm_u8s4f32(a, count, k, w, *e, y_f32 + r0 * o, o);
  };
  const Conv2dParams& p = s.p;
  if (s.kh == 1 && s.kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0) {
    gemm(x, 0, rows);  // the NHWC input is already the [rows, C] matrix
    return;
  }
  // At most kBlockBytes of im2col per block, and at least 4 blocks per thread for balance.
  const std::int64_t balanced = (rows + 4 * omp_get_max_threads() - 1) / (4 * omp_get_max_threads());
  const std::int64_t block =
      std::max<std::int64_t>(kRowMultiple, std::min(kBlockBytes / k, balanced) / kRowMultiple * kRowMultiple);
  const std::int64_t blocks = (rows + block - 1) / block;
#pragma omp parallel if (blocks > 1)
  {
    std::vector<std::uint8_t> a(static_cast<std::size_t>(std::min(block, rows) * k));
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t r0 = b * block, r1 = std::min(rows, r0 + block);
      im2col_nhwc_u8_rows(x, s, pad_value, r0, r1, a.data());
      gemm(a.data(), r0, r1 - r0);
    }
  }
}
}  // namespace

void conv2d_u8s4s32(const std::uint8_t* x, const Im2colShape& s, std::uint8_t pad_value,
                    const Int4PackedWeights& w, std::int32_t* y) {
  run(x, s, pad_value, w, y, nullptr, nullptr);
}

void conv2d_u8s4f32(const std::uint8_t* x, const Im2colShape& s, std::uint8_t pad_value,
                    const Int4PackedWeights& w, const GemmEpilogue& epilogue, float* y) {
  run(x, s, pad_value, w, nullptr, &epilogue, y);
}

}  // namespace zsq::ops::cpu
