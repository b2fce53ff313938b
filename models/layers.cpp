#include "models/layers.h"

#include <cmath>

#include "ops/elementwise.h"
#include "ops/linear.h"

namespace zsq::models {

Conv2d::Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, const ops::Conv2dParams& params, bool with_bias,
               Rng& rng)
    : params_(params) {
  ZSQ_CHECK(in % params.groups == 0 && out % params.groups == 0, "Conv2d: channels {}->{} not divisible by groups {}",
            in, out, params.groups);
  const float fan_out = static_cast<float>(out / params.groups * kernel * kernel);
  weight = register_parameter("weight", randn({out, in / params.groups, kernel, kernel}, rng, 0.0f,
                                              std::sqrt(2.0f / fan_out)));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out}));
}

Tensor Conv2d::forward(const Tensor& x) { return ops::conv2d(x, weight, bias, params_); }

BatchNorm2d::BatchNorm2d(std::int64_t channels, float momentum, float eps) {
  options_.momentum = momentum;
  options_.eps = eps;
  weight = register_parameter("weight", Tensor::full({channels}, 1.0f));
  bias = register_parameter("bias", Tensor::zeros({channels}));
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::full({channels}, 1.0f));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  if (input_tap) input_tap(x);
  ops::BatchNormOptions o = options_;
  o.training = is_training();
  return ops::batch_norm(x, weight, bias, running_mean, running_var, o);
}

Linear::Linear(std::int64_t in, std::int64_t out, bool with_bias, Rng& rng) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  weight = register_parameter("weight", rand_uniform({out, in}, rng, -bound, bound));
  if (with_bias) bias = register_parameter("bias", rand_uniform({out}, rng, -bound, bound));
}

Tensor Linear::forward(const Tensor& x) { return ops::linear(x, weight, bias); }

ConvBnAct::ConvBnAct(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride, std::int64_t groups,
                     bool with_relu, Rng& rng)
    : relu(with_relu) {
  conv = register_module("conv", std::make_shared<Conv2d>(in, out, kernel, ops::Conv2dParams::same(kernel, stride, groups),
                                                          false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ConvBnAct::forward(const Tensor& x) {
  Tensor y = bn->forward(conv->forward(x));
  return relu ? ops::relu(y) : y;
}

}  // namespace zsq::models
