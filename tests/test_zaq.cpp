#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "models/zoo.h"
#include "ops/elementwise.h"
#include "quant/methods/zaq.h"
#include "tests/testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
// A tiny teacher and its 4-bit student (EMA activation ranges unless told; the recalibration tests use
// MSE), both from one seed; `rng` is as the teacher's init left it.
struct ZaqSetup {
  Rng rng;
  std::shared_ptr<models::Classifier> teacher;
  std::unique_ptr<quant::Student> student;
  explicit ZaqSetup(std::uint64_t seed, quant::ObserverKind observer = quant::ObserverKind::ema)
      : rng(seed), teacher(tiny_resnet_teacher(rng)) {
    auto config = quant::QConfig::paper(4, 4);
    config.act_observer = observer;
    student = std::make_unique<quant::Student>(tiny_resnet_spec(), *teacher, config);
  }
};
}  // namespace

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
  ZaqSetup s(2);
  auto options = quant::ZaqOptions::budget("quick");
  options.batch = 4, options.q_steps = 2, options.iterations = 1, options.epochs = 1;
  quant::ZaqTrainer trainer(*s.teacher, *s.student, options);
  auto& student = *s.student;
  auto flat = [](const Module& m) { return flat_state(m); };
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
    ZaqSetup s(6, quant::ObserverKind::mse);
    auto& rng = s.rng;
    quant::Student& student = *s.student;
    auto options = quant::ZaqOptions::budget("tiny");
    options.freeze_epochs = 1, options.recalibrate_batches = 2;
    quant::ZaqTrainer trainer(*s.teacher, student, options);
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
    ZaqSetup s(6, quant::ObserverKind::mse);
    auto& rng = s.rng;
    quant::Student& student = *s.student;
    auto options = quant::ZaqOptions::budget("tiny");
    options.freeze_epochs = 1, options.recalibrate_batches = 2, options.recalibrate_source = source;
    quant::ZaqTrainer trainer(*s.teacher, student, options);
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

TEST_CASE("SampleReplay: keeps every image until full, then a uniform reservoir of all it was offered") {
  const Shape image{1, 2, 2};
  auto images = [](std::int64_t first, std::int64_t n) {  // image i is filled with the value i
    Tensor t = Tensor::empty({n, 1, 2, 2});
    for (std::int64_t i = 0; i < n; ++i)
      for (int j = 0; j < 4; ++j) t.f32()[i * 4 + j] = static_cast<float>(first + i);
    return t;
  };
  Rng rng(3);
  quant::SampleReplay replay(8, image);
  replay.add(images(0, 5), rng);
  CHECK(replay.size() == 5);
  // While not full, every image is held: 200 draws see each of 0..4 and nothing else.
  std::set<float> drawn;
  const auto draws = replay.sample(200, rng).to_vector();
  for (std::size_t i = 0; i < draws.size(); i += 4) {
    CHECK(draws[i] == draws[i + 3]);  // whole images are copied
    drawn.insert(draws[i]);
  }
  CHECK(drawn == std::set<float>{0, 1, 2, 3, 4});

  // Reservoir: offered 0..999 into 100 slots, about half of what is held comes from the first half (a
  // FIFO memory would hold only 900..999). Averaged over 20 reservoirs: expectation 50, sd ~1.1.
  double first_half = 0;
  for (int trial = 0; trial < 20; ++trial) {
    quant::SampleReplay big(100, image);
    for (std::int64_t start = 0; start < 1000; start += 50) big.add(images(start, 50), rng);
    CHECK(big.size() == 100);
    CHECK(big.seen() == 1000);
    Checkpoint saved;
    big.save(saved);
    const auto held = saved.find("replay.images")->to_vector();
    std::set<float> distinct;
    for (std::size_t i = 0; i < held.size(); i += 4) distinct.insert(held[i]);
    CHECK(distinct.size() == 100);  // no image held twice
    first_half +=
        static_cast<double>(std::count_if(distinct.begin(), distinct.end(), [](float v) { return v < 500; }));
  }
  CHECK(first_half / 20 == doctest::Approx(50).epsilon(0.1));

  // Save and load restore the memory exactly; a memory of another capacity or none at all is refused.
  Checkpoint saved;
  saved.path = "state.safetensors";
  replay.save(saved);
  quant::SampleReplay restored(8, image);
  restored.load(saved);
  CHECK(restored.size() == 5);
  CHECK(restored.seen() == 5);
  Rng a(9), b(9);
  CHECK(restored.sample(16, a).to_vector() == replay.sample(16, b).to_vector());
  quant::SampleReplay other(16, image);
  CHECK_THROWS_WITH_AS(other.load(saved), doctest::Contains("replay.images"), Error);
  Checkpoint none;
  none.path = "plain.safetensors";
  CHECK_THROWS_WITH_AS(restored.load(none), doctest::Contains("no replay memory"), Error);
  CHECK_THROWS_WITH_AS(replay.add(Tensor::zeros({2, 1, 3, 3}), rng), doctest::Contains("[N, 1, 2, 2]"),
                       Error);
  CHECK_THROWS_AS(quant::SampleReplay(0, image), Error);
  CHECK_THROWS_AS(quant::SampleReplay(4, image).sample(1, rng), Error);
}

