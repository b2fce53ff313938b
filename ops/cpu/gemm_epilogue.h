// The dequantizing epilogue the integer GEMMs share (own int4 kernel, oneDNN int8 matmul):
// out[m, n] = col_scale[n] * acc[m, n] + col_bias[n], then max(0, .) when relu is set. col_scale has one
// entry per output column; col_bias may be null (no bias).
#pragma once

namespace zsq::ops::cpu {

struct GemmEpilogue {
  const float* col_scale = nullptr;
  const float* col_bias = nullptr;
  bool relu = false;
};

}  // namespace zsq::ops::cpu
