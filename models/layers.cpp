#include "models/layers.h"

#include <cmath>

#include "engine/autograd.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/bn_fold.h"
#endif

namespace zsq::models {

Conv2d::Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, const ops::Conv2dParams& params,
               bool with_bias, Rng& rng, ConvInit init)
    : params_(params) {
  ZSQ_CHECK(in % params.groups == 0 && out % params.groups == 0,
            "Conv2d: channels {}->{} not divisible by groups {}", in, out, params.groups);
  const Shape shape{out, in / params.groups, kernel, kernel};
  if (init == ConvInit::torch_default) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(in / params.groups * kernel * kernel));
    weight = register_parameter("weight", rand_uniform(shape, rng, -bound, bound));
    if (with_bias) bias = register_parameter("bias", rand_uniform({out}, rng, -bound, bound));
    return;
  }
  const float fan_out = static_cast<float>(out / params.groups * kernel * kernel);
  weight = register_parameter("weight", randn(shape, rng, 0.0f, std::sqrt(2.0f / fan_out)));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out}));
}

Tensor Conv2d::forward(const Tensor& x) {
  return ops::conv2d(x, effective_weight(), bias, params_);
}

BatchNorm2d::BatchNorm2d(std::int64_t channels, float momentum, float eps, bool affine) {
  options_.momentum = momentum;
  options_.eps = eps;
  if (affine) {
    weight = register_parameter("weight", Tensor::full({channels}, 1.0f));
    bias = register_parameter("bias", Tensor::zeros({channels}));
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::full({channels}, 1.0f));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  return forward(x, false);
}

Tensor BatchNorm2d::forward(const Tensor& x, bool fuse_relu) {
  if (input_tap) input_tap(x);
  ops::BatchNormOptions o = options_;
  o.training = is_training();
  o.fuse_relu = fuse_relu;
  return ops::batch_norm(x, weight, bias, running_mean, running_var, o);
}

Linear::Linear(std::int64_t in, std::int64_t out, bool with_bias, Rng& rng) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  weight = register_parameter("weight", rand_uniform({out, in}, rng, -bound, bound));
  if (with_bias) bias = register_parameter("bias", rand_uniform({out}, rng, -bound, bound));
}

Tensor Linear::forward(const Tensor& x) {
  return ops::linear(x, weight_quantizer ? weight_quantizer(weight) : weight, bias);
}

ConvBnAct::ConvBnAct(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride,
                     std::int64_t groups, bool with_relu, Rng& rng)
    : relu(with_relu) {
  conv = register_module(
      "conv",
      std::make_shared<Conv2d>(in, out, kernel, ops::Conv2dParams::same(kernel, stride, groups), false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ConvBnAct::forward(const Tensor& x) {
  return forward_with(x, Tensor(), relu);
}

bool ConvBnAct::can_fold(const Tensor& x) const {
  return !bn->is_training() && !bn->input_tap && bn->weight.defined() && bn->bias.defined() &&
         !any_requires_grad({&x, &conv->weight, &conv->bias, &bn->weight, &bn->bias});
}

Tensor ConvBnAct::forward_with(const Tensor& x, const Tensor& residual, bool relu_after) {
  Tensor y = forward_unquantized(x, residual, relu_after);
  return relu_after && output_quantizer ? output_quantizer(y) : y;
}

Tensor ConvBnAct::forward_unquantized(const Tensor& x, const Tensor& residual, bool relu_after) {
  if (!can_fold(x)) {
    if (!residual.defined()) return bn->forward(conv->forward(x), relu_after);  // BN+ReLU in one kernel
    Tensor y = bn->forward(conv->forward(x));
    return relu_after ? ops::add_relu(y, residual) : ops::add(y, residual);
  }
  // w'[o] = w[o] * gamma[o] / sqrt(var[o] + eps);  b'[o] = beta[o] + (b[o] - mean[o]) * gamma[o] / sqrt(...)
  // BN(conv(x, q(w))) = conv(x, q(w) * s) + shift: folding after weight quantization keeps the
  // paper convention's arithmetic (quantize the raw weight, BN in float).
  const Tensor source = conv->effective_weight();
  const auto out = source.size(0);
  const auto per_out = source.numel() / out;
#if ZSQ_WITH_CUDA
  if (source.is_cuda()) {  // the same fold, computed where the weights and BN statistics live
    Tensor w = Tensor::empty(source.shape(), DType::f32, source.format(), source.device());
    Tensor b = Tensor::empty({out}, DType::f32, MemoryFormat::contiguous, source.device());
    cuda::fold_conv_bn(source.cuda_f32(), conv->bias.defined() ? conv->bias.cuda_f32() : nullptr,
                       bn->weight.cuda_f32(), bn->bias.cuda_f32(), bn->running_mean.cuda_f32(),
                       bn->running_var.cuda_f32(), bn->eps(), out, per_out, w.cuda_f32(), b.cuda_f32());
    return ops::conv2d_fused_inference(x, w, b, conv->params(), {residual, relu_after});
  }
#endif
  Tensor w = Tensor::empty(source.shape());
  Tensor b = Tensor::empty({out});
  const float *w0 = source.f32(), *gamma = bn->weight.f32(), *beta = bn->bias.f32();
  const float *mean = bn->running_mean.f32(), *var = bn->running_var.f32();
  for (std::int64_t o = 0; o < out; ++o) {
    const float scale = gamma[o] / std::sqrt(var[o] + bn->eps());
    for (std::int64_t i = 0; i < per_out; ++i) w.f32()[o * per_out + i] = w0[o * per_out + i] * scale;
    const float conv_bias = conv->bias.defined() ? conv->bias.f32()[o] : 0.0f;
    b.f32()[o] = beta[o] + (conv_bias - mean[o]) * scale;
  }
  return ops::conv2d_fused_inference(x, w, b, conv->params(), {residual, relu_after});
}

std::vector<Tensor> Classifier::forward_features(const Tensor&, Tensor&) {
  fail("this architecture defines no feature stages (needed by feature-level losses such as ZAQ's)");
}

}  // namespace zsq::models
