#include <doctest/doctest.h>

#include "models/zoo.h"
#include "ops/elementwise.h"
#include "quant/methods/gdfq.h"
#include "tests/testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;
using zsq::testing::flat_state;

namespace {
struct Setup {
  models::ModelSpec spec = testing::tiny_resnet_spec();
  std::shared_ptr<models::Classifier> teacher;
  std::unique_ptr<quant::Student> student;
  explicit Setup(std::uint64_t seed) {
    Rng rng(seed);
    teacher = testing::tiny_resnet_teacher(rng);
    auto config = quant::QConfig::paper(4, 4);
    config.act_observer = quant::ObserverKind::gdfq_ema;
    student = std::make_unique<quant::Student>(spec, *teacher, config);
  }
};

quant::GdfqOptions tiny() {
  quant::GdfqOptions o;
  o.epochs = 3, o.iterations = 2, o.batch = 6, o.warmup_epochs = 1, o.freeze_epochs = 2, o.q_lr = 0.01f;
  o.lr_milestones = {2};
  o.seed = 5;
  return o;
}

// Every activation observer's state, in site order.
std::vector<std::vector<float>> range_states(quant::Student& student) {
  std::vector<std::vector<float>> out;
  for (auto& site : student.activation_sites()) out.push_back(site.observer->state());
  return out;
}

// A run of `options` killed after `kill_after` epochs (the state saved after every epoch, as the CLI
// does), then resumed in `resumed` as a fresh process would: a new student from the saved weights, a new
// trainer from the saved state. Returns the resumed trainer after it finished.
std::unique_ptr<quant::GdfqTrainer> killed_and_resumed(std::uint64_t seed, const quant::GdfqOptions& options,
                                                       std::int64_t kill_after, Setup& resumed) {
  Checkpoint saved;
  {
    Setup first(seed);
    quant::GdfqTrainer first_leg(*first.teacher, *first.student, options);
    CHECK_THROWS_AS(first_leg.run(nullptr,
                                  [&](std::int64_t done) {
                                    saved = first.student->to_checkpoint();
                                    first_leg.save_state(saved);
                                    if (done == kill_after) throw std::runtime_error("simulated kill");
                                  }),
                    std::runtime_error);
  }
  auto reloaded = quant::Student::from_checkpoint(saved);
  resumed.student->model().load_state(reloaded->model().named_state(), "saved");
  auto second_leg = std::make_unique<quant::GdfqTrainer>(*resumed.teacher, *resumed.student, options);
  second_leg->load_state(saved);
  CHECK(second_leg->epochs_done() == kill_after);
  second_leg->run(nullptr, nullptr);
  return second_leg;
}
}  // namespace

TEST_CASE("GDFQ: warm-up trains only the generator, then the student learns; losses stay finite") {
  Setup s(1);
  quant::GdfqTrainer trainer(*s.teacher, *s.student, tiny());
  const auto student_before = flat_state(s.student->model());
  const auto generator_before = flat_state(trainer.generator());
  Rng rng(9);
  auto first = trainer.iterate(0, 0, rng);
  CHECK_FALSE(first.student_updated);
  CHECK(flat_state(s.student->model()) == student_before);
  CHECK(flat_state(trainer.generator()) != generator_before);
  auto later = trainer.iterate(1, 0, rng);
  CHECK(later.student_updated);
  CHECK(flat_state(s.student->model()) != student_before);
  for (float v : {first.g_loss, first.bns, first.g_ce, later.q_loss, later.q_kd, later.q_ce})
    CHECK(std::isfinite(v));
  CHECK(first.g_loss == doctest::Approx(first.g_ce + 0.1f * first.bns).epsilon(1e-4));
}

TEST_CASE(
    "GDFQ g_label_smoothing: the generator's CE uses smoothed targets (same images, other loss and step)") {
  auto run = [](float smoothing, std::vector<float>& generator) {
    Setup s(4);
    auto options = tiny();
    options.g_label_smoothing = smoothing;
    quant::GdfqTrainer trainer(*s.teacher, *s.student, options);
    Rng rng(9);
    trainer.begin_epoch(0);
    auto r = trainer.iterate(0, 0, rng);
    generator = flat_state(trainer.generator());
    return r;
  };
  std::vector<float> g_hard, g_smooth;
  const auto hard = run(0.0f, g_hard), smooth = run(0.5f, g_smooth);
  CHECK(hard.bns == doctest::Approx(smooth.bns));  // the same images before the step
  CHECK(smooth.g_ce != doctest::Approx(hard.g_ce));
  CHECK(smooth.g_loss == doctest::Approx(smooth.g_ce + 0.1f * smooth.bns).epsilon(1e-4));
  CHECK(g_smooth != g_hard);
}

