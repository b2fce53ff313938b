// Graceful Ctrl-C for long runs. While an InterruptGuard lives, the first SIGINT or SIGTERM only sets a
// flag that the training loop polls between iterations, so the run stops at a consistent point (the
// last per-epoch checkpoint) and says how to resume; a second signal gets the default action (the
// handler is installed with SA_RESETHAND), so a stuck run can still be killed at once.
#pragma once
#include <csignal>
#include <stdexcept>

namespace zsq::cli {

class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
  // The signal received (SIGINT, SIGTERM), or 0.
  static int received();

 private:
  struct sigaction previous_int_ {
  }, previous_term_{};
};

// Thrown after a run stopped on a signal and left its resumable state; zsq exits with 128 + signal.
class Interrupted : public std::runtime_error {
 public:
  Interrupted(int signal, const std::string& message) : std::runtime_error(message), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

}  // namespace zsq::cli