TEST_CASE("concat_batches: the rows of a, then the rows of b") {
  Tensor a = Tensor::from_vector({1, 2}, {1, 2}), b = Tensor::from_vector({2, 2}, {3, 4, 5, 6});
  Tensor c = quant::concat_batches(a, b);
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.to_vector() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK_THROWS_AS(quant::concat_batches(a, Tensor::zeros({2, 3})), Error);
}

TEST_CASE(
    "ZAQ replay: student batches mix past generated images in, the batch size stays, and a killed and "
    "resumed run ends exactly as an uninterrupted one") {
  auto options = quant::ZaqOptions::budget("tiny");
  options.epochs = 3, options.replay = 16, options.replay_fraction = 0.25f;
  auto construct = [](const quant::ZaqOptions& o) {
    ZaqSetup s(5);
    quant::ZaqTrainer trainer(*s.teacher, *s.student, o);
  };
  auto bad = options;
  bad.replay_fraction = 1.0f;
  CHECK_THROWS_WITH_AS(construct(bad), doctest::Contains("replay_fraction"), Error);
  bad = options;
  bad.replay = -1;
  CHECK_THROWS_WITH_AS(construct(bad), doctest::Contains("replay"), Error);

  ZaqSetup a(5), b(5);
  quant::ZaqTrainer full(*a.teacher, *a.student, options);
  full.run(nullptr, nullptr);
  auto plain_options = options;
  plain_options.replay = 0;
  quant::ZaqTrainer plain(*b.teacher, *b.student, plain_options);
  plain.run(nullptr, nullptr);
  CHECK(flat_state(a.student->model()) != flat_state(b.student->model()));  // replay changes the data

  Checkpoint saved;
  {
    ZaqSetup s(5);
    quant::ZaqTrainer first_leg(*s.teacher, *s.student, options);
    CHECK_THROWS_AS(first_leg.run(nullptr,
                                  [&](std::int64_t done) {
                                    saved = s.student->to_checkpoint();
                                    first_leg.save_state(saved);
                                    if (done == 2) throw std::runtime_error("simulated kill");
                                  }),
                    std::runtime_error);
  }
  CHECK(saved.contains("replay.images"));
  ZaqSetup c(5);
  auto reloaded = quant::Student::from_checkpoint(saved);
  c.student->model().load_state(reloaded->model().named_state(), "saved");
  quant::ZaqTrainer resumed(*c.teacher, *c.student, options);
  resumed.load_state(saved);
  CHECK(resumed.epochs_done() == 2);
  resumed.run(nullptr, nullptr);
  CHECK(flat_state(c.student->model()) == flat_state(a.student->model()));
  CHECK(flat_state(resumed.generator()) == flat_state(full.generator()));
}

TEST_CASE("ZAQ q_kd_weight: the student's loss is q_output_weight * L1 + alpha * features + w * KD") {
  auto run = [](float output_weight, float kd_weight) {
    ZaqSetup s(2);
    auto options = quant::ZaqOptions::budget("tiny");
    options.q_steps = 1, options.q_output_weight = output_weight, options.q_kd_weight = kd_weight;
    options.temperature = 2.0f;
    quant::ZaqTrainer trainer(*s.teacher, *s.student, options);
    trainer.begin_epoch(0);
    Rng step(4);
    auto r =
        trainer.iterate(0, 0, step);  // before the student's state is read (argument order is unspecified)
    return std::make_pair(r, flat_state(s.student->model()));
  };
  const auto [plain, plain_student] = run(1.0f, 0.0f);
  const auto [mixed, mixed_student] = run(0.5f, 3.0f);
  CHECK(plain.q_kd == 0.0f);
  CHECK(plain.q_loss == doctest::Approx(plain.q_output + plain.q_feature).epsilon(1e-5));
  // The same first batch (the student has not moved yet when its loss is measured), another loss and step.
  CHECK(mixed.q_output == doctest::Approx(plain.q_output));
  CHECK(mixed.q_kd > 0.0f);
  CHECK(mixed.q_loss ==
        doctest::Approx(0.5f * mixed.q_output + mixed.q_feature + 3.0f * mixed.q_kd).epsilon(1e-5));
  CHECK(mixed_student != plain_student);
  auto bad = quant::ZaqOptions::budget("tiny");
  bad.q_output_weight = 0.0f;
  ZaqSetup s(2);
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, *s.student, bad), doctest::Contains("q_kd_weight"),
                       Error);
}

