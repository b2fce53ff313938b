// Building-block modules. Convolution weights are OIHW contiguous; activations leave a conv
// channels-last. Initialization follows PyTorch's CIFAR-ResNet habits (Kaiming-normal, fan_out, for
// convs; uniform +-1/sqrt(fan_in) for linear layers; BN gamma 1, beta 0).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "engine/module.h"
#include "engine/rng.h"
#include "ops/batch_norm.h"
#include "ops/conv2d.h"

namespace zsq::models {

// Maps a tensor to its fake-quantized version (differentiable, straight-through). Set by quant/ on the
// student copy of a network; unset (full precision) everywhere else.
using TensorTransform = std::function<Tensor(const Tensor&)>;

// How a new convolution draws its parameters.
//   kaiming_fan_out  weights N(0, sqrt(2 / fan_out)), bias 0: the CIFAR ResNet init of the teachers.
//   torch_default    weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's nn.Conv2d default,
//                    which the GDFQ/ZAQ generators rely on. With kaiming_fan_out their 64 -> 1 output
//                    conv (fan_out 9) starts ~20x too large, the tanh after it saturates (78% of pixels
//                    beyond |0.95|) and the label-conditional generator cannot learn its classes.
enum class ConvInit : unsigned char { kaiming_fan_out, torch_default };

class Conv2d : public Module {
 public:
  Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, const ops::Conv2dParams& params, bool bias,
         Rng& rng, ConvInit init = ConvInit::kaiming_fan_out);
  Tensor forward(const Tensor& x) override;
  const ops::Conv2dParams& params() const { return params_; }
  // The weight as the convolution uses it: weight_quantizer(weight) when a quantizer is set.
  Tensor effective_weight() const { return weight_quantizer ? weight_quantizer(weight) : weight; }
  Tensor weight, bias;
  TensorTransform weight_quantizer;

 private:
  ops::Conv2dParams params_;
};

class BatchNorm2d : public Module {
 public:
  // affine = false: no gamma/beta (a pure standardization, as a generator's output BN).
  explicit BatchNorm2d(std::int64_t channels, float momentum = 0.1f, float eps = 1e-5f, bool affine = true);
  Tensor forward(const Tensor& x) override;
  // relu(bn(x)) in one kernel when fuse_relu.
  Tensor forward(const Tensor& x, bool fuse_relu);
  std::int64_t channels() const { return running_mean.size(0); }
  float eps() const { return options_.eps; }
  Tensor weight, bias, running_mean, running_var;
  // Called with every input this layer sees (the BN-statistics losses of the zero-shot methods read
  // the teacher's BN inputs through it). Unset by default.
  std::function<void(const Tensor&)> input_tap;

 private:
  ops::BatchNormOptions options_;
};

class Linear : public Module {
 public:
  Linear(std::int64_t in, std::int64_t out, bool bias, Rng& rng);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  TensorTransform weight_quantizer;
};

// Conv -> BN -> optional ReLU, the unit every CNN here is built from.
class ConvBnAct : public Module {
 public:
  ConvBnAct(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride, std::int64_t groups,
            bool relu, Rng& rng);
  Tensor forward(const Tensor& x) override;
  // relu?(bn(conv(x)) + residual?) with the unit's own `relu` replaced by `relu_after`. When nothing
  // needs a gradient and BN is in eval mode, BN is folded into the conv weights and the add and ReLU
  // run as oneDNN post-ops: one pass over memory instead of four.
  Tensor forward_with(const Tensor& x, const Tensor& residual, bool relu_after);
  std::shared_ptr<Conv2d> conv;
  std::shared_ptr<BatchNorm2d> bn;
  bool relu;
  // Applied to the output whenever it is post-ReLU (the activation-quantization site of the paper
  // convention: after every ReLU, post-residual ReLUs included).
  TensorTransform output_quantizer;

 private:
  bool can_fold(const Tensor& x) const;
  Tensor forward_unquantized(const Tensor& x, const Tensor& residual, bool relu_after);
};

// Base of image classifiers: exposes what quantization and the zero-shot losses need to find.
class Classifier : public Module {
 public:
  virtual std::vector<BatchNorm2d*> batch_norms() = 0;
  virtual std::int64_t num_classes() const = 0;
  // The output of each stage (for feature-level losses such as ZAQ's) and, through `logits`, the
  // network output. Architectures without defined stages throw.
  virtual std::vector<Tensor> forward_features(const Tensor& x, Tensor& logits);
};

}  // namespace zsq::models
