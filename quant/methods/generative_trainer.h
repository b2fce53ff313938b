// What the generator-based methods (GDFQ, ZAQ) share: a frozen teacher, the student, a generator with
// its optimizer, the student's optimizer, the epoch loop and the checkpoint of all of it. A method
// supplies begin_epoch (schedules, range freezing, BN mode) and iterate (one generator/student round).
// Every epoch draws from an RNG derived from (seed, method stream, epoch), so a run resumed at an epoch
// boundary replays exactly what an uninterrupted run would have done.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/optim.h"
#include "models/generator.h"
#include "quant/methods/sample_replay.h"
#include "quant/methods/trainer_state.h"
#include "quant/methods/weight_average.h"
#include "quant/student.h"

namespace zsq::quant {

// Learning rate of an epoch: "step" multiplies base by 0.1 at each milestone, "cosine" follows
// base * (1 + cos(pi * epoch / epochs)) / 2, one value per epoch.
inline float epoch_learning_rate(float base, const std::string& schedule,
                                 const std::vector<std::int64_t>& milestones, std::int64_t epoch,
                                 std::int64_t epochs) {
  if (schedule == "cosine") return CosineSchedule(base, epochs).at(epoch);
  ZSQ_CHECK(schedule == "step", "unknown lr_schedule '{}' (step, cosine)", schedule);
  return MultiStepSchedule(base, milestones, 0.1f).at(epoch);
}

// recalibrate_source of gdfq/zaq: refused at construction, so a typo cannot fall back to the generator.
inline void check_recalibrate_source(const char* method, const std::string& source) {
  ZSQ_CHECK(source == "generator" || source == "gaussian",
            "{}: recalibrate_source must be generator or gaussian, got '{}'", method, source);
}

// Whether an epoch starts by re-observing the ranges (recalibrate_batches > 0): the epoch where they
// freeze, and each later one listed in recalibrate_epochs. The list is checked at construction.
inline bool recalibrates_at(std::int64_t epoch, std::int64_t freeze_epochs, std::int64_t batches,
                            const std::vector<std::int64_t>& later_epochs) {
  if (batches <= 0 || freeze_epochs < 0) return false;
  return epoch == freeze_epochs ||
         (epoch > freeze_epochs &&
          std::find(later_epochs.begin(), later_epochs.end(), epoch) != later_epochs.end());
}
inline void check_recalibrate_epochs(const char* method, const std::vector<std::int64_t>& later_epochs,
                                     std::int64_t freeze_epochs, std::int64_t epochs, std::int64_t batches) {
  for (auto e : later_epochs) {
    ZSQ_CHECK(batches > 0, "{}: recalibrate_epochs needs recalibrate_batches > 0", method);
    ZSQ_CHECK(
        freeze_epochs >= 0 && e > freeze_epochs && e < epochs,
        "{}: recalibrate_epochs entry {} must lie after the freeze (epoch {}) and before the last epoch "
        "({})",
        method, e, freeze_epochs, epochs);
  }
}

// The checks of the fields training_schedule_fields declares (method_options.h), at construction.
template <typename Options>
void check_training_schedule(const char* method, const Options& o) {
  check_recalibrate_source(method, o.recalibrate_source);
  check_recalibrate_epochs(method, o.recalibrate_epochs, o.freeze_epochs, o.epochs, o.recalibrate_batches);
  ZSQ_CHECK(o.weight_average_epoch >= 0 && o.weight_average_epoch < o.epochs,
            "{}: weight_average_epoch must be in [0, epochs) = [0, {}), got {}", method, o.epochs,
            o.weight_average_epoch);
  ZSQ_CHECK(o.q_steps >= 1, "{}: q_steps must be >= 1, got {}", method, o.q_steps);
  ZSQ_CHECK(o.replay >= 0, "{}: replay must be >= 0 images, got {}", method, o.replay);
  ZSQ_CHECK(o.replay_fraction > 0.0f && o.replay_fraction < 1.0f,
            "{}: replay_fraction must be in (0, 1), got {}", method, o.replay_fraction);
}

// What the caller (the CLI) plugs into the epoch loop. quant/ never sees data: test-set evaluation, when
// a research run asks for it, arrives here as an opaque callback from the tools layer.
template <typename Iteration>
struct TrainingHooks {
  std::function<void(const Iteration&)> on_iteration;
  // After each epoch, with the student's ranges frozen and the model in eval mode: returns the test
  // accuracy in [0, 1]. Unset: no evaluation (the default; zero-shot runs never set it).
  std::function<double(models::Classifier& student)> evaluate;
  // After each epoch (and its evaluation): checkpointing, sample grids.
  std::function<void(std::int64_t epochs_done)> on_epoch_end;
  // Polled between iterations: true stops the run, dropping the unfinished epoch, so the last
  // checkpoint written by on_epoch_end stays the consistent point to resume from (SIGINT).
  std::function<bool()> stop_requested;
};

template <typename Iteration>
class GenerativeTrainer {
 public:
  virtual ~GenerativeTrainer() = default;
  GenerativeTrainer(const GenerativeTrainer&) = delete;
  GenerativeTrainer& operator=(const GenerativeTrainer&) = delete;