TEST_CASE("GDFQ generator_init: he_fan_out starts the output conv ~20x wider than torch; bad names refused") {
  auto output_conv_std = [](const std::string& init) {
    Setup s(4);
    auto options = tiny();
    options.generator_init = init;
    quant::GdfqTrainer trainer(*s.teacher, *s.student, options);
    for (auto& [name, t] : trainer.generator().named_parameters())
      if (name == "conv_out.weight") {
        double sum = 0.0;
        for (float v : t.to_vector()) sum += static_cast<double>(v) * v;
        return std::sqrt(sum / static_cast<double>(t.numel()));
      }
    FAIL("no conv_out.weight");
    return 0.0;
  };
  // torch: U(+-1/sqrt(64*9)) has std 1/sqrt(3*576) = 0.024; he_fan_out: N(0, sqrt(2/9)) = 0.47.
  CHECK(output_conv_std("torch") == doctest::Approx(0.024).epsilon(0.15));
  CHECK(output_conv_std("he_fan_out") == doctest::Approx(0.471).epsilon(0.15));
  Setup s(4);
  auto bad = tiny();
  bad.generator_init = "xavier";
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("generator_init"),
                       Error);
  bad = tiny();
  bad.recalibrate_source = "gausian";
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad),
                       doctest::Contains("recalibrate_source"), Error);
}

TEST_CASE("GDFQ adversarial_weight: after the warm-up G also maximizes KD(Q, P); Q's own step is untouched") {
  auto run = [](float weight, quant::GdfqIteration& warm, quant::GdfqIteration& later,
                std::vector<float>& student, std::vector<float>& generator) {
    Setup s(4);
    auto options = tiny();
    options.freeze_epochs = 1, options.adversarial_weight = weight;
    quant::GdfqTrainer trainer(*s.teacher, *s.student, options);
    Rng rng(9);
    trainer.begin_epoch(0);
    warm = trainer.iterate(0, 0, rng);
    trainer.begin_epoch(1);
    later = trainer.iterate(1, 0, rng);
    student = flat_state(s.student->model());
    generator = flat_state(trainer.generator());
  };
  quant::GdfqIteration warm_off, later_off, warm_on, later_on;
  std::vector<float> q_off, g_off, q_on, g_on;
  run(0.0f, warm_off, later_off, q_off, g_off);
  run(3.0f, warm_on, later_on, q_on, g_on);
  CHECK(warm_on.g_adversarial == 0.0f);  // warm-up: no student in the generator's loss
  CHECK(later_off.g_adversarial == 0.0f);
  CHECK(later_on.g_adversarial > 0.0f);
  CHECK(later_on.g_loss ==
        doctest::Approx(later_on.g_ce + 0.1f * later_on.bns - 3.0f * later_on.g_adversarial).epsilon(1e-4));
  CHECK(later_on.g_ce == doctest::Approx(later_off.g_ce));
  CHECK(g_on != g_off);
  // The student learns from the batch drawn before the generator's step: the G-step's gradients on Q
  // must not leak into Q's update, so Q ends bit-identical.
  CHECK(q_on == q_off);
}

TEST_CASE(
    "GDFQ: a run interrupted after an epoch and resumed from its state ends where an uninterrupted run "
    "ends") {
  Setup a(2);
  quant::GdfqTrainer straight(*a.teacher, *a.student, tiny());
  straight.run(nullptr, nullptr);

  Setup c(2);
  auto second_leg = killed_and_resumed(2, tiny(), 1, c);
  CHECK(flat_state(c.student->model()) == flat_state(a.student->model()));
  CHECK(flat_state(second_leg->generator()) == flat_state(straight.generator()));
  CHECK(range_states(*c.student) == range_states(*a.student));
}

