// cuDNN batch normalization for zsq tensors on a GPU (contract in batch_norm_cudnn.h). x, y, dy and dx
// are described by their own strides, so both memory formats run without a copy. cuDNN's running-stat
// update is the CPU path's (factor = momentum, unbiased running variance), and its saved "inverse
// variance" is 1 / sqrt(var + eps), which its backward takes back. The fused ReLU is a clamp after the
// forward and a mask (output > 0) before the backward; the eval-mode backward is conv_bn_kernels.cu's.
#include "ops/cuda/batch_norm_cudnn.h"

#include <cstdlib>
#include <limits>
#include <string>

#include "engine/check.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/conv_bn_kernels.h"
#include "ops/cuda/descriptors.h"

namespace zsq::ops::cudnn_impl {

namespace {

CudnnBatchNormSettings initial_settings() {
  CudnnBatchNormSettings s;
  if (const char* mode = std::getenv("ZSQ_CUDNN_BN")) {
    const std::string v = mode;
    ZSQ_CHECK(v == "own" || v == "cudnn" || v == "spatial" || v == "persistent",
              "$ZSQ_CUDNN_BN: unknown value '{}' (own, cudnn, spatial or persistent)", v);
    s.use_cudnn = v != "own";
    s.persistent = v == "persistent";
  }
  return s;
}

CudnnBatchNormSettings& settings() {
  static CudnnBatchNormSettings s = initial_settings();
  return s;
}

int to_int(std::int64_t v) {
  ZSQ_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(),
            "batch_norm (cuDNN): size {} does not fit in an int", v);
  return static_cast<int>(v);
}

// [N, C, H, W] by the tensor's strides; [N, C] as [N, C, 1, 1] (rows of C).
void describe(cudnnTensorDescriptor_t desc, const Tensor& t) {
  const auto N = t.size(0), C = t.size(1);
  if (t.dim() == 2) {
    ZSQ_CUDNN_CHECK(cudnnSetTensor4dDescriptorEx(desc, CUDNN_DATA_FLOAT, to_int(N), to_int(C), 1, 1,
                                                 to_int(C), 1, to_int(C), to_int(C)));
    return;
  }
  const Strides4 s = t.strides4();
  ZSQ_CUDNN_CHECK(cudnnSetTensor4dDescriptorEx(desc, CUDNN_DATA_FLOAT, to_int(N), to_int(C),
                                               to_int(t.size(2)), to_int(t.size(3)), to_int(s.n), to_int(s.c),
                                               to_int(s.h), to_int(s.w)));
}

cuda::ChannelLayout layout_of(const Tensor& t) {
  cuda::ChannelLayout l;
  l.n = t.size(0);
  l.channels = t.size(1);
  l.spatial = t.dim() == 4 ? t.size(2) * t.size(3) : 1;
  l.channels_last = t.dim() == 4 && t.format() == MemoryFormat::channels_last;
  return l;
}

// The mode for a training call; PERSISTENT only where the settings ask for it and the data is NHWC.
cudnnBatchNormMode_t training_mode(const Tensor& x) {
  return settings().persistent && x.dim() == 4 && x.format() == MemoryFormat::channels_last
             ? CUDNN_BATCHNORM_SPATIAL_PERSISTENT
             : CUDNN_BATCHNORM_SPATIAL;
}

// Runs call(mode) and, if cuDNN refuses the persistent mode for this problem, once more as SPATIAL.
template <class Call>
void run_with_mode(cudnnBatchNormMode_t mode, const char* name, Call call) {
  cudnnStatus_t status = call(mode);
  if (status != CUDNN_STATUS_SUCCESS && mode == CUDNN_BATCHNORM_SPATIAL_PERSISTENT &&
      CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_NOT_SUPPORTED)
    status = call(CUDNN_BATCHNORM_SPATIAL);
  if (status != CUDNN_STATUS_SUCCESS) cuda::raise_cudnn_error(status, name, __FILE__, __LINE__);
}

// weight / bias, or ones / zeros standing in for an undefined one (cuDNN always reads both).
Tensor param_or(const Tensor& t, const Tensor& x, float value) {
  if (t.defined()) return t;
  return Tensor::full({x.size(1)}, value, MemoryFormat::contiguous, x.device());
}

void* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.raw_data() : nullptr;
}

const float kOne = 1.0f;
const float kZero = 0.0f;

}  // namespace

CudnnBatchNormSettings cudnn_batch_norm_settings() {
  return settings();
}

void set_cudnn_batch_norm_settings(const CudnnBatchNormSettings& s) {
  settings() = s;
}

