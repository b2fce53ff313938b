#include "quant/methods/kd_finetune.h"

#include <cmath>
#include <memory>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "quant/losses.h"

namespace zsq::quant {

void kd_finetune(models::Classifier& teacher, Student& student, const KdFinetuneOptions& o,
                 const std::function<Tensor(std::int64_t n, Rng& rng)>& draw, Rng& rng,
                 const std::function<void(const KdFinetuneStep&)>& on_step) {
  ZSQ_CHECK(o.steps >= 0 && o.batch > 0 && o.lr > 0 && o.temperature > 0,
            "kd fine-tune: steps >= 0, batch > 0, lr > 0 and temperature > 0 required");
  if (o.steps == 0) return;
  teacher.eval();
  teacher.set_requires_grad(false);
  student.freeze_ranges();
  student.set_phase(Phase::quantized);
  student.model().eval();  // fixed BN statistics; the affine parameters still train
  student.model().set_requires_grad(true);
  Sgd sgd(student.model().parameters(),
          {.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay, .nesterov = o.momentum > 0});
  std::unique_ptr<Adam> range_adam;
  if (auto ranges = student.learned_ranges(); !ranges.empty())
    range_adam = std::make_unique<Adam>(std::move(ranges), AdamOptions{.lr = o.range_lr});
  for (std::int64_t step = 0; step < o.steps; ++step) {
    Tensor x = draw(o.batch, rng).detach();
    Tensor target;
    {
      NoGrad no_grad;
      target = teacher.forward(x);
    }
    Tensor loss = kd_loss(student.model().forward(x), target, o.temperature, /*legacy_mean=*/false);
    const float value = loss.item();
    ZSQ_CHECK(std::isfinite(value), "kd fine-tune: loss became {} at step {}", value, step + 1);
    sgd.zero_grad();
    if (range_adam) range_adam->zero_grad();
    loss.backward();
    sgd.step();
    if (range_adam) range_adam->step();
    const auto diverged = student.first_diverged_parameter();
    ZSQ_CHECK(
        !diverged,
        "kd fine-tune: the student diverged at step {}: {} became {} after a step with loss {} (lr {}); "
        "lower the learning rate (for example a tenth)",
        step + 1, diverged->first,
        std::isfinite(diverged->second) ? fmt::format("{:g}", diverged->second) : std::string("non-finite"),
        value, o.lr);
    if (on_step) on_step({step + 1, value});
  }
}

}  // namespace zsq::quant
