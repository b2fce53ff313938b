#include "tools/quantize_generative.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <vector>

#include "engine/autograd.h"
#include "engine/progress.h"
#include "models/generator_file.h"
#include "quant/methods/gdfq.h"
#include "quant/methods/gznq.h"
#include "quant/methods/zaq.h"
#include "tools/evaluate.h"
#include "tools/interrupt.h"
#include "tools/sample_grid.h"

namespace zsq::cli {

namespace {
namespace fs = std::filesystem;

// A run stopped mid-epoch (signal, kill) has already appended rows the resumed run will produce again;
// keep the header and the rows of finished epochs only. Rewritten atomically.
void truncate_metrics(const fs::path& path, std::int64_t epochs_done) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  for (bool header = true; std::getline(in, line); header = false) {
    if (!header) {
      std::int64_t epoch = 0;
      std::istringstream(line.substr(0, line.find(','))) >> epoch;
      if (epoch < 1 || epoch > epochs_done) continue;
    }
    kept += line + "\n";
  }
  in.close();
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    ZSQ_CHECK(out.good(), "cannot write {}", tmp);
  }
  fs::rename(tmp, path);
}

nlohmann::json research_block(const std::vector<quant::EpochAccuracy>& history,
                              const std::string& eval_data) {
  if (history.empty()) return nullptr;
  nlohmann::json epochs = nlohmann::json::array();
  const quant::EpochAccuracy* best = &history.front();
  for (const auto& a : history) {
    epochs.push_back({{"epoch", a.epoch}, {"accuracy", a.accuracy}});
    if (a.accuracy > best->accuracy) best = &a;
  }
  return {{"eval_data", eval_data.empty() ? std::string("(an earlier leg of this resumed run)") : eval_data},
          {"note", "test set evaluated after every epoch; best epoch selected on test data (optimistic)"},
          {"epochs", epochs},
          {"best_epoch", best->epoch},
          {"best_accuracy", best->accuracy},
          {"last_epoch", history.back().epoch},
          {"last_accuracy", history.back().accuracy}};
}

