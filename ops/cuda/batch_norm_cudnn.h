// CUDA batch normalization through cuDNN (batch_norm_cudnn.cpp), selectable instead of zsq's own
// kernels by the settings below: cuDNN's batch-norm calls on the tensor's own layout (channels-last or
// contiguous; [N, C] inputs as [N, C, 1, 1]), plus zsq kernels for the fused ReLU and for the eval-mode
// backward, which cuDNN lacks. No validation and no autograd: the front function in ops/batch_norm.cpp
// does both. Outputs and input gradients keep x's format.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops::cudnn_impl {

// Which kernels ops::batch_norm runs on a GPU. $ZSQ_CUDNN_BN sets the initial value: own (the default) |
// cudnn or spatial (cuDNN, SPATIAL mode) | persistent (cuDNN, persistent NHWC training).
struct CudnnBatchNormSettings {
  // cuDNN's legacy batch-norm API (the functions below) instead of zsq's own kernels
  // (batch_norm_kernels.h), which are the default: on an H100 cuDNN's NCHW training kernels ran far below
  // memory bandwidth (bn_bw_1C11_kernel_new ~19x slower than its bytes on [512, 16, 32, 32]).
  bool use_cudnn = false;
  // With use_cudnn: training on channels-last inputs with CUDNN_BATCHNORM_SPATIAL_PERSISTENT (what
  // PyTorch uses for channels_last): faster NHWC kernels, but cuDNN documents a narrower range for its
  // reductions (overflow gives Inf/NaN where SPATIAL stays finite). Falls back to SPATIAL where cuDNN
  // refuses it. Ignored by the own kernels.
  bool persistent = false;
};
CudnnBatchNormSettings cudnn_batch_norm_settings();
void set_cudnn_batch_norm_settings(const CudnnBatchNormSettings& settings);

// Normalizes with the batch mean and biased variance. When running_mean / running_var are defined they
// are updated in place with the CPU path's convention, running = (1 - momentum) * running + momentum *
// batch, the variance unbiased (n / (n - 1)); that is cuDNN's exponentialAverageFactor = momentum.
// When saved_mean / saved_inv_std are given they receive the batch mean and 1 / sqrt(var + eps) for
// the backward. weight / bias may be undefined (1 and 0). fuse_relu clamps the output at 0.
Tensor batch_norm_training(const Tensor& x, const Tensor& weight, const Tensor& bias,
                           const Tensor& running_mean, const Tensor& running_var, float momentum, float eps,
                           bool fuse_relu, Tensor* saved_mean, Tensor* saved_inv_std);

// Normalizes with the given statistics (eval mode).
Tensor batch_norm_inference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                            const Tensor& var, float eps, bool fuse_relu);

// Gradients of batch_norm_training: grad_out in x's format; relu_output is the forward's output when it
// fused a ReLU (its sign is the mask), undefined otherwise. grad_weight and grad_bias are always
// computed.
void batch_norm_backward_training(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                  const Tensor& saved_mean, const Tensor& saved_inv_std, float eps,
                                  const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                                  Tensor& grad_bias);

// Gradients of batch_norm_inference (the statistics are constants): grad_x always, grad_weight and
// grad_bias when with_weight_grads.
void batch_norm_backward_inference(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& var, float eps, bool with_weight_grads,
                                   const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                                   Tensor& grad_bias);

}  // namespace zsq::ops::cudnn_impl
