// Deploy conversion and the integer runner: the integer model computes what the fake-quant student
// computes (inputs on the input grid, so the only differences are the int32 bias rounding and the odd
// rounding tie), the file round-trips exactly, and bad files are refused with messages naming the field.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/checkpoint.h"
#include "models/zoo.h"
#include "ops/cpu/gemm_int4.h"
#include "quant/distill.h"
#include "quant/integer_model.h"
#include "quant/integer_runner.h"
#include "quant/student.h"
#include "tests/testing.h"

using namespace zsq;
namespace fs = std::filesystem;

namespace {

// A small ResNet-20 (width 8) with non-trivial BN statistics and some negative BN gammas (folding must
// flip those channels' weight signs).
std::shared_ptr<models::Classifier> small_teacher(models::ModelSpec& spec) {
  Rng rng(3);
  spec = models::resolve_model_spec("resnet20", {{"width", 8}});
  auto model = models::build_model(spec, rng);
  for (int i = 0; i < 3; ++i) model->forward(randn({16, 1, 32, 32}, rng));
  int index = 0;
  for (auto* bn : model->batch_norms())
    for (std::int64_t c = 0; c < bn->channels(); ++c, ++index) {
      bn->weight.f32()[c] = (index % 7 == 0 ? -1.0f : 1.0f) * (0.5f + 0.1f * static_cast<float>(index % 5));
      bn->bias.f32()[c] = 0.05f * static_cast<float>(index % 9) - 0.2f;
    }
  model->eval();
  return model;
}

std::unique_ptr<quant::Student> calibrated_student(const models::ModelSpec& spec,
                                                   const models::Classifier& teacher,
                                                   const quant::QConfig& config) {
  auto student = std::make_unique<quant::Student>(spec, teacher, config);
  Rng rng(5);
  NoGrad no_grad;
  student->model().eval();
  student->set_phase(quant::Phase::calibrate);
  for (int i = 0; i < 2; ++i) student->model().forward(quant::gaussian_inputs(32, 1, 32, rng));
  student->freeze_ranges();
  student->set_phase(quant::Phase::quantized);
  return student;
}

// Images whose values lie exactly on the model's 8-bit input grid.
Tensor images_on_grid(const quant::IntegerModel& m, std::int64_t n, Rng& rng) {
  Tensor x = randn({n, 1, 32, 32}, rng);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const float u = std::clamp(
        std::nearbyint(x.f32()[i] / m.input.scale) + static_cast<float>(m.input.zero_point), 0.0f, 255.0f);
    x.f32()[i] = m.input.scale * (u - static_cast<float>(m.input.zero_point));
  }
  return x;
}

void check_logits_agree(const Tensor& got, const Tensor& want, double tolerance) {
  REQUIRE(got.shape() == want.shape());
  double max_abs = 0, max_diff = 0;
  std::int64_t argmax_diff = 0;
  const auto classes = want.size(1);
  for (std::int64_t i = 0; i < want.size(0); ++i) {
    std::int64_t ga = 0, wa = 0;
    for (std::int64_t c = 0; c < classes; ++c) {
      const auto k = i * classes + c;
      max_abs = std::max(max_abs, std::fabs(double(want.f32()[k])));
      max_diff = std::max(max_diff, std::fabs(double(got.f32()[k]) - want.f32()[k]));
      if (got.f32()[k] > got.f32()[i * classes + ga]) ga = c;
      if (want.f32()[k] > want.f32()[i * classes + wa]) wa = c;
    }
    argmax_diff += ga != wa;
  }
  INFO("max |logit| " << max_abs << ", max difference " << max_diff << ", argmax differs on " << argmax_diff);
  CHECK(max_diff <= tolerance * max_abs);
  CHECK(argmax_diff <= want.size(0) / 16);
}

}  // namespace

TEST_CASE("the integer model reproduces the deploy fake-quant student") {
  models::ModelSpec spec;
  auto teacher = small_teacher(spec);
  // mse: the integer weights must come from the same clipped ranges as the student's (and differ from
  // the minmax ones: otherwise neither side may have clipped at all).
  std::vector<std::int8_t> minmax_w4_weights;
  for (const auto& [wbits, abits, tolerance, weight_observer] :
       {std::tuple{8, 8, 0.02, "minmax"}, std::tuple{4, 4, 0.05, "minmax"}, std::tuple{4, 4, 0.05, "mse"}}) {
    CAPTURE(wbits);
    const std::string observer = weight_observer;
    CAPTURE(observer);
    auto config = quant::QConfig::deploy(wbits, abits);
    config.set(fmt::format("weight_observer={}", weight_observer));
    auto student = calibrated_student(spec, *teacher, config);
    const auto m = quant::convert_to_integer(*student, {-0.8102f, 2.0227f, 32, 32});
    CHECK(m.max_weight_bits() == 8);  // first and last layers stay 8-bit in the deploy convention
    CHECK(m.min_weight_bits() == wbits);
    CHECK(m.input.zero_point == 73);
    if (wbits == 4 && observer == "minmax") minmax_w4_weights = m.blocks.at(0).conv1.weight;
    if (observer == "mse") CHECK(m.blocks.at(0).conv1.weight != minmax_w4_weights);
    quant::IntegerRunner runner(m);
    Rng rng(11);
    const Tensor x = images_on_grid(m, 40, rng);
    Tensor want;
    {
      NoGrad no_grad;
      want = student->model().forward(x);
    }
    check_logits_agree(runner.forward(x), want, tolerance);
    for (const auto& [layer, impl] : runner.implementations(40))
      if (layer.ends_with(".shortcut") && wbits == 4 && ops::cpu::has_avx512_vnni())
        CHECK_MESSAGE(impl.find("int4") != std::string::npos, layer << ": " << impl);
    for (const auto& [layer, impl] : runner.implementations(40))
      CHECK_MESSAGE(impl.find("ref") == std::string::npos, layer << ": " << impl);

    // File round trip: identical logits.
    const auto path = (fs::temp_directory_path() /
                       fmt::format("zsq_int_{}_{}_{}.safetensors", ::getpid(), wbits, weight_observer))
                          .string();
    quant::save_integer_model(path, m);
    const Checkpoint raw = load_checkpoint(path);
    if (wbits == 4) CHECK(raw.at("stage1.0.conv1.weight").dtype() == DType::u8);  // packed nibbles
    CHECK(raw.at("stem.weight").dtype() == DType::s8);
    quant::IntegerRunner reloaded(quant::load_integer_model(path));
    const Tensor a = runner.forward(x), b = reloaded.forward(x);
    CHECK(a.to_vector() == b.to_vector());
    fs::remove(path);
  }
}

