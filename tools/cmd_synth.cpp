// zsq synth --generator FILE --out grid.png [--count N] [--seed S]: loads a generator saved by a gdfq/zaq
// run (OUT/generator.safetensors) and writes a PNG grid of its samples (tools/sample_grid.h): one row
// per class for GDFQ's conditional generator, 10 per row for ZAQ's. Reads no data.
#include <filesystem>

#include "models/generator_file.h"
#include "tools/commands.h"
#include "tools/sample_grid.h"

namespace zsq::cli {

void add_synth_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string generator, out;
    std::int64_t count = kDefaultGridCount;
  };
  auto o = std::make_shared<Options>();
  auto* verb = app.add_subcommand("synth", "Write a PNG grid of synthetic images from a saved generator");
  verb->add_option("--generator", o->generator,
                   "Generator file (OUT/generator.safetensors of a gdfq/zaq run)")
      ->required();
  verb->add_option("--out", o->out, "PNG file to write")->required();
  verb->add_option("--count", o->count,
                   "Images (a conditional generator draws ceil(N / classes) per class, one row per class)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{10000}))
      ->capture_default_str();
  add_common_options(verb, o->common);
  verb->callback([o] {
    apply_common_options(o->common);
    auto loaded = models::load_generator(o->generator);
    const auto parent = std::filesystem::path(o->out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    const SampleGrid grid = sample_grid(*loaded.generator, o->count, o->common.seed);
    write_sample_grid(o->out, grid);
    const auto size = loaded.generator->config().image_size;
    fmt::print("wrote {}: {} images in {} rows x {} columns ({}x{} pixels){}\n", o->out, grid.images.size(0),
               grid.rows, grid.cols, grid_pixels(grid.cols, size), grid_pixels(grid.rows, size),
               loaded.generator->config().conditional ? ", row r = class r" : "");
  });
}

}  // namespace zsq::cli
