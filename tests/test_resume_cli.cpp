// Interrupting `zsq quantize` for the generator-based methods and resuming it: whatever signal stops
// the run after its first epoch checkpoint (SIGINT: graceful stop between iterations, exit 130;
// SIGKILL: no chance to react), `--resume DIR` must end with exactly the student, generator and
// metrics.csv of an uninterrupted run with the same seed and one thread.
#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <thread>

#include "engine/autograd.h"
#include "quant/student.h"
#include "tests/cli_testing.h"

using namespace zsq;
using namespace zsq::clitest;

namespace {
fs::path scratch() {
  return work_dir("resume");
}

std::vector<std::string> quantize_args(const std::string& method, const fs::path& out, int epochs = 3) {
  // Epochs of 3 iterations plus a sample grid and checkpoints take about half a second on one thread,
  // so a signal sent as soon as the first checkpoint appears lands while the run is still training.
  return {"quantize",
          "--teacher",
          small_teacher(scratch()),
          "--method",
          method,
          "--budget",
          "tiny",
          "--epochs",
          std::to_string(epochs),
          "--iters",
          "3",
          "--seed",
          "11",
          "--threads",
          "1",
          "--calib-images",
          "32",
          "--out",
          out.string()};
}

std::string join(const std::vector<std::string>& args) {
  std::string s;
  for (const auto& a : args) s += a + " ";
  return s;
}

// Starts the run, waits for its first per-epoch checkpoint, sends `signal`, returns the exit code.
int interrupt_after_first_epoch(const std::vector<std::string>& args, const fs::path& out, int signal) {
  const fs::path state = out / "state.safetensors";
  const pid_t pid = spawn_zsq(args, out.string() + ".log");
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(state)) {
    if (::waitpid(pid, &status, WNOHANG) != 0)
      FAIL("the run ended before its first checkpoint: " << slurp(out.string() + ".log"));
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("no checkpoint within 120 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, signal);
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return decode_status(status);
}

// The final student's logits on a fixed batch.
std::vector<float> student_logits(const fs::path& run) {
  auto student = quant::Student::from_checkpoint(load_checkpoint((run / "student.safetensors").string()));
  Rng rng(77);
  NoGrad no_grad;
  return student->model().forward(randn({4, 1, 32, 32}, rng)).to_vector();
}

void check_interrupt_and_resume(const std::string& method, int epochs, const std::vector<int>& signals) {
  const auto straight = scratch() / (method + "_straight");
  auto r = run_zsq(scratch(), "", join(quantize_args(method, straight, epochs)));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto last_grid = fmt::format("epoch_{:03d}.png", epochs);
  for (int signal : signals) {
    CAPTURE(signal);
    const auto out = scratch() / (method + "_" + std::to_string(signal));
    const auto args = quantize_args(method, out, epochs);
    const int code = interrupt_after_first_epoch(args, out, signal);
    if (signal == SIGINT) {
      CHECK_MESSAGE(code == 130, slurp(out.string() + ".log"));
      CHECK(slurp(out.string() + ".log").find("--resume") != std::string::npos);
    } else {
      CHECK(code == 128 + SIGKILL);
    }
    CHECK_FALSE(fs::exists(out / "student.safetensors"));  // stopped before the end

    // Resume by naming the run directory only (--out is implied).
    std::vector<std::string> resume(args.begin(), args.end() - 2);
    resume.insert(resume.end(), {"--resume", out.string()});
    r = run_zsq(scratch(), "", join(resume));
    REQUIRE_MESSAGE(r.code == 0, r.err);
    CHECK(r.err.find("resuming") != std::string::npos);

    CHECK(same_tensors((out / "student.safetensors").string(), (straight / "student.safetensors").string()));
    CHECK(same_tensors((out / "generator.safetensors").string(),
                       (straight / "generator.safetensors").string()));
    CHECK(student_logits(out) == student_logits(straight));
    // Rows of the epoch cut short are dropped on resume and replayed: the same log, bit for bit.
    CHECK(slurp(out / "metrics.csv") == slurp(straight / "metrics.csv"));
    CHECK(slurp(out / "samples" / last_grid) == slurp(straight / "samples" / last_grid));
  }
}
}  // namespace

TEST_CASE("gdfq: SIGINT or SIGKILL after the first epoch, then --resume DIR: bit-identical to one run") {
  check_interrupt_and_resume("gdfq", 3, {SIGINT, SIGKILL});
}

// ZAQ shares the epoch loop, checkpointing and signal handling with GDFQ; one cheaper case (2 epochs,
// SIGINT) covers its own state (student BN mode, several student steps per iteration).
TEST_CASE("zaq: SIGINT after the first epoch, then --resume DIR: bit-identical to one run") {
  check_interrupt_and_resume("zaq", 2, {SIGINT});
}

TEST_CASE("--resume refuses a missing state, other settings, and a method without epochs") {
  const auto out = scratch() / "refuse";
  auto args = quantize_args("gdfq", out);
  auto r = run_zsq(scratch(), "", join(args) + " --resume");
  CHECK(r.code == 1);
  CHECK(r.err.find("no training state") != std::string::npos);
  args[10] = "1";  // --iters 1: a quicker finished run to resume from
  REQUIRE(run_zsq(scratch(), "", join(args)).code == 0);
  args[8] = "4";  // --epochs 4 on resume: a different trajectory
  r = run_zsq(scratch(), "", join(args) + " --resume");
  CHECK(r.code == 1);
  CHECK(r.err.find("resume with the same settings") != std::string::npos);
  r = run_zsq(scratch(), "",
              fmt::format("quantize --teacher {} --method gaussian --resume {}", small_teacher(scratch()),
                          out.string()));
  CHECK(r.code == 1);
  CHECK(r.err.find("--resume is for gdfq and zaq") != std::string::npos);
  r = run_zsq(scratch(), "",
              fmt::format("quantize --teacher {} --method gdfq --resume {} --out {}",
                          small_teacher(scratch()), out.string(), (scratch() / "elsewhere").string()));
  CHECK(r.code == 1);
  CHECK(r.err.find("different run directories") != std::string::npos);
}
