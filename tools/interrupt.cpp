#include "tools/interrupt.h"

namespace zsq::cli {

namespace {
volatile std::sig_atomic_t g_received = 0;

void on_signal(int signal) {
  g_received = signal;
}
}  // namespace

InterruptGuard::InterruptGuard() {
  g_received = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // the second signal is not caught: it ends the process
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
}

int InterruptGuard::received() {
  return g_received;
}

}  // namespace zsq::cli
