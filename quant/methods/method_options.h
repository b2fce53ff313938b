// Named options of a method (`zsq quantize --opt KEY=VALUE`): each options struct lists its tunable
// fields once, with a name and a one-line meaning, and gets parsing, validation messages, a JSON dump
// for the report and a help text from that list. ALGORITHMS.md asks for every [I] choice to be a named,
// documented option; this is how they are reachable without a rebuild.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

namespace zsq::quant {

struct OptionField {
  std::string name;
  std::variant<float*, std::int64_t*, bool*, std::string*, std::vector<std::int64_t>*> target;
  std::string help;
  std::vector<std::string> choices = {};  // string fields: the accepted values
};

// Parses "key=value" into the field named key. Floats and integers must parse whole; bools are
// true/false/1/0; integer lists are comma-separated ("" or "none" for empty). Throws zsq::Error naming
// the method, the key and the accepted keys or values.
void set_option(const std::vector<OptionField>& fields, const std::string& key_equals_value,
                const std::string& method);
nlohmann::json options_to_json(const std::vector<OptionField>& fields);
// "  key  meaning (default)" lines for --help texts and error messages.
std::string options_help(const std::vector<OptionField>& fields);

// The student-optimizer, schedule and student-batch fields every generator-based method (gdfq, zaq) has,
// declared once (check_training_schedule in generative_trainer.h checks them).
template <typename Options>
std::vector<OptionField> training_schedule_fields(Options& o) {
  return {
      {"q_lr", &o.q_lr, "student SGD learning rate"},
      {"q_momentum", &o.q_momentum, "student SGD momentum"},
      {"q_weight_decay", &o.q_weight_decay, "student weight decay"},
      {"g_lr", &o.g_lr, "generator Adam learning rate"},
      {"range_lr", &o.range_lr, "Adam learning rate of learned activation ranges (--set act_range=learned)"},
      {"weight_average", &o.weight_average, "EMA decay per iteration of the student's weights (0: off)"},
      {"weight_average_epoch", &o.weight_average_epoch,
       "epoch from which weight_average averages; before it the average is the current weights (0: from "
       "the start)"},
      {"lr_schedule", &o.lr_schedule, "step (x0.1 at lr_milestones) or cosine", {"step", "cosine"}},
      {"lr_milestones", &o.lr_milestones, "epochs where step multiplies both learning rates by 0.1"},
      {"recalibrate_batches", &o.recalibrate_batches,
       "when the ranges freeze, re-observe them on this many fresh generator batches (0: keep the "
       "observer's running ranges)"},
      {"recalibrate_source",
       &o.recalibrate_source,
       "what recalibrate_batches observes: the generator's images, or N(0, 1) images (the gaussian "
       "baseline's calibration set)",
       {"generator", "gaussian"}},
      {"recalibrate_epochs", &o.recalibrate_epochs,
       "later epochs at whose start the ranges are re-observed the same way, on the student as trained "
       "so far (needs recalibrate_batches > 0)"},
      {"q_steps", &o.q_steps, "student steps per generator step, each on fresh generated images"},
      {"replay", &o.replay,
       "images kept in a reservoir of past generated samples, mixed into every student batch (0: off)"},
      {"replay_fraction", &o.replay_fraction, "share of each student batch drawn from the replay reservoir"},
  };
}

}  // namespace zsq::quant
