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

TEST_CASE("mix_pairs: each image is itself or a blend with one other image, at about the asked share") {
  const std::int64_t N = 400, C = 2, H = 3, W = 3;
  Rng rng(5);
  Tensor images = randn({N, C, H, W}, rng);
  const auto plane = C * H * W;
  const float* src = images.f32();
  for (float fraction : {0.0f, 0.3f, 1.0f}) {
    Rng draws(17);
    Tensor out = quant::mix_pairs(images, fraction, draws);
    REQUIRE(out.shape() == images.shape());
    // Naive reference: replay the same draws and build every image with an explicit loop.
    Rng replay(17);
    std::int64_t blended = 0;
    const float* dst = out.f32();
    for (std::int64_t n = 0; n < N; ++n) {
      const bool blend = replay.uniform() < fraction;
      auto partner = static_cast<std::int64_t>(replay.below(static_cast<std::uint64_t>(N - 1)));
      if (partner >= n) ++partner;
      const float lambda = replay.uniform();
      CHECK(partner != n);
      for (std::int64_t i = 0; i < plane; ++i) {
        const float own = src[n * plane + i], other = src[partner * plane + i];
        const float expected = blend ? lambda * own + (1.0f - lambda) * other : own;
        CHECK(dst[n * plane + i] == doctest::Approx(expected).epsilon(1e-6));
      }
      blended += blend ? 1 : 0;
    }
    if (fraction == 0.0f) CHECK(out.to_vector() == images.to_vector());
    if (fraction == 1.0f) CHECK(blended == N);
    if (fraction == 0.3f) CHECK(std::abs(static_cast<double>(blended) / N - 0.3) < 0.07);
  }
  // With fraction 1 the batch changes (the reference loop above checked how).
  Rng draws(2);
  Tensor mixed = quant::mix_pairs(images, 1.0f, draws);
  CHECK(mixed.to_vector() != images.to_vector());
  // Bad fractions and unbatched inputs are refused.
  CHECK_THROWS_WITH_AS(quant::mix_pairs(images, 1.5f, draws), doctest::Contains("fraction"), Error);
  CHECK_THROWS_WITH_AS(quant::mix_pairs(randn({4}, rng), 0.5f, draws), doctest::Contains("[N, ...]"), Error);
  CHECK_NOTHROW(quant::check_augment_name("gdfq", "flip_shift+mixup"));
  CHECK(quant::augment_mixes("flip_shift+mixup"));
  CHECK(quant::augment_flips_and_shifts("flip_shift+mixup"));
  CHECK_FALSE(quant::augment_flips_and_shifts("mixup"));
}
