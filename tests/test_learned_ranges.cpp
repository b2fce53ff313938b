// QConfig act_range=learned through the student, the generative trainers, their checkpoints and the KD
// fine-tune: the learned hi follows the observer until it freezes, then trains; what is saved is what
// was quantized with, and a killed run resumes to the same student.
#include <doctest/doctest.h>

#include <cstring>

#include "engine/optim.h"
#include "ops/loss.h"
#include "quant/distill.h"
#include "quant/methods/kd_finetune.h"
#include "quant/methods/zaq.h"
#include "tests/testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;
using zsq::testing::flat_state;

namespace {

quant::QConfig learned_config(int bits = 3) {
  auto config = quant::QConfig::paper(bits, bits);
  config.set("act_range=learned");
  config.set("weight_range=learned");
  config.set("act_observer=mse");
  return config;
}

std::vector<float> learned_values(const quant::Student& student) {
  std::vector<float> out;
  for (const auto& t : student.learned_ranges()) out.push_back(t.to_vector()[0]);
  return out;
}

Tensor logits(quant::Student& student, const Tensor& x) {
  NoGrad no_grad;
  student.model().eval();
  return student.model().forward(x);
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("act_range: parsed, written, validated") {
  auto config = quant::QConfig::paper(4, 4);
  CHECK(config.act_range == quant::ActRange::observed);
  CHECK(config.to_json()["act_range"] == "observed");
  config.set("act_range=learned");
  CHECK(config.act_range == quant::ActRange::learned);
  quant::QConfig reread;
  reread.apply_json(nlohmann::json::parse(config.to_json().dump()), "test");
  CHECK(reread == config);
  CHECK_THROWS_WITH_AS(config.set("act_range=trained"), doctest::Contains("act_range"), Error);
  CHECK_THROWS_WITH_AS(config.set("act_symmetric=true"), doctest::Contains("unsigned"), Error);
  config.set("weight_range=learned");
  CHECK(config.to_json()["weight_range"] == "learned");
  CHECK_THROWS_WITH_AS(config.set("weight_granularity=per_tensor"), doctest::Contains("per_channel"), Error);
}

TEST_CASE("learned weight ratios: start at the observer's ranges, train, round-trip through checkpoints") {
  Rng rng(9);
  const auto spec = testing::tiny_resnet_spec();
  auto teacher = testing::tiny_resnet_teacher(rng);
  // minmax: every ratio starts at 1 and the student quantizes exactly as the min/max one.
  auto config = quant::QConfig::paper(3, 3);
  config.set("weight_range=learned");
  quant::Student student(spec, *teacher, config);
  quant::Student reference(spec, *teacher, quant::QConfig::paper(3, 3));
  for (const auto& site : student.weight_sites()) {
    REQUIRE(site.learned_ratio.defined());
    CHECK(site.learned_ratio.size(0) == site.weight.size(0));
    for (float r : site.learned_ratio.to_vector()) CHECK(r == 1.0f);
  }
  const Tensor calibration = quant::gaussian_inputs(16, 1, 32, rng);
  for (auto* s : {&student, &reference}) s->calibrate(1, [&](std::int64_t) { return calibration; });
  const Tensor x = quant::gaussian_inputs(8, 1, 32, rng);
  CHECK(bit_equal(logits(student, x), logits(reference, x)));

  // mse: the ratios start where the MSE search clips (below 1 somewhere at 3 bits).
  auto mse = config;
  mse.set("weight_observer=mse");
  quant::Student clipped(spec, *teacher, mse);
  float smallest = 1.0f;
  for (const auto& site : clipped.weight_sites())
    for (float r : site.learned_ratio.to_vector()) smallest = std::min(smallest, r);
  CHECK(smallest < 0.95f);
  CHECK(smallest >= mse.mse_min_ratio - 1e-6f);

  // Gradients reach every weight site's ratios; a step changes the logits; a checkpoint keeps them.
  student.model().eval();
  Adam adam(student.learned_ranges(), {.lr = 0.05f});
  ops::mse(student.model().forward(x), Tensor::zeros({8, 10})).backward();
  for (const auto& site : student.weight_sites()) {
    REQUIRE(site.learned_ratio.grad().defined());
    double norm = 0.0;
    for (float g : site.learned_ratio.grad().to_vector()) norm += std::abs(g);
    CHECK_MESSAGE(norm > 0.0, site.name);
  }
  adam.step();
  const Tensor moved = logits(student, x);
  CHECK_FALSE(bit_equal(moved, logits(reference, x)));
  Checkpoint saved = student.to_checkpoint();
  const auto reloaded = quant::Student::from_checkpoint(saved);
  CHECK(learned_values(*reloaded) == learned_values(student));
  CHECK(bit_equal(logits(*reloaded, x), moved));
  // A file without its ratios, or with ratios of another shape, is refused by name.
  Checkpoint missing({}, saved.metadata);
  for (const auto& [name, t] : saved.tensors)
    if (name != "quant.weight_ratio.stem.conv") missing.add(name, t);
  CHECK_THROWS_WITH_AS(quant::Student::from_checkpoint(missing),
                       doctest::Contains("quant.weight_ratio.stem.conv"), Error);
}

TEST_CASE("learned ranges in the student: follow the observer, then train; saved as the range in use") {
  Rng rng(1);
  const auto spec = testing::tiny_resnet_spec();
  auto teacher = testing::tiny_resnet_teacher(rng);
  quant::Student student(spec, *teacher, learned_config());
  auto observed = quant::QConfig::paper(3, 3);
  observed.set("act_observer=mse");
  quant::Student reference(spec, *teacher, observed);
  const Tensor calibration = quant::gaussian_inputs(16, 1, 32, rng);
  for (auto* s : {&student, &reference}) s->calibrate(1, [&](std::int64_t) { return calibration; });

  // Until it trains, a learned range is the observed one: the same logits bit for bit.
  for (const auto& site : student.activation_sites())
    if (site.observations > 0) CHECK(site.learned_hi.to_vector()[0] == site.observer->hi());
  const Tensor x = quant::gaussian_inputs(8, 1, 32, rng);
  CHECK(bit_equal(logits(student, x), logits(reference, x)));
  CHECK(student.learned_ranges_active());

  // Gradients reach every used range; an Adam step moves them and the logits.
  student.model().eval();
  auto ranges = student.learned_ranges();
  Adam adam(ranges, {.lr = 0.05f});
  Tensor loss = ops::mse(student.model().forward(x), Tensor::zeros({8, 10}));
  loss.backward();
  std::int64_t with_grad = 0;
  for (const auto& site : student.activation_sites())
    if (site.observations > 0 && site.learned_hi.grad().defined() &&
        site.learned_hi.grad().to_vector()[0] != 0.0f)
      ++with_grad;
  CHECK(with_grad == static_cast<std::int64_t>(student.used_activation_sites().size()));
  adam.step();
  const auto moved = logits(student, x);
  CHECK_FALSE(bit_equal(moved, logits(reference, x)));
  for (const auto* site : student.used_activation_sites()) {
    const auto [lo, hi] = student.activation_range(*site);
    CHECK(lo == 0.0f);
    CHECK(hi == site->learned_hi.to_vector()[0]);
    CHECK(hi != site->observer->hi());
  }

  // The checkpoint holds the learned ranges; the reloaded student computes the same logits.
  const auto reloaded = quant::Student::from_checkpoint(student.to_checkpoint());
  CHECK(learned_values(*reloaded) == learned_values(student));
  CHECK(bit_equal(logits(*reloaded, x), moved));
  // Read as an observed-range student (the way export and reports see it), the same ranges too.
  for (const auto* site : reloaded->used_activation_sites())
    CHECK(site->observer->hi() == site->learned_hi.to_vector()[0]);

  // A range trained to nothing is an error naming the site, not a silent fallback.
  student.activation_sites()[1].learned_hi.f32()[0] = -0.5f;
  const doctest::String site_name(student.activation_sites()[1].name.c_str());
  CHECK_THROWS_WITH_AS(logits(student, x), doctest::Contains(site_name), Error);
}

TEST_CASE(
    "ZAQ with learned ranges: they train after the freeze, and a killed run resumes to the same student") {
  auto options = quant::ZaqOptions::budget("tiny");
  options.epochs = 3, options.freeze_epochs = 1, options.range_lr = 0.01f;
  auto make = [](std::uint64_t seed, std::shared_ptr<models::Classifier>& teacher) {
    Rng rng(seed);
    teacher = testing::tiny_resnet_teacher(rng);
    return std::make_unique<quant::Student>(testing::tiny_resnet_spec(), *teacher, learned_config());
  };
  std::shared_ptr<models::Classifier> teacher_a, teacher_b, teacher_c;
  auto full = make(4, teacher_a);
  std::vector<float> at_freeze;
  quant::ZaqTrainer trainer(*teacher_a, *full, options);
  trainer.run(nullptr, [&](std::int64_t done) {
    if (done == 1)
      for (const auto* s : full->used_activation_sites()) at_freeze.push_back(s->observer->hi());
  });
  const auto final_ranges = learned_values(*full);
  std::vector<float> final_used;
  for (const auto* s : full->used_activation_sites()) final_used.push_back(s->learned_hi.to_vector()[0]);
  REQUIRE(final_used.size() == at_freeze.size());
  CHECK(final_used != at_freeze);  // the ranges trained after the freeze

  // Killed after epoch 2 (state saved after each epoch, as the CLI does), resumed in a fresh student.
  Checkpoint saved;
  {
    auto first = make(4, teacher_b);
    quant::ZaqTrainer leg(*teacher_b, *first, options);
    CHECK_THROWS_AS(leg.run(nullptr,
                            [&](std::int64_t done) {
                              saved = first->to_checkpoint();
                              leg.save_state(saved);
                              if (done == 2) throw std::runtime_error("simulated kill");
                            }),
                    std::runtime_error);
  }
  auto resumed = make(4, teacher_c);
  auto reloaded = quant::Student::from_checkpoint(saved);
  resumed->model().load_state(reloaded->model().named_state(), "saved");
  quant::ZaqTrainer second(*teacher_c, *resumed, options);
  second.load_state(saved);
  second.run(nullptr, nullptr);
  CHECK(learned_values(*resumed) == final_ranges);
  CHECK(flat_state(resumed->model()) == flat_state(full->model()));

  // A state written without learned ranges cannot silently resume a learned run.
  std::shared_ptr<models::Classifier> teacher_d;
  Rng rng(4);
  teacher_d = testing::tiny_resnet_teacher(rng);
  quant::Student plain(testing::tiny_resnet_spec(), *teacher_d, quant::QConfig::paper(3, 3));
  quant::ZaqTrainer plain_trainer(*teacher_d, plain, options);
  Checkpoint plain_state = plain.to_checkpoint();
  plain_trainer.save_state(plain_state);
  quant::ZaqTrainer learned_trainer(*teacher_c, *resumed, options);
  CHECK_THROWS_WITH_AS(learned_trainer.load_state(plain_state), doctest::Contains("act_range=observed"),
                       Error);
}

TEST_CASE("KD fine-tune trains learned ranges too") {
  Rng rng(5);
  auto teacher = testing::tiny_resnet_teacher(rng);
  quant::Student student(testing::tiny_resnet_spec(), *teacher, learned_config());
  const Tensor calibration = quant::gaussian_inputs(16, 1, 32, rng);
  student.calibrate(1, [&](std::int64_t) { return calibration; });
  const auto before = learned_values(student);
  quant::kd_finetune(
      *teacher, student, {.steps = 3, .batch = 8, .lr = 1e-3f, .range_lr = 0.01f},
      [](std::int64_t n, Rng& r) { return quant::gaussian_inputs(n, 1, 32, r); }, rng);
  CHECK(learned_values(student) != before);
}
