// zsq bench train|infer: median images/s of a full training step (forward, cross-entropy, backward,
// SGD update) or of eval-mode inference, on random inputs, after warm-up steps.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "models/zoo.h"
#include "ops/loss.h"
#include "tools/commands.h"

namespace zsq::cli {

namespace {
struct BenchOptions {
  CommonOptions common;
  std::string mode, model = "resnet20";
  std::int64_t batch = 128, warmup = 5, steps = 30;
  bool json = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_bench(const BenchOptions& o) {
  apply_common_options(o.common);
  Rng rng = global_rng().fork(3);
  auto spec = models::resolve_model_spec(o.model);
  auto model = models::build_model(spec, rng);
  const auto in_channels = spec.config.at("in_channels").get<std::int64_t>();
  const auto classes = spec.config.at("num_classes").get<std::int64_t>();
  Tensor images = randn({o.batch, in_channels, 32, 32}, rng);
  Tensor labels = Tensor::empty({o.batch}, DType::s32);
  for (std::int64_t i = 0; i < o.batch; ++i)
    labels.data<std::int32_t>()[i] =
        static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(classes)));
  Sgd sgd(model->parameters(), {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  const bool train = o.mode == "train";
  model->train(train);
  auto step = [&] {
    if (train) {
      Tensor loss = ops::cross_entropy(model->forward(images), labels);
      sgd.zero_grad();
      loss.backward();
      sgd.step();
    } else {
      NoGrad no_grad;
      model->forward(images);
    }
  };
  for (std::int64_t i = 0; i < o.warmup; ++i) step();
  std::vector<double> seconds;
  for (std::int64_t i = 0; i < o.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double med = median(seconds);
  const double img_per_s = static_cast<double>(o.batch) / med;
  if (o.json) {
    nlohmann::json j{{"mode", o.mode},
                     {"model", o.model},
                     {"batch", o.batch},
                     {"threads", omp_get_max_threads()},
                     {"steps", o.steps},
                     {"warmup", o.warmup},
                     {"median_ms", med * 1e3},
                     {"img_per_s", img_per_s},
                     {"min_ms", *std::min_element(seconds.begin(), seconds.end()) * 1e3}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print(
        "{} {} batch {} on {} threads: median {:.2f} ms/step, {:.0f} img/s ({} steps after {} warm-up)\n",
        o.model, o.mode, o.batch, omp_get_max_threads(), med * 1e3, img_per_s, o.steps, o.warmup);
  }
}
}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* verb = app.add_subcommand("bench", "Median img/s of a training step or of inference");
  verb->add_option("MODE", o->mode, "train or infer")->required()->check(CLI::IsMember({"train", "infer"}));
  verb->add_option("--model", o->model, "Architecture")->capture_default_str();
  verb->add_option("--batch", o->batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_option("--warmup", o->warmup, "Warm-up steps (not timed)")->capture_default_str();
  verb->add_option("--steps", o->steps, "Timed steps")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_flag("--json", o->json, "Print one JSON object");
  add_common_options(verb, o->common);
  add_bench_kernels_command(verb);
  verb->callback([o] { run_bench(*o); });
}

}  // namespace zsq::cli
