// `zsq bench kernels --quick --json` through the built binary: the JSON document has the peaks and every
// expected row (GEMM, memory-bound int4 vs int8, ResNet-20 convs in f32/int8/int4) with positive
// figures. Speeds are never asserted: the machine may be busy.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {
struct Result {
  int code;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

Result run_zsq(const std::string& args) {
  const char* dir = std::getenv("ZSQ_BINARY_DIR");
  const auto binary = fs::path(dir != nullptr ? dir : "build") / "zsq";
  const auto base = fs::temp_directory_path() / ("zsq_test_bench_kernels_" + std::to_string(::getpid()));
  const auto out = base.string() + ".out", err = base.string() + ".err";
  const int status = std::system((binary.string() + " " + args + " >" + out + " 2>" + err).c_str());
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out), slurp(err)};
  fs::remove(out);
  fs::remove(err);
  return r;
}
}  // namespace

TEST_CASE("zsq bench kernels --quick --json: structure and positive figures") {
  const auto r = run_zsq("bench kernels --quick --json --threads 2");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("threads") == 2);
  CHECK(j.at("quick") == true);
  CHECK(j.at("conv_batch").get<int>() >= 1);
  CHECK(j.at("peaks").at("fma_gflops").get<double>() > 0.0);
  CHECK(j.at("peaks").at("vnni_gops").get<double>() > 0.0);

  std::map<std::string, std::set<std::string>> dtypes;  // "group/name" -> dtypes seen
  std::size_t speedups = 0;
  for (const auto& row : j.at("rows")) {
    const std::string key = row.at("group").get<std::string>() + "/" + row.at("name").get<std::string>();
    CAPTURE(key);
    dtypes[key].insert(row.at("dtype").get<std::string>());
    for (const char* field : {"gops", "pct_peak", "ms"}) CHECK(row.at(field).get<double>() > 0.0);
    for (const char* field : {"m", "n", "k"}) CHECK(row.at(field).get<std::int64_t>() > 0);
    CHECK_FALSE(row.at("impl").get<std::string>().empty());
    if (row.contains("speedup_vs_int8")) {
      ++speedups;
      CHECK(row.at("dtype") == "int4");
      CHECK(row.at("speedup_vs_int8").get<double>() > 0.0);
    }
  }
  std::size_t gemm = 0, membound = 0, conv = 0;
  for (const auto& [key, seen] : dtypes) {
    CAPTURE(key);
    if (key.starts_with("gemm/") || key.starts_with("conv/")) {
      CHECK(seen == std::set<std::string>{"f32", "int8", "int4"});
      (key.starts_with("gemm/") ? gemm : conv)++;
    } else {
      CHECK(key.starts_with("membound/"));
      CHECK(seen == std::set<std::string>{"int8", "int4"});
      ++membound;
    }
  }
  CHECK(gemm >= 2);
  CHECK(membound == 3);  // M = 1, 4, 16
  CHECK(speedups == 3);
  CHECK(conv == 8);  // the ResNet-20 shapes: first conv, five 3x3 shapes, two 1x1 shortcuts
}

TEST_CASE("zsq bench kernels text output, and bench still requires a mode without it") {
  const auto r = run_zsq("bench kernels --quick --threads 1");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.find("peaks: f32 FMA") != std::string::npos);
  CHECK(r.out.find("zsq avx512-vnni int4") != std::string::npos);
  CHECK(r.out.find("x int8)") != std::string::npos);
  const auto bare = run_zsq("bench");
  CHECK(bare.code != 0);
  CHECK(bare.err.find("MODE") != std::string::npos);
}
