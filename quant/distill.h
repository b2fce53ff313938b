// Synthetic inputs from the teacher alone (no data):
//  - gaussian_inputs: N(0, 1) images, the simplest calibration set;
//  - zeroq_distill: ZeroQ's "distilled data": a batch of input pixels optimized (Adam) so that the batch
//    mean and standard deviation of every BN layer's input match that layer's running statistics,
//    optionally plus cross-entropy towards random target labels.
#pragma once
#include <functional>

#include "engine/rng.h"
#include "models/layers.h"

namespace zsq::quant {

Tensor gaussian_inputs(std::int64_t n, std::int64_t channels, std::int64_t size, Rng& rng);

struct ZeroQOptions {
  std::int64_t batch = 128;
  std::int64_t iterations = 200;
  float lr = 0.2f;
  float ce_weight = 0.0f;  // > 0 adds cross-entropy to random labels
  std::int64_t image_size = 32;
};

struct ZeroQProgress {
  std::int64_t iteration;
  float bns_loss, ce_loss;
};

// BN-statistics loss of a batch through `teacher` (eval mode): sum over BN layers of
// ||batch_mean - running_mean||_2 + ||batch_std - running_std||_2, differentiable w.r.t. the input.
Tensor bn_statistics_loss(models::Classifier& teacher, const Tensor& images, Tensor* logits_out = nullptr);

Tensor zeroq_distill(models::Classifier& teacher, const ZeroQOptions& options, Rng& rng,
                     const std::function<void(const ZeroQProgress&)>& on_step = {});

}  // namespace zsq::quant
