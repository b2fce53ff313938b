// ZAQ (Liu, Zhang, Wang; CVPR 2021; ALGORITHMS.md §1): an adversarial loop. The unconditional
// generator maximizes the discrepancy between teacher P and fake-quantized student Q, at the output
// (L1 on logits) and at the features (channel and spatial relation maps of each stage output), plus an
// activation regularizer on P's last stage; Q minimizes the discrepancy on detached samples.
//   Q-step (q_steps per iteration): L_Q = D_o + alpha * D_f
//   G-step: L_G = -D_o - alpha * D_f - beta * mean|F_P^last| [- diversity * H(mean_b softmax(P(x)))],
//   gradients through P and through Q's STE.
// The spatial relation is softmax attention over positions, computed by ops::attention without ever
// materializing the N x N map; the channel relation is attention over channels with scale -1
// (softmax(rowmax(E) - E) = softmax(-E)).
// Stability options (§8 reports the reference configuration diverging): student BN mode, Q learning
// rate, and freezing the activation ranges after `freeze_epochs` (the reference never freezes). The
// optional label-diversity term keeps the generator from drifting onto a few of P's classes: without it,
// W3A3 runs lost the footwear classes (Sandal 20%, Sneaker 41% test accuracy) while the discrepancy
// on synthetic batches kept falling. The teacher's batch label entropy is logged either way.
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

struct ZaqOptions {
  std::int64_t epochs = 300;
  std::int64_t iterations = 60;  // per epoch
  std::int64_t batch = 256;
  std::int64_t q_steps = 5;
  float q_lr = 0.1f;
  float q_momentum = 0.9f;
  float q_weight_decay = 5e-4f;
  float g_lr = 1e-3f;
  std::vector<std::int64_t> lr_milestones{100, 200};
  float alpha = 1.0f;            // feature discrepancy weight
  float beta = 0.1f;             // activation regularizer weight
  float gamma = 0.1f;            // relation-map residual weight
  float q_output_weight = 1.0f;  // the student's L1 output discrepancy (the reference's student loss)
  float q_kd_weight = 0.0f;      // > 0: the student also minimizes this times KD(P, Q) at `temperature`
  float temperature = 1.0f;      // of q_kd_weight's KD term
  float diversity = 0.0f;  // > 0: G also maximizes diversity * H(mean softmax(P(x))) (not in the reference)
  bool student_bn_train = true;                  // the reference keeps Q's BN in train mode
  std::int64_t freeze_epochs = -1;               // < 0: ranges never frozen (the reference)
  std::int64_t recalibrate_batches = 0;          // > 0: fresh ranges from the generator when they freeze
  std::string recalibrate_source = "generator";  // or "gaussian": N(0, 1) images, as the gaussian baseline
  std::vector<std::int64_t> recalibrate_epochs;  // later epochs that re-observe the ranges too
  float weight_average = 0.0f;  // > 0: the student handed out is an EMA of its weights with this decay
  std::int64_t weight_average_epoch = 0;  // the EMA starts afresh at this epoch (e.g. the lr cut)
  float range_lr = 1e-3f;                 // Adam lr of learned activation ranges (act_range=learned)
  std::string lr_schedule = "step";       // step: x0.1 at lr_milestones; cosine: per epoch to 0 at the end
  std::int64_t replay = 0;                // > 0: a reservoir of this many generated images (sample_replay.h)
  float replay_fraction = 0.5f;           // the share of each student batch drawn from the reservoir
  std::string augment = "none";           // flip_shift, mixup or flip_shift+mixup (sample_augment.h)
  std::int64_t augment_shift = 2;         // largest shift in pixels of flip_shift
  float mixup_fraction = 0.5f;            // share of the student images blended with another by augment=mixup
  float bns_weight = 0.0f;  // > 0: G also minimizes this times the BN-statistics loss (GDFQ's form)
  std::uint64_t seed = 0;

  // The tunable fields by name (zsq quantize --opt KEY=VALUE); epochs, iterations and batch have their
  // own flags.
  std::vector<OptionField> fields();
  nlohmann::json to_json() const;

  // "paper": the reference configuration above. "quick" (4 x 10 iterations, ~4 min on 2 cores) and
  // "standard" (8 x 10, ~9 min: longer adversarial training measured worse, see zaq.cpp) use the stable
  // settings: Q's BN fixed (eval), Q lr 1e-4 with Nesterov, ranges frozen after epoch 1, label diversity 2.
  // "tiny" (seconds; tests and smoke checks only) uses them too.
  static ZaqOptions budget(const std::string& name);
};

// Per-stage relation discrepancy: mean|R_c(Q) - R_c(P)| + mean|R_s(Q) - R_s(P)|.
Tensor relation_discrepancy(const Tensor& teacher_feature, const Tensor& student_feature, float gamma);

struct ZaqIteration {
  std::int64_t epoch = 0, iteration = 0;
  float q_loss = 0, q_output = 0, q_feature = 0;  // last Q-step
  float q_kd = 0;                                 // its KD term (q_kd_weight > 0; else 0)
  float g_loss = 0, g_output = 0, g_feature = 0, g_activation = 0;
  float g_label_entropy = 0;  // H of P's batch-mean prediction on the G-step batch (ln 10 = all classes)
  float g_bns = 0;            // BN-statistics loss of the G-step batch (bns_weight > 0; else 0)
};

class ZaqTrainer : public GenerativeTrainer<ZaqIteration> {
 public:
  ZaqTrainer(models::Classifier& teacher, Student& student, const ZaqOptions& options);
  void begin_epoch(std::int64_t epoch) override;
  ZaqIteration iterate(std::int64_t epoch, std::int64_t iteration, Rng& rng) override;

 private:
  ZaqOptions options_;
  std::int64_t replayed_ = 0;  // images per student batch drawn from replay_ (options.replay > 0)
};

}  // namespace zsq::quant
