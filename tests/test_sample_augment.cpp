#include <doctest/doctest.h>

#include <set>
#include <tuple>

#include "quant/methods/sample_augment.h"
#include "tests/testing.h"

using namespace zsq;

namespace {
// The naive reference: shift first (pixels from outside repeat the nearest edge), then mirror.
std::vector<float> shifted_then_mirrored(const float* image, std::int64_t C, std::int64_t H, std::int64_t W,
                                         bool flip, std::int64_t dy, std::int64_t dx) {
  std::vector<float> shifted(static_cast<std::size_t>(C * H * W)), out(shifted.size());
  auto at = [&](std::int64_t c, std::int64_t y, std::int64_t x) {
    y = y < 0 ? 0 : (y >= H ? H - 1 : y);
    x = x < 0 ? 0 : (x >= W ? W - 1 : x);
    return image[(c * H + y) * W + x];
  };
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x)
        shifted[static_cast<std::size_t>((c * H + y) * W + x)] = at(c, y - dy, x - dx);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x)
        out[static_cast<std::size_t>((c * H + y) * W + x)] =
            shifted[static_cast<std::size_t>((c * H + y) * W + (flip ? W - 1 - x : x))];
  return out;
}
}  // namespace

TEST_CASE(
    "flip_shift: every image is one mirror/shift of its source (both channels alike), all of them occur") {
  const std::int64_t N = 300, C = 2, H = 5, W = 6, shift = 1;
  Rng rng(3);
  Tensor images = randn({N, C, H, W}, rng);  // distinct values: every transform gives another image
  Rng draws(11);
  Tensor out = quant::flip_shift(images, shift, draws);
  REQUIRE(out.shape() == images.shape());
  const float* src = images.f32();
  const float* dst = out.f32();
  std::set<std::tuple<bool, std::int64_t, std::int64_t>> seen;
  const auto plane = C * H * W;
  for (std::int64_t n = 0; n < N; ++n) {
    int matches = 0;
    for (bool flip : {false, true})
      for (std::int64_t dy = -shift; dy <= shift; ++dy)
        for (std::int64_t dx = -shift; dx <= shift; ++dx) {
          const auto expected = shifted_then_mirrored(src + n * plane, C, H, W, flip, dy, dx);
          if (std::equal(expected.begin(), expected.end(), dst + n * plane)) {
            ++matches;
            seen.insert({flip, dy, dx});
          }
        }
    CHECK(matches == 1);
  }
  CHECK(seen.size() == 18);  // 2 flips x 3 x 3 shifts
  // Same seed, same draws.
  Rng again(11);
  CHECK(quant::flip_shift(images, shift, again).to_vector() == out.to_vector());
}

TEST_CASE("flip_shift: bad shapes and shifts are refused with what was passed") {
  Rng rng(1);
  CHECK_THROWS_WITH_AS(quant::flip_shift(randn({4, 8}, rng), 1, rng), doctest::Contains("[N, C, H, W]"),
                       Error);
  CHECK_THROWS_WITH_AS(quant::flip_shift(randn({1, 1, 4, 4}, rng), 4, rng), doctest::Contains("max_shift"),
                       Error);
  CHECK_THROWS_WITH_AS(quant::check_augment_name("zaq", "flip"), doctest::Contains("flip_shift"), Error);
}