TEST_CASE(
    "GDFQ hooks: per-epoch evaluation is recorded and checkpointed; stop_requested stops between "
    "iterations") {
  auto options = tiny();
  options.epochs = 2, options.iterations = 1;
  Setup a(3);
  quant::GdfqTrainer trainer(*a.teacher, *a.student, options);
  quant::TrainingHooks<quant::GdfqIteration> hooks;
  int evaluations = 0;
  hooks.evaluate = [&](models::Classifier& student) {
    CHECK_FALSE(student.is_training());  // evaluated in eval mode, ranges frozen
    for (auto& site : a.student->activation_sites()) CHECK(site.observer->frozen());
    return 0.25 * ++evaluations;
  };
  Checkpoint saved;
  hooks.on_epoch_end = [&](std::int64_t) {
    saved = a.student->to_checkpoint();
    trainer.save_state(saved);
  };
  CHECK(trainer.run(hooks));
  REQUIRE(trainer.test_accuracy().size() == 2);
  CHECK(trainer.test_accuracy()[1].epoch == 2);
  CHECK(trainer.test_accuracy()[1].accuracy == 0.5);

  Setup b(3);
  quant::GdfqTrainer reloaded(*b.teacher, *b.student, options);
  reloaded.load_state(saved);
  REQUIRE(reloaded.test_accuracy().size() == 2);
  CHECK(reloaded.test_accuracy()[0].accuracy == 0.25);

  Setup c(3);
  quant::GdfqTrainer stopped(*c.teacher, *c.student, options);
  quant::TrainingHooks<quant::GdfqIteration> stop;
  int iterations = 0;
  stop.on_iteration = [&](const quant::GdfqIteration&) { ++iterations; };
  stop.stop_requested = [&] { return iterations == 1; };  // after the first epoch's only iteration
  CHECK_FALSE(stopped.run(stop));
  CHECK(iterations == 1);
  CHECK(stopped.epochs_done() == 1);
}

TEST_CASE("WeightAverage: an exponential moving average of the parameters; swap exchanges and restores") {
  Setup s(4);
  Module& model = s.student->model();
  auto params = model.named_parameters();
  REQUIRE_FALSE(params.empty());
  Tensor w = params.front().second;
  const float w0 = w.f32()[0];
  quant::WeightAverage average(model, 0.75f);
  average.update(0);  // the first update copies
  w.f32()[0] = w0 + 4.0f;
  average.update(0);  // 0.75 * w0 + 0.25 * (w0 + 4)
  average.swap();
  CHECK(w.f32()[0] == doctest::Approx(w0 + 1.0f));
  average.swap();
  CHECK(w.f32()[0] == doctest::Approx(w0 + 4.0f));
  Checkpoint saved;
  average.save(saved);
  quant::WeightAverage reloaded(model, 0.75f);
  reloaded.load(saved);
  CHECK(reloaded.updates() == 2);
  reloaded.swap();
  CHECK(w.f32()[0] == doctest::Approx(w0 + 1.0f));
  CHECK_THROWS_WITH_AS(quant::WeightAverage(model, 1.0f), doctest::Contains("decay"), Error);
  Checkpoint empty;
  CHECK_THROWS_WITH_AS(reloaded.load(empty), doctest::Contains("no weight average"), Error);
}

TEST_CASE("WeightAverage with a start epoch: before it the average is the weights, from it an EMA") {
  Setup s(4);
  Module& model = s.student->model();
  Tensor w = model.named_parameters().front().second;
  const float w0 = w.f32()[0];
  quant::WeightAverage average(model, 0.75f, /*start_epoch=*/2);
  average.update(0);
  w.f32()[0] = w0 + 8.0f;
  average.update(1);  // still before the start: a copy, the epoch-0 weights are forgotten
  w.f32()[0] = w0 + 12.0f;
  average.update(2);  // 0.75 * (w0 + 8) + 0.25 * (w0 + 12)
  average.swap();
  CHECK(w.f32()[0] == doctest::Approx(w0 + 9.0f));
  average.swap();
  // A plain average (start 0) keeps the epoch-0 weights in: 0.75 * (0.75 w0 + 0.25 (w0 + 8)) + 0.25 (w0 +
  // 12).
  w.f32()[0] = w0;
  quant::WeightAverage plain(model, 0.75f);
  plain.update(0);
  w.f32()[0] = w0 + 8.0f;
  plain.update(1);
  w.f32()[0] = w0 + 12.0f;
  plain.update(2);
  plain.swap();
  CHECK(w.f32()[0] == doctest::Approx(w0 + 4.5f));
}