  // Runs the remaining epochs. Returns false when stop_requested ended it early.
  bool run(const TrainingHooks<Iteration>& hooks) {
    for (std::int64_t epoch = epochs_done_; epoch < epochs_; ++epoch) {
      begin_epoch(epoch);
      Rng rng(seed_ * 0x9e3779b97f4a7c15ULL + stream_ + static_cast<std::uint64_t>(epoch));
      for (std::int64_t it = 0; it < iterations_; ++it) {
        if (hooks.stop_requested && hooks.stop_requested()) return false;
        const Iteration r = iterate(epoch, it, rng);
        if (average_) average_->update(epoch);
        if (hooks.on_iteration) hooks.on_iteration(r);
      }
      epochs_done_ = epoch + 1;
      student_.freeze_ranges();
      student_.model().eval();
      if (hooks.evaluate) {
        if (average_) average_->swap();  // evaluate what the run would hand out
        test_accuracy_.push_back({epochs_done_, hooks.evaluate(student_.model())});
        if (average_) average_->swap();
      }
      if (hooks.on_epoch_end) hooks.on_epoch_end(epochs_done_);
    }
    // The final student is the average; the state written above keeps the raw weights for a resume.
    if (average_) average_->swap();
    return true;
  }
  bool run(const std::function<void(const Iteration&)>& on_iteration,
           const std::function<void(std::int64_t epochs_done)>& on_epoch_end) {
    TrainingHooks<Iteration> hooks;
    hooks.on_iteration = on_iteration;
    hooks.on_epoch_end = on_epoch_end;
    return run(hooks);
  }

  // One epoch of run() is begin_epoch(epoch) then iterate(epoch, i, rng) for each iteration; both are
  // public so a benchmark or a test can drive single iterations exactly as run() does.
  virtual void begin_epoch(std::int64_t epoch) = 0;
  virtual Iteration iterate(std::int64_t epoch, std::int64_t iteration, Rng& rng) = 0;

  std::int64_t epochs() const { return epochs_; }
  std::int64_t iterations() const { return iterations_; }
  std::int64_t epochs_done() const { return epochs_done_; }
  models::Generator& generator() { return *generator_; }
  // Where the run computes: the teacher's device. Random draws (latents, labels) are made on the CPU,
  // so a seed gives the same draws on either device, and moved here.
  Device device() const { return teacher_.device(); }
  Tensor on_device(const Tensor& t) const { return t.to(device()); }
  // Test accuracy after each evaluated epoch (only with TrainingHooks::evaluate), resumed runs included.
  const std::vector<EpochAccuracy>& test_accuracy() const { return test_accuracy_; }
  // Generator, optimizers and observers, plus the epoch count, for exact resume (the student's weights
  // go in through Student::to_checkpoint).
  void save_state(Checkpoint& checkpoint) const {
    save_trainer_state(checkpoint, method_, epochs_done_, test_accuracy_,
                       {*generator_, *g_optim_, *q_optim_, student_, range_optim_.get()});
    if (average_) average_->save(checkpoint);
    if (replay_) replay_->save(checkpoint);
  }
  void load_state(const Checkpoint& checkpoint) {
    epochs_done_ = load_trainer_state(checkpoint, method_, test_accuracy_,
                                      {*generator_, *g_optim_, *q_optim_, student_, range_optim_.get()});
    if (average_) average_->load(checkpoint);
    if (replay_) replay_->load(checkpoint);
  }

