// Helpers for tests that drive the zsq binary: a per-process scratch directory, running a command
// line (optionally under an environment such as the no-data shim), starting one in the background to
// signal it, a small teacher written with the library, and PNG header checks.
#pragma once
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/rng.h"
#include "models/model_file.h"

namespace zsq::clitest {

namespace fs = std::filesystem;

inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}
inline const std::string& binary_dir() {
  static const std::string dir = env_or("ZSQ_BINARY_DIR", "build");
  return dir;
}
inline const std::string& source_dir() {
  static const std::string dir = env_or("ZSQ_SOURCE_DIR", ".");
  return dir;
}

// One scratch directory per test process, emptied at first use.
inline fs::path work_dir(const std::string& tag) {
  static const fs::path dir = [&] {
    auto d = fs::temp_directory_path() / ("zsq_test_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Result {
  int code;  // exit status, or 128 + signal
  std::string out, err;
};

inline int decode_status(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs `env zsq args` through the shell, capturing stdout and stderr.
inline Result run_zsq(const fs::path& scratch, const std::string& env, const std::string& args) {
  const auto out = scratch / "out.txt", err = scratch / "err.txt";
  const std::string cmd =
      env + " " + binary_dir() + "/zsq " + args + " >" + out.string() + " 2>" + err.string();
  return {decode_status(std::system(cmd.c_str())), slurp(out), slurp(err)};
}

// Starts zsq with `args` (no shell), output to `log`; returns its pid.
inline pid_t spawn_zsq(const std::vector<std::string>& args, const fs::path& log) {
  const std::string binary = binary_dir() + "/zsq";
  std::vector<std::string> all{binary};
  all.insert(all.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

// A small teacher (ResNet-20 at width 8) with non-trivial BN statistics, written with the library (no
// data needed) into `scratch`.
inline std::string small_teacher(const fs::path& scratch) {
  const auto path = (scratch / "teacher.safetensors").string();
  if (fs::exists(path)) return path;
  Rng rng(0);
  auto spec = models::resolve_model_spec("resnet20", {{"width", 8}});
  auto model = models::build_model(spec, rng);
  for (int i = 0; i < 3; ++i) model->forward(randn({16, 1, 32, 32}, rng));
  models::save_model(path, spec, *model);
  return path;
}

// Every tensor of two checkpoints, bit for bit (names and order too).
inline bool same_tensors(const std::string& a, const std::string& b) {
  auto ca = load_checkpoint(a), cb = load_checkpoint(b);
  if (ca.tensors.size() != cb.tensors.size()) return false;
  for (std::size_t i = 0; i < ca.tensors.size(); ++i) {
    const auto& [na, ta] = ca.tensors[i];
    const auto& [nb, tb] = cb.tensors[i];
    if (na != nb || ta.dtype() != tb.dtype() || ta.shape() != tb.shape() || ta.nbytes() != tb.nbytes() ||
        std::memcmp(ta.raw_data(), tb.raw_data(), ta.nbytes()) != 0)
      return false;
  }
  return true;
}

struct PngHeader {
  bool signature_ok = false, ihdr_ok = false;
  std::uint32_t width = 0, height = 0;
  int bit_depth = 0, color_type = -1;
};

// Reads the 8-byte PNG signature and the IHDR chunk that must follow it.
inline PngHeader read_png_header(const fs::path& path) {
  const std::string bytes = slurp(path);
  PngHeader h;
  static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() < 33) return h;
  h.signature_ok = std::memcmp(bytes.data(), signature, 8) == 0;
  auto be32 = [&](std::size_t at) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + at;
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  };
  h.ihdr_ok = be32(8) == 13 && bytes.compare(12, 4, "IHDR") == 0;
  h.width = be32(16);
  h.height = be32(20);
  h.bit_depth = static_cast<unsigned char>(bytes[24]);
  h.color_type = static_cast<unsigned char>(bytes[25]);
  return h;
}

}  // namespace zsq::clitest
