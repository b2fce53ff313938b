#include "quant/methods/gznq.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "quant/losses.h"

namespace zsq::quant {

GznqOptions GznqOptions::budget(const std::string& name) {
  GznqOptions o;
  if (name == "quick")
    o.iterations = 150;
  else if (name == "standard")
    o.iterations = 1000;
  else if (name == "paper")
    o.iterations = 2000;
  else if (name == "tiny")  // tests and smoke checks
    o.iterations = 3;
  else
    fail(fmt::format("unknown budget '{}' (tiny, quick, standard, paper)", name));
  return o;
}

Tensor gznq_synthesize(models::Classifier& teacher, std::int64_t channels, const GznqOptions& o, Rng& rng,
                       const std::function<void(const GznqStep&)>& on_step) {
  ZSQ_CHECK(o.batch > 1 && o.iterations >= 0 && o.lr > 0 && o.initial_std > 0,
            "gznq: batch > 1, iterations >= 0, lr > 0 and initial_std > 0 required");
  teacher.eval();
  teacher.set_requires_grad(false);
  const Shape shape{o.batch, channels, o.image_size, o.image_size};
  Tensor mu = randn(shape, rng);
  Tensor rho = Tensor::full(shape, std::log(o.initial_std));
  mu.set_requires_grad(true);
  rho.set_requires_grad(true);
  Tensor labels = Tensor::empty({o.batch}, DType::s32);
  for (std::int64_t i = 0; i < o.batch; ++i)
    labels.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % teacher.num_classes());
  Adam adam({mu, rho}, {.lr = o.lr});
  for (std::int64_t it = 0; it < o.iterations; ++it) {
    Tensor noise = randn(shape, rng);
    Tensor x = ops::add(mu, ops::mul(ops::exp(rho), noise));
    TeacherPass pass = run_with_bn_inputs(teacher, x);
    Tensor kl = bns_loss_gaussian_kl(pass.bn_inputs, teacher.batch_norms());
    Tensor ce = ops::cross_entropy(pass.logits, labels);
    // The Gaussian's entropy is sum(rho) + const: rewarding it keeps samples from collapsing to the mean.
    Tensor loss = ops::add(
        kl, ops::sub(ops::mul_scalar(ce, o.ce_weight), ops::mul_scalar(ops::mean(rho), o.entropy_weight)));
    const float value = loss.item();
    ZSQ_CHECK(std::isfinite(value), "gznq: loss became {} at iteration {}", value, it + 1);
    adam.zero_grad();
    loss.backward();
    adam.step();
    if (on_step) on_step({it + 1, value, kl.item(), ce.item()});
  }
  return mu.detach().clone();
}

}  // namespace zsq::quant
