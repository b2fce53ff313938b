// zsq quantize --method gdfq|zaq: a generator-based fine-tuning run with what a long run needs around
// the trainer (quant/methods): metrics.csv (one row per iteration), and after every epoch the generator
// on its own (OUT/generator.safetensors), a sample grid (OUT/samples/epoch_NNN.png) and the resumable
// state (OUT/state.safetensors, written last: it is the commit point). --resume continues exactly; the
// first SIGINT/SIGTERM stops between iterations and leaves the last epoch's state. --eval-data (research
// only) evaluates the student on the test set after every epoch; without it no data is opened.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/layers.h"
#include "quant/student.h"

namespace zsq::cli {

struct GenerativeRunOptions {
  std::string method, budget = "quick", out, teacher;
  std::string eval_data;  // empty: zero-shot (no data opened); else the Fashion-MNIST directory
  bool resume = false;
  std::uint64_t seed = 0;
  std::int64_t epochs = 0, iterations = 0, batch = 0;  // > 0 overrides the budget's value
  std::int64_t report_images = 256;                    // generated images the per-layer report uses
  std::vector<std::string> method_options;             // "KEY=VALUE" (--opt), applied over the budget
};

struct GenerativeRunResult {
  Tensor inputs;                                     // generated images for the per-layer report
  nlohmann::json losses = nlohmann::json::object();  // last iteration's losses and the schedule
  nlohmann::json research;                           // report "research_mode" block; null without --eval-data
  nlohmann::json method_options;                     // every named option of the method as it ran
};

// Throws zsq::Error naming the key when one of the --opt values is not valid for method (gdfq or zaq).
void check_method_options(const std::string& method, const std::string& budget,
                          const std::vector<std::string>& options);
// The --opt keys of a method with their meanings and budget defaults (for --help and errors).
std::string method_options_help(const std::string& method, const std::string& budget);

// Throws Interrupted (tools/interrupt.h) when a signal stopped the run.
GenerativeRunResult run_generative(const GenerativeRunOptions& options, models::Classifier& teacher,
                                   quant::Student& student);

}  // namespace zsq::cli
