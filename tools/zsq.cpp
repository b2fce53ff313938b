// zsq: zero-shot quantization engine. One binary, one verb per job; see README.md.
#include <omp.h>

#include <cstdio>
#include <cstdlib>

#include "engine/check.h"
#include "engine/rng.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "tools/commands.h"
#include "tools/datasets/fashion_mnist.h"
#include "tools/interrupt.h"

namespace zsq::cli {

void add_common_options(CLI::App* verb, CommonOptions& options) {
  verb->add_option("--seed", options.seed, "Seed for every random draw (same seed + threads = same result)")
      ->capture_default_str();
  verb->add_option("--threads", options.threads, "CPU threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  verb->add_option("--device", options.device,
                   "Where to compute: cpu, cuda or cuda:N (random draws stay on the CPU, so a seed gives "
                   "the same inputs on either device)")
      ->capture_default_str();
}

Device apply_common_options(const CommonOptions& options) {
  global_rng().reseed(options.seed);
  if (options.threads > 0) omp_set_num_threads(options.threads);
  const Device device = parse_device(options.device);
  if (device.is_cuda()) {
    const int count = cuda::device_count();
    ZSQ_CHECK(count > 0, "--device {}: no usable GPU ({})", options.device, cuda::unavailable_reason());
    ZSQ_CHECK(device.index < count, "--device {}: no such GPU ({} visible)", options.device, count);
  }
  return device;
}

std::string default_data_dir() {
  const char* env = std::getenv("ZSQ_DATA");
  return env != nullptr ? env : kFashionMnistDir;
}

}  // namespace zsq::cli

int main(int argc, char** argv) {
  CLI::App app{"zsq: zero-shot (data-free) quantization of convolutional networks"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "zsq 0.1.0");
  zsq::cli::add_train_command(app);
  zsq::cli::add_eval_command(app);
  zsq::cli::add_inspect_command(app);
  zsq::cli::add_bench_command(app);
  zsq::cli::add_quantize_command(app);
  zsq::cli::add_export_command(app);
  zsq::cli::add_synth_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const zsq::cli::Interrupted& e) {
    std::fprintf(stderr, "zsq: interrupted: %s\n", e.what());
    return 128 + e.signal();
  } catch (const zsq::Error& e) {
    std::fprintf(stderr, "zsq: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zsq: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
