#include "quant/losses.h"

#include <cmath>

#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/moment_matching.h"
#include "ops/reduce.h"

namespace zsq::quant {

TeacherPass run_with_bn_inputs(models::Classifier& teacher, const Tensor& images) {
  TeacherPass pass;
  auto bns = teacher.batch_norms();
  for (auto* bn : bns) bn->input_tap = [&pass](const Tensor& x) { pass.bn_inputs.push_back(x); };
  try {
    pass.logits = teacher.forward(images);
  } catch (...) {
    for (auto* bn : bns) bn->input_tap = nullptr;
    throw;
  }
  for (auto* bn : bns) bn->input_tap = nullptr;
  ZSQ_CHECK(pass.bn_inputs.size() == bns.size(), "teacher pass saw {} BN inputs for {} BN layers",
            pass.bn_inputs.size(), bns.size());
  return pass;
}

namespace {
void check_pairs(const std::vector<Tensor>& inputs, const std::vector<models::BatchNorm2d*>& bns) {
  ZSQ_CHECK(!bns.empty() && inputs.size() == bns.size(), "BN-statistics loss: {} inputs for {} BN layers",
            inputs.size(), bns.size());
}
Tensor accumulate(const Tensor& total, const Tensor& term) {
  return total.defined() ? ops::add(total, term) : term;
}
}  // namespace

Tensor bns_loss_gdfq(const std::vector<Tensor>& inputs, const std::vector<models::BatchNorm2d*>& bns) {
  check_pairs(inputs, bns);
  Tensor total;
  // One fused op per layer: mse(batch mean, running mean) + mse(batch var, running var).
  for (std::size_t l = 0; l < bns.size(); ++l)
    total =
        accumulate(total, ops::moment_matching_loss(inputs[l], bns[l]->running_mean, bns[l]->running_var));
  return ops::mul_scalar(total, 1.0f / static_cast<float>(bns.size()));
}

Tensor bns_loss_zeroq(const std::vector<Tensor>& inputs, const std::vector<models::BatchNorm2d*>& bns) {
  check_pairs(inputs, bns);
  auto l2 = [](const Tensor& a, const Tensor& b) {
    Tensor d = ops::sub(a, b);
    return ops::sqrt(
        ops::add_scalar(ops::sum(ops::mul(d, d)), 1e-12f));  // the epsilon keeps sqrt' finite at 0
  };
  Tensor total;
  for (std::size_t l = 0; l < bns.size(); ++l) {
    const auto* bn = bns[l];
    const std::vector<std::int64_t> axes{0, 2, 3};
    Tensor stddev = ops::sqrt(ops::add_scalar(ops::variance(inputs[l], axes), bn->eps()));
    Tensor running_std;
    if (bn->running_var.is_cuda()) {
      // The same two f32 operations (add, IEEE sqrt) on the device; running_var needs no gradient.
      running_std = ops::sqrt(ops::add_scalar(bn->running_var.detach(), bn->eps()));
    } else {
      running_std = Tensor::empty({bn->channels()});
      for (std::int64_t c = 0; c < bn->channels(); ++c)
        running_std.f32()[c] = std::sqrt(bn->running_var.f32()[c] + bn->eps());
    }
    total = accumulate(total,
                       ops::add(l2(ops::mean(inputs[l], axes), bn->running_mean), l2(stddev, running_std)));
  }
  return total;
}

Tensor bns_loss_gaussian_kl(const std::vector<Tensor>& inputs, const std::vector<models::BatchNorm2d*>& bns) {
  check_pairs(inputs, bns);
  Tensor total;
  std::int64_t channels = 0;
  for (std::size_t l = 0; l < bns.size(); ++l) {
    const auto* bn = bns[l];
    const auto C = bn->channels();
    const std::vector<std::int64_t> axes{0, 2, 3};
    Tensor mu_hat = ops::mean(inputs[l], axes);
    Tensor var_hat = ops::add_scalar(ops::variance(inputs[l], axes), bn->eps());
    // Per-channel constants of the target Gaussian.
    Tensor inv_two_var, log_sigma;
    if (bn->running_var.is_cuda()) {
      // On the device (no read-back per step): 1 / var as exp(-log var), within a few ulp of the CPU's
      // division (there is no element-wise division op).
      const Tensor log_var = ops::log(ops::add_scalar(bn->running_var.detach(), bn->eps()));
      inv_two_var = ops::mul_scalar(ops::exp(ops::mul_scalar(log_var, -1.0f)), 0.5f);
      log_sigma = ops::mul_scalar(log_var, 0.5f);
    } else {
      inv_two_var = Tensor::empty({C});
      log_sigma = Tensor::empty({C});
      for (std::int64_t c = 0; c < C; ++c) {
        const float var = bn->running_var.f32()[c] + bn->eps();
        inv_two_var.f32()[c] = 0.5f / var;
        log_sigma.f32()[c] = 0.5f * std::log(var);
      }
    }
    Tensor diff = ops::sub(mu_hat, bn->running_mean);
    // log sigma - log sigma_hat + (var_hat + diff^2) / (2 var) - 1/2, summed over channels.
    Tensor kl = ops::add(ops::sub(log_sigma, ops::mul_scalar(ops::log(var_hat), 0.5f)),
                         ops::mul(ops::add(var_hat, ops::mul(diff, diff)), inv_two_var));
    total = accumulate(total, ops::add_scalar(ops::sum(kl), -0.5f * static_cast<float>(C)));
    channels += C;
  }
  return ops::mul_scalar(total, 1.0f / static_cast<float>(channels));
}

Tensor kd_loss(const Tensor& student_logits, const Tensor& teacher_logits, float temperature,
               bool legacy_mean) {
  ZSQ_CHECK(temperature > 0, "kd_loss: temperature must be positive, got {}", temperature);
  ZSQ_CHECK(student_logits.shape() == teacher_logits.shape() && student_logits.dim() == 2,
            "kd_loss: logits must be [N, K] and equal in shape, got {} and {}", student_logits.str(),
            teacher_logits.str());
  const float inv_t = 1.0f / temperature;
  Tensor kl = ops::kl_div(ops::log_softmax(ops::mul_scalar(student_logits, inv_t)),
                          ops::softmax(ops::mul_scalar(teacher_logits, inv_t)));
  float factor = temperature * temperature;
  if (legacy_mean) factor /= static_cast<float>(student_logits.size(1));
  return ops::mul_scalar(kl, factor);
}

Tensor output_discrepancy(const Tensor& teacher_logits, const Tensor& student_logits) {
  return ops::l1(student_logits, teacher_logits);
}

Tensor batch_label_entropy(const Tensor& logits) {
  ZSQ_CHECK(logits.dim() == 2 && logits.size(0) > 0, "batch_label_entropy: logits must be [B, K], got {}",
            logits.str());
  Tensor average = ops::mean(ops::softmax(logits), {0});  // [K]
  // The clamp keeps log finite for a class nobody predicts; its gradient there is negligible anyway.
  Tensor log_average = ops::log(ops::add_scalar(average, 1e-12f));
  return ops::mul_scalar(ops::sum(ops::mul(average, log_average)), -1.0f);
}

}  // namespace zsq::quant
