// What the generator-based methods (GDFQ, ZAQ) share: a frozen teacher, the student, a generator with
// its optimizer, the student's optimizer, the epoch loop and the checkpoint of all of it. A method
// supplies begin_epoch (schedules, range freezing, BN mode) and iterate (one generator/student round).
// Every epoch draws from an RNG derived from (seed, method stream, epoch), so a run resumed at an epoch
// boundary replays exactly what an uninterrupted run would have done.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "engine/checkpoint.h"
#include "engine/optim.h"
#include "models/generator.h"
#include "quant/methods/trainer_state.h"
#include "quant/student.h"

namespace zsq::quant {

template <typename Iteration>
class GenerativeTrainer {
 public:
  virtual ~GenerativeTrainer() = default;
  GenerativeTrainer(const GenerativeTrainer&) = delete;
  GenerativeTrainer& operator=(const GenerativeTrainer&) = delete;

  // Runs the remaining epochs; `on_iteration` sees every iteration, `on_epoch_end(epochs_done)` runs after
  // each epoch (checkpointing, evaluation) with the student's ranges frozen.
  void run(const std::function<void(const Iteration&)>& on_iteration,
           const std::function<void(std::int64_t epochs_done)>& on_epoch_end) {
    for (std::int64_t epoch = epochs_done_; epoch < epochs_; ++epoch) {
      begin_epoch(epoch);
      Rng rng(seed_ * 0x9e3779b97f4a7c15ULL + stream_ + static_cast<std::uint64_t>(epoch));
      for (std::int64_t it = 0; it < iterations_; ++it) {
        const Iteration r = iterate(epoch, it, rng);
        if (on_iteration) on_iteration(r);
      }
      epochs_done_ = epoch + 1;
      student_.freeze_ranges();
      student_.model().eval();
      if (on_epoch_end) on_epoch_end(epochs_done_);
    }
  }
  virtual Iteration iterate(std::int64_t epoch, std::int64_t iteration, Rng& rng) = 0;

  std::int64_t epochs_done() const { return epochs_done_; }
  models::Generator& generator() { return *generator_; }
  // Generator, optimizers and observers, plus the epoch count, for exact resume (the student's weights
  // go in through Student::to_checkpoint).
  void save_state(Checkpoint& checkpoint) const {
    save_trainer_state(checkpoint, method_, epochs_done_, {*generator_, *g_optim_, *q_optim_, student_});
  }
  void load_state(const Checkpoint& checkpoint) {
    epochs_done_ = load_trainer_state(checkpoint, method_, {*generator_, *g_optim_, *q_optim_, student_});
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
  virtual void begin_epoch(std::int64_t epoch) = 0;

  std::string method_;
  models::Classifier& teacher_;
  Student& student_;
  std::int64_t epochs_, iterations_;
  std::uint64_t seed_, stream_;
  std::unique_ptr<models::Generator> generator_;
  std::unique_ptr<Adam> g_optim_;
  std::unique_ptr<Sgd> q_optim_;
  std::int64_t epochs_done_ = 0;
};

}  // namespace zsq::quant
