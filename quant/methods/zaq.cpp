#include "quant/methods/zaq.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/layout.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "quant/distill.h"
#include "quant/losses.h"
#include "quant/methods/sample_augment.h"

namespace zsq::quant {

ZaqOptions ZaqOptions::budget(const std::string& name) {
  ZaqOptions o;
  if (name == "paper") return o;
  o.student_bn_train = false;
  o.q_lr = 1e-4f;
  o.q_weight_decay = 1e-4f;
  o.freeze_epochs = 1;
  // Label diversity (docs/results.md, third session): W3A3 quick 71.76% -> 92.37% (the generator no longer
  // drifts onto a few classes), W4A4 quick 93.61% -> 93.90%.
  o.diversity = 2.0f;
  // Fresh ranges from the generator when they freeze, and a replay reservoir of past samples for the
  // student (docs/results.md, fourth session): W3A3 standard 91.09% -> 92.63% (the student no longer
  // drifts after epoch 2), quick seeds 0/1/2 92.88/92.23/92.61% (92.37/92.44/92.23 before); W4A4 quick
  // 93.86% (93.90% before), standard seeds 0/1/2 93.75/93.87/93.87% (seed 0 93.63% before).
  o.recalibrate_batches = 4;
  o.replay = 2048;
  if (name == "quick") {
    o.epochs = 4, o.iterations = 10, o.batch = 128, o.lr_milestones = {3};
    return o;
  }
  if (name == "standard") {
    // Measured with --eval-data (docs/results.md): at constant lr the student peaks after ~300 Q steps
    // and then drifts as the generator wins (20 x 25 iterations ended 92.90%); 8 x 10 with the lr cut
    // after epoch 5 ended 93.67%. Batch 256 (93.53%), a cosine schedule with weight averaging (93.38% at
    // epoch 6) bought nothing, so "the best accuracy in about an hour" takes ~9 minutes here.
    o.epochs = 8, o.iterations = 10, o.batch = 128, o.lr_milestones = {5};
    return o;
  }
  if (name == "tiny") {  // tests and smoke checks: seconds on a small teacher, nothing learned
    o.epochs = 2, o.iterations = 2, o.batch = 8, o.q_steps = 2, o.lr_milestones = {};
    o.replay = 64;  // the replay path runs (and resumes) in the CLI tests without 8 MB states
    return o;
  }
  fail(fmt::format("unknown budget '{}' (tiny, quick, standard, paper)", name));
}

std::vector<OptionField> ZaqOptions::fields() {
  auto fields = training_schedule_fields(*this);
  fields.insert(
      fields.end(),
      {
          {"alpha", &alpha, "feature discrepancy weight"},
          {"beta", &beta, "activation regularizer weight"},
          {"gamma", &gamma, "relation-map residual weight"},
          {"q_output_weight", &q_output_weight, "weight of the L1 logit discrepancy in the student's loss"},
          {"q_kd_weight", &q_kd_weight,
           "weight of KD(teacher, student) at `temperature` in the student's loss (0: off, the reference)"},
          {"temperature", &temperature, "temperature of the student's KD term (q_kd_weight)"},
          {"diversity", &diversity, "weight of the teacher's batch label entropy, maximized by G (0: off)"},
          {"student_bn_train", &student_bn_train,
           "student BN in train mode (the reference) instead of fixed"},
          {"freeze_epochs", &freeze_epochs, "freeze activation ranges from this epoch on (-1: never)"},
          {"augment", &augment,
           "none, flip_shift, mixup or flip_shift+mixup: each student image mirrored (p = 1/2) and shifted "
           "by up to augment_shift pixels, and/or (mixup) blended with another image of the batch, the "
           "teacher's logits taken on the result"},
          {"augment_shift", &augment_shift, "largest shift (pixels) of augment=flip_shift"},
          {"mixup_fraction", &mixup_fraction,
           "share of the student's images that augment=mixup blends (lambda uniform in [0, 1))"},
          {"bns_weight", &bns_weight,
           "G also minimizes this times the teacher's BN-statistics loss (GDFQ's form) on its batch (0: "
           "off)"},
      });
  return fields;
}

nlohmann::json ZaqOptions::to_json() const {
  ZaqOptions copy = *this;
  return options_to_json(copy.fields());
}

namespace {
// R = gamma * attention(X, X, X, scale) + X for rows X [B, M, D].
Tensor relation(const Tensor& rows, float scale, float gamma) {
  return ops::add(ops::mul_scalar(ops::attention(rows, rows, rows, scale), gamma), rows);
}
}  // namespace

Tensor relation_discrepancy(const Tensor& teacher_feature, const Tensor& student_feature, float gamma) {
  ZSQ_CHECK(teacher_feature.shape() == student_feature.shape() && teacher_feature.dim() == 4,
            "relation_discrepancy: features must be equal 4-D shapes, got {} and {}", teacher_feature.str(),
            student_feature.str());
  const auto B = teacher_feature.size(0), C = teacher_feature.size(1);
  const auto N = teacher_feature.size(2) * teacher_feature.size(3);
  Tensor total;
  for (bool spatial : {false, true}) {
    Tensor rp, rq;
    for (int which = 0; which < 2; ++which) {
      Tensor y = ops::normalize_channels(which == 0 ? teacher_feature : student_feature);
      // Spatial: rows are positions ([B, N, C]); channel: rows are channels ([B, C, N]), scale -1.
      Tensor rows = spatial ? ops::positions_as_rows(y) : ops::reshape(y, {B, C, N});
      (which == 0 ? rp : rq) = relation(rows, spatial ? 1.0f : -1.0f, gamma);
    }
    Tensor term = ops::l1(rq, rp);
    total = total.defined() ? ops::add(total, term) : term;
  }
  return total;
}

ZaqTrainer::ZaqTrainer(models::Classifier& teacher, Student& student, const ZaqOptions& options)
    : GenerativeTrainer("zaq", teacher, student, options.epochs, options.iterations, options.seed, 7),
      options_(options) {
  ZSQ_CHECK(options.epochs > 0 && options.iterations > 0 && options.batch > 1,
            "zaq: epochs and iterations must be positive and batch > 1");
  check_training_schedule("zaq", options);
  ZSQ_CHECK(
      options.q_output_weight >= 0.0f && options.q_kd_weight >= 0.0f &&
          options.q_output_weight + options.q_kd_weight > 0.0f && options.temperature > 0.0f,
      "zaq: q_output_weight and q_kd_weight must be >= 0 and not both 0, temperature > 0 (got {}, {}, {})",
      options.q_output_weight, options.q_kd_weight, options.temperature);
  check_augment_options("zaq", options.augment, options.mixup_fraction);
  ZSQ_CHECK(options.bns_weight >= 0.0f, "zaq: bns_weight must be >= 0, got {}", options.bns_weight);
  Rng init(options.seed ^ 0x7a6171ULL);
  generator_ = std::make_unique<models::Generator>(models::GeneratorConfig::zaq(1), init);
  generator_->to(device());
  g_optim_ = std::make_unique<Adam>(generator_->parameters(), AdamOptions{.lr = options.g_lr});
  q_optim_ =
      std::make_unique<Sgd>(student_.model().parameters(), SgdOptions{.lr = options.q_lr,
                                                                      .momentum = options.q_momentum,
                                                                      .weight_decay = options.q_weight_decay,
                                                                      .nesterov = !options.student_bn_train});
  if (options.weight_average > 0)
    average_ = std::make_unique<WeightAverage>(student_.model(), options.weight_average,
                                               options.weight_average_epoch);
  make_range_optimizer(options.range_lr);
  if (options.replay > 0) {
    const auto& g = generator_->config();
    replay_ = std::make_unique<SampleReplay>(options.replay, Shape{g.channels, g.image_size, g.image_size});
    // The student batch keeps its size: batch - replayed fresh images, once the reservoir holds any.
    replayed_ = std::clamp<std::int64_t>(
        std::llround(options.replay_fraction * static_cast<double>(options.batch)), 1, options.batch - 1);
  }
}

void ZaqTrainer::begin_epoch(std::int64_t epoch) {
  const auto& o = options_;
  q_optim_->set_lr(epoch_learning_rate(o.q_lr, o.lr_schedule, o.lr_milestones, epoch, o.epochs));
  g_optim_->set_lr(epoch_learning_rate(o.g_lr, o.lr_schedule, o.lr_milestones, epoch, o.epochs));
  set_range_lr(epoch_learning_rate(o.range_lr, o.lr_schedule, o.lr_milestones, epoch, o.epochs));
  if (options_.freeze_epochs >= 0 && epoch >= options_.freeze_epochs)
    student_.freeze_ranges();
  else
    student_.unfreeze_ranges();
  student_.set_phase(Phase::quantized);
  if (recalibrates_at(epoch, o.freeze_epochs, o.recalibrate_batches, o.recalibrate_epochs)) {
    recalibrate_ranges(epoch, o.recalibrate_batches, [this](Rng& rng) {
      if (options_.recalibrate_source == "gaussian")
        return on_device(gaussian_inputs(options_.batch, generator_->config().channels,
                                         generator_->config().image_size, rng));
      return generator_->sample(on_device(randn({options_.batch, generator_->config().latent}, rng)),
                                Tensor());
    });
  }
  if (options_.student_bn_train)
    student_.model().train();
  else
    student_.model().eval();  // fixed BN statistics; BN affine parameters still train
}

ZaqIteration ZaqTrainer::iterate(std::int64_t epoch, std::int64_t iteration, Rng& rng) {
  ZaqIteration r;
  r.epoch = epoch;
  r.iteration = iteration;
  const auto latent = generator_->config().latent;
  auto discrepancies = [&](const Tensor& x, bool teacher_grad, Tensor& d_o, Tensor& d_f, Tensor* teacher_last,
                           Tensor* teacher_logits, Tensor* student_logits = nullptr) {
    Tensor p_logits, q_logits;
    std::vector<Tensor> p_feats;
    if (teacher_grad) {
      p_feats = teacher_.forward_features(x, p_logits);
    } else {
      NoGrad no_grad;
      p_feats = teacher_.forward_features(x, p_logits);
    }
    auto q_feats = student_.model().forward_features(x, q_logits);
    d_o = output_discrepancy(p_logits, q_logits);
    for (std::size_t s = 0; s < p_feats.size(); ++s) {
      Tensor term = relation_discrepancy(p_feats[s], q_feats[s], options_.gamma);
      d_f = d_f.defined() ? ops::add(d_f, term) : term;
    }
    if (teacher_last != nullptr) *teacher_last = p_feats.back();
    if (teacher_logits != nullptr) *teacher_logits = p_logits;
    if (student_logits != nullptr) *student_logits = q_logits;
  };

  generator_->train();
  for (std::int64_t k = 0; k < options_.q_steps; ++k) {
    Tensor x;
    {
      NoGrad no_grad;
      // With replay the generator makes only the fresh share (its BN, in train mode, then normalizes over
      // that share), so a Q step costs no more generator work than without it.
      const bool mix = replay_ && replay_->size() > 0;
      x = generator_->forward(on_device(randn({options_.batch - (mix ? replayed_ : 0), latent}, rng)));
      if (replay_) {
        // Draw before adding, so the replayed share is never this step's own images.
        Tensor past = mix ? on_device(replay_->sample(replayed_, rng)) : Tensor();
        replay_->add(x, rng);
        if (mix) x = concat_batches(x, past);
      }
      if (augment_flips_and_shifts(options_.augment)) x = flip_shift(x, options_.augment_shift, rng);
      if (augment_mixes(options_.augment)) x = mix_pairs(x, options_.mixup_fraction, rng);
    }
    Tensor d_o, d_f, p_logits, q_logits;
    discrepancies(x, false, d_o, d_f, nullptr, &p_logits, &q_logits);
    Tensor loss =
        ops::add(ops::mul_scalar(d_o, options_.q_output_weight), ops::mul_scalar(d_f, options_.alpha));
    if (options_.q_kd_weight > 0.0f) {
      // The reference's student matches logits in L1; KD weighs them through the teacher's softmax, as
      // the real-data fine-tune that reaches ~93.2% at W3A3 does (docs/results.md).
      Tensor kd = kd_loss(q_logits, p_logits, options_.temperature, /*legacy_mean=*/false);
      r.q_kd = kd.item();
      loss = ops::add(loss, ops::mul_scalar(kd, options_.q_kd_weight));
    }
    r.q_loss = loss.item(), r.q_output = d_o.item(), r.q_feature = d_f.item();
    ZSQ_CHECK(std::isfinite(r.q_loss), "zaq: student loss became {} at epoch {} iteration {}", r.q_loss,
              epoch + 1, iteration + 1);
    zero_student_grads();
    loss.backward();
    step_student();
    check_student_finite(epoch, iteration, r.q_loss, q_optim_->lr());
  }

  Tensor x = generator_->forward(on_device(randn({options_.batch, latent}, rng)));
  Tensor d_o, d_f, last, p_logits;
  std::vector<Tensor> bn_inputs;
  const auto teacher_bns = teacher_.batch_norms();
  if (options_.bns_weight > 0.0f) {
    for (auto* bn : teacher_bns) bn->input_tap = [&bn_inputs](const Tensor& t) { bn_inputs.push_back(t); };
  }
  try {
    discrepancies(x, true, d_o, d_f, &last, &p_logits);
  } catch (...) {
    for (auto* bn : teacher_bns) bn->input_tap = nullptr;
    throw;
  }
  for (auto* bn : teacher_bns) bn->input_tap = nullptr;
  Tensor activation = ops::mean(ops::relu(last));  // |F| = F after the stage's ReLU
  Tensor gain = ops::add(ops::add(d_o, ops::mul_scalar(d_f, options_.alpha)),
                         ops::mul_scalar(activation, options_.beta));
  Tensor label_entropy = batch_label_entropy(options_.diversity > 0.0f ? p_logits : p_logits.detach());
  if (options_.diversity > 0.0f) gain = ops::add(gain, ops::mul_scalar(label_entropy, options_.diversity));
  Tensor g_loss = ops::mul_scalar(gain, -1.0f);
  if (options_.bns_weight > 0.0f) {
    // Keeps the adversarial samples where the teacher's BN statistics say its data lies, so the
    // discrepancy the student learns to close is one that real inputs could show.
    Tensor bns = bns_loss_gdfq(bn_inputs, teacher_bns);
    r.g_bns = bns.item();
    g_loss = ops::add(g_loss, ops::mul_scalar(bns, options_.bns_weight));
  }
  r.g_loss = g_loss.item(), r.g_output = d_o.item(), r.g_feature = d_f.item(),
  r.g_activation = activation.item(), r.g_label_entropy = label_entropy.item();
  ZSQ_CHECK(std::isfinite(r.g_loss), "zaq: generator loss became {} at epoch {} iteration {}", r.g_loss,
            epoch + 1, iteration + 1);
  g_optim_->zero_grad();
  g_loss.backward();
  g_optim_->step();
  zero_student_grads();  // the G-step left gradients on Q's parameters; they must not leak into its next step
  return r;
}

}  // namespace zsq::quant
