// zsq bench train|infer: median images/s of a full training step (forward, cross-entropy, backward,
// SGD update) or of eval-mode inference, on random inputs, after warm-up steps. Inference also reports
// latency percentiles at batch 1 and at --batch, and runs integer models (--int8 / --int4) on the
// integer kernels.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "models/model_file.h"
#include "models/zoo.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/loss.h"
#include "quant/distill.h"
#include "quant/integer_runner.h"
#include "quant/student.h"
#include "tools/commands.h"
#include "tools/datasets/fashion_mnist.h"

namespace zsq::cli {

namespace {
struct BenchOptions {
  CommonOptions common;
  std::string mode, model = "resnet20";
  Device device;  // from --device (CommonOptions)
  std::int64_t batch = 128, warmup = 5, steps = 30;
  bool json = false, int8 = false, int4 = false;
};

struct Timing {
  double p50 = 0, p99 = 0, min = 0;
};

Timing percentiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * double(v.size() - 1) + 0.5))];
  };
  const auto n = v.size();
  const double median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {median, at(0.99), v.front()};
}

// GPU work is queued asynchronously: each timed step ends with a synchronize so it counts the device's
// time, not the launch time.
Timing time_steps(const std::function<void()>& step, std::int64_t warmup, std::int64_t steps, Device device) {
  for (std::int64_t i = 0; i < warmup; ++i) step();
  if (device.is_cuda()) cuda::synchronize();
  std::vector<double> seconds;
  for (std::int64_t i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    if (device.is_cuda()) cuda::synchronize();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return percentiles(seconds);
}

// What runs: a float model (by architecture name or file) or an integer model (a file from `zsq export
// --int`, or a float model quantized on the spot with Gaussian calibration when --int8/--int4 is given).
struct Subject {
  std::string description;
  std::int64_t in_channels = 1;
  std::shared_ptr<models::Classifier> model;
  std::unique_ptr<quant::IntegerRunner> runner;
  std::function<void(const Tensor&)> infer;
};

Subject load_subject(const BenchOptions& o, Rng& rng) {
  Subject s;
  const bool is_file = std::filesystem::exists(o.model);
  if (is_file) {
    const Checkpoint ckpt = load_checkpoint(o.model);
    if (quant::is_integer_model_checkpoint(ckpt)) {
      s.runner = std::make_unique<quant::IntegerRunner>(quant::integer_model_from_checkpoint(ckpt));
      const auto& m = s.runner->model();
      ZSQ_CHECK(!o.int4 || m.min_weight_bits() <= 4, "--int4: {} has no weights of 4 bits or fewer", o.model);
      ZSQ_CHECK(!o.int8 || m.min_weight_bits() == 8,
                "--int8: {} holds {}-bit weights (use --int4, or export a W8A8 student)", o.model,
                m.min_weight_bits());
      s.description = fmt::format("{} integer (weights {}-{} bits) from {}", m.arch, m.min_weight_bits(),
                                  m.max_weight_bits(), o.model);
      s.in_channels = m.in_channels;
      return s;
    }
    ZSQ_CHECK(!quant::Student::is_student_checkpoint(ckpt),
              "{} is a fake-quant student; benchmark its integer form: `zsq export --int {} --out MODEL`",
              o.model, o.model);
    auto loaded = models::model_from_checkpoint(ckpt);
    s.model = loaded.model;
    s.description = loaded.spec.name + " from " + o.model;
    s.in_channels = loaded.spec.config.at("in_channels").get<std::int64_t>();
    if (o.int8 || o.int4) {
      const int bits = o.int4 ? 4 : 8;
      quant::Student student(loaded.spec, *loaded.model, quant::QConfig::deploy(bits, bits));
      NoGrad no_grad;  // the integer conversion below reads the weights without a graph
      student.calibrate(1, [&](std::int64_t) { return quant::gaussian_inputs(64, s.in_channels, 32, rng); });
      s.runner = std::make_unique<quant::IntegerRunner>(
          quant::convert_to_integer(student, {kFashionBlack, fashion_normalize(255), 32, 32}));
      s.description = fmt::format("{} integer W{}A{} (deploy, Gaussian-calibrated for timing only)",
                                  loaded.spec.name, bits, bits);
    }
    return s;
  }
  ZSQ_CHECK(!(o.int8 || o.int4),
            "--int8/--int4 need a model file (a teacher or an exported integer model); '{}' "
            "is not a file",
            o.model);
  auto spec = models::resolve_model_spec(o.model);
  s.model = models::build_model(spec, rng);
  s.description = spec.name + " (random weights)";
  s.in_channels = spec.config.at("in_channels").get<std::int64_t>();
  return s;
}

void run_train(const BenchOptions& o, Subject& s, Rng& rng) {
  ZSQ_CHECK(s.model != nullptr, "bench train needs a float model, not an integer one");
  auto& model = *s.model;
  model.to(o.device);
  Tensor images = randn({o.batch, s.in_channels, 32, 32}, rng).to(o.device);
  Tensor labels = Tensor::empty({o.batch}, DType::s32);
  for (std::int64_t i = 0; i < o.batch; ++i)
    labels.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(model.num_classes())));
  labels = labels.to(o.device);
  Sgd sgd(model.parameters(), {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  model.train(true);
  const auto t = time_steps(
      [&] {
        Tensor loss = ops::cross_entropy(model.forward(images), labels);
        sgd.zero_grad();
        loss.backward();
        sgd.step();
      },
      o.warmup, o.steps, o.device);
  const double img_per_s = static_cast<double>(o.batch) / t.p50;
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"mode", o.mode},
                                      {"model", o.model},
                                      {"batch", o.batch},
                                      {"threads", omp_get_max_threads()},
                                      {"device", o.device.str()},
                                      {"steps", o.steps},
                                      {"warmup", o.warmup},
                                      {"median_ms", t.p50 * 1e3},
                                      {"img_per_s", img_per_s},
                                      {"min_ms", t.min * 1e3}}
                           .dump());
  } else {
    fmt::print("{} train batch {} on {}: median {:.2f} ms/step, {:.0f} img/s ({} steps after {} warm-up)\n",
               s.description, o.batch,
               o.device.is_cuda() ? o.device.str() : fmt::format("{} threads", omp_get_max_threads()),
               t.p50 * 1e3, img_per_s, o.steps, o.warmup);
  }
}

