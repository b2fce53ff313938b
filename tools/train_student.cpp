#include "tools/train_student.h"

#include <cmath>

#include "engine/checkpoint.h"
#include "engine/progress.h"
#include "models/model_file.h"
#include "quant/methods/kd_finetune.h"
#include "quant/student.h"
#include "tools/evaluate.h"

namespace zsq::cli {

void run_train_student(const StudentFinetuneOptions& o) {
  ZSQ_CHECK(!o.teacher.empty(),
            "zsq train --student: --teacher FILE (the student's full-precision model) is required");
  ZSQ_CHECK(o.steps > 0 && o.batch > 0 && o.calibrate_batches >= 0 && o.eval_every >= 0,
            "zsq train --student: --steps and --batch must be positive, --calibrate-batches and --eval-every "
            ">= 0");
  Checkpoint checkpoint = load_checkpoint(o.student);
  ZSQ_CHECK(quant::Student::is_student_checkpoint(checkpoint),
            "{}: not a quantized student (no zsq.quant.config); --student takes the output of zsq quantize",
            o.student);
  if (!o.sets.empty()) {
    // The student's own QConfig with the overrides (the ranges and weights it holds stay as they are).
    quant::QConfig config = quant::Student::config_of(checkpoint);
    for (const auto& kv : o.sets) config.set(kv);
    checkpoint.metadata["zsq.quant.config"] = config.to_json().dump();
  }
  // With --set weight_range=learned on a student saved without ratios, they start as a new student's.
  auto student = quant::Student::from_checkpoint(checkpoint, /*fresh_weight_ratios=*/!o.sets.empty());
  auto teacher = models::load_model(o.teacher);
  ZSQ_CHECK(teacher.spec.name == student->spec().name && teacher.spec.config == student->spec().config,
            "{} is a {} {}, but the student {} is a {} {}", o.teacher, teacher.spec.name,
            teacher.spec.config.dump(), o.student, student->spec().name, student->spec().config.dump());
  teacher.model->to(o.device);
  student->to(o.device);

  auto train = load_fashion_mnist(o.data, Split::train);
  if (o.limit > 0 && o.limit < train.size()) {
    train.labels.resize(static_cast<std::size_t>(o.limit));
    train.images.resize(static_cast<std::size_t>(o.limit * kFashionRawSize * kFashionRawSize));
  }
  const auto test = o.test ? load_fashion_mnist(o.data, Split::test) : FashionMnist{};
  auto test_accuracy = [&] { return o.test ? evaluate(student->model(), test, 500).accuracy : NAN; };

  const double before = test_accuracy();
  if (o.test)
    fmt::print(stderr, "student {}: test accuracy {:.2f}% before fine-tuning\n", o.student, 100 * before);
  if (o.calibrate_batches > 0) {
    // Plain (unaugmented) training images, in a fixed order: the ranges a real calibration set gives.
    BatchLoader calibration(train, o.batch, true, false, global_rng().fork(11));
    student->reset_ranges();
    student->calibrate(o.calibrate_batches, [&](std::int64_t) {
      Tensor images, labels;
      if (!calibration.next(images, labels)) {
        calibration.start_epoch(calibration.epoch() + 1);
        calibration.next(images, labels);
      }
      return images.to(o.device);
    });
    if (o.test)
      fmt::print(stderr, "ranges re-observed on {} batches of real training images: test accuracy {:.2f}%\n",
                 o.calibrate_batches, 100 * test_accuracy());
  }

  BatchLoader loader(train, o.batch, true, o.augment, global_rng().fork(12), /*drop_last=*/true);
  ZSQ_CHECK(loader.batches_per_epoch() > 0, "zsq train --student: fewer training images ({}) than --batch {}",
            train.size(), o.batch);
  auto next_batch = [&](std::int64_t, Rng&) {
    Tensor images, labels;
    if (!loader.next(images, labels)) {
      loader.start_epoch(loader.epoch() + 1);
      loader.next(images, labels);
    }
    return images.to(o.device);
  };
  Progress progress("kd-real", o.steps, "img");
  double last_eval = NAN;
  Rng unused = global_rng().fork(13);
  quant::kd_finetune(
      *teacher.model, *student,
      {.steps = o.steps, .batch = o.batch, .lr = o.lr, .temperature = o.temperature, .range_lr = o.range_lr},
      next_batch, unused, [&](const quant::KdFinetuneStep& s) {
        if (o.eval_every > 0 && s.step % o.eval_every == 0 && s.step < o.steps) {
          last_eval = test_accuracy();
          fmt::print(stderr, "\nstep {}: test accuracy {:.2f}%\n", s.step, 100 * last_eval);
        }
        progress.update(s.step, fmt::format("step {}/{} kd loss {:.4f}", s.step, o.steps, s.loss),
                        static_cast<double>(o.batch));
      });
  progress.finish();
  const double after = test_accuracy();
  std::map<std::string, std::string> metadata{
      {"zsq.quant.method", "real-data KD fine-tune (upper bound, not zero-shot)"},
      {"zsq.finetune.from", o.student},
      {"zsq.finetune.teacher", o.teacher},
      {"zsq.finetune.steps", std::to_string(o.steps)},
      {"zsq.finetune.batch", std::to_string(o.batch)},
      {"zsq.finetune.lr", fmt::format("{}", o.lr)},
      {"zsq.finetune.calibrate_batches", std::to_string(o.calibrate_batches)}};
  for (std::size_t i = 0; i < o.sets.size(); ++i) metadata[fmt::format("zsq.finetune.set.{}", i)] = o.sets[i];
  if (o.test) metadata["zsq.test_accuracy"] = fmt::format("{:.4f}", after);
  student->model().eval();
  save_checkpoint(o.out, student->to_checkpoint(metadata));
  fmt::print("saved {}{}\n", o.out,
             o.test
                 ? fmt::format(" (test accuracy {:.2f}%, was {:.2f}%; real-data upper bound, not zero-shot)",
                               100 * after, 100 * before)
                 : "");
}

}  // namespace zsq::cli