TEST_CASE("GDFQ with weight_average: the final student is the average, and a resumed run ends the same") {
  auto options = tiny();
  options.weight_average = 0.5f;
  Setup a(6), plain(6);
  quant::GdfqTrainer averaged(*a.teacher, *a.student, options);
  averaged.run(nullptr, nullptr);
  auto no_average = options;
  no_average.weight_average = 0.0f;
  quant::GdfqTrainer raw(*plain.teacher, *plain.student, no_average);
  raw.run(nullptr, nullptr);
  // Same trajectory (the average never feeds back into training), different final weights.
  CHECK(flat_state(averaged.generator()) == flat_state(raw.generator()));
  CHECK(flat_state(a.student->model()) != flat_state(plain.student->model()));

  Setup c(6);
  killed_and_resumed(6, options, 2, c);
  CHECK(flat_state(c.student->model()) == flat_state(a.student->model()));

  // Averaging from the last epoch only (3 epochs: in the tiny budget's first the student does not train):
  // another final student than averaging from the start, and a resume still ends the same.
  auto early = options, late = options;
  early.epochs = late.epochs = 3;
  late.weight_average_epoch = 2;
  Setup d(6), e(6), f(6);
  quant::GdfqTrainer late_run(*d.teacher, *d.student, late), early_run(*f.teacher, *f.student, early);
  late_run.run(nullptr, nullptr);
  early_run.run(nullptr, nullptr);
  CHECK(flat_state(d.student->model()) != flat_state(f.student->model()));
  killed_and_resumed(6, late, 2, e);
  CHECK(flat_state(e.student->model()) == flat_state(d.student->model()));
  late.weight_average_epoch = options.epochs;
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*e.teacher, *e.student, late),
                       doctest::Contains("weight_average_epoch"), Error);
}

TEST_CASE("epoch_learning_rate: x0.1 at each milestone, or a per-epoch cosine to 0") {
  CHECK(quant::epoch_learning_rate(1.0f, "step", {2, 4}, 0, 6) == doctest::Approx(1.0f));
  CHECK(quant::epoch_learning_rate(1.0f, "step", {2, 4}, 2, 6) == doctest::Approx(0.1f));
  CHECK(quant::epoch_learning_rate(1.0f, "step", {2, 4}, 5, 6) == doctest::Approx(0.01f));
  CHECK(quant::epoch_learning_rate(2.0f, "cosine", {}, 0, 4) == doctest::Approx(2.0f));
  CHECK(quant::epoch_learning_rate(2.0f, "cosine", {}, 2, 4) == doctest::Approx(1.0f));
  CHECK(quant::epoch_learning_rate(2.0f, "cosine", {}, 3, 4) ==
        doctest::Approx(2.0f * (1 + std::cos(0.75 * M_PI)) / 2));
  CHECK_THROWS_WITH_AS(quant::epoch_learning_rate(1.0f, "linear", {}, 0, 4), doctest::Contains("lr_schedule"),
                       Error);
}

namespace {
// Feeds the student's observers one batch of huge inputs, as if the early generator had produced them.
void pollute_ranges(quant::Student& student) {
  Rng rng(77);
  student.set_phase(quant::Phase::calibrate);
  NoGrad no_grad;
  student.model().forward(ops::mul_scalar(randn({4, 1, 32, 32}, rng), 1000.0f));
  student.set_phase(quant::Phase::quantized);
}
}  // namespace

