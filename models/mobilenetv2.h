// CIFAR-style MobileNetV2 (Sandler et al. 2018) for small inputs: 3x3 stem at stride 1, the standard
// inverted-residual table with the first two downsamplings removed (as in the common CIFAR ports), so
// a 32x32 input reaches 4x4 before the 1x1 head conv, global pool and classifier. ReLU replaces ReLU6:
// quantization ranges are then set by the data rather than clipped at 6, the setting most zero-shot
// papers use for CIFAR-sized MobileNetV2 students.
#pragma once
#include "models/layers.h"

namespace zsq::models {

struct MobileNetV2Config {
  float width_mult = 1.0f;
  std::int64_t in_channels = 1;
  std::int64_t num_classes = 10;
};

class InvertedResidual : public Module {
 public:
  InvertedResidual(std::int64_t in, std::int64_t out, std::int64_t stride, std::int64_t expand, Rng& rng);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<ConvBnAct> expand, depthwise, project;  // expand null when expand ratio is 1
  bool residual;
};

class MobileNetV2 : public Classifier {
 public:
  MobileNetV2(const MobileNetV2Config& config, Rng& rng);
  Tensor forward(const Tensor& x) override;
  std::vector<BatchNorm2d*> batch_norms() override;
  std::int64_t num_classes() const override { return config_.num_classes; }
  // Stage outputs for feature-level losses: the last block output at each spatial resolution (32x32,
  // 16x16, 8x8, 4x4 for a 32x32 input), then the head's output.
  std::vector<Tensor> forward_features(const Tensor& x, Tensor& logits) override;

 private:
  MobileNetV2Config config_;
  std::shared_ptr<ConvBnAct> stem_, head_;
  std::vector<std::shared_ptr<InvertedResidual>> blocks_;
  std::shared_ptr<Linear> fc_;
};

}  // namespace zsq::models
