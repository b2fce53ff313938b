#include <doctest/doctest.h>

#include "models/zoo.h"
#include "ops/elementwise.h"
#include "quant/methods/zaq.h"
#include "tests/testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;
using namespace zsq::testing;

TEST_CASE(
    "ZAQ relation discrepancy: zero for equal features, positive otherwise, gradients match finite "
    "differences") {
  Rng rng(1);
  Tensor p = random_input({2, 3, 3, 2}, rng, MemoryFormat::channels_last, false);
  CHECK(quant::relation_discrepancy(p, p, 0.1f).item() == doctest::Approx(0.0));
  Tensor q = random_input({2, 3, 3, 2}, rng, MemoryFormat::channels_last);
  CHECK(quant::relation_discrepancy(p, q, 0.1f).item() > 0.0f);
  // Away from the |.| kinks of the L1 terms: q far from p.
  check_gradients([&](const std::vector<Tensor>& t) { return quant::relation_discrepancy(p, t[0], 0.1f); },
                  {q}, 1e-3, 3e-2, 3e-3);
  CHECK_THROWS_AS(quant::relation_discrepancy(p, Tensor::zeros({2, 3, 2, 2}), 0.1f), Error);
}

TEST_CASE(
    "ZAQ iteration: Q steps and a G step change both networks; losses finite; G maximizes the discrepancy") {
  Rng rng(2);
  auto spec = tiny_resnet_spec();
  auto teacher = tiny_resnet_teacher(rng);
  auto config = quant::QConfig::paper(4, 4);
  config.act_observer = quant::ObserverKind::ema;
  quant::Student student(spec, *teacher, config);
  auto options = quant::ZaqOptions::budget("quick");
  options.batch = 4, options.q_steps = 2, options.iterations = 1, options.epochs = 1;
  quant::ZaqTrainer trainer(*teacher, student, options);
  auto flat = [](Module& m) {
    std::vector<float> out;
    for (auto& [n, t] : m.named_parameters()) {
      auto v = t.to_vector();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  const auto q0 = flat(student.model()), g0 = flat(trainer.generator());
  std::vector<quant::ZaqIteration> seen;
  trainer.run([&](const quant::ZaqIteration& r) { seen.push_back(r); }, nullptr);
  REQUIRE(seen.size() == 1);
  const auto& r = seen.front();
  for (float v : {r.q_loss, r.q_output, r.q_feature, r.g_loss, r.g_output, r.g_feature, r.g_activation,
                  r.g_label_entropy})
    CHECK(std::isfinite(v));
  CHECK(r.g_label_entropy >= 0.0f);
  CHECK(r.g_label_entropy <= doctest::Approx(std::log(10.0)));
  CHECK(options.diversity > 0.0f);  // the quick budget's default
  CHECK(r.g_loss == doctest::Approx(-(r.g_output + options.alpha * r.g_feature +
                                      options.beta * r.g_activation + options.diversity * r.g_label_entropy))
                        .epsilon(1e-4));
  CHECK(flat(student.model()) != q0);
  CHECK(flat(trainer.generator()) != g0);
  CHECK(trainer.epochs_done() == 1);
}

TEST_CASE("ZAQ diversity: G's loss gains -diversity * H(batch-mean teacher prediction) and its gradient") {
  auto run = [](float diversity, quant::ZaqIteration& r) {
    Rng rng(2);
    auto spec = tiny_resnet_spec();
    auto teacher = tiny_resnet_teacher(rng);
    quant::Student student(spec, *teacher, quant::QConfig::paper(4, 4));
    auto options = quant::ZaqOptions::budget("tiny");
    options.diversity = diversity;
    quant::ZaqTrainer trainer(*teacher, student, options);
    trainer.begin_epoch(0);
    r = trainer.iterate(0, 0, rng);
    std::vector<float> out;
    for (auto& [n, t] : trainer.generator().named_parameters()) {
      auto v = t.to_vector();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  quant::ZaqIteration off, on;
  const auto g_off = run(0.0f, off), g_on = run(5.0f, on);
  // Same seed, same samples: the logged terms agree; only the loss and the generator's step differ.
  CHECK(on.g_label_entropy == doctest::Approx(off.g_label_entropy));
  CHECK(on.g_label_entropy > 0.0f);
  CHECK(on.g_loss == doctest::Approx(off.g_loss - 5.0f * off.g_label_entropy).epsilon(1e-4));
  CHECK(g_on != g_off);
}

TEST_CASE("ZAQ recalibrate_batches: the frozen ranges come from fresh generator batches only") {
  auto ranges = [](bool polluted) {
    Rng rng(6);
    auto spec = tiny_resnet_spec();
    auto teacher = tiny_resnet_teacher(rng);
    auto config = quant::QConfig::paper(4, 4);
    config.act_observer = quant::ObserverKind::mse;
    quant::Student student(spec, *teacher, config);
    auto options = quant::ZaqOptions::budget("tiny");
    options.freeze_epochs = 1, options.recalibrate_batches = 2;
    quant::ZaqTrainer trainer(*teacher, student, options);
    trainer.begin_epoch(0);
    trainer.iterate(0, 0, rng);
    if (polluted) {
      Rng noise(8);
      student.set_phase(quant::Phase::calibrate);
      NoGrad no_grad;
      student.model().forward(ops::mul_scalar(randn({4, 1, 32, 32}, noise), 1000.0f));
    }
    trainer.begin_epoch(1);
    std::vector<std::vector<float>> out;
    for (auto& site : student.activation_sites()) {
      if (site.observations == 0) continue;
      CHECK(site.observer->frozen());
      CHECK(site.observations == 2);
      out.push_back(site.observer->state());
    }
    return out;
  };
  CHECK(ranges(true) == ranges(false));
  CHECK_FALSE(ranges(false).empty());
}

TEST_CASE("ZAQ recalibrate_source=gaussian: the frozen ranges come from N(0, 1) images, not the generator") {
  auto ranges = [](const std::string& source, float generator_scale) {
    Rng rng(6);
    auto spec = tiny_resnet_spec();
    auto teacher = tiny_resnet_teacher(rng);
    auto config = quant::QConfig::paper(4, 4);
    config.act_observer = quant::ObserverKind::mse;
    quant::Student student(spec, *teacher, config);
    auto options = quant::ZaqOptions::budget("tiny");
    options.freeze_epochs = 1, options.recalibrate_batches = 2, options.recalibrate_source = source;
    quant::ZaqTrainer trainer(*teacher, student, options);
    trainer.begin_epoch(0);
    trainer.iterate(0, 0, rng);
    for (auto& p : trainer.generator().parameters()) {  // a different generator at the freeze
      float* v = p.f32();
      for (std::int64_t i = 0; i < p.numel(); ++i) v[i] *= generator_scale;
    }
    trainer.begin_epoch(1);
    std::vector<std::vector<float>> out;
    for (auto& site : student.activation_sites())
      if (site.observations > 0) out.push_back(site.observer->state());
    return out;
  };
  CHECK(ranges("gaussian", 1.0f) == ranges("gaussian", 3.0f));
  CHECK(ranges("generator", 1.0f) != ranges("generator", 3.0f));
  CHECK(ranges("gaussian", 1.0f) != ranges("generator", 1.0f));
  quant::ZaqOptions o;
  CHECK_THROWS_WITH_AS(quant::set_option(o.fields(), "recalibrate_source=data", "zaq"),
                       doctest::Contains("gaussian"), Error);
}
