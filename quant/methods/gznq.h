// GZNQ-style generative calibration (ALGORITHMS.md §2, a reconstruction: the paper's exact losses were
// not retrievable). No generator network: each synthetic image is a per-pixel Gaussian with learnable
// mean mu_x and log-std rho_x, sampled with the reparameterization trick, and optimized so the
// distribution of the teacher's BN inputs matches its running statistics in KL divergence:
//   L = KL_BN + ce_weight * CE(P(x), y) - entropy_weight * mean(rho_x).
// The exported means are the calibration set for §0 quantization (ranges from the student's observer).
// Optionally the calibrated student is then KD fine-tuned (quant/methods/kd_finetune.h) on fresh samples
// mu_x + exp(rho_x) * noise of the learned Gaussians (finetune_steps > 0).
#pragma once
#include <functional>
#include <string>

#include "engine/rng.h"
#include "models/layers.h"
#include "quant/methods/kd_finetune.h"
#include "quant/methods/method_options.h"

namespace zsq::quant {

struct GznqOptions {
  std::int64_t batch = 256;
  std::int64_t iterations = 500;
  float lr = 0.05f;
  float ce_weight = 1.0f;
  float entropy_weight = 1e-3f;
  float initial_std = 0.1f;
  std::int64_t image_size = 32;
  KdFinetuneOptions finetune;  // steps 0: calibration only

  // The tunable fields by name (zsq quantize --opt KEY=VALUE).
  std::vector<OptionField> fields();
  nlohmann::json to_json() const;

  // quick: 150 synthesis steps + 300 KD fine-tuning steps (~3 min on 2 cores); standard: 1000 + 300;
  // paper: 2000 (the suggested upper end), calibration only; tiny: 3 + 2 (tests and smoke checks only).
  static GznqOptions budget(const std::string& name);
};

struct GznqStep {
  std::int64_t iteration;
  float loss, kl, ce;
};

// Returns the optimized means mu_x, f32 [batch, C, S, S] (C = the teacher's input channels, 1 here);
// log_std_out, when given, receives rho_x of the same shape.
Tensor gznq_synthesize(models::Classifier& teacher, std::int64_t channels, const GznqOptions& options,
                       Rng& rng, const std::function<void(const GznqStep&)>& on_step = {},
                       Tensor* log_std_out = nullptr);

// n images drawn from the learned Gaussians: image i uses the mean and log-std of row i mod batch.
Tensor gznq_sample(const Tensor& mean, const Tensor& log_std, std::int64_t n, Rng& rng);

}  // namespace zsq::quant
