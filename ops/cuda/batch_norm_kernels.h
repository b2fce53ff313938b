// zsq's own batch-normalization kernels (batch_norm_kernels.cu), the default GPU path of
// ops/batch_norm.cpp (cuDNN's legacy batch-norm API stays selectable through batch_norm_cudnn.h).
// Plain C++ header: raw device pointers only; every launch is queued on zsq's stream and none
// synchronizes with the host.
//
// An activation is a dense [outer, channels, inner] array: NCHW is [N, C, H*W]; channels-last NHWC and
// 2-D [N, C] are [N*H*W, C, 1]. Per-channel reductions are two-level (block partials in double, folded
// per channel in a fixed order, no atomics), so the same input gives the same bits.
#pragma once
#include <cstdint>

namespace zsq::cuda {

struct BatchNormLayout {
  std::int64_t outer = 0;
  std::int64_t channels = 0;
  std::int64_t inner = 1;
};

// Batch statistics of x over outer and inner: mean[c] and inv_std[c] = 1 / sqrt(var[c] + eps) with the
// biased variance. When running_mean / running_var are given they are updated in place with the CPU
// path's arithmetic: running_mean = (1 - momentum) * running_mean + momentum * mean and running_var =
// (1 - momentum) * running_var + momentum * var * n / (n - 1), in double from the float mean / var.
void batch_norm_batch_stats(const float* x, const BatchNormLayout& layout, float eps, float momentum,
                            float* mean, float* inv_std, float* running_mean, float* running_var);

// y = relu?((x - mean[c]) * inv_std[c] * gamma[c] + beta[c]), where inv_std = stat when stat_is_var is
// false (batch statistics) and 1 / sqrt(stat + eps) when it is true (running variance). gamma / beta may
// be null (1 / 0).
void batch_norm_normalize(const float* x, const BatchNormLayout& layout, const float* mean, const float* stat,
                          bool stat_is_var, float eps, const float* gamma, const float* beta, bool relu,
                          float* y);

// Gradients of batch_norm_normalize. g' = grad, masked by relu_output > 0 when relu_output (the fused
// forward's output) is given.
//   batch_stats (mean / stat = the batch mean / inv_std the forward used; they depend on x):
//     dbeta = sum g', dgamma = sum g' * xhat, dx = gamma * inv_std * (g' - dbeta / n - xhat * dgamma / n)
//   running stats (mean / stat = running mean / variance, constants):
//     dbeta = sum g', dgamma = sum g' * xhat, dx = g' * gamma * inv_std
// with xhat = (x - mean) * inv_std and n = outer * inner. dgamma / dbeta may be null only with running
// stats (then the reduction is skipped); gamma may be null (1).
void batch_norm_grad(const float* grad, const float* relu_output, const float* x,
                     const BatchNormLayout& layout, const float* mean, const float* stat, bool batch_stats,
                     float eps, const float* gamma, float* dx, float* dgamma, float* dbeta);

}  // namespace zsq::cuda