template <typename Trainer, typename Options, typename Iteration>
GenerativeRunResult run_trainer(const GenerativeRunOptions& o, models::Classifier& teacher,
                                quant::Student& student, Options options,
                                const std::vector<std::string>& columns,
                                const std::function<std::vector<float>(const Iteration&)>& values,
                                const std::function<std::string(const Iteration&)>& summary) {
  if (o.epochs > 0) options.epochs = o.epochs;
  if (o.iterations > 0) options.iterations = o.iterations;
  if (o.batch > 0) options.batch = o.batch;
  options.seed = o.seed;
  for (const auto& kv : o.method_options) quant::set_option(options.fields(), kv, o.method);
  Trainer trainer(teacher, student, options);
  const fs::path out(o.out);
  fs::create_directories(out / "samples");
  const auto state_path = (out / "state.safetensors").string();
  const auto generator_path = (out / "generator.safetensors").string();
  const auto metrics_path = out / "metrics.csv";
  // Everything that decides the trajectory: a resume with other settings would silently diverge.
  const std::string schedule =
      fmt::format("method={} budget={} seed={} epochs={} iterations={} batch={} W{}A{}", o.method, o.budget,
                  o.seed, options.epochs, options.iterations, options.batch, student.config().weight_bits,
                  student.config().act_bits) +
      (o.method_options.empty() ? "" : " options=" + options.to_json().dump());
  if (o.resume) {
    ZSQ_CHECK(fs::exists(state_path), "--resume: no training state at {} (it is written after every epoch)",
              state_path);
    const Checkpoint state = load_checkpoint(state_path);
    auto saved_schedule = state.metadata.find("zsq.quant.schedule");
    ZSQ_CHECK(saved_schedule != state.metadata.end() && saved_schedule->second == schedule,
              "{}: written by a run with '{}', this command asks for '{}'; resume with the same settings",
              state_path, saved_schedule == state.metadata.end() ? "?" : saved_schedule->second, schedule);
    auto saved = quant::Student::from_checkpoint(state);
    student.model().load_state(saved->model().named_state(), state_path);
    trainer.load_state(state);
    truncate_metrics(metrics_path, trainer.epochs_done());
    fmt::print(stderr, "resuming {} after epoch {}/{}\n", state_path, trainer.epochs_done(), options.epochs);
  }
  // Research mode only: the test set is loaded here, in the tools layer, and reaches the trainer as an
  // opaque callback. Without --eval-data nothing under the data directory is opened.
  std::unique_ptr<FashionMnist> test;
  if (!o.eval_data.empty()) {
    test = std::make_unique<FashionMnist>(load_fashion_mnist(o.eval_data, Split::test));
    fmt::print(stderr, "research mode: evaluating the student on {} test images after every epoch\n",
               test->size());
  }

  const bool fresh_metrics = !o.resume || !fs::exists(metrics_path) || fs::file_size(metrics_path) == 0;
  std::ofstream metrics(metrics_path, fresh_metrics ? std::ios::trunc : std::ios::app);
  if (fresh_metrics) metrics << fmt::format("epoch,iteration,{},test_acc\n", fmt::join(columns, ","));
  Progress progress(o.method, options.epochs * options.iterations, "it");
  Iteration last{};
  std::string pending_row;  // an epoch's last row waits for that epoch's test accuracy
  const std::uint64_t grid_seed = o.seed ^ 0x6772696473ULL;

  quant::TrainingHooks<Iteration> hooks;
  hooks.on_iteration = [&](const Iteration& r) {
    last = r;
    const auto row = fmt::format("{},{},{},", r.epoch + 1, r.iteration + 1, fmt::join(values(r), ","));
    if (r.iteration + 1 == options.iterations)
      pending_row = row;
    else
      metrics << row << "\n";
    progress.update(r.epoch * options.iterations + r.iteration + 1,
                    fmt::format("epoch {}/{} {}", r.epoch + 1, options.epochs, summary(r)));
  };
  if (test) hooks.evaluate = [&](models::Classifier& model) { return evaluate(model, *test, 500).accuracy; };
  hooks.on_epoch_end = [&](std::int64_t done) {
    const auto& history = trainer.test_accuracy();
    const bool evaluated = !history.empty() && history.back().epoch == done;
    metrics << pending_row << (evaluated ? fmt::format("{:.6f}", history.back().accuracy) : "") << "\n";
    metrics.flush();
    // Generator and grid first, the state last: a kill in between redoes this epoch on resume, which
    // rewrites the same files with the same bytes.
    models::save_generator(generator_path, trainer.generator(),
                           {{"zsq.quant.method", o.method},
                            {"zsq.quant.teacher", o.teacher},
                            {"zsq.quant.seed", std::to_string(o.seed)},
                            {"zsq.generator.epochs_done", std::to_string(done)}});
    write_sample_grid((out / "samples" / fmt::format("epoch_{:03d}.png", done)).string(),
                      sample_grid(trainer.generator(), kDefaultGridCount, grid_seed));
    Checkpoint state = student.to_checkpoint(
        {{"zsq.quant.method", o.method}, {"zsq.quant.budget", o.budget}, {"zsq.quant.schedule", schedule}});
    trainer.save_state(state);
    save_checkpoint(state_path, state);
    fmt::print(
        stderr, "epoch {}/{}: {}{}\n", done, options.epochs, summary(last),
        evaluated ? fmt::format(" test acc {:.2f}% (research mode)", 100.0 * history.back().accuracy) : "");
  };
  bool finished = false;
  {
    InterruptGuard guard;
    hooks.stop_requested = [] { return InterruptGuard::received() != 0; };
    finished = trainer.run(hooks);
    if (!finished) {
      metrics.flush();
      const int signal = InterruptGuard::received();
      progress.finish("interrupted");
      throw Interrupted(signal, fmt::format("stopped by signal {} during epoch {}/{}; {} holds {} finished "
                                            "epoch(s): continue with the same command and --resume {}",
                                            signal, trainer.epochs_done() + 1, options.epochs, state_path,
                                            trainer.epochs_done(), o.out));
    }
  }
  progress.finish();

  GenerativeRunResult result;
  const auto final_values = values(last);
  for (std::size_t i = 0; i < columns.size(); ++i) result.losses[columns[i]] = final_values[i];
  result.losses["budget"] = o.budget;
  result.losses["epochs"] = options.epochs;
  result.losses["iterations_per_epoch"] = options.iterations;
  result.losses["batch"] = options.batch;
  result.research = research_block(trainer.test_accuracy(), o.eval_data);
  result.method_options = options.to_json();
  Rng rng(o.seed + 99);
  const std::int64_t n = o.report_images;
  Tensor z = randn({n, trainer.generator().config().latent}, rng);
  Tensor labels = Tensor::empty({n}, DType::s32);
  for (std::int64_t i = 0; i < n; ++i)
    labels.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % teacher.num_classes());
  result.inputs = trainer.generator().sample(z.to(trainer.device()), labels.to(trainer.device()));
  return result;
}
}  // namespace