TEST_CASE(
    "GDFQ recalibrate_batches: when the ranges freeze they are re-observed on fresh generator batches, so "
    "earlier observations no longer count; a resumed run still ends the same") {
  auto options = tiny();
  options.recalibrate_batches = 2;
  auto ranges_after_freeze = [&](bool polluted, std::int64_t recalibrate) {
    Setup s(4);
    auto o = options;
    o.recalibrate_batches = recalibrate;
    quant::GdfqTrainer trainer(*s.teacher, *s.student, o);
    trainer.begin_epoch(0);
    Rng rng(3);
    for (int i = 0; i < 2; ++i) trainer.iterate(0, i, rng);
    if (polluted) pollute_ranges(*s.student);
    trainer.begin_epoch(o.freeze_epochs);
    for (auto& site : s.student->activation_sites())
      if (site.observations > 0) {
        CHECK(site.observer->frozen());
        if (recalibrate > 0) CHECK(site.observations == recalibrate);
      }
    return range_states(*s.student);
  };
  CHECK(ranges_after_freeze(true, 2) == ranges_after_freeze(false, 2));
  CHECK(ranges_after_freeze(true, 0) != ranges_after_freeze(false, 0));  // the check can fail
  CHECK(ranges_after_freeze(false, 2) != ranges_after_freeze(false, 0));

  Setup a(5), c(5);
  quant::GdfqTrainer straight(*a.teacher, *a.student, options);
  straight.run(nullptr, nullptr);
  killed_and_resumed(5, options, options.freeze_epochs, c);  // killed just before the recalibration
  CHECK(flat_state(c.student->model()) == flat_state(a.student->model()));
  CHECK(range_states(*c.student) == range_states(*a.student));
}

TEST_CASE(
    "GDFQ replay + augment: the student's batch mixes past images and is transformed, the teacher labels "
    "it; a killed and resumed run ends exactly as an uninterrupted one") {
  auto options = tiny();
  options.q_ce_weight = 0.0f, options.replay = 8, options.replay_fraction = 0.5f,
  options.augment = "flip_shift";
  options.augment_shift = 1;
  Setup a(7), b(7);
  quant::GdfqTrainer full(*a.teacher, *a.student, options);
  full.run(nullptr, nullptr);
  auto plain = options;
  plain.replay = 0, plain.augment = "none";
  quant::GdfqTrainer plain_trainer(*b.teacher, *b.student, plain);
  plain_trainer.run(nullptr, nullptr);
  CHECK(flat_state(a.student->model()) != flat_state(b.student->model()));

  Setup c(7);
  auto resumed = killed_and_resumed(7, options, 2, c);
  CHECK(flat_state(c.student->model()) == flat_state(a.student->model()));
  CHECK(flat_state(resumed->generator()) == flat_state(full.generator()));

  Setup s(7);
  auto bad = options;
  bad.q_ce_weight = 1.0f;
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("q_ce_weight"),
                       Error);
  bad = options, bad.replay_fraction = 0.0f;
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("replay_fraction"),
                       Error);
  bad = options, bad.augment = "crop";
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("augment"), Error);
  bad = options, bad.mixup_fraction = 1.5f;
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("mixup_fraction"),
                       Error);

  // Adding mixup changes what the student learns from.
  auto mixed = options;
  mixed.augment = "flip_shift+mixup";
  Setup d(7);
  quant::GdfqTrainer mixed_trainer(*d.teacher, *d.student, mixed);
  mixed_trainer.run(nullptr, nullptr);
  CHECK(flat_state(d.student->model()) != flat_state(a.student->model()));
}

TEST_CASE("GDFQ q_steps: more student steps per generator step, on fresh samples; G's step is the same") {
  auto run = [](std::int64_t q_steps, std::vector<float>& generator) {
    Setup s(3);
    auto options = tiny();
    options.q_steps = q_steps;
    quant::GdfqTrainer trainer(*s.teacher, *s.student, options);
    trainer.begin_epoch(1);  // after the warm-up: the student trains
    Rng rng(9);
    auto r = trainer.iterate(1, 0, rng);
    CHECK(r.student_updated);
    CHECK(std::isfinite(r.q_loss));
    generator = flat_state(trainer.generator());
    return flat_state(s.student->model());
  };
  std::vector<float> g_one, g_three;
  const auto one = run(1, g_one), three = run(3, g_three);
  CHECK(one != three);
  CHECK(g_one == g_three);
  Setup s(3);
  auto bad = tiny();
  bad.q_steps = 0;
  CHECK_THROWS_WITH_AS(quant::GdfqTrainer(*s.teacher, *s.student, bad), doctest::Contains("q_steps"), Error);
  quant::GdfqOptions named;  // reachable by name, as zsq quantize --opt q_steps=N passes it
  quant::set_option(named.fields(), "q_steps=2", "gdfq");
  CHECK(named.q_steps == 2);
}