 protected:
  GenerativeTrainer(std::string method, models::Classifier& teacher, Student& student, std::int64_t epochs,
                    std::int64_t iterations, std::uint64_t seed, std::uint64_t stream)
      : method_(std::move(method)),
        teacher_(teacher),
        student_(student),
        epochs_(epochs),
        iterations_(iterations),
        seed_(seed),
        stream_(stream) {
    teacher_.eval();
    teacher_.set_requires_grad(false);  // gradients reach G through the frozen teacher's input only
    student_.model().set_requires_grad(true);
  }

  // Resets every activation range and observes `batches` fresh batches from `generate` in the calibrate
  // phase (full-precision activations, no gradients), then freezes the ranges. Without it the ranges
  // that freeze are the observer's summary of everything the generator produced since the first
  // iteration, when its images were far from anything the teacher knows. The RNG derives from (seed,
  // epoch) like an epoch's, so a resumed run recalibrates exactly as an uninterrupted one.
  void recalibrate_ranges(std::int64_t epoch, std::int64_t batches,
                          const std::function<Tensor(Rng&)>& generate) {
    Rng rng(seed_ * 0x9e3779b97f4a7c15ULL + stream_ + static_cast<std::uint64_t>(epoch) + 0x7ca1ULL);
    student_.reset_ranges();
    student_.calibrate(batches, [&](std::int64_t) { return generate(rng); });
  }

  // Learned ranges (QConfig act_range / weight_range learned) get their own Adam: their gradients are
  // sums over whole tensors or channels, on another scale than the weights' SGD step.
  void make_range_optimizer(float lr) {
    auto ranges = student_.learned_ranges();
    if (!ranges.empty()) range_optim_ = std::make_unique<Adam>(std::move(ranges), AdamOptions{.lr = lr});
  }
  void set_range_lr(float lr) {
    if (range_optim_) range_optim_->set_lr(lr);
  }
  void zero_student_grads() {
    q_optim_->zero_grad();
    if (range_optim_) range_optim_->zero_grad();
  }
  // One optimizer step of the student's weights and, once they are in use, its learned ranges.
  void step_student() {
    q_optim_->step();
    if (range_optim_ && student_.learned_ranges_active()) range_optim_->step();
  }

  // After a student step: a finite loss can still take a step that overflows a weight (a depthwise
  // channel of MobileNetV2 at 4 bits did); stop with what happened and what to change instead of failing
  // later inside a quantizer. A weight beyond kExplodedWeight is as good as lost: the next forward
  // overflows activations (trained weights here stay below ~10).
  void check_student_finite(std::int64_t epoch, std::int64_t iteration, float loss, float lr) const {
    const auto diverged = student_.first_diverged_parameter();
    ZSQ_CHECK(
        !diverged,
        "{}: the student diverged at epoch {} iteration {}: {} became {} after a step with loss {} "
        "(student lr {}); lower the student learning rate with --opt q_lr=... (for example a tenth)",
        method_, epoch + 1, iteration + 1, diverged->first,
        std::isfinite(diverged->second) ? fmt::format("{:g}", diverged->second) : std::string("non-finite"),
        loss, lr);
  }

  std::string method_;
  models::Classifier& teacher_;
  Student& student_;
  std::int64_t epochs_, iterations_;
  std::uint64_t seed_, stream_;
  std::unique_ptr<models::Generator> generator_;
  std::unique_ptr<Adam> g_optim_;
  std::unique_ptr<Sgd> q_optim_;
  std::unique_ptr<Adam> range_optim_;       // learned ranges only
  std::unique_ptr<WeightAverage> average_;  // set by a method whose options ask for weight_average > 0
  std::unique_ptr<SampleReplay> replay_;    // set by a method whose options ask for replay > 0
  std::int64_t epochs_done_ = 0;
  std::vector<EpochAccuracy> test_accuracy_;
};

}  // namespace zsq::quant
