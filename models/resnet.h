// CIFAR-layout ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of BasicBlocks with
// widths w, 2w, 4w (16/32/64 for ResNet-20), stride 2 at the start of stages 2 and 3 with a 1x1
// conv + BN shortcut (option B, as pytorchcv's resnet20_cifar that GDFQ/ZAQ use), global average pool
// and a linear classifier. depth = 6n + 2.
#pragma once
#include "models/layers.h"

namespace zsq::models {

struct ResNetConfig {
  std::int64_t depth = 20;
  std::int64_t width = 16;
  std::int64_t in_channels = 1;
  std::int64_t num_classes = 10;
};

class BasicBlock : public Module {
 public:
  BasicBlock(std::int64_t in, std::int64_t out, std::int64_t stride, Rng& rng);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<ConvBnAct> body1, body2, shortcut;  // shortcut null for identity
};

class CifarResNet : public Classifier {
 public:
  CifarResNet(const ResNetConfig& config, Rng& rng);
  Tensor forward(const Tensor& x) override;
  std::vector<BatchNorm2d*> batch_norms() override;
  std::int64_t num_classes() const override { return config_.num_classes; }
  // Output of each stage (after its last block), for feature-level losses.
  std::vector<Tensor> forward_stages(const Tensor& x, Tensor& logits);
  std::vector<Tensor> forward_features(const Tensor& x, Tensor& logits) override {
    return forward_stages(x, logits);
  }

 private:
  ResNetConfig config_;
  std::shared_ptr<ConvBnAct> stem_;
  std::vector<std::vector<std::shared_ptr<BasicBlock>>> stages_;
  std::shared_ptr<Linear> fc_;
};

}  // namespace zsq::models