TEST_CASE(
    "ZAQ bns_weight: G's loss gains w * the teacher's BN-statistics loss of its batch; off by default") {
  auto run = [](float bns_weight, quant::ZaqIteration& r) {
    ZaqSetup s(2);
    auto options = quant::ZaqOptions::budget("tiny");
    options.bns_weight = bns_weight;
    quant::ZaqTrainer trainer(*s.teacher, *s.student, options);
    trainer.begin_epoch(0);
    Rng rng(3);
    r = trainer.iterate(0, 0, rng);
    return flat_state(trainer.generator());
  };
  quant::ZaqIteration off, on;
  const auto g_off = run(0.0f, off), g_on = run(4.0f, on);
  CHECK(off.g_bns == 0.0f);
  CHECK(on.g_bns > 0.0f);
  CHECK(on.g_output == doctest::Approx(off.g_output));  // the same G-step batch
  CHECK(on.g_loss == doctest::Approx(off.g_loss + 4.0f * on.g_bns).epsilon(1e-4));
  CHECK(g_on != g_off);
  // The taps are removed after the step: a later plain teacher forward records nothing.
  ZaqSetup s(2);
  for (auto* bn : s.teacher->batch_norms()) CHECK_FALSE(static_cast<bool>(bn->input_tap));
  auto bad = quant::ZaqOptions::budget("tiny");
  bad.bns_weight = -1.0f;
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, *s.student, bad), doctest::Contains("bns_weight"),
                       Error);
}

TEST_CASE("ZAQ augment=flip_shift: the student learns from transformed batches; bad names refused") {
  auto run = [](const std::string& augment) {
    ZaqSetup s(2);
    auto options = quant::ZaqOptions::budget("tiny");
    options.augment = augment;
    quant::ZaqTrainer trainer(*s.teacher, *s.student, options);
    trainer.begin_epoch(0);
    Rng rng(3);
    auto r = trainer.iterate(0, 0, rng);
    CHECK(std::isfinite(r.q_loss));
    return flat_state(s.student->model());
  };
  CHECK(run("flip_shift") != run("none"));
  CHECK(run("mixup") != run("none"));
  CHECK(run("mixup") != run("flip_shift+mixup"));
  ZaqSetup s(2);
  auto bad = quant::ZaqOptions::budget("tiny");
  bad.augment = "crop";
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, *s.student, bad), doctest::Contains("augment"), Error);
}

TEST_CASE("ZAQ recalibrate_epochs: a later listed epoch re-observes the ranges on the trained student") {
  ZaqSetup s(6, quant::ObserverKind::mse);
  auto& rng = s.rng;
  quant::Student& student = *s.student;
  auto options = quant::ZaqOptions::budget("tiny");
  options.epochs = 4, options.freeze_epochs = 1, options.recalibrate_batches = 2;
  options.recalibrate_epochs = {3};
  options.q_lr = 0.05f;  // the student must move between the recalibrations
  quant::ZaqTrainer trainer(*s.teacher, student, options);
  auto states = [&] {
    std::vector<std::vector<float>> out;
    for (auto& site : student.activation_sites()) out.push_back(site.observer->state());
    return out;
  };
  trainer.begin_epoch(0);
  trainer.iterate(0, 0, rng);
  trainer.begin_epoch(1);
  const auto at_freeze = states();
  trainer.iterate(1, 0, rng);
  trainer.begin_epoch(2);
  CHECK(states() == at_freeze);  // epoch 2 is not listed: the frozen ranges stay
  trainer.iterate(2, 0, rng);
  trainer.begin_epoch(3);
  CHECK(states() != at_freeze);
  for (auto& site : student.activation_sites())
    if (site.observations > 0) CHECK(site.observations == 2);

  auto bad = options;
  bad.recalibrate_epochs = {1};  // not after the freeze
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, student, bad), doctest::Contains("recalibrate_epochs"),
                       Error);
  bad.recalibrate_epochs = {4};  // past the last epoch
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, student, bad), doctest::Contains("recalibrate_epochs"),
                       Error);
  bad.recalibrate_epochs = {2}, bad.recalibrate_batches = 0;
  CHECK_THROWS_WITH_AS(quant::ZaqTrainer(*s.teacher, student, bad), doctest::Contains("recalibrate_batches"),
                       Error);
}
