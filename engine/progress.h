// Progress reporting for long work: on a terminal, one line rewritten in place; otherwise (CI logs,
// pipes) a full line every `log_every_seconds`. Shows step/total, rate, ETA and caller-chosen fields.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace zsq {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit = "it", double log_every_seconds = 10.0);
  // Reports that `done` of `total` are complete; `fields` is e.g. "loss 0.412 acc 91.3%".
  void update(std::int64_t done, const std::string& fields = "", double units_per_step = 1.0);
  // Ends the line with a summary.
  void finish(const std::string& fields = "");
  double elapsed_seconds() const;

 private:
  std::string label_, unit_;
  std::int64_t total_;
  double log_every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  double last_log_ = -1e9;
  std::int64_t start_done_ = -1;
  std::string last_line_;
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace zsq