TEST_CASE("a student with learned activation ranges and weight ratios exports what it learned") {
  models::ModelSpec spec;
  auto teacher = small_teacher(spec);
  auto config = quant::QConfig::deploy(4, 4);
  config.set("act_range=learned");
  config.set("weight_range=learned");
  auto student = calibrated_student(spec, *teacher, config);
  const auto observed = quant::convert_to_integer(*student, {-0.8102f, 2.0227f, 32, 32});
  // As if training had tightened them: activation ranges x0.7, weight clip ratios x0.8.
  for (auto& site : student->activation_sites())
    if (site.observations > 0) site.learned_hi.f32()[0] *= 0.7f;
  for (auto& site : student->weight_sites())
    for (std::int64_t c = 0; c < site.learned_ratio.numel(); ++c) site.learned_ratio.f32()[c] *= 0.8f;
  const auto m = quant::convert_to_integer(*student, {-0.8102f, 2.0227f, 32, 32});
  CHECK(m.blocks.at(0).conv1.output.scale == doctest::Approx(0.7 * observed.blocks.at(0).conv1.output.scale));
  CHECK(m.blocks.at(0).conv1.weight != observed.blocks.at(0).conv1.weight);
  quant::IntegerRunner runner(m);
  Rng rng(12);
  const Tensor x = images_on_grid(m, 40, rng);
  Tensor want;
  {
    NoGrad no_grad;
    want = student->model().forward(x);
  }
  check_logits_agree(runner.forward(x), want, 0.05);
}

TEST_CASE("integer conversion refuses what it cannot represent") {
  models::ModelSpec spec;
  auto teacher = small_teacher(spec);
  auto paper = calibrated_student(spec, *teacher, quant::QConfig::paper(8, 8));
  CHECK_THROWS_WITH_AS(quant::convert_to_integer(*paper, {}), doctest::Contains("--convention deploy"),
                       Error);
  auto deploy = calibrated_student(spec, *teacher, quant::QConfig::deploy(8, 8));
  CHECK_THROWS_WITH_AS(quant::convert_to_integer(*deploy, {1.0f, 1.0f, 32, 32}),
                       doctest::Contains("input range"), Error);
}

TEST_CASE("corrupt integer model files are refused naming the field") {
  models::ModelSpec spec;
  auto teacher = small_teacher(spec);
  auto student = calibrated_student(spec, *teacher, quant::QConfig::deploy(4, 4));
  const auto m = quant::convert_to_integer(*student, {-0.8102f, 2.0227f, 32, 32});
  const Checkpoint good = quant::integer_model_to_checkpoint(m);
  auto expect_error = [&](Checkpoint c, const std::string& text) {
    c.path = "bad.safetensors";
    CHECK_THROWS_WITH_AS(quant::integer_model_from_checkpoint(c), doctest::Contains(text.c_str()), Error);
  };
  {
    Checkpoint c = good;
    c.metadata["zsq.format"] = "something-else";
    expect_error(c, "not a zsq integer model");
  }
  {
    Checkpoint c = good;
    auto j = nlohmann::json::parse(c.metadata["zsq.int.model"]);
    j["blocks"][0]["conv1"]["weight_bits"] = 12;
    c.metadata["zsq.int.model"] = j.dump();
    expect_error(c, "blocks[0].conv1.weight_bits");
  }
  {
    Checkpoint c = good;
    auto j = nlohmann::json::parse(c.metadata["zsq.int.model"]);
    j["stem"]["output"]["scale"] = -1.0;
    c.metadata["zsq.int.model"] = j.dump();
    expect_error(c, "stem.output.scale");
  }
  {
    Checkpoint c = good;
    c.metadata["zsq.int.model"] = "{not json";
    expect_error(c, "not valid JSON");
  }
  {
    Checkpoint c;
    c.metadata = good.metadata;
    for (const auto& [name, t] : good.tensors)
      if (name != "fc.bias") c.add(name, t);
    expect_error(c, "fc.bias");
  }
  {
    Checkpoint c;
    c.metadata = good.metadata;
    for (const auto& [name, t] : good.tensors) {
      if (name == "stem.weight") {
        Tensor bad = Tensor::empty(t.shape(), DType::s8);
        std::fill(bad.data<std::int8_t>(), bad.data<std::int8_t>() + bad.numel(), std::int8_t{-128});
        c.add(name, bad);
      } else {
        c.add(name, t);
      }
    }
    expect_error(c, "outside the 8-bit range");
  }
}