void check_method_options(const std::string& method, const std::string& budget,
                          const std::vector<std::string>& options) {
  if (method == "gdfq") {
    auto o = quant::GdfqOptions::budget(budget);
    for (const auto& kv : options) quant::set_option(o.fields(), kv, method);
  } else if (method == "gznq") {
    auto o = quant::GznqOptions::budget(budget);
    for (const auto& kv : options) quant::set_option(o.fields(), kv, method);
  } else {
    auto o = quant::ZaqOptions::budget(budget);
    for (const auto& kv : options) quant::set_option(o.fields(), kv, method);
  }
}

std::string method_options_help(const std::string& method, const std::string& budget) {
  if (method == "gdfq") {
    auto o = quant::GdfqOptions::budget(budget);
    return quant::options_help(o.fields());
  }
  if (method == "gznq") {
    auto o = quant::GznqOptions::budget(budget);
    return quant::options_help(o.fields());
  }
  ZSQ_CHECK(method == "zaq", "--opt: {} has no named options (gdfq, zaq and gznq have)", method);
  auto o = quant::ZaqOptions::budget(budget);
  return quant::options_help(o.fields());
}

GenerativeRunResult run_generative(const GenerativeRunOptions& o, models::Classifier& teacher,
                                   quant::Student& student) {
  if (o.method == "gdfq") {
    using It = quant::GdfqIteration;
    return run_trainer<quant::GdfqTrainer, quant::GdfqOptions, It>(
        o, teacher, student, quant::GdfqOptions::budget(o.budget),
        {"g_loss", "g_ce", "bns", "q_loss", "q_kd", "q_ce", "student_updated", "g_adversarial"},
        [](const It& r) {
          return std::vector<float>{
              r.g_loss,       r.g_ce, r.bns, r.q_loss, r.q_kd, r.q_ce, r.student_updated ? 1.0f : 0.0f,
              r.g_adversarial};
        },
        [](const It& r) {
          const auto adversarial = r.g_adversarial > 0.0f ? fmt::format(" adv {:.3f}", r.g_adversarial) : "";
          return fmt::format("G {:.3f} (ce {:.3f} bns {:.3f}{}) Q {:.3f} (kd {:.3f} ce {:.3f}){}", r.g_loss,
                             r.g_ce, r.bns, adversarial, r.q_loss, r.q_kd, r.q_ce,
                             r.student_updated ? "" : " (warm-up)");
        });
  }
  ZSQ_CHECK(o.method == "zaq", "run_generative: {} is not a generator-based method", o.method);
  using It = quant::ZaqIteration;
  return run_trainer<quant::ZaqTrainer, quant::ZaqOptions, It>(
      o, teacher, student, quant::ZaqOptions::budget(o.budget),
      {"q_loss", "q_output", "q_feature", "q_kd", "g_loss", "g_output", "g_feature", "g_activation",
       "g_label_entropy", "g_bns"},
      [](const It& r) {
        return std::vector<float>{r.q_loss,          r.q_output, r.q_feature, r.q_kd,
                                  r.g_loss,          r.g_output, r.g_feature, r.g_activation,
                                  r.g_label_entropy, r.g_bns};
      },
      [](const It& r) {
        return fmt::format("Q {:.4f} (out {:.4f} feat {:.4f}) G {:.4f} (act {:.3f} labels H {:.2f})",
                           r.q_loss, r.q_output, r.q_feature, r.g_loss, r.g_activation, r.g_label_entropy);
      });
}

}  // namespace zsq::cli