Tensor batch_norm_training(const Tensor& x, const Tensor& weight, const Tensor& bias,
                           const Tensor& running_mean, const Tensor& running_var, float momentum, float eps,
                           bool fuse_relu, Tensor* saved_mean, Tensor* saved_inv_std) {
  const auto C = x.size(1);
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  if (saved_mean != nullptr)
    *saved_mean = Tensor::empty({C}, DType::f32, MemoryFormat::contiguous, x.device());
  if (saved_inv_std != nullptr)
    *saved_inv_std = Tensor::empty({C}, DType::f32, MemoryFormat::contiguous, x.device());
  const Tensor scale = param_or(weight, x, 1.0f);
  const Tensor shift = param_or(bias, x, 0.0f);
  cuda::TensorDescriptor xd, yd;
  describe(xd, x);
  describe(yd, out);
  // cuDNN takes both running pointers or neither; the front function checks they come in pairs.
  const bool update = running_mean.defined() && running_var.defined();
  run_with_mode(training_mode(x), "cudnnBatchNormalizationForwardTraining", [&](cudnnBatchNormMode_t mode) {
    cuda::TensorDescriptor pd;
    ZSQ_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, mode));
    return cudnnBatchNormalizationForwardTraining(
        cuda::cudnn(), mode, &kOne, &kZero, xd, x.raw_data(), yd, out.raw_data(), pd, scale.raw_data(),
        shift.raw_data(), static_cast<double>(momentum), update ? running_mean.raw_data() : nullptr,
        update ? running_var.raw_data() : nullptr, static_cast<double>(eps),
        saved_mean != nullptr ? saved_mean->raw_data() : nullptr,
        saved_inv_std != nullptr ? saved_inv_std->raw_data() : nullptr);
  });
  if (fuse_relu) cuda::relu_inplace(out.cuda_f32(), out.numel());
  return out;
}

Tensor batch_norm_inference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                            const Tensor& var, float eps, bool fuse_relu) {
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  const Tensor scale = param_or(weight, x, 1.0f);
  const Tensor shift = param_or(bias, x, 0.0f);
  cuda::TensorDescriptor xd, yd, pd;
  describe(xd, x);
  describe(yd, out);
  ZSQ_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, CUDNN_BATCHNORM_SPATIAL));
  ZSQ_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
      cuda::cudnn(), CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, xd, x.raw_data(), yd, out.raw_data(), pd,
      scale.raw_data(), shift.raw_data(), mean.raw_data(), var.raw_data(), static_cast<double>(eps)));
  if (fuse_relu) cuda::relu_inplace(out.cuda_f32(), out.numel());
  return out;
}

void batch_norm_backward_training(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                  const Tensor& saved_mean, const Tensor& saved_inv_std, float eps,
                                  const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                                  Tensor& grad_bias) {
  const auto C = x.size(1);
  Tensor dy = grad_out;
  if (relu_output.defined()) {
    dy = Tensor::empty(grad_out.shape(), DType::f32, grad_out.format(), grad_out.device());
    cuda::relu_mask(grad_out.cuda_f32(), relu_output.cuda_f32(), dy.cuda_f32(), dy.numel());
  }
  grad_x = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  grad_weight = Tensor::empty({C}, DType::f32, MemoryFormat::contiguous, x.device());
  grad_bias = Tensor::empty({C}, DType::f32, MemoryFormat::contiguous, x.device());
  const Tensor scale = param_or(weight, x, 1.0f);
  cuda::TensorDescriptor xd, dyd, dxd;
  describe(xd, x);
  describe(dyd, dy);
  describe(dxd, grad_x);
  run_with_mode(training_mode(x), "cudnnBatchNormalizationBackward", [&](cudnnBatchNormMode_t mode) {
    cuda::TensorDescriptor pd;
    ZSQ_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, mode));
    return cudnnBatchNormalizationBackward(
        cuda::cudnn(), mode, &kOne, &kZero, &kOne, &kZero, xd, x.raw_data(), dyd, dy.raw_data(), dxd,
        grad_x.raw_data(), pd, scale.raw_data(), grad_weight.raw_data(), grad_bias.raw_data(),
        static_cast<double>(eps), saved_mean.raw_data(), saved_inv_std.raw_data());
  });
}

void batch_norm_backward_inference(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& var, float eps, bool with_weight_grads,
                                   const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                                   Tensor& grad_bias) {
  // The kernels index grad, x and the ReLU output alike: all three must share x's layout.
  ZSQ_CHECK(grad_out.shape() == x.shape() && grad_out.format() == x.format() &&
                (!relu_output.defined() || relu_output.format() == x.format()),
            "batch_norm backward (CUDA): gradient {} and input {} must share shape and format",
            grad_out.str(), x.str());
  const cuda::ChannelLayout layout = layout_of(x);
  const float* relu = relu_output.defined() ? relu_output.cuda_f32() : nullptr;
  grad_x = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  cuda::batch_norm_eval_backward_data(grad_out.cuda_f32(), relu,
                                      static_cast<const float*>(ptr_or_null(weight)), var.cuda_f32(), eps,
                                      grad_x.cuda_f32(), layout);
  if (!with_weight_grads) return;
  grad_weight = Tensor::empty({layout.channels}, DType::f32, MemoryFormat::contiguous, x.device());
  grad_bias = Tensor::empty({layout.channels}, DType::f32, MemoryFormat::contiguous, x.device());
  cuda::batch_norm_eval_backward_params(grad_out.cuda_f32(), relu, x.cuda_f32(), mean.cuda_f32(),
                                        var.cuda_f32(), eps, grad_weight.cuda_f32(), grad_bias.cuda_f32(),
                                        layout);
}

}  // namespace zsq::ops::cudnn_impl
