#include "models/mobilenetv2.h"

#include <cmath>

#include "ops/elementwise.h"
#include "ops/pool.h"
#include "ops/reduce.h"

namespace zsq::models {

InvertedResidual::InvertedResidual(std::int64_t in, std::int64_t out, std::int64_t stride, std::int64_t ratio,
                                   Rng& rng)
    : residual(stride == 1 && in == out) {
  const auto hidden = in * ratio;
  if (ratio != 1)
    expand = register_module("expand", std::make_shared<ConvBnAct>(in, hidden, 1, 1, 1, true, rng));
  depthwise =
      register_module("depthwise", std::make_shared<ConvBnAct>(hidden, hidden, 3, stride, hidden, true, rng));
  project = register_module("project", std::make_shared<ConvBnAct>(hidden, out, 1, 1, 1, false, rng));
}

Tensor InvertedResidual::forward(const Tensor& x) {
  Tensor h = expand ? expand->forward(x) : x;
  return project->forward_with(depthwise->forward(h), residual ? x : Tensor(), /*relu_after=*/false);
}

namespace {
std::int64_t scaled(std::int64_t channels, float mult) {
  // Round to a multiple of 8 (never below 8), as the reference implementation does.
  const auto v = std::max<std::int64_t>(8, (static_cast<std::int64_t>(channels * mult + 4) / 8) * 8);
  return v < 0.9 * channels * mult ? v + 8 : v;
}
}  // namespace

MobileNetV2::MobileNetV2(const MobileNetV2Config& config, Rng& rng) : config_(config) {
  struct Stage {
    std::int64_t expand, channels, repeats, stride;
  };
  // Stride of the 24-channel stage is 1 (instead of 2) for 32x32 inputs.
  const Stage table[] = {{1, 16, 1, 1}, {6, 24, 2, 1},  {6, 32, 3, 2}, {6, 64, 4, 2},
                         {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  std::int64_t in = scaled(32, config.width_mult);
  stem_ = register_module("stem", std::make_shared<ConvBnAct>(config.in_channels, in, 3, 1, 1, true, rng));
  int index = 0;
  for (const auto& s : table) {
    const auto out = scaled(s.channels, config.width_mult);
    for (std::int64_t r = 0; r < s.repeats; ++r) {
      blocks_.push_back(
          register_module(fmt::format("blocks.{}", index++),
                          std::make_shared<InvertedResidual>(in, out, r == 0 ? s.stride : 1, s.expand, rng)));
      in = out;
    }
  }
  const auto head = config.width_mult > 1.0f ? scaled(1280, config.width_mult) : 1280;
  head_ = register_module("head", std::make_shared<ConvBnAct>(in, head, 1, 1, 1, true, rng));
  fc_ = register_module("fc", std::make_shared<Linear>(head, config.num_classes, true, rng));
}

std::vector<Tensor> MobileNetV2::forward_features(const Tensor& x, Tensor& logits) {
  ZSQ_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels,
            "MobileNetV2: input must be [N, {}, H, W], got {}", config_.in_channels, x.str());
  std::vector<Tensor> stages;
  Tensor h = stem_->forward(x);
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    h = blocks_[i]->forward(h);
    const bool last_at_resolution =
        i + 1 == blocks_.size() || blocks_[i + 1]->depthwise->conv->params().stride_h > 1;
    if (last_at_resolution) stages.push_back(h);
  }
  h = head_->forward(h);
  stages.push_back(h);
  logits = fc_->forward(ops::flatten(ops::global_avg_pool(h)));
  return stages;
}

Tensor MobileNetV2::forward(const Tensor& x) {
  Tensor logits;
  forward_features(x, logits);
  return logits;
}

std::vector<BatchNorm2d*> MobileNetV2::batch_norms() {
  std::vector<BatchNorm2d*> out{stem_->bn.get()};
  for (auto& b : blocks_) {
    if (b->expand) out.push_back(b->expand->bn.get());
    out.push_back(b->depthwise->bn.get());
    out.push_back(b->project->bn.get());
  }
  out.push_back(head_->bn.get());
  return out;
}

}  // namespace zsq::models
