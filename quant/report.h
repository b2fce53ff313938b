// Per-layer quantization reports: where does the error come from?
// For each conv/linear layer: bits, weight SQNR (dB, quantized vs full-precision weights); for each
// activation site: its range, and the SQNR (dB) and cosine similarity of the student's activation against
// the teacher's at the same site when both see the same inputs. These errors are cumulative (the
// student's activations carry every earlier layer's error), which is what finds the layer that hurts.
// report.json is the record; report.md is rendered from it, so `zsq eval --report` can add rows later.
// A research run (--eval-data) carries a "research_mode" block (per-epoch test accuracy, best and last
// epoch); report.md then opens with a banner saying the test set was evaluated every epoch.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "quant/student.h"

namespace zsq::quant {

// Signal-to-quantization-noise ratio 10*log10(sum ref^2 / sum (ref - got)^2); +inf when equal.
double sqnr_db(const Tensor& reference, const Tensor& got);
double cosine_similarity(const Tensor& a, const Tensor& b);

// The per-layer table as JSON rows, measured on `inputs` (eval mode, no gradients).
nlohmann::json analyze_layers(Student& student, models::Classifier& teacher, const Tensor& inputs);

// Writes report.json and report.md into `dir`.
void write_report(const std::string& dir, const nlohmann::json& report);
nlohmann::json read_report(const std::string& dir);
std::string render_report_markdown(const nlohmann::json& report);

}  // namespace zsq::quant
