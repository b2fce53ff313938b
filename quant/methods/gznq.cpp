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
  // KD fine-tuning after calibration (300 steps, batch 64, fresh Gaussian samples): ResNet-20 W4A4 quick
  // 93.46% vs 93.04% calibration only (docs/results.md). The paper budget calibrates only.
  if (name == "quick") {
    o.iterations = 150;
    o.finetune.steps = 300;
  } else if (name == "standard") {
    o.iterations = 1000;
    o.finetune.steps = 300;
  } else if (name == "paper") {
    o.iterations = 2000;
  } else if (name == "tiny") {  // tests and smoke checks: the fine-tuning path runs too
    o.iterations = 3;
    o.finetune.steps = 2;
    o.finetune.batch = 8;
  } else {
    fail(fmt::format("unknown budget '{}' (tiny, quick, standard, paper)", name));
  }
  return o;
}

std::vector<OptionField> GznqOptions::fields() {
  return {
      {"iterations", &iterations, "synthesis steps (also --iters)"},
      {"lr", &lr, "Adam learning rate of the Gaussians' means and log-stds"},
      {"ce_weight", &ce_weight, "cross-entropy weight towards the assigned labels"},
      {"entropy_weight", &entropy_weight, "reward on the Gaussians' entropy (keeps samples diverse)"},
      {"initial_std", &initial_std, "initial per-pixel standard deviation"},
      {"finetune_steps", &finetune.steps, "KD fine-tuning steps after calibration (0: calibration only)"},
      {"finetune_batch", &finetune.batch, "KD fine-tuning batch (fresh Gaussian samples each step)"},
      {"finetune_lr", &finetune.lr, "KD fine-tuning SGD (Nesterov) learning rate"},
      {"finetune_temperature", &finetune.temperature, "KD temperature"},
  };
}

nlohmann::json GznqOptions::to_json() const {
  GznqOptions copy = *this;
  return options_to_json(copy.fields());
}

Tensor gznq_sample(const Tensor& mean, const Tensor& log_std, std::int64_t n, Rng& rng) {
  ZSQ_CHECK(mean.dim() == 4 && mean.shape() == log_std.shape() && n > 0,
            "gznq_sample: mean and log-std must be equal 4-D shapes, got {} and {}", mean.str(),
            log_std.str());
  if (mean.is_cuda()) {
    // Same draw as the CPU path (noise from the CPU RNG), computed on the device: rows repeat the
    // learned images cyclically, x = mu + exp(rho) * z.
    const auto rows = mean.size(0);
    Tensor noise = randn({n, mean.size(1), mean.size(2), mean.size(3)}, rng).to(mean.device());
    Tensor mu_rows = Tensor::empty(noise.shape(), DType::f32, MemoryFormat::contiguous, mean.device());
    Tensor std_rows = Tensor::empty(noise.shape(), DType::f32, MemoryFormat::contiguous, mean.device());
    const Tensor mu_c = mean.to_format(MemoryFormat::contiguous),
                 rho_c = log_std.to_format(MemoryFormat::contiguous);
    const std::size_t image_bytes = mu_c.nbytes() / static_cast<std::size_t>(rows);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::size_t src = static_cast<std::size_t>(i % rows) * image_bytes,
                        dst = static_cast<std::size_t>(i) * image_bytes;
      device_copy(static_cast<char*>(mu_rows.raw_data()) + dst, mean.device(),
                  static_cast<const char*>(mu_c.raw_data()) + src, mean.device(), image_bytes);
      device_copy(static_cast<char*>(std_rows.raw_data()) + dst, mean.device(),
                  static_cast<const char*>(rho_c.raw_data()) + src, mean.device(), image_bytes);
    }
    NoGrad no_grad;
    return ops::add(mu_rows, ops::mul(ops::exp(std_rows), noise));
  }
  const auto rows = mean.size(0), per_image = mean.numel() / rows;
  Tensor out = Tensor::empty({n, mean.size(1), mean.size(2), mean.size(3)});
  Tensor noise = randn({n, mean.size(1), mean.size(2), mean.size(3)}, rng);
  for (std::int64_t i = 0; i < n; ++i) {
    const float* mu = mean.f32() + (i % rows) * per_image;
    const float* rho = log_std.f32() + (i % rows) * per_image;
    const float* z = noise.f32() + i * per_image;
    float* x = out.f32() + i * per_image;
    for (std::int64_t j = 0; j < per_image; ++j) x[j] = mu[j] + std::exp(rho[j]) * z[j];
  }
  return out;
}

Tensor gznq_synthesize(models::Classifier& teacher, std::int64_t channels, const GznqOptions& o, Rng& rng,
                       const std::function<void(const GznqStep&)>& on_step, Tensor* log_std_out) {
  ZSQ_CHECK(o.batch > 1 && o.iterations >= 0 && o.lr > 0 && o.initial_std > 0,
            "gznq: batch > 1, iterations >= 0, lr > 0 and initial_std > 0 required");
  teacher.eval();
  teacher.set_requires_grad(false);
  const Shape shape{o.batch, channels, o.image_size, o.image_size};
  const Device device = teacher.device();
  Tensor mu = randn(shape, rng).to(device);
  Tensor rho = Tensor::full(shape, std::log(o.initial_std), MemoryFormat::contiguous, device);
  mu.set_requires_grad(true);
  rho.set_requires_grad(true);
  Tensor labels = Tensor::empty({o.batch}, DType::s32);
  for (std::int64_t i = 0; i < o.batch; ++i)
    labels.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % teacher.num_classes());
  labels = labels.to(device);
  Adam adam({mu, rho}, {.lr = o.lr});
  for (std::int64_t it = 0; it < o.iterations; ++it) {
    Tensor noise = randn(shape, rng).to(device);
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
  if (log_std_out != nullptr) *log_std_out = rho.detach().clone();
  return mu.detach().clone();
}

}  // namespace zsq::quant
