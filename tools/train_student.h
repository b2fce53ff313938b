// `zsq train --student FILE --teacher FILE`: the real-data upper bound of the zero-shot methods. It
// fine-tunes an already quantized student (any `zsq quantize` output) by knowledge distillation from its
// full-precision teacher on real Fashion-MNIST training images, the one thing a zero-shot method is
// denied. Evaluation only: it tells how much of the gap between a zero-shot student and its teacher is
// the synthetic data's fault and how much is the quantizer's. It lives under `train` because only
// `train` and `eval` may read data (the zero-shot promise).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/device.h"

namespace zsq::cli {

struct StudentFinetuneOptions {
  std::string student, teacher, data, out;
  Device device;  // where the teacher, the student and the batches live
  std::int64_t steps = 1000;
  std::int64_t batch = 128;
  std::int64_t calibrate_batches = 4;  // re-observe the activation ranges on real images first; 0 keeps them
  std::int64_t eval_every = 0;         // test accuracy every N steps (0: only at the end)
  std::int64_t limit = 0;              // first N training images only (smoke tests)
  float lr = 1e-3f;
  float temperature = 1.0f;
  float range_lr = 1e-3f;         // Adam lr of learned activation ranges (act_range=learned)
  std::vector<std::string> sets;  // QConfig "key=value" overrides of the student (e.g. act_range=learned)
  bool augment = true;
  bool test = true;
};

void run_train_student(const StudentFinetuneOptions& options);

}  // namespace zsq::cli
