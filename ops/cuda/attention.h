// Launchers for the blockwise softmax attention kernels behind ops/attention.cpp on a GPU (plain C++: no
// CUDA types). Same definition, shapes and saved statistics as ops/attention.h: q [B, Nq, D],
// k [B, Nk, D], v [B, Nk, Dv], out [B, Nq, Dv], lse [B, Nq] with lse[b, i] = log sum_j exp(scale
// <q_i, k_j>); all contiguous row-major device buffers, Nk >= 1. The N x N score matrix is only ever seen
// one 64 x 64 tile at a time, in shared memory and registers.
#pragma once
#include <cstdint>

namespace zsq::cuda {

struct AttentionDims {
  std::int64_t B, Nq, Nk, D, Dv;
};

// out and lse are overwritten.
void attention_forward(const AttentionDims& d, const float* q, const float* k, const float* v, float scale,
                       float* out, float* lse);

// Gradients from grad_out [B, Nq, Dv], the forward's inputs, its out and lse. delta is scratch of B * Nq
// floats (rowsum(grad_out * out), needed when dq or dk is wanted). A null dq, dk or dv is not computed;
// the others are overwritten.
void attention_backward(const AttentionDims& d, const float* grad_out, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, float scale, float* delta,
                        float* dq, float* dk, float* dv);

}  // namespace zsq::cuda
