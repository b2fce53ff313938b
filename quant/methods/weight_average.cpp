#include "quant/methods/weight_average.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/check.h"
#include "ops/elementwise.h"

namespace zsq::quant {

WeightAverage::WeightAverage(Module& model, float decay, std::int64_t start_epoch)
    : parameters_(model.named_parameters()), decay_(decay), start_epoch_(start_epoch) {
  ZSQ_CHECK(decay >= 0.0f && decay < 1.0f, "weight_average: decay must be in [0, 1), got {}", decay);
  for (const auto& [name, p] : parameters_) average_.push_back(p.detach().clone());
}

void WeightAverage::update(std::int64_t epoch) {
  if (epoch < start_epoch_) updates_ = 0;  // the average restarts from the weights at the start epoch
  const float keep = updates_ == 0 ? 0.0f : decay_;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (average_[i].is_cuda()) {
      // Same arithmetic through device ops (a = keep * a + (1 - keep) * w), written back in place.
      NoGrad no_grad;
      average_[i].copy_from(ops::add(ops::mul_scalar(average_[i], keep),
                                     ops::mul_scalar(parameters_[i].second.detach(), 1.0f - keep)));
      continue;
    }
    const float* w = parameters_[i].second.f32();
    float* a = average_[i].f32();
    const auto n = average_[i].numel();
    for (std::int64_t j = 0; j < n; ++j) a[j] = keep * a[j] + (1.0f - keep) * w[j];
  }
  ++updates_;
}

void WeightAverage::swap() {
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    if (average_[i].is_cuda()) {
      const Tensor held = parameters_[i].second.detach().clone();
      parameters_[i].second.copy_from(average_[i]);
      average_[i].copy_from(held);
      continue;
    }
    std::swap_ranges(parameters_[i].second.f32(), parameters_[i].second.f32() + average_[i].numel(),
                     average_[i].f32());
  }
}

void WeightAverage::save(Checkpoint& checkpoint) const {
  checkpoint.metadata["zsq.average.updates"] = std::to_string(updates_);
  for (std::size_t i = 0; i < parameters_.size(); ++i)
    checkpoint.add("average." + parameters_[i].first, average_[i]);
}

void WeightAverage::load(const Checkpoint& checkpoint) {
  auto it = checkpoint.metadata.find("zsq.average.updates");
  ZSQ_CHECK(it != checkpoint.metadata.end(),
            "{}: no weight average in this state (the run was started without weight_average)",
            checkpoint.path);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor* t = checkpoint.find("average." + parameters_[i].first);
    ZSQ_CHECK(t != nullptr && t->shape() == average_[i].shape(), "{}: missing or misshapen average.{}",
              checkpoint.path, parameters_[i].first);
    average_[i].copy_from(*t);
  }
  updates_ = checkpoint.metadata_int(it->first);
}

}  // namespace zsq::quant
