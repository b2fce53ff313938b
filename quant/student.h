// The fake-quantized student: a copy of the teacher whose conv/linear weights and post-ReLU activations
// pass through fake quantization, per the QConfig's convention (DESIGN.md §4, ALGORITHMS.md §0).
//
// Sites. Every conv and linear weight is a weight site (per-output-channel ranges recomputed from the
// current weights on each forward). Every ConvBnAct output that is post-ReLU is an activation site (the
// stem, each block's first unit, each block's output after the residual add + ReLU, MobileNetV2's
// expansion/depthwise/head units); its per-tensor range comes from an observer.
// Learned weight ranges (weight_range=learned): each weight site owns per-channel clip ratios, set at
// construction from weight_observer's ranges of the teacher's weights; checkpoints store them as
// "quant.weight_ratio.<site>".
// Learned ranges (QConfig act_range=learned): each site also owns `learned_hi`, f32 [1]. While its
// observer is unfrozen it copies the observer's hi after every observation; once frozen, the site
// quantizes on [0, learned_hi] and learned_hi trains (learned_ranges() gives them to an optimizer).
// Checkpoints store the effective range as the observer's hi, so export, eval and reports read one
// range whichever the mode.
// Phases. `full_precision`: no quantization (reference forward). `calibrate`: activations pass in full
// precision while observers record ranges (weights are quantized). `quantized`: weights and activations
// are fake-quantized; observers keep updating unless frozen.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "models/model_file.h"
#include "quant/observer.h"
#include "quant/qconfig.h"

namespace zsq::quant {

enum class Phase : unsigned char { full_precision, calibrate, quantized };

struct ActivationSite {
  std::string name;  // module path of the ConvBnAct unit, e.g. "stage1.0.conv2"
  models::ConvBnAct* unit = nullptr;
  int bits = 0;
  std::unique_ptr<Observer> observer;
  std::int64_t observations = 0;
  Tensor learned_hi;  // act_range=learned only: f32 [1], requires grad
};

struct WeightSite {
  std::string name;  // module path of the conv/linear, e.g. "stem.conv"
  Tensor weight;
  models::TensorTransform* hook = nullptr;
  int bits = 0;
  Tensor learned_ratio;  // weight_range=learned only: f32 [out channels] clip ratios, requires grad
};

class Student {
 public:
  // Copies the teacher's state into a fresh model of the same architecture, on the teacher's device.
  Student(const models::ModelSpec& spec, const models::Classifier& teacher, const QConfig& config);

  models::Classifier& model() { return *model_; }
  // Moves the model and the learned ranges to `device` (in place: optimizers holding them see the move).
  // When only model() was moved, all the learned ranges follow it together on the next forward.
  void to(Device device);
  const models::ModelSpec& spec() const { return spec_; }
  const QConfig& config() const { return config_; }
  Phase phase() const { return phase_; }
  void set_phase(Phase phase) { phase_ = phase; }
  void freeze_ranges();
  void unfreeze_ranges();
  // Every activation observer back to a fresh state (no observations, not frozen), for a recalibration.
  void reset_ranges();
  // Calibration: in eval mode and without gradients, forwards `batches` inputs (batch_at(0), ...) with
  // activations in full precision while the unfrozen observers record them, then freezes the ranges and
  // returns to the quantized phase.
  void calibrate(std::int64_t batches, const std::function<Tensor(std::int64_t batch)>& batch_at);
  // Puts the student in training mode for fine-tuning with BN as the config asks: `train` (batch
  // statistics, running stats updated), `eval` (running statistics, BN affine still trainable) or
  // `frozen` (running statistics and BN parameters fixed).
  void prepare_for_training();

  std::vector<ActivationSite>& activation_sites() { return activations_; }
  // The first parameter holding a non-finite value or one beyond 1e15 (a weight that large is lost: the
  // next forward overflows; trained weights here stay below ~10), with that value; nullopt when none.
  std::optional<std::pair<std::string, float>> first_diverged_parameter() const;
  // The range a site quantizes with: its observer's, or [lo, learned hi] once a learned site is frozen.
  std::pair<float, float> activation_range(const ActivationSite& site) const;
  // The observer's state with the effective range as its [lo, hi] (what a student checkpoint stores).
  std::vector<float> activation_state(const ActivationSite& site) const;
  // Every learned range tensor, for one optimizer: the learned hi of each activation site
  // (act_range=learned), then each weight site's clip ratios (weight_range=learned). Empty otherwise.
  // The hi of a site no forward reaches (a unit that is never post-ReLU) is listed too and never gets a
  // gradient (optimizers skip it).
  std::vector<Tensor> learned_ranges() const;
  // True when some learned hi is in use (its observer frozen): the student's step should train them.
  bool learned_ranges_active() const;
  // Every learned hi set to its observer's hi (after observers were loaded from a file).
  void reset_learned_ranges_to_observed();
  std::vector<WeightSite>& weight_sites() { return weights_; }
  // The activation sites that have seen data (sites whose unit is never post-ReLU stay unused).
  std::vector<const ActivationSite*> used_activation_sites() const;

  // Model state plus "quant.act.<site>" = observer state per used site; metadata records the QConfig.
  Checkpoint to_checkpoint(std::map<std::string, std::string> metadata = {}) const;
  // Rebuilds a saved student with frozen ranges, in the quantized phase. Errors name the file.
  // fresh_weight_ratios: a weight site without saved ratios keeps the ones construction gives it (for a
  // student whose config was switched to weight_range=learned after it was saved); otherwise that is
  // an error naming the site.
  static std::unique_ptr<Student> from_checkpoint(const Checkpoint& checkpoint,
                                                  bool fresh_weight_ratios = false);
  static bool is_student_checkpoint(const Checkpoint& checkpoint);
  // The QConfig a student checkpoint was written with (zsq.quant.config); errors name the file.
  static QConfig config_of(const Checkpoint& checkpoint);
  // weight_range=learned: the clip ratios "quant.weight_ratio.<site>" of `checkpoint` (a student file or
  // a training state). A missing entry keeps this student's ratios when fresh_if_missing, else it is an
  // error naming the site, as are ratios in a file for a student without learned weight ranges.
  void load_weight_ratios(const Checkpoint& checkpoint, bool fresh_if_missing = false);

 private:
  void install_hooks();
  static bool uses_learned_range(const ActivationSite& site);
  // Every learned range to `device`, in place (the model is not moved).
  void move_learned_ranges(Device device) const;
  // When `learned` is not on x's device (a student loaded on the CPU whose model() was then moved to a
  // GPU), moves every learned range there.
  void follow_device(const Tensor& learned, const Tensor& x) const;
  Tensor quantize_weight(const WeightSite& site, const Tensor& w) const;
  Tensor initial_clip_ratios(const WeightSite& site) const;
  Tensor quantize_activation(ActivationSite& site, const Tensor& a);

  models::ModelSpec spec_;
  std::shared_ptr<models::Classifier> model_;
  QConfig config_;
  Phase phase_ = Phase::quantized;
  std::vector<ActivationSite> activations_;
  std::vector<WeightSite> weights_;
};

}  // namespace zsq::quant
