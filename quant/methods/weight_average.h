// Exponential moving average of the student's parameters (Polyak averaging), an [I] option of the
// generator-based methods (`--opt weight_average=0.99`). The adversarial game keeps moving the student:
// its weights wander around a good region rather than settle, so the average of recent iterates is a
// lower-noise estimate of that region than the last iterate. The trainer updates the average after every
// iteration, evaluates research epochs on it, and hands it out as the final student; the raw weights
// stay what training continues from, and both are in the resumable state.
// With a start epoch (`--opt weight_average_epoch=E`) the average covers only the iterations from epoch E
// on: before it every update copies the weights, so the EMA does not carry the high-lr iterates into the
// low-lr phase it is meant to smooth.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/module.h"

namespace zsq::quant {

class WeightAverage {
 public:
  // decay in [0, 1): average <- decay * average + (1 - decay) * weights; the first update copies.
  WeightAverage(Module& model, float decay, std::int64_t start_epoch = 0);
  // After an iteration of `epoch`.
  void update(std::int64_t epoch);
  // Exchanges the model's parameter values with the average; calling it twice restores both.
  void swap();
  std::int64_t updates() const { return updates_; }
  void save(Checkpoint& checkpoint) const;  // "average.<parameter>" tensors + an update count
  void load(const Checkpoint& checkpoint);  // errors name the file and the missing entry

 private:
  std::vector<std::pair<std::string, Tensor>> parameters_;
  std::vector<Tensor> average_;
  float decay_;
  std::int64_t start_epoch_;
  std::int64_t updates_ = 0;
};

}  // namespace zsq::quant
