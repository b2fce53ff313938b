#include "quant/distill.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "quant/losses.h"

namespace zsq::quant {

Tensor gaussian_inputs(std::int64_t n, std::int64_t channels, std::int64_t size, Rng& rng) {
  return randn({n, channels, size, size}, rng);
}

Tensor bn_statistics_loss(models::Classifier& teacher, const Tensor& images, Tensor* logits_out) {
  TeacherPass pass = run_with_bn_inputs(teacher, images);
  if (logits_out != nullptr) *logits_out = pass.logits;
  return bns_loss_zeroq(pass.bn_inputs, teacher.batch_norms());
}

Tensor zeroq_distill(models::Classifier& teacher, const ZeroQOptions& o, Rng& rng,
                     const std::function<void(const ZeroQProgress&)>& on_step) {
  ZSQ_CHECK(o.batch > 0 && o.iterations >= 0 && o.lr > 0, "zeroq: batch, iterations and lr must be positive");
  const bool was_training = teacher.is_training();
  teacher.eval();
  auto params = teacher.parameters();
  std::vector<bool> had_grad;
  for (auto& p : params) {
    had_grad.push_back(p.requires_grad());
    p.set_requires_grad(false);  // frozen: gradients flow to the pixels only
  }
  // Drawn on the CPU (the same draws on either device), then moved to the teacher's device.
  const Device device = teacher.device();
  Tensor images = randn({o.batch, 1, o.image_size, o.image_size}, rng).to(device);
  images.set_requires_grad(true);
  Tensor labels = Tensor::empty({o.batch}, DType::s32);
  for (std::int64_t i = 0; i < o.batch; ++i)
    labels.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(teacher.num_classes())));
  labels = labels.to(device);
  Adam adam({images}, {.lr = o.lr});
  for (std::int64_t it = 0; it < o.iterations; ++it) {
    Tensor logits;
    Tensor loss = bn_statistics_loss(teacher, images, &logits);
    const float bns = loss.item();
    float ce = 0.0f;
    if (o.ce_weight > 0) {
      Tensor ce_loss = ops::cross_entropy(logits, labels);
      ce = ce_loss.item();
      loss = ops::add(loss, ops::mul_scalar(ce_loss, o.ce_weight));
    }
    ZSQ_CHECK(std::isfinite(loss.item()), "zeroq: loss became {} at iteration {}", loss.item(), it);
    adam.zero_grad();
    loss.backward();
    adam.step();
    if (on_step) on_step({it + 1, bns, ce});
  }
  for (std::size_t i = 0; i < params.size(); ++i) params[i].set_requires_grad(had_grad[i]);
  teacher.train(was_training);
  images.set_requires_grad(false);
  return images.detach();
}

}  // namespace zsq::quant
