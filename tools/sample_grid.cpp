#include "tools/sample_grid.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tools/datasets/fashion_mnist.h"
#include "tools/png_writer.h"

namespace zsq::cli {

std::int64_t grid_pixels(std::int64_t tiles, std::int64_t size) {
  return tiles * size + (tiles + 1) * kGridGutter;
}

SampleGrid sample_grid(models::Generator& generator, std::int64_t count, std::uint64_t seed) {
  const auto& config = generator.config();
  ZSQ_CHECK(count > 0 && count <= 10000, "sample grid: count must be in [1, 10000], got {}", count);
  ZSQ_CHECK(config.channels == 1,
            "sample grid: only single-channel generators have a PNG view, this one has {}", config.channels);
  SampleGrid grid;
  std::int64_t n = count;
  if (config.conditional) {
    grid.rows = config.num_classes;
    grid.cols = (count + config.num_classes - 1) / config.num_classes;
    n = grid.rows * grid.cols;
  } else {
    grid.cols = std::min<std::int64_t>(count, 10);
    grid.rows = (count + grid.cols - 1) / grid.cols;
  }
  Rng rng(seed);
  Tensor z = randn({n, config.latent}, rng);
  Tensor labels = Tensor::empty({n}, DType::s32);
  for (std::int64_t i = 0; i < n; ++i)
    labels.data<std::int32_t>()[i] = config.conditional ? static_cast<std::int32_t>(i / grid.cols) : 0;
  const Device device = generator.device();  // drawn on the CPU (same grid on either device), computed there
  grid.images = generator.sample(z.to(device), labels.to(device));
  return grid;
}

void write_sample_grid(const std::string& path, const SampleGrid& grid) {
  const Tensor& images = grid.images;
  ZSQ_CHECK((images.dim() == 4 && images.size(1) == 1 && images.size(2) == images.size(3)),
            "{}: sample grid images must be [N, 1, S, S], got {}", path, images.str());
  const auto n = images.size(0), size = images.size(2);
  ZSQ_CHECK(n <= grid.rows * grid.cols, "{}: {} images do not fit a {}x{} grid", path, n, grid.rows,
            grid.cols);
  const auto width = grid_pixels(grid.cols, size), height = grid_pixels(grid.rows, size);
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(width * height), 128);
  const std::vector<float> values = images.to_vector();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto top = kGridGutter + (i / grid.cols) * (size + kGridGutter);
    const auto left = kGridGutter + (i % grid.cols) * (size + kGridGutter);
    for (std::int64_t y = 0; y < size; ++y)
      for (std::int64_t x = 0; x < size; ++x) {
        const float v =
            values[static_cast<std::size_t>((i * size + y) * size + x)] * kFashionStd + kFashionMean;
        const float clamped = std::isfinite(v) ? std::clamp(v, 0.0f, 1.0f) : 0.0f;
        pixels[static_cast<std::size_t>((top + y) * width + left + x)] =
            static_cast<std::uint8_t>(std::lround(clamped * 255.0f));
      }
  }
  write_png_gray(path, pixels, width, height);
}

}  // namespace zsq::cli
