// Batch normalization over (N, H, W) per channel for 4-D inputs [N, C, H, W] (either format; the
// output keeps the input's format), and over N for 2-D inputs [N, C].
//   training: normalize with the batch mean and biased variance; update running stats in place:
//             running_mean = (1 - momentum) * running_mean + momentum * mean
//             running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)   (unbiased)
//             (running stats may be undefined: then nothing is updated, as in track_running_stats=False)
//   eval:     normalize with running_mean / running_var.
// weight (gamma) and bias (beta) are f32 [C]; either may be undefined (meaning 1 and 0).
// Eval mode without running stats normalizes with the batch statistics (track_running_stats=False).
// Differentiable w.r.t. x, weight and bias in both modes; in eval mode the statistics are constants,
// so dx = grad * gamma / sqrt(running_var + eps).
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

struct BatchNormOptions {
  bool training = true;
  float momentum = 0.1f;
  float eps = 1e-5f;
  // Apply ReLU to the output inside the same kernel (and its mask inside the backward): saves two
  // passes over memory forward and one backward compared with a separate relu op.
  bool fuse_relu = false;
};

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& options);

namespace ref {
// Forward only, with the same running-stat update; returns the output (contiguous).
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& options);
}  // namespace ref

// The fast path (oneDNN batch_normalization_forward/backward on the tensor's own layout; 2-D inputs are
// viewed as [N, C, 1, 1]). No validation and no autograd: the front function does both.
namespace dnnl_impl {
// With use_global_stats, normalizes with `mean` / `var` (inputs). Otherwise computes the batch mean
// and biased variance into fresh f32 [C] tensors returned through `mean` / `var`. `for_backward` builds
// the training-kind primitive that the backward pass is hinted with.
// With fuse_relu and for_backward, `workspace` receives the ReLU mask the backward needs.
Tensor batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean,
                          Tensor& var, bool use_global_stats, bool for_backward, float eps,
                          bool fuse_relu = false, Tensor* workspace = nullptr);
// grad_out has x's shape and format. grad_weight / grad_bias are always computed except in eval mode
// without with_weight_grads (a per-channel scaling of grad_out then).
void batch_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& var, bool use_global_stats, bool with_weight_grads, float eps,
                         Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                         const Tensor& relu_workspace = Tensor());
}  // namespace dnnl_impl

}  // namespace zsq::ops
