// zsq train: trains a teacher on Fashion-MNIST with SGD (Nesterov) and a per-step cosine schedule.
// After every epoch it evaluates on the test set and writes FILE.state (model + optimizer + epoch,
// atomically), so `--resume` continues an interrupted run exactly where its last epoch ended.
#include <omp.h>

#include <cmath>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "engine/progress.h"
#include "models/model_file.h"
#include "ops/loss.h"
#include "tools/commands.h"
#include "tools/evaluate.h"
#include "tools/train_student.h"

namespace zsq::cli {

namespace {
struct TrainOptions {
  CommonOptions common;
  std::string model = "resnet20", data, out;
  std::int64_t epochs = 15, batch = 128;
  std::int64_t limit = 0;             // use only the first N training images (smoke tests)
  std::int64_t stop_after_epoch = 0;  // exit after this epoch's state is written (simulates a kill)
  float lr = 0.1f, momentum = 0.9f, weight_decay = 5e-4f;
  double width_mult = 0.0;  // > 0: MobileNetV2 channel multiplier (default 1.0)
  bool resume = false, no_augment = false, no_test = false;
  // --student: fine-tune a quantized student on real images (tools/train_student.h) instead.
  std::string student, teacher;
  std::int64_t steps = 1000, calibrate_batches = 4, eval_every = 0;
  float temperature = 1.0f, range_lr = 1e-3f;
  std::vector<std::string> sets;
};

std::string state_path(const std::string& out) {
  return out + ".state";
}

void run_train(const TrainOptions& o) {
  const Device device = apply_common_options(o.common);
  auto train = load_fashion_mnist(o.data, Split::train);
  if (o.limit > 0 && o.limit < train.size()) {
    train.labels.resize(static_cast<std::size_t>(o.limit));
    train.images.resize(static_cast<std::size_t>(o.limit * kFashionRawSize * kFashionRawSize));
  }
  const auto test = o.no_test ? FashionMnist{} : load_fashion_mnist(o.data, Split::test);

  nlohmann::json overrides = nlohmann::json::object();
  if (o.width_mult > 0) {
    ZSQ_CHECK(o.model == "mobilenetv2", "zsq train: --width-mult is for mobilenetv2, not {}", o.model);
    overrides["width_mult"] = o.width_mult;
  }
  models::ModelSpec spec = models::resolve_model_spec(o.model, overrides);
  Rng init_rng = global_rng().fork(1);
  auto model = models::build_model(spec, init_rng);
  model->to(device);
  SgdOptions sgd_options{
      .lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay, .nesterov = o.momentum > 0};
  Sgd sgd(model->parameters(), sgd_options);
  BatchLoader loader(train, o.batch, true, !o.no_augment, global_rng().fork(2), /*drop_last=*/false);
  const std::int64_t steps_per_epoch = loader.batches_per_epoch();
  CosineSchedule schedule(o.lr, o.epochs * steps_per_epoch);

  std::int64_t first_epoch = 0;
  if (o.resume) {
    const std::string path = state_path(o.out);
    ZSQ_CHECK(std::filesystem::exists(path),
              "--resume: no training state at {} (it is written after each epoch)", path);
    const Checkpoint state = load_checkpoint(path);
    auto loaded = models::model_from_checkpoint(state);
    ZSQ_CHECK(loaded.spec.name == spec.name, "{}: state is for model {}, --model is {}", path,
              loaded.spec.name, spec.name);
    ZSQ_CHECK(loaded.spec.config == spec.config, "{}: state is for {} {}, this command asks for {}", path,
              spec.name, loaded.spec.config.dump(), spec.config.dump());
    ZSQ_CHECK(state.metadata.count("zsq.train.seed") &&
                  state.metadata.at("zsq.train.seed") == std::to_string(o.common.seed),
              "{}: state was written with a different --seed; resume with the same seed", path);
    model->load_state(loaded.model->named_state(), path);  // copies onto the model's device
    std::vector<std::pair<std::string, Tensor>> optim_state;
    for (const auto& [name, t] : state.tensors)
      if (name.rfind("optim.", 0) == 0) optim_state.emplace_back(name.substr(6), t);
    sgd.load_state(optim_state);
    first_epoch = std::stoll(state.metadata.at("zsq.train.epochs_done"));
    fmt::print(stderr, "resuming {} from epoch {}/{}\n", path, first_epoch, o.epochs);
  }

  fmt::print(stderr, "training {} ({} parameters) on {} images, batch {}, {} epochs, {}\n", spec.name,
             model->parameter_count(), train.size(), o.batch, o.epochs,
             device.is_cuda() ? device.str() : fmt::format("{} threads", omp_get_max_threads()));
  Progress progress("train", o.epochs * steps_per_epoch, "img");
  double last_test = NAN;
  for (std::int64_t epoch = first_epoch; epoch < o.epochs; ++epoch) {
    model->train();
    loader.start_epoch(epoch);
    Tensor images, labels;
    double loss_sum = 0.0;
    std::int64_t seen = 0, correct = 0, step = 0;
    while (loader.next(images, labels)) {
      images = images.to(device);
      labels = labels.to(device);
      const std::int64_t global_step = epoch * steps_per_epoch + step++;
      sgd.set_lr(schedule.at(global_step));
      Tensor logits = model->forward(images);
      Tensor loss = ops::cross_entropy(logits, labels);
      const float loss_value = loss.item();
      ZSQ_CHECK(std::isfinite(loss_value), "training loss became {} at epoch {} step {}; try a lower --lr",
                loss_value, epoch + 1, step);
      sgd.zero_grad();
      loss.backward();
      sgd.step();
      loss_sum += static_cast<double>(loss_value) * images.size(0);
      seen += images.size(0);
      correct += count_correct(logits.detach(), labels);
      progress.update(global_step + 1,
                      fmt::format("epoch {}/{} loss {:.4f} acc {:.2f}% lr {:.4f}", epoch + 1, o.epochs,
                                  loss_sum / seen, 100.0 * correct / seen, sgd.lr()),
                      static_cast<double>(o.batch));
    }
    std::string test_text;
    if (!o.no_test) {
      last_test = evaluate(*model, test, 500).accuracy;
      test_text = fmt::format(" test acc {:.2f}%", 100.0 * last_test);
    }
    fmt::print(stderr, "epoch {}/{}: train loss {:.4f} train acc {:.2f}%{}\n", epoch + 1, o.epochs,
               loss_sum / seen, 100.0 * correct / seen, test_text);
    Checkpoint state(model->named_state(), {{"zsq.arch", spec.name},
                                            {"zsq.config", spec.config.dump()},
                                            {"zsq.train.epochs_done", std::to_string(epoch + 1)},
                                            {"zsq.train.seed", std::to_string(o.common.seed)}});
    for (auto& [name, t] : sgd.state()) state.add("optim." + name, t);
    save_checkpoint(state_path(o.out), state);
    if (o.stop_after_epoch == epoch + 1 && epoch + 1 < o.epochs) {
      fmt::print(stderr, "stopping after epoch {} as asked; continue with --resume\n", epoch + 1);
      return;
    }
  }
  progress.finish();
  std::map<std::string, std::string> meta{{"zsq.train.epochs", std::to_string(o.epochs)},
                                          {"zsq.train.batch", std::to_string(o.batch)},
                                          {"zsq.train.lr", fmt::format("{}", o.lr)},
                                          {"zsq.train.weight_decay", fmt::format("{}", o.weight_decay)},
                                          {"zsq.train.seed", std::to_string(o.common.seed)},
                                          {"zsq.train.augment", o.no_augment ? "none" : "crop2+flip"}};
  if (!o.no_test) meta["zsq.test_accuracy"] = fmt::format("{:.4f}", last_test);
  models::save_model(o.out, spec, *model, meta);
  std::filesystem::remove(state_path(o.out));
  fmt::print("saved {}{}\n", o.out,
             o.no_test ? "" : fmt::format(" (test accuracy {:.2f}%)", 100.0 * last_test));
}
}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  o->data = default_data_dir();
  auto* verb = app.add_subcommand("train", "Train a full-precision teacher on Fashion-MNIST");
  verb->add_option("--model", o->model, "Architecture (resnet20, resnet32, resnet56, mobilenetv2)")
      ->capture_default_str();
  verb->add_option("--width-mult", o->width_mult,
                   "mobilenetv2: channel width multiplier (default 1.0; 0.5 trains ~3x faster)")
      ->check(CLI::Range(0.1, 4.0));
  verb->add_option("--data", o->data, "Fashion-MNIST directory (IDX .gz files)")->capture_default_str();
  verb->add_option("--epochs", o->epochs, "Epochs")->check(CLI::PositiveNumber)->capture_default_str();
  verb->add_option("--batch", o->batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  auto* lr = verb->add_option("--lr", o->lr,
                              "Peak learning rate (cosine decay per step to 0; --student: 1e-3, constant)")
                 ->check(CLI::PositiveNumber)
                 ->capture_default_str();
  verb->add_option("--momentum", o->momentum, "Nesterov momentum (0 = plain SGD)")->capture_default_str();
  verb->add_option("--wd", o->weight_decay, "Weight decay")->capture_default_str();
  verb->add_option("--out", o->out, "Output model file (.safetensors)")->required();
  verb->add_flag("--resume", o->resume, "Continue from OUT.state (written after every epoch)");
  verb->add_flag("--no-augment", o->no_augment, "Disable random crop and flip");
  verb->add_flag("--no-test", o->no_test, "Skip the per-epoch test-set evaluation");
  verb->add_option("--limit", o->limit, "Train on the first N images only (smoke tests)");
  verb->add_option("--stop-after-epoch", o->stop_after_epoch,
                   "Exit after epoch K's state is written (tests resume)");
  verb->add_option("--student", o->student,
                   "Real-data upper bound (not zero-shot): fine-tune this quantized student (a zsq quantize "
                   "output) by KD from --teacher on the training images, write it to --out");
  verb->add_option("--teacher", o->teacher, "--student: the full-precision teacher");
  verb->add_option("--steps", o->steps, "--student: fine-tuning steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  verb->add_option("--calibrate-batches", o->calibrate_batches,
                   "--student: re-observe activation ranges on N real batches first (0: keep the student's)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  verb->add_option("--eval-every", o->eval_every, "--student: print the test accuracy every N steps")
      ->check(CLI::NonNegativeNumber);
  verb->add_option("--temperature", o->temperature, "--student: KD temperature")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  verb->add_option("--range-lr", o->range_lr, "--student: Adam lr of learned activation ranges")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  verb->add_option(
      "--set", o->sets,
      "--student: override a key of the student's quantization config, e.g. --set act_range=learned "
      "(repeatable)");
  add_common_options(verb, o->common);
  verb->callback([o, lr] {
    if (o->student.empty()) {
      ZSQ_CHECK(o->teacher.empty() && o->sets.empty(),
                "zsq train: --teacher and --set are for --student (a real-data fine-tune)");
      run_train(*o);
      return;
    }
    ZSQ_CHECK(!o->resume && o->stop_after_epoch == 0 && o->width_mult == 0,
              "zsq train --student: --resume, --stop-after-epoch and --width-mult are for teacher training");
    const Device device = apply_common_options(o->common);
    run_train_student({.student = o->student,
                       .teacher = o->teacher,
                       .data = o->data,
                       .out = o->out,
                       .device = device,
                       .steps = o->steps,
                       .batch = o->batch,
                       .calibrate_batches = o->calibrate_batches,
                       .eval_every = o->eval_every,
                       .limit = o->limit,
                       .lr = lr->count() > 0 ? o->lr : 1e-3f,
                       .temperature = o->temperature,
                       .range_lr = o->range_lr,
                       .sets = o->sets,
                       .augment = !o->no_augment,
                       .test = !o->no_test});
  });
}

}  // namespace zsq::cli
