// GDFQ (Xu et al., ECCV 2020; ALGORITHMS.md §5): a label-conditional generator learns images the
// teacher classifies as their labels and whose BN input statistics match the teacher's running
// statistics; the fake-quantized student is fine-tuned on them with KD + CE.
//
// One iteration: sample (z, y); x = G(z, y); L_G = CE(P(x), y) + bns_weight * L_BNS(P, x); Adam step
// on G (gradients flow through the frozen teacher). Then Q on x.detach(): L_Q = alpha * KD_T(Q, P) +
// CE(Q(x), y); an SGD step on Q once the warm-up epochs (G only) are over. Q stays in eval mode (fixed BN
// statistics, BN affine trainable). Activation ranges follow the student's observer (GDFQ's
// bias-corrected EMA by default) and freeze after `freeze_epochs`.
// Optional (not in the reference; the ZAQ/AdaDFQ idea applied to GDFQ): once the student trains, G also
// maximizes adversarial_weight * KD_T(Q(x), P(x)) through Q's straight-through estimator, so the
// samples keep carrying what the student has not learned yet instead of growing ever more confident.
// Every epoch draws its noise from an RNG derived from (seed, epoch), so a run resumed at an epoch
// boundary replays exactly what an uninterrupted run would have done.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/optim.h"
#include "models/generator.h"
#include "quant/methods/generative_trainer.h"
#include "quant/methods/method_options.h"
#include "quant/student.h"

namespace zsq::quant {

struct GdfqOptions {
  std::int64_t epochs = 400;
  std::int64_t iterations = 200;  // per epoch
  std::int64_t batch = 200;
  std::int64_t warmup_epochs = 4;  // G only
  std::int64_t freeze_epochs = 4;  // activation ranges frozen from this epoch on
  float q_lr = 1e-4f;
  float q_momentum = 0.9f;
  float q_weight_decay = 1e-4f;
  float g_lr = 1e-3f;
  float bns_weight = 0.1f;
  float g_label_smoothing = 0.0f;  // > 0: the generator's CE targets (1 - s) on its label + s/K everywhere
  bool bn_eps_quirk = true;        // generator BN eps 0.8 as in the reference (false: 1e-5)
  std::string generator_init = "torch";  // or "he_fan_out": the teachers' init (saturated tanh output)
  float temperature = 20.0f;
  float kd_alpha = 1.0f;
  bool legacy_kd_mean = true;
  std::vector<std::int64_t> lr_milestones{100, 200, 300};  // epochs, x0.1 for both optimizers
  std::int64_t recalibrate_batches = 0;          // > 0: fresh ranges from the generator when they freeze
  std::string recalibrate_source = "generator";  // or "gaussian": N(0, 1) images, as the gaussian baseline
  std::vector<std::int64_t> recalibrate_epochs;  // later epochs that re-observe the ranges too
  float weight_average = 0.0f;  // > 0: the student handed out is an EMA of its weights with this decay
  std::int64_t weight_average_epoch = 0;  // the EMA starts afresh at this epoch (e.g. the lr cut)
  float range_lr = 1e-3f;                 // Adam lr of learned activation ranges (act_range=learned)
  std::string lr_schedule = "step";       // step: x0.1 at lr_milestones; cosine: per epoch to 0 at the end
  float q_ce_weight = 1.0f;         // weight of the student's cross-entropy towards the generator's labels
  float adversarial_weight = 0.0f;  // > 0: G also maximizes this times KD(Q, P) after the warm-up
  std::string augment = "none";     // flip_shift, mixup or flip_shift+mixup (sample_augment.h)
  std::int64_t augment_shift = 2;   // largest shift in pixels of flip_shift
  float mixup_fraction = 0.5f;      // share of the student images blended with another by augment=mixup
  std::int64_t replay = 0;          // > 0: reservoir of past generated images mixed into the student's batch
  float replay_fraction = 0.5f;     // share of the student's batch drawn from the reservoir
  std::int64_t q_steps = 1;         // student steps per generator step (the reference: 1)
  std::uint64_t seed = 0;

  // The tunable fields by name (zsq quantize --opt KEY=VALUE); epochs, iterations and batch have their
  // own flags.
  std::vector<OptionField> fields();
  nlohmann::json to_json() const;

  // "paper": the published CIFAR schedule and student loss above. "quick" (6 x 100 iterations, ~8.5 min
  // on 2 cores) and "standard" (12 x 100, ~12 min) train the student with standard KD only and start the
  // generator from the ResNet init (see gdfq.cpp). "tiny": seconds, for tests and smoke checks only.
  static GdfqOptions budget(const std::string& name);
};

struct GdfqIteration {
  std::int64_t epoch = 0, iteration = 0;
  float g_loss = 0, g_ce = 0, bns = 0, q_loss = 0, q_kd = 0, q_ce = 0;
  float g_adversarial = 0;  // KD(Q, P) on the G-step batch when adversarial_weight > 0 (else 0)
  bool student_updated = false;
};

class GdfqTrainer : public GenerativeTrainer<GdfqIteration> {
 public:
  GdfqTrainer(models::Classifier& teacher, Student& student, const GdfqOptions& options);
  void begin_epoch(std::int64_t epoch) override;
  GdfqIteration iterate(std::int64_t epoch, std::int64_t iteration, Rng& rng) override;

 private:
  GdfqOptions options_;
  std::int64_t replayed_ = 0;  // images per student batch drawn from replay_ (options.replay > 0)
};

}  // namespace zsq::quant
