// GZNQ synthesis (per-pixel Gaussians matched to the teacher's BN statistics), sampling from the learned
// Gaussians, and the optional KD fine-tuning of the calibrated student.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/autograd.h"
#include "models/zoo.h"
#include "quant/losses.h"
#include "quant/methods/gznq.h"
#include "quant/methods/kd_finetune.h"
#include "tests/testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;

namespace {
std::shared_ptr<models::Classifier> small_teacher(std::uint64_t seed) {
  Rng rng(seed);
  return testing::tiny_resnet_teacher(rng);
}

std::vector<float> flat_parameters(Module& m) {
  std::vector<float> out;
  for (auto& [name, t] : m.named_parameters()) {
    auto v = t.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}
}  // namespace

TEST_CASE("GZNQ synthesis lowers the BN KL loss and returns the learned log-stds") {
  auto teacher = small_teacher(1);
  quant::GznqOptions o;
  o.batch = 8, o.iterations = 25, o.image_size = 32;
  Rng rng(2);
  std::vector<quant::GznqStep> steps;
  Tensor log_std;
  Tensor mean = quant::gznq_synthesize(
      *teacher, 1, o, rng, [&](const quant::GznqStep& s) { steps.push_back(s); }, &log_std);
  REQUIRE(steps.size() == 25);
  CHECK(steps.back().kl < steps.front().kl);
  CHECK(mean.shape() == Shape{8, 1, 32, 32});
  CHECK(log_std.shape() == mean.shape());
  // The log-stds moved away from their start log(0.1).
  bool moved = false;
  for (float v : log_std.to_vector()) moved |= std::abs(v - std::log(0.1f)) > 1e-4f;
  CHECK(moved);
}

TEST_CASE("gznq_sample draws mean + exp(log_std) * noise, image i from Gaussian i mod batch") {
  Tensor mean = Tensor::empty({2, 1, 2, 2}), log_std = Tensor::empty({2, 1, 2, 2});
  for (int j = 0; j < 4; ++j) {
    mean.f32()[j] = 1.0f, log_std.f32()[j] = std::log(0.5f);
    mean.f32()[4 + j] = -3.0f, log_std.f32()[4 + j] = -30.0f;  // ~zero spread: samples equal the mean
  }
  Rng rng(3);
  const std::int64_t n = 4000;
  Tensor x = quant::gznq_sample(mean, log_std, n, rng);
  REQUIRE(x.shape() == Shape{n, 1, 2, 2});
  double sum = 0, sq = 0;
  for (std::int64_t i = 0; i < n; i += 2)
    for (int j = 0; j < 4; ++j) {
      const double v = x.f32()[i * 4 + j];
      sum += v, sq += v * v;
      CHECK(x.f32()[(i + 1) * 4 + j] == doctest::Approx(-3.0f));
    }
  const double count = n / 2 * 4, mu = sum / count, sd = std::sqrt(sq / count - mu * mu);
  CHECK(mu == doctest::Approx(1.0).epsilon(0.03));
  CHECK(sd == doctest::Approx(0.5).epsilon(0.05));
  CHECK_THROWS_AS(quant::gznq_sample(mean, Tensor::empty({2, 1, 2, 3}), 4, rng), Error);
}

TEST_CASE("KD fine-tuning moves a quantized student towards the teacher on the drawn images") {
  auto teacher = small_teacher(4);
  auto spec = models::resolve_model_spec("resnet20", {{"width", 4}});
  quant::Student student(spec, *teacher, quant::QConfig::paper(3, 3));
  Rng rng(5);
  Tensor calib = randn({16, 1, 32, 32}, rng);
  student.set_phase(quant::Phase::calibrate);
  {
    NoGrad no_grad;
    student.model().eval();
    student.model().forward(calib);
  }
  student.freeze_ranges();
  student.set_phase(quant::Phase::quantized);
  Tensor probe = randn({16, 1, 32, 32}, rng);
  auto kd_on_probe = [&] {
    NoGrad no_grad;
    return quant::kd_loss(student.model().forward(probe), teacher->forward(probe), 1.0f, false).item();
  };
  const float before = kd_on_probe();
  const auto weights = flat_parameters(student.model());
  auto draw = [&](std::int64_t n, Rng&) {
    Tensor out = Tensor::empty({n, 1, 32, 32});
    std::copy_n(probe.f32(), out.numel(), out.f32());
    return out;
  };
  quant::KdFinetuneOptions o;
  o.steps = 0;
  quant::kd_finetune(*teacher, student, o, draw, rng);
  CHECK(flat_parameters(student.model()) == weights);  // 0 steps: untouched

  o.steps = 120, o.batch = 16, o.lr = 0.02f, o.momentum = 0.9f;
  std::vector<float> losses;
  quant::kd_finetune(*teacher, student, o, draw, rng,
                     [&](const quant::KdFinetuneStep& s) { losses.push_back(s.loss); });
  REQUIRE(losses.size() == 120);
  CHECK(losses.front() == doctest::Approx(before).epsilon(1e-4));
  CHECK(kd_on_probe() < 0.6f * before);
  for (auto& site : student.activation_sites()) CHECK(site.observer->frozen());  // ranges stay calibrated
  CHECK_FALSE(student.model().is_training());

  // A step that blows a weight up stops the run with what happened, not a later quantizer failure.
  o.steps = 5, o.lr = 1e30f;
  CHECK_THROWS_WITH_AS(quant::kd_finetune(*teacher, student, o, draw, rng),
                       doctest::Contains("diverged at step 1"), Error);
}
