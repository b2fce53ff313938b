// zsq eval FILE [--data DIR] [--json]: test accuracy of a model file on the 10k Fashion-MNIST test set.
#include <omp.h>

#include <nlohmann/json.hpp>

#include "models/model_file.h"
#include "quant/integer_runner.h"
#include "quant/report.h"
#include "quant/student.h"
#include "tools/commands.h"
#include "tools/evaluate.h"

namespace zsq::cli {

namespace {
struct EvalOptions {
  CommonOptions common;
  std::string model, data, report_dir;
  std::int64_t batch = 500;
  bool json = false;
};

// An exported integer model runs on the integer kernels (quant::IntegerRunner), not on fake quantization.
void eval_integer_model(const EvalOptions& o, const Checkpoint& checkpoint) {
  quant::IntegerRunner runner(quant::integer_model_from_checkpoint(checkpoint));
  const auto& m = runner.model();
  const auto test = load_fashion_mnist(o.data, Split::test);
  const auto r = evaluate_forward([&](const Tensor& x) { return runner.forward(x); }, test, o.batch, !o.json);
  const auto kind = fmt::format("integer, weights {}-{} bits", m.min_weight_bits(), m.max_weight_bits());
  if (o.json) {
    nlohmann::json j{{"accuracy", r.accuracy},
                     {"n", r.n},
                     {"loss", r.loss},
                     {"model", o.model},
                     {"arch", m.arch},
                     {"integer", true},
                     {"min_weight_bits", m.min_weight_bits()},
                     {"max_weight_bits", m.max_weight_bits()},
                     {"seconds", r.seconds},
                     {"img_per_s", static_cast<double>(r.n) / r.seconds},
                     {"threads", omp_get_max_threads()},
                     {"class_accuracy", r.class_accuracy}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("{} ({}, {}): test accuracy {:.2f}% on {} images, loss {:.4f}, {:.1f}s\n", o.model, m.arch,
               kind, 100.0 * r.accuracy, r.n, r.loss, r.seconds);
    fmt::print("per class: {}\n", format_class_accuracy(r.class_accuracy));
  }
}
}  // namespace

void add_eval_command(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  options->data = default_data_dir();
  auto* verb = app.add_subcommand("eval", "Test accuracy of a model file on Fashion-MNIST");
  verb->add_option("FILE", options->model, "Model file (.safetensors)")->required();
  verb->add_option("--data", options->data, "Fashion-MNIST directory (IDX .gz files)")->capture_default_str();
  verb->add_option("--batch", options->batch, "Batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  verb->add_flag("--json", options->json, "Print one JSON object instead of text");
  verb->add_option(
      "--report", options->report_dir,
      "A zsq quantize run directory: add FP vs quantized test accuracy (and per-layer activation "
      "SQNR on test images) to its report");
  add_common_options(verb, options->common);
  verb->callback([options] {
    const Device device = apply_common_options(options->common);
    const Checkpoint checkpoint = load_checkpoint(options->model);
    if (quant::is_integer_model_checkpoint(checkpoint)) {
      ZSQ_CHECK(device.is_cpu(), "{}: integer models run on the CPU kernels only (--device {} given)",
                options->model, options->common.device);
      ZSQ_CHECK(options->report_dir.empty(), "--report takes the fake-quant student, {} is an integer model",
                options->model);
      eval_integer_model(*options, checkpoint);
      return;
    }
    const bool quantized = quant::Student::is_student_checkpoint(checkpoint);
    std::unique_ptr<quant::Student> student;
    models::LoadedModel loaded;
    if (quantized) {
      student = quant::Student::from_checkpoint(checkpoint);
      loaded.spec = student->spec();
    } else {
      loaded = models::model_from_checkpoint(checkpoint);
    }
    models::Classifier& model = quantized ? student->model() : *loaded.model;
    // A student moves with its learned ranges now, not lazily on its first quantizing forward.
    if (quantized)
      student->to(device);
    else
      model.to(device);
    const auto test = load_fashion_mnist(options->data, Split::test);
    const auto r = evaluate(model, test, options->batch, !options->json);
    if (!options->report_dir.empty()) {
      ZSQ_CHECK(quantized, "--report needs a quantized model, {} is full precision", options->model);
      auto report = quant::read_report(options->report_dir);
      const std::string teacher_path = report.at("teacher").get<std::string>();
      auto teacher = models::load_model(teacher_path);
      teacher.model->to(device);
      const auto fp = evaluate(*teacher.model, test, options->batch, false);
      report["accuracy"] = nlohmann::json::array(
          {{{"model", "FP teacher (" + teacher_path + ")"}, {"accuracy", fp.accuracy}, {"n", fp.n}},
           {{"model", fmt::format("{} W{}A{}", report.value("method", std::string("quantized")),
                                  report.value("weight_bits", 0), report.value("act_bits", 0))},
            {"accuracy", r.accuracy},
            {"n", r.n}}});
      BatchLoader first(test, 256, false, false, Rng(0));
      Tensor images, labels;
      first.next(images, labels);
      images = images.to(device);
      report["layers_test"] = quant::analyze_layers(*student, *teacher.model, images);
      quant::write_report(options->report_dir, report);
      if (!options->json)
        fmt::print("report {}/report.md: FP {:.2f}% vs quantized {:.2f}%\n", options->report_dir,
                   100.0 * fp.accuracy, 100.0 * r.accuracy);
    }
    if (options->json) {
      nlohmann::json j{{"accuracy", r.accuracy},
                       {"n", r.n},
                       {"loss", r.loss},
                       {"model", options->model},
                       {"arch", loaded.spec.name},
                       {"quantized", quantized},
                       {"seconds", r.seconds},
                       {"img_per_s", static_cast<double>(r.n) / r.seconds},
                       {"threads", omp_get_max_threads()},
                       {"device", device.str()},
                       {"class_accuracy", r.class_accuracy}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("{} ({}): test accuracy {:.2f}% on {} images, loss {:.4f}, {:.1f}s\n", options->model,
                 loaded.spec.name, 100.0 * r.accuracy, r.n, r.loss, r.seconds);
      fmt::print("per class: {}\n", format_class_accuracy(r.class_accuracy));
    }
  });
}

}  // namespace zsq::cli
