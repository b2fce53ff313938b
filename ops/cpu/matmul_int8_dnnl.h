// oneDNN int8 matmul: C[M, N] = A[M, K] * W[N, K]^T with A u8 (row stride lda) and W s8, into int32 or,
// with a fused epilogue, into f32 (per-column output scales, optional f32 bias, optional ReLU).
// The weights are reordered once into the layout oneDNN prefers (format_tag::any) and kept; primitive
// descriptors and primitives are cached by shape, strides and epilogue (dnnl_context.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "ops/cpu/gemm_epilogue.h"

namespace zsq::ops::cpu {

struct Int8MatmulWeightsImpl;  // the oneDNN memories, one per weight layout a primitive asked for

// W[N, K] s8 in oneDNN's layout. Copies share the packed data.
struct Int8MatmulWeights {
  std::int64_t n = 0, k = 0;
  std::shared_ptr<Int8MatmulWeightsImpl> impl;
};

// w: row-major [N, K] with row stride ldw >= k. The packed copy is independent of w afterwards.
Int8MatmulWeights pack_int8_matmul_weights(const std::int8_t* w, std::int64_t n, std::int64_t k,
                                           std::int64_t ldw);

// C[m, n] = sum_k A[m, k] * W[n, k] (int32). a: m rows, stride lda >= k; c: stride ldc >= n.
void matmul_u8s8s32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w,
                    std::int32_t* c, std::int64_t ldc);

// out[m, n] = col_scale[n] * acc[m, n] + col_bias[n] (bias may be null), then ReLU if relu.
void matmul_u8s8f32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w,
                    const GemmEpilogue& epilogue, float* out, std::int64_t ldo);

// oneDNN's implementation name (primitive_desc::impl_info_str()) for the s32 (f32_out false) or the f32
// variant at this M, building (and caching) the primitive if needed.
std::string matmul_int8_impl_info(std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w, bool f32_out,
                                  bool with_bias = false, bool relu = false);

}  // namespace zsq::ops::cpu
