// zsq bench kernels [--json] [--threads N] [--quick]: compute peaks, then f32 / int8 / int4 GEMM and
// ResNet-20 convolution throughput in one run (tools/kernel_bench.cpp measures; this file prints).
//
// It hangs under `zsq bench` as a subcommand, registered by one call from cmd_bench.cpp. `bench` itself
// takes a MODE positional (train|infer); that becomes optional here and is required again unless
// `kernels` was given, and the kernels callback ends the parse with CLI::Success so that the bench verb's
// own callback (train/infer) does not run after it.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tools/commands.h"
#include "tools/kernel_bench.h"

namespace zsq::cli {

namespace {
struct KernelsOptions {
  CommonOptions common;
  bool json = false, quick = false;
};

nlohmann::json to_json(const KernelReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json j{{"group", row.group}, {"name", row.name},
                     {"dtype", row.dtype}, {"impl", row.impl},
                     {"m", row.m},         {"n", row.n},
                     {"k", row.k},         {"ms", row.ms},
                     {"gops", row.gops},   {"pct_peak", row.pct_peak}};
    if (row.speedup_vs_int8 > 0) j["speedup_vs_int8"] = row.speedup_vs_int8;
    rows.push_back(j);
  }
  return {{"threads", r.threads},
          {"quick", r.quick},
          {"conv_batch", r.conv_batch},
          {"peaks", {{"fma_gflops", r.fma_gflops}, {"vnni_gops", r.vnni_gops}}},
          {"rows", rows}};
}

void print_text(const KernelReport& r) {
  fmt::print("zsq bench kernels on {} threads{}; GOP/s counts 2 ops per multiply-add\n", r.threads,
             r.quick ? " (quick sizes)" : "");
  fmt::print("peaks: f32 FMA {:.1f} GFLOP/s, int8 VNNI {:.1f} GOP/s\n", r.fma_gflops, r.vnni_gops);
  fmt::print("{:<9} {:<31} {:<5} {:>9} {:>7} {:>10}  {}\n", "group", "case", "dtype", "GOP/s", "%peak", "ms",
             "implementation");
  std::string last_group;
  for (const auto& row : r.rows) {
    if (row.group != last_group) {
      if (row.group == "conv") fmt::print("(conv: ResNet-20 shapes, batch {}, NHWC)\n", r.conv_batch);
      last_group = row.group;
    }
    fmt::print("{:<9} {:<31} {:<5} {:>9.1f} {:>6.1f}% {:>10.3f}  {}{}\n", row.group, row.name, row.dtype,
               row.gops, row.pct_peak, row.ms, row.impl,
               row.speedup_vs_int8 > 0 ? fmt::format("  ({:.2f}x int8)", row.speedup_vs_int8) : "");
  }
}
}  // namespace

void add_bench_kernels_command(CLI::App* bench) {
  auto o = std::make_shared<KernelsOptions>();
  auto* verb = bench->add_subcommand("kernels", "Compute peaks and f32/int8/int4 GEMM and conv throughput");
  verb->add_flag("--json", o->json, "Print one JSON document");
  verb->add_flag("--quick", o->quick, "Small sizes and few repeats (smoke tests)");
  add_common_options(verb, o->common);
  verb->callback([o] {
    apply_common_options(o->common);
    const KernelReport report = run_kernel_bench({.quick = o->quick});
    if (o->json)
      fmt::print("{}\n", to_json(report).dump(2));
    else
      print_text(report);
    throw CLI::Success();  // done: skip `bench`'s own train/infer callback
  });
  if (CLI::Option* mode = bench->get_option_no_throw("MODE"); mode != nullptr) {
    mode->required(false);
    bench->parse_complete_callback([mode, verb] {
      if (mode->count() == 0 && verb->count() == 0) throw CLI::RequiredError("MODE");
    });
  }
}

}  // namespace zsq::cli
