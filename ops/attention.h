// Single-head softmax attention that never materializes the N x N score matrix (ALGORITHMS.md §1 ZAQ
// spatial relation, §8 why):
//   out[b, i, :] = sum_j softmax_j(scale * <q[b, i, :], k[b, j, :]>) * v[b, j, :]
// q f32 [B, Nq, D], k f32 [B, Nk, D], v f32 [B, Nk, Dv], all contiguous CPU tensors, Nk >= 1.
// Output f32 [B, Nq, Dv]. ZAQ's spatial relation passes q = k = v = X^T ([B, HW, C]) with scale 1; the
// autograd node returns one gradient per input and the engine sums the three when they are one tensor.
//
// Fast path (ops/cpu/attention_blockwise.cpp), flash-attention style: per (batch, block of kBlockQ
// query rows), loop over blocks of kBlockK keys, score tile by an AVX-512 register-blocked GEMM, online
// softmax (running max and sum), accumulate the output; the per-row logsumexp is saved for backward,
// which recomputes the score tiles. Extra memory is O(B * N * D) (a transposed copy of k and v) plus
// per-thread tiles, never O(N^2).
#pragma once
#include <array>
#include <cstdint>

#include "engine/tensor.h"

namespace zsq::ops {

// Differentiable front function: validation, blockwise forward, autograd node.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale = 1.0f);

// Named pieces (no autograd). attention_forward validates; logsumexp_out (optional) receives f32
// [B, Nq] with lse[b, i] = log sum_j exp(scale * <q_i, k_j>).
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor* logsumexp_out = nullptr);

struct AttentionGrads {
  Tensor dq, dk, dv;  // each undefined when not needed
};
// Gradients from grad_out [B, Nq, Dv], the forward's inputs, its output and logsumexp. needs = {q, k, v}.
AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& logsumexp, float scale,
                                  std::array<bool, 3> needs = {true, true, true});

// Naive reference (ops/cpu/ref_attention.cpp): materializes each sample's [Nq, Nk] matrix, double
// accumulation. The test oracle; no autograd.
namespace ref {
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor* logsumexp_out = nullptr);
// P = softmax(scale q k^T), dV = P^T dO, dP = dO v^T, dS = P * (dP - rowsum(dP * P)), dq = scale dS k,
// dk = scale dS^T q; all three always computed.
AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  float scale);
}  // namespace ref

// Raw blockwise kernels over contiguous row-major buffers (shapes as above). OpenMP-parallel over
// (batch, query block); serial for tiny problems.
namespace blockwise {
constexpr std::int64_t kBlockQ = 64;   // query rows per tile
constexpr std::int64_t kBlockK = 128;  // keys per tile (a multiple of 16)
struct Dims {
  std::int64_t B, Nq, Nk, D, Dv;
};
// out [B, Nq, Dv], lse [B, Nq].
void forward(const Dims& d, const float* q, const float* k, const float* v, float scale, float* out,
             float* lse);
// dq [B, Nq, D], dk [B, Nk, D], dv [B, Nk, Dv]; a null output is not computed. All outputs are
// overwritten.
void backward(const Dims& d, const float* grad_out, const float* q, const float* k, const float* v,
              const float* out, const float* lse, float scale, float* dq, float* dk, float* dv);
}  // namespace blockwise

}  // namespace zsq::ops
