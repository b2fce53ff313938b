// Sample grids: a generator's images tiled into one PNG, so a run can be looked at (OUT/samples/
// epoch_NNN.png after every epoch of gdfq/zaq, and `zsq synth`).
//   conditional generator (GDFQ): one row per class, row r drawn with label r, ceil(count / classes)
//                                 images per row;
//   unconditional (ZAQ):          `count` images, 10 per row.
// Images are single-channel in the benchmark's normalized units (DESIGN.md §5); the PNG shows them
// de-normalized (x * 0.3530 + 0.2860, clamped to [0, 1], times 255) with a 2-pixel grey gutter.
#pragma once
#include <cstdint>
#include <string>

#include "models/generator.h"

namespace zsq::cli {

struct SampleGrid {
  Tensor images;  // f32 [rows * cols or fewer, 1, S, S], row-major over the grid
  std::int64_t rows = 0, cols = 0;
};

inline constexpr std::int64_t kDefaultGridCount = 80;
inline constexpr std::int64_t kGridGutter = 2;

// Draws the grid's noise from Rng(seed): the same seed shows the same latents, so the per-epoch grids
// of a run show one set of latents evolving. Leaves the generator's state untouched (Generator::sample).
SampleGrid sample_grid(models::Generator& generator, std::int64_t count, std::uint64_t seed);
void write_sample_grid(const std::string& path, const SampleGrid& grid);
// The PNG's size for a grid of rows x cols images of side `size`.
std::int64_t grid_pixels(std::int64_t tiles, std::int64_t size);

}  // namespace zsq::cli