void run_infer(const BenchOptions& o, Subject& s, Rng& rng) {
  if (s.model) {
    s.model->eval();
    s.model->to(o.device);
  }
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::int64_t> batches{1};
  if (o.batch != 1) batches.push_back(o.batch);
  for (const auto batch : batches) {
    Tensor images = randn({batch, s.in_channels, 32, 32}, rng).to(o.device);
    NoGrad no_grad;
    // Batch 1 is a latency measurement: more steps, so that p99 means something.
    const auto steps = batch == 1 ? std::max<std::int64_t>(o.steps, 200) : o.steps;
    const auto t = time_steps(
        [&] {
          if (s.runner)
            s.runner->forward(images);
          else
            s.model->forward(images);
        },
        o.warmup, steps, o.device);
    rows.push_back({{"batch", batch},
                    {"steps", steps},
                    {"p50_ms", t.p50 * 1e3},
                    {"p99_ms", t.p99 * 1e3},
                    {"min_ms", t.min * 1e3},
                    {"img_per_s", static_cast<double>(batch) / t.p50}});
  }
  nlohmann::json implementations = nlohmann::json::object();
  if (s.runner)
    for (const auto& [layer, impl] : s.runner->implementations(o.batch)) implementations[layer] = impl;
  const auto& main_row = rows.back();
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"mode", o.mode},
                                      {"model", o.model},
                                      {"description", s.description},
                                      {"integer", s.runner != nullptr},
                                      {"device", o.device.str()},
                                      {"batch", o.batch},
                                      {"threads", omp_get_max_threads()},
                                      {"warmup", o.warmup},
                                      {"median_ms", main_row.at("p50_ms")},
                                      {"img_per_s", main_row.at("img_per_s")},
                                      {"rows", rows},
                                      {"implementations", implementations}}
                           .dump());
    return;
  }
  fmt::print("{} inference on {}\n", s.description,
             o.device.is_cuda() ? o.device.str() : fmt::format("{} threads", omp_get_max_threads()));
  for (const auto& r : rows)
    fmt::print("  batch {:>4}: p50 {:8.3f} ms  p99 {:8.3f} ms  {:8.0f} img/s  ({} steps)\n",
               r.at("batch").get<int>(), r.at("p50_ms").get<double>(), r.at("p99_ms").get<double>(),
               r.at("img_per_s").get<double>(), r.at("steps").get<int>());
  if (s.runner) {
    fmt::print("  kernels:");
    std::map<std::string, int> counts;
    for (const auto& [layer, impl] : implementations.items()) ++counts[impl.get<std::string>()];
    for (const auto& [impl, n] : counts) fmt::print(" {} x{};", impl, n);
    fmt::print("\n");
  }
}

void run_bench(BenchOptions o) {
  o.device = apply_common_options(o.common);
  ZSQ_CHECK(!(o.int8 && o.int4), "--int8 and --int4 are exclusive");
  ZSQ_CHECK(o.mode == "infer" || !(o.int8 || o.int4), "--int8/--int4 apply to `bench infer`");
  Rng rng = global_rng().fork(3);
  Subject s = load_subject(o, rng);
  ZSQ_CHECK(s.runner == nullptr || o.device.is_cpu(),
            "--device {}: integer models run on the CPU kernels only (oneDNN, AVX-512 VNNI); the GPU path "
            "runs float and fake-quant models",
            o.device.str());
  if (o.mode == "train")
    run_train(o, s, rng);
  else
    run_infer(o, s, rng);
}
}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* verb = app.add_subcommand("bench", "Median img/s of a training step or of inference");
  verb->add_option("MODE", o->mode, "train or infer")->required()->check(CLI::IsMember({"train", "infer"}));
  verb->add_option("--model", o->model,
                   "Architecture name, or a model file (teacher, or integer model from "
                   "`zsq export --int`)")
      ->capture_default_str();
  verb->add_option("--batch", o->batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_option("--warmup", o->warmup, "Warm-up steps (not timed)")->capture_default_str();
  verb->add_option("--steps", o->steps, "Timed steps")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_flag("--int8", o->int8,
                 "Integer inference, 8-bit weights (a float file is quantized W8A8 first)");
  verb->add_flag("--int4", o->int4,
                 "Integer inference, 4-bit weights (a float file is quantized W4A4 first)");
  verb->add_flag("--json", o->json, "Print one JSON object");
  add_common_options(verb, o->common);
  add_bench_kernels_command(verb);
  verb->callback([o] { run_bench(*o); });
}

}  // namespace zsq::cli
