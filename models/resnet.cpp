#include "models/resnet.h"

#include "ops/elementwise.h"
#include "ops/pool.h"
#include "ops/reduce.h"

namespace zsq::models {

BasicBlock::BasicBlock(std::int64_t in, std::int64_t out, std::int64_t stride, Rng& rng) {
  body1 = register_module("conv1", std::make_shared<ConvBnAct>(in, out, 3, stride, 1, true, rng));
  body2 = register_module("conv2", std::make_shared<ConvBnAct>(out, out, 3, 1, 1, false, rng));
  if (stride != 1 || in != out)
    shortcut = register_module("shortcut", std::make_shared<ConvBnAct>(in, out, 1, stride, 1, false, rng));
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor residual = shortcut ? shortcut->forward(x) : x;
  return body2->forward_with(body1->forward(x), residual, /*relu_after=*/true);
}

CifarResNet::CifarResNet(const ResNetConfig& config, Rng& rng) : config_(config) {
  ZSQ_CHECK(config.depth >= 8 && (config.depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2, got {}",
            config.depth);
  const auto blocks = (config.depth - 2) / 6;
  stem_ = register_module("stem",
                          std::make_shared<ConvBnAct>(config.in_channels, config.width, 3, 1, 1, true, rng));
  std::int64_t in = config.width;
  for (int s = 0; s < 3; ++s) {
    const std::int64_t out = config.width << s;
    stages_.emplace_back();
    for (std::int64_t b = 0; b < blocks; ++b) {
      auto block = std::make_shared<BasicBlock>(in, out, (s > 0 && b == 0) ? 2 : 1, rng);
      stages_.back().push_back(register_module(fmt::format("stage{}.{}", s + 1, b), block));
      in = out;
    }
  }
  fc_ = register_module("fc", std::make_shared<Linear>(in, config.num_classes, true, rng));
}

std::vector<Tensor> CifarResNet::forward_stages(const Tensor& x, Tensor& logits) {
  ZSQ_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels, "ResNet: input must be [N, {}, H, W], got {}",
            config_.in_channels, x.str());
  std::vector<Tensor> stages;
  Tensor h = stem_->forward(x);
  for (auto& stage : stages_) {
    for (auto& block : stage) h = block->forward(h);
    stages.push_back(h);
  }
  logits = fc_->forward(ops::flatten(ops::global_avg_pool(h)));
  return stages;
}

Tensor CifarResNet::forward(const Tensor& x) {
  Tensor logits;
  forward_stages(x, logits);
  return logits;
}

std::vector<BatchNorm2d*> CifarResNet::batch_norms() {
  std::vector<BatchNorm2d*> out{stem_->bn.get()};
  for (auto& stage : stages_)
    for (auto& block : stage) {
      out.push_back(block->body1->bn.get());
      out.push_back(block->body2->bn.get());
      if (block->shortcut) out.push_back(block->shortcut->bn.get());
    }
  return out;
}

}  // namespace zsq::models
