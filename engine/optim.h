// Optimizers (PyTorch semantics, so published recipes carry over) and learning-rate schedules.
// Parameters are updated in place from their .grad; a parameter without a gradient is skipped.
// Optimizer state (momentum, Adam moments, step count) is exported as named tensors so a run can be
// resumed exactly from a checkpoint.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace zsq {

class Optimizer {
 public:
  explicit Optimizer(std::vector<Tensor> params, float lr) : params_(std::move(params)), lr_(lr) {}
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  void zero_grad();
  float lr() const { return lr_; }
  void set_lr(float lr) { lr_ = lr; }
  const std::vector<Tensor>& params() const { return params_; }
  virtual std::vector<std::pair<std::string, Tensor>> state() const = 0;
  // Restores what state() produced; errors name the missing or mismatched entry.
  virtual void load_state(const std::vector<std::pair<std::string, Tensor>>& state) = 0;

 protected:
  std::vector<Tensor> params_;
  float lr_;
};

struct SgdOptions {
  float lr = 0.1f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

// g = grad + wd*p; buf = momentum*buf + (1-dampening)*g (buf = g on the first step);
// update = nesterov ? g + momentum*buf : buf; p -= lr * update.
class Sgd : public Optimizer {
 public:
  Sgd(std::vector<Tensor> params, const SgdOptions& options);
  void step() override;
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;

 private:
  SgdOptions options_;
  std::vector<Tensor> momentum_;  // undefined until the first step
};

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // L2, added to the gradient (torch.optim.Adam)
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, const AdamOptions& options);
  void step() override;
  std::vector<std::pair<std::string, Tensor>> state() const override;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state) override;

 private:
  AdamOptions options_;
  std::int64_t steps_ = 0;
  std::vector<Tensor> m_, v_;
};

// Learning rate as a function of the step (or epoch) index, starting at 0.
class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual float at(std::int64_t step) const = 0;
};

// base * gamma^(number of milestones <= step)
class MultiStepSchedule : public LrSchedule {
 public:
  MultiStepSchedule(float base, std::vector<std::int64_t> milestones, float gamma)
      : base_(base), milestones_(std::move(milestones)), gamma_(gamma) {}
  float at(std::int64_t step) const override;

 private:
  float base_;
  std::vector<std::int64_t> milestones_;
  float gamma_;
};

// eta_min + (base - eta_min) * (1 + cos(pi * step / total)) / 2, constant eta_min after total.
class CosineSchedule : public LrSchedule {
 public:
  CosineSchedule(float base, std::int64_t total, float eta_min = 0.0f)
      : base_(base), total_(total), eta_min_(eta_min) {}
  float at(std::int64_t step) const override;

 private:
  float base_;
  std::int64_t total_;
  float eta_min_;
};

}  // namespace zsq
