// Knowledge-distillation fine-tuning of a calibrated student on synthetic images: the optional last stage
// of GZNQ (ALGORITHMS.md §2, "calibrate, optionally KD fine-tune"). The student keeps its frozen
// activation ranges and fixed BN statistics (BN affine parameters train, as in GDFQ); every step draws a
// fresh batch from `draw` (for GZNQ: samples of the learned per-pixel Gaussians, so the student never
// sees the same image twice) and minimizes T^2 * KL(teacher || student) at temperature T.
#pragma once
#include <functional>

#include "engine/rng.h"
#include "models/layers.h"
#include "quant/student.h"

namespace zsq::quant {

struct KdFinetuneOptions {
  std::int64_t steps = 0;  // 0: no fine-tuning
  std::int64_t batch = 64;
  float lr = 1e-4f;  // SGD with Nesterov momentum
  float momentum = 0.9f;
  float weight_decay = 1e-4f;
  float temperature = 1.0f;
  float range_lr = 1e-3f;  // Adam on the student's learned activation ranges (act_range=learned only)
};

struct KdFinetuneStep {
  std::int64_t step;  // 1-based
  float loss;
};

// draw(n, rng) returns n input images [n, C, H, W]. Throws zsq::Error on a non-finite loss.
void kd_finetune(models::Classifier& teacher, Student& student, const KdFinetuneOptions& options,
                 const std::function<Tensor(std::int64_t n, Rng& rng)>& draw, Rng& rng,
                 const std::function<void(const KdFinetuneStep&)>& on_step = {});

}  // namespace zsq::quant
