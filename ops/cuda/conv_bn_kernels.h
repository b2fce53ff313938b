// Small kernels around the cuDNN convolution and batch-norm calls (conv_bn_kernels.cu): the
// convolution's bias / residual / ReLU epilogue, batch norm's fused ReLU and its mask, and the
// eval-mode batch-norm backward that cuDNN does not provide (its backward assumes batch statistics).
// Raw pointers only; every launch is queued on zsq's stream.
//
// Activations are described by their channel layout: element i of a dense [N, C, S] tensor (S = H*W)
// belongs to channel (i / inner) % C, with inner = 1 when channels-last (rows of C) and inner = S
// when contiguous (planes of S).
#pragma once
#include <cstdint>

namespace zsq::cuda {

struct ChannelLayout {
  std::int64_t n = 0;  // batch
  std::int64_t channels = 0;
  std::int64_t spatial = 1;  // H * W (1 for [N, C] inputs)
  bool channels_last = false;
  std::int64_t numel() const { return n * channels * spatial; }
  std::int64_t inner() const { return channels_last ? 1 : spatial; }
};

// out = relu?(out + bias[c] + residual) over a channels-last [rows, channels] output; bias and
// residual (same layout as out) may be null.
void conv_epilogue_channels_last(float* out, const float* bias, const float* residual, std::int64_t rows,
                                 std::int64_t channels, bool relu);
// The same for an NCHW output of n elements with `plane` = H * W elements per channel.
void conv_epilogue_nchw(float* out, const float* bias, const float* residual, std::int64_t n,
                        std::int64_t plane, std::int64_t channels, bool relu);

// y = max(y, 0) in place.
void relu_inplace(float* y, std::int64_t n);

// dst = y > 0 ? grad : 0 (the ReLU backward from the ReLU's output; dst may alias grad).
void relu_mask(const float* grad, const float* y, float* dst, std::int64_t n);

// Eval-mode batch-norm input gradient: dx = g' * gamma[c] / sqrt(var[c] + eps), where g' is grad
// masked by relu_output > 0 when relu_output is given (fused ReLU). gamma may be null (1).
void batch_norm_eval_backward_data(const float* grad, const float* relu_output, const float* gamma,
                                   const float* var, float eps, float* dx, const ChannelLayout& layout);

// Eval-mode batch-norm parameter gradients: dgamma[c] = sum g' * (x - mean[c]) / sqrt(var[c] + eps) and
// dbeta[c] = sum g' over N and S, g' as above. Two-level reduction: block partials, then one pass over
// the partials per channel (no atomics).
void batch_norm_eval_backward_params(const float* grad, const float* relu_output, const float* x,
                                     const float* mean, const float* var, float eps, float* dgamma,
                                     float* dbeta, const ChannelLayout& layout);

}  // namespace zsq::cuda
