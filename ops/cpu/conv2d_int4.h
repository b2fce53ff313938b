// Integer convolution with 4-bit weights on the CPU: y = conv(x, W) for u8 NHWC activations, weights
// packed from the OHWI matrix [O, KH * KW * C] (pack_int4_weights(w, O, KH * KW * C, ldw)), output
// NHWC, i.e. the row-major [N * OH * OW, O] GEMM result: int32, or f32 through the dequantizing
// epilogue (column scale, bias, ReLU).
// im2col runs one block of output rows at a time into a per-thread buffer sized to stay in L2, and the
// int4 GEMM consumes it there, so the im2col matrix never travels to memory. A 1x1 convolution with
// stride 1 and no padding is the GEMM on the input itself.
#pragma once
#include <cstdint>

#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/im2col_u8.h"

namespace zsq::ops::cpu {

// pad_value: what taps outside the image read (the activation zero point). y: s.rows() x w.n.
void conv2d_u8s4s32(const std::uint8_t* x, const Im2colShape& s, std::uint8_t pad_value,
                    const Int4PackedWeights& w, std::int32_t* y);
void conv2d_u8s4f32(const std::uint8_t* x, const Im2colShape& s, std::uint8_t pad_value,
                    const Int4PackedWeights& w, const GemmEpilogue& epilogue, float* y);

// The name the benchmarks print for this path.
inline constexpr const char* kInt4ConvName = "zsq im2col-blocked avx512-vnni int4";

}  // namespace zsq::ops::cpu
