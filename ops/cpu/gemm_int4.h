// Integer GEMM with 4-bit weights on the CPU: C[M, N] = A[M, K] * W[N, K]^T, A unsigned 8-bit
// activations (row-major with leading dimension lda), W signed 4-bit values in [-8, 7].
//
// Two packed forms of W:
//  - the interchange form (files, checkpoints): a flat int8 array packed two values per byte, low
//    nibble first (pack_nibbles / unpack_nibbles);
//  - the kernel form (Int4PackedWeights): still two values per byte, but reordered once into the order
//    the AVX-512 VNNI kernel streams it, so a GEMM reads exactly K * N / 2 bytes of weights and never
//    expands them to int8 in memory (the point of int4 when M is small and the weights do not fit in
//    the last-level cache).
// The naive reference (ops/cpu/ref_gemm_int.cpp) is the test oracle for this kernel and for the oneDNN
// int8 matmul (ops/cpu/matmul_int8_dnnl.h).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "engine/tensor.h"
#include "ops/cpu/gemm_epilogue.h"

namespace zsq::ops::cpu {

// ---- interchange packing ----

// values (each in [-8, 7], else zsq::Error naming the first bad index) -> ceil(n / 2) bytes; element 2i
// in bits 0-3 of byte i, element 2i + 1 in bits 4-7; an odd count is padded with a zero nibble.
std::vector<std::uint8_t> pack_nibbles(std::span<const std::int8_t> values);
// The inverse: the first `count` values (sign-extended) of `packed`, which must hold ceil(count / 2)
// bytes or more.
std::vector<std::int8_t> unpack_nibbles(std::span<const std::uint8_t> packed, std::int64_t count);

// ---- kernel layout ----

// A column block is 16 output columns (one zmm of int32 accumulators); a k-step is 8 reduction indices.
inline constexpr std::int64_t kInt4ColBlock = 16;
inline constexpr std::int64_t kInt4KStep = 8;

// The 64 bytes of one column block at one k-step. Byte 4 * i + t (column i of the block, t in 0..3)
// holds W[col i, k + t] in its low nibble and W[col i, k + 4 + t] in its high nibble: masking the high
// nibbles gives the vpdpbusd operand of the first 4 k values, shifting the low ones up that of the
// next 4 (both scaled by 16, see gemm_int4_avx512.cpp).
struct Int4Block {
  std::uint8_t bytes[kInt4ColBlock * kInt4KStep / 2];
};
static_assert(sizeof(Int4Block) == 64, "one Int4Block is one cache line");

// W[N, K] in kernel order: column block after column block (a "panel"), each panel its k-steps in order.
// N is padded to a multiple of 16 and K to a multiple of 8 with zero weights. Copies share storage.
struct Int4PackedWeights {
  std::int64_t n = 0, k = 0;          // logical sizes
  std::int64_t n_pad = 0, k_pad = 0;  // multiples of kInt4ColBlock and kInt4KStep
  Tensor storage;                     // u8, 64-byte aligned, n_pad * k_pad / 2 bytes

  std::int64_t col_blocks() const { return n_pad / kInt4ColBlock; }
  std::int64_t k_steps() const { return k_pad / kInt4KStep; }
  std::int64_t bytes() const { return n_pad * k_pad / 2; }
  // The k_steps() blocks of column block cb.
  const Int4Block* panel(std::int64_t cb) const {
    return reinterpret_cast<const Int4Block*>(storage.raw_data()) + cb * k_steps();
  }
};
static_assert(sizeof(Int4Block) * 2 == kInt4ColBlock * kInt4KStep, "two 4-bit values per byte");

// Builds the kernel layout from w[N, K] (row stride ldw >= k), every value in [-8, 7].
Int4PackedWeights pack_int4_weights(const std::int8_t* w, std::int64_t n, std::int64_t k, std::int64_t ldw);
// The same from the interchange form of a row-major [N, K] array (n * k values, ceil(n * k / 2) bytes).
Int4PackedWeights pack_int4_weights_from_nibbles(std::span<const std::uint8_t> nibbles, std::int64_t n,
                                                 std::int64_t k);
// Back to a row-major int8 [N, K] array (tests, inspection).
std::vector<std::int8_t> unpack_int4_weights(const Int4PackedWeights& w);

// ---- kernels (AVX-512 VNNI, OpenMP over the current thread count; on the calling thread alone when
// called from inside a parallel region) ----

// Whether this CPU runs the kernels below (they throw zsq::Error otherwise).
bool has_avx512_vnni();

// C[m, n] = sum_k A[m, k] * W[n, k] as int32 (wraps like the hardware if a sum exceeds int32, which
// needs K > ~1M). a: m rows of w.k bytes, row stride lda >= w.k; c: row stride ldc >= w.n.
void gemm_u8s4s32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int4PackedWeights& w,
                  std::int32_t* c, std::int64_t ldc);

// The fused dequantizing epilogue (ops/cpu/gemm_epilogue.h); col_scale has w.n entries.
void gemm_u8s4f32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int4PackedWeights& w,
                  const GemmEpilogue& epilogue, float* out, std::int64_t ldo);

// The name the benchmarks print for this kernel.
inline constexpr const char* kInt4KernelName = "zsq avx512-vnni int4";

}  // namespace zsq::ops::cpu

namespace zsq::ops::ref {

// Naive loops (64-bit accumulation, truncated to int32): C[M, N] = A[M, K] * W[N, K]^T with A u8
// (row stride lda) and W s8 (row stride ldw; int4 weights are passed unpacked).
void gemm_u8s8s32(const std::uint8_t* a, std::int64_t m, std::int64_t k, std::int64_t lda,
                  const std::int8_t* w, std::int64_t n, std::int64_t ldw, std::int32_t* c, std::int64_t ldc);
// out[m, n] = col_scale[n] * float(acc[m, n]) + col_bias[n] (bias may be null), then ReLU if relu.
void gemm_u8s8f32(const std::uint8_t* a, std::int64_t m, std::int64_t k, std::int64_t lda,
                  const std::int8_t* w, std::int64_t n, std::int64_t ldw, const float* col_scale,
                  const float* col_bias, bool relu, float* out, std::int64_t ldo);

}  // namespace zsq::ops::ref
