#include "engine/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace zsq {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

Progress::Progress(std::string label, std::int64_t total, std::string unit, double log_every_seconds)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      log_every_(log_every_seconds),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(std::int64_t done, const std::string& fields, double units_per_step) {
  const double t = elapsed_seconds();
  if (start_done_ < 0) start_done_ = done > 0 ? done - 1 : 0;  // a resumed run starts mid-way
  const bool due = tty_ ? t - last_log_ >= 0.2 : t - last_log_ >= log_every_;
  if (!due && done < total_) return;
  last_log_ = t;
  const double steps = static_cast<double>(done - start_done_);
  const double rate = steps > 0 && t > 0 ? steps / t : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : NAN;
  last_line_ = fmt::format("{} {}/{} {} | {:.1f} {}/s | elapsed {} ETA {}", label_, done, total_, fields,
                           rate * units_per_step, unit_, format_duration(t), format_duration(eta));
  std::fprintf(stderr, tty_ ? "\r\033[K%s" : "%s\n", last_line_.c_str());
  std::fflush(stderr);
}

void Progress::finish(const std::string& fields) {
  std::fprintf(stderr, "%s%s done in %s %s\n", tty_ ? "\r\033[K" : "", label_.c_str(),
               format_duration(elapsed_seconds()).c_str(), fields.c_str());
  std::fflush(stderr);
}

}  // namespace zsq
