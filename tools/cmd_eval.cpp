// zsq eval FILE [--data DIR] [--json]: test accuracy of a model file on the 10k Fashion-MNIST test set.
#include <omp.h>

#include <nlohmann/json.hpp>

#include "models/model_file.h"
#include "tools/commands.h"
#include "tools/evaluate.h"

namespace zsq::cli {

void add_eval_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string model, data;
    std::int64_t batch = 500;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  options->data = default_data_dir();
  auto* verb = app.add_subcommand("eval", "Test accuracy of a model file on Fashion-MNIST");
  verb->add_option("FILE", options->model, "Model file (.safetensors)")->required();
  verb->add_option("--data", options->data, "Fashion-MNIST directory (IDX .gz files)")->capture_default_str();
  verb->add_option("--batch", options->batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_flag("--json", options->json, "Print one JSON object instead of text");
  add_common_options(verb, options->common);
  verb->callback([options] {
    apply_common_options(options->common);
    auto loaded = models::load_model(options->model);
    const auto test = load_fashion_mnist(options->data, Split::test);
    const auto r = evaluate(*loaded.model, test, options->batch, !options->json);
    if (options->json) {
      nlohmann::json j{{"accuracy", r.accuracy},
                       {"n", r.n},
                       {"loss", r.loss},
                       {"model", options->model},
                       {"arch", loaded.spec.name},
                       {"seconds", r.seconds},
                       {"img_per_s", static_cast<double>(r.n) / r.seconds},
                       {"threads", omp_get_max_threads()}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("{} ({}): test accuracy {:.2f}% on {} images, loss {:.4f}, {:.1f}s\n", options->model,
                 loaded.spec.name, 100.0 * r.accuracy, r.n, r.loss, r.seconds);
    }
  });
}

}  // namespace zsq::cli
