// The zsq verbs. Each cmd_<verb>.cpp registers its subcommand, options and callback.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "engine/device.h"

namespace zsq::cli {

// Options every verb takes.
struct CommonOptions {
  std::uint64_t seed = 0;
  int threads = 0;             // 0: all cores
  std::string device = "cpu";  // cpu, cuda or cuda:N
};
// Adds --seed, --threads and --device to `verb`; apply() seeds the global RNG, sets the thread count
// and returns the device to compute on, refusing a CUDA device that this build or machine lacks with
// one clear message.
void add_common_options(CLI::App* verb, CommonOptions& options);
Device apply_common_options(const CommonOptions& options);

void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_bench_command(CLI::App& app);
// `bench kernels` (tools/cmd_bench_kernels.cpp), a subcommand of the bench verb.
void add_bench_kernels_command(CLI::App* bench);
void add_quantize_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_synth_command(CLI::App& app);

// The Fashion-MNIST location used when --data is not given.
std::string default_data_dir();

}  // namespace zsq::cli
