// im2col for u8 NHWC activations: turns a convolution into the GEMM C[M, O] = A[M, K] * W[O, K]^T that
// the integer kernels (gemm_int4.h, matmul_int8_dnnl.h) compute.
//   rows M = N * OH * OW, one per output pixel (n, oh, ow) in row-major order, so C is the NHWC output;
//   columns K = KH * KW * C, the input values under the window in (kh, kw, c) order, so the weights
//   must be laid out [O, KH, KW, C] (OHWI). Taps outside the image read pad_value, the activation zero
//   point (0 for unsigned activations after a ReLU).
// A 1x1 convolution with stride 1 and no padding needs no im2col (A is the input itself, lda = C); with
// stride 2 this is just the strided gather of the rows.
#pragma once
#include <cstdint>

#include "ops/conv2d.h"

namespace zsq::ops::cpu {

struct Im2colShape {
  std::int64_t n = 1, h = 1, w = 1, c = 1;  // input, NHWC
  std::int64_t kh = 1, kw = 1;
  Conv2dParams p;  // stride, padding, dilation; groups must be 1

  std::int64_t oh() const { return (h + 2 * p.pad_h - p.dilation_h * (kh - 1) - 1) / p.stride_h + 1; }
  std::int64_t ow() const { return (w + 2 * p.pad_w - p.dilation_w * (kw - 1) - 1) / p.stride_w + 1; }
  std::int64_t rows() const { return n * oh() * ow(); }
  std::int64_t cols() const { return kh * kw * c; }
};

// Throws zsq::Error unless the shape is a valid ungrouped convolution with at least one output pixel.
void check_im2col_shape(const Im2colShape& s);

// dst: rows() x cols() bytes, row-major and dense. OpenMP over output rows. Checks the shape.
void im2col_nhwc_u8(const std::uint8_t* src, const Im2colShape& s, std::uint8_t pad_value, std::uint8_t* dst);
// Rows [row_begin, row_end) only, into dst (row_end - row_begin rows), on the calling thread and without
// checks: the building block of callers that im2col one cache-sized block at a time.
void im2col_nhwc_u8_rows(const std::uint8_t* src, const Im2colShape& s, std::uint8_t pad_value,
                         std::int64_t row_begin, std::int64_t row_end, std::uint8_t* dst);

}  // namespace zsq::ops::cpu
