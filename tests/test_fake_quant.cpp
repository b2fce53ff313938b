#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include "ops/fake_quant.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;
using ops::FakeQuantSpec;

namespace {

// Bit-for-bit equality of the logical values (so -0.0 vs +0.0 and NaN payloads count).
void check_bit_exact(const Tensor& got, const Tensor& ref, const std::string& what) {
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": " << got.str() << " vs " << ref.str());
  const auto g = got.to_vector(), r = ref.to_vector();
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (std::memcmp(&g[i], &r[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << g.size() << " differ, first at " << first
                               << ": got " << g[first] << " ref " << r[first] << " (" << got.str() << ")");
}

Tensor vec(const std::vector<float>& v) {
  return Tensor::from_vector({static_cast<std::int64_t>(v.size())}, v);
}

// Random per-channel ranges around each channel's spread, some of them degenerate or clipping.
std::pair<Tensor, Tensor> random_ranges(std::int64_t channels, Rng& rng) {
  std::vector<float> lo(static_cast<std::size_t>(channels)), hi(lo.size());
  for (std::size_t c = 0; c < lo.size(); ++c) {
    const float a = rng.normal() * 1.5f, b = rng.normal() * 1.5f;
    lo[c] = std::min(a, b);
    hi[c] = c % 5 == 3 ? lo[c] : std::max(a, b);  // every fifth channel has an empty range
  }
  return {vec(lo), vec(hi)};
}

Tensor channels_last(const Shape& s, Rng& rng) {
  return random_input(s, rng, MemoryFormat::channels_last, false);
}

}  // namespace

TEST_CASE("fake quant: hand-computed asymmetric grid values (round half to even)") {
  // 2 bits on [0, 3]: delta 1, zero 0, q in [0, 3].
  Tensor x = vec({0.4f, 0.6f, 1.5f, 2.5f, 0.5f, 7.0f, -1.0f, 3.0f, 0.0f});
  const auto y = ops::fake_quant_per_tensor(x, 0.0f, 3.0f, {.bits = 2}).to_vector();
  CHECK(y == std::vector<float>{0, 1, 2, 2, 0, 3, 0, 3, 0});
  CHECK(ops::ref::fake_quant_per_tensor(x, 0.0f, 3.0f, {.bits = 2}).to_vector() == y);

  // 3 bits on [-0.875, 0.875]: delta 0.25, zero = round(-3.5) = -4, q in [-4, 3]: the grid spans
  // [-1.0, 0.75], not [lo, hi] (the ZeroQ convention).
  const auto g = ops::fake_quant_grid(-0.875f, 0.875f, {.bits = 3});
  CHECK(g.delta == 0.25f);
  CHECK(g.qmin == -4.0f);
  CHECK(g.qmax == 3.0f);
  Tensor x3 = vec({0.875f, -0.875f, 0.125f, 0.375f, -0.375f, -0.6f, 10.0f, -10.0f});
  CHECK(ops::fake_quant_per_tensor(x3, -0.875f, 0.875f, {.bits = 3}).to_vector() ==
        std::vector<float>{0.75f, -1.0f, 0.0f, 0.5f, -0.5f, -0.5f, 0.75f, -1.0f});

  // Unsigned post-ReLU activations: lo = 0, 4 bits on [0, 15] is the integer grid.
  Tensor x4 = vec({-3.0f, 0.49f, 14.5f, 13.5f, 100.0f});
  CHECK(ops::fake_quant_per_tensor(x4, 0.0f, 15.0f, {.bits = 4}).to_vector() ==
        std::vector<float>{0.0f, 0.0f, 14.0f, 14.0f, 15.0f});
}

TEST_CASE("fake quant: symmetric grid values") {
  // 3 bits, max(|lo|, |hi|) = 0.75: delta 0.25, q in [-3, 3].
  const auto g = ops::fake_quant_grid(-0.5f, 0.75f, {.bits = 3, .symmetric = true});
  CHECK(g.delta == 0.25f);
  CHECK(g.qmin == -3.0f);
  CHECK(g.qmax == 3.0f);
  Tensor x = vec({-1.0f, 0.3f, 0.125f, 0.375f, 2.0f, -0.625f, 0.0f});
  const FakeQuantSpec sym{.bits = 3, .symmetric = true};
  CHECK(ops::fake_quant_per_tensor(x, -0.5f, 0.75f, sym).to_vector() ==
        std::vector<float>{-0.75f, 0.25f, 0.0f, 0.5f, 0.75f, -0.5f, 0.0f});
  // 2 bits symmetric is ternary {-d, 0, d}.
  Rng rng(3);
  Tensor r = randn({1000}, rng);
  std::set<float> levels;
  for (float v : ops::fake_quant_per_tensor(r, -2.0f, 1.0f, {.bits = 2, .symmetric = true}).to_vector())
    levels.insert(v);
  CHECK(levels == std::set<float>{-2.0f, 0.0f, 2.0f});
  // Symmetric 8-bit grid: 255 levels, delta = amax / 127.
  CHECK(ops::fake_quant_grid(-1.27f, 0.5f, {.bits = 8, .symmetric = true}).qmax == 127.0f);
}

TEST_CASE("fake quant: AVX-512 path equals the reference bit for bit") {
  Rng rng(21);
  for (int bits : {2, 3, 4, 5, 8, 16})
    for (bool symmetric : {false, true}) {
      const FakeQuantSpec spec{.bits = bits, .symmetric = symmetric};
      CAPTURE(bits);
      CAPTURE(symmetric);
      for (std::int64_t n : {1, 15, 16, 17, 1000003}) {
        if (n == 1000003 && bits != 4 && bits != 8)
          continue;  // the big case at two widths keeps the suite fast
        CAPTURE(n);
        Tensor x = randn({n}, rng, 0.1f, 2.0f);
        check_bit_exact(ops::fake_quant_per_tensor(x, -1.3f, 2.7f, spec),
                        ops::ref::fake_quant_per_tensor(x, -1.3f, 2.7f, spec), "per-tensor");
        auto [lo, hi] = random_ranges(x.size(0), rng);
        check_bit_exact(ops::fake_quant_per_channel(x, lo, hi, spec),
                        ops::ref::fake_quant_per_channel(x, lo, hi, spec), "per-channel 1-D");
      }
      for (const Shape& s :
           std::vector<Shape>{{3, 5, 7, 9}, {17, 3, 3, 3}, {129, 16, 17, 17}, {1, 1, 1, 1}}) {
        CAPTURE(shape_str(s));
        for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
          Tensor x = fmt == MemoryFormat::contiguous ? randn(s, rng) : channels_last(s, rng);
          check_bit_exact(ops::fake_quant_per_tensor(x, -0.7f, 1.9f, spec),
                          ops::ref::fake_quant_per_tensor(x, -0.7f, 1.9f, spec), "per-tensor 4-D");
          auto [lo, hi] = random_ranges(s[0], rng);
          Tensor y = ops::fake_quant_per_channel(x, lo, hi, spec);
          CHECK(y.format() == x.format());
          check_bit_exact(y, ops::ref::fake_quant_per_channel(x, lo, hi, spec), "per-channel 4-D");
          check_bit_exact(ops::fake_quant_per_channel_minmax(x, spec),
                          ops::ref::fake_quant_per_channel_minmax(x, spec), "per-channel min/max 4-D");
        }
      }
    }
  // Min/max alone, with channels straddling the parallel split (3 huge channels, odd inner size).
  Tensor big = randn({3, 333337}, rng);
  auto [mn, mx] = ops::channel_min_max(big);
  auto [rmn, rmx] = ops::ref::channel_min_max(big);
  check_bit_exact(mn, rmn, "channel min");
  check_bit_exact(mx, rmx, "channel max");
  check_bit_exact(ops::fake_quant_per_channel_minmax(big, {.bits = 4}),
                  ops::ref::fake_quant_per_channel_minmax(big, {.bits = 4}), "per-channel min/max big");
  Tensor many = randn({1001, 67}, rng);  // many small channels split across threads
  std::tie(mn, mx) = ops::channel_min_max(many);
  std::tie(rmn, rmx) = ops::ref::channel_min_max(many);
  check_bit_exact(mn, rmn, "channel min (many)");
  check_bit_exact(mx, rmx, "channel max (many)");
}

TEST_CASE("fake quant: NaN inputs stay NaN and agree") {
  Tensor x = vec(
      {std::nanf(""), 1.0f, -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity()});
  Tensor y = ops::fake_quant_per_tensor(x, 0.0f, 3.0f, {.bits = 2});
  check_bit_exact(y, ops::ref::fake_quant_per_tensor(x, 0.0f, 3.0f, {.bits = 2}), "nan/inf");
  const auto v = y.to_vector();
  CHECK(std::isnan(v[0]));
  CHECK(v[2] == 0.0f);
  CHECK(v[3] == 3.0f);
}

TEST_CASE("fake quant: idempotent on a fixed range") {
  Rng rng(5);
  Tensor x = randn({4, 8, 9, 11}, rng);
  auto [lo, hi] = random_ranges(4, rng);
  for (int bits : {2, 4, 8, 16})
    for (bool symmetric : {false, true}) {
      const FakeQuantSpec spec{.bits = bits, .symmetric = symmetric};
      Tensor once = ops::fake_quant_per_tensor(x, -1.1f, 0.9f, spec);
      check_bit_exact(ops::fake_quant_per_tensor(once, -1.1f, 0.9f, spec), once, "per-tensor fq(fq(x))");
      Tensor pc = ops::fake_quant_per_channel(x, lo, hi, spec);
      check_bit_exact(ops::fake_quant_per_channel(pc, lo, hi, spec), pc, "per-channel fq(fq(x))");
    }
}

TEST_CASE("fake quant: constant tensors and near-empty ranges stay finite") {
  for (float value : {0.0f, 1.0f, -3.25f, 1e-3f, 123.456f}) {
    Tensor c = Tensor::full({2, 3, 4, 5}, value);
    for (bool symmetric : {false, true}) {
      const FakeQuantSpec spec{.bits = 4, .symmetric = symmetric};
      for (const Tensor& y : {ops::fake_quant_per_channel_minmax(c, spec),
                              ops::fake_quant_per_tensor(c, value, value + 1e-9f, spec)}) {
        for (float v : y.to_vector()) {
          REQUIRE(std::isfinite(v));
          CHECK(std::abs(v - value) <= 1e-6f * (1.0f + std::abs(value)));
        }
      }
    }
  }
  const auto g = ops::fake_quant_grid(0.0f, 0.0f, {.bits = 8});
  CHECK(g.delta == static_cast<float>(1e-8 / 255));
  CHECK(g.qmax - g.qmin == 255.0f);
  // Away from 0 a degenerate range puts zero ~ 1e10, where f32 cannot tell zero from zero + 255: the grid
  // collapses to (about) one level at lo, as it does in the f32 PyTorch reference. Still finite.
  const auto far = ops::fake_quant_grid(0.5f, 0.5f, {.bits = 8});
  CHECK(far.qmin <= far.qmax);
  CHECK(far.lo_edge() == doctest::Approx(0.5f));
  CHECK(far.hi_edge() == doctest::Approx(0.5f));
}

TEST_CASE("fake quant: at most 2^k distinct values per channel") {
  Rng rng(8);
  Tensor w = randn({7, 13, 5, 5}, rng);
  for (int bits : {2, 3, 4})
    for (bool symmetric : {false, true}) {
      const auto v =
          ops::fake_quant_per_channel_minmax(w, {.bits = bits, .symmetric = symmetric}).to_vector();
      const std::size_t inner = v.size() / 7;
      for (std::size_t c = 0; c < 7; ++c) {
        std::set<float> levels(v.begin() + static_cast<std::ptrdiff_t>(c * inner),
                               v.begin() + static_cast<std::ptrdiff_t>((c + 1) * inner));
        CHECK(levels.size() <= (std::size_t{1} << bits) - (symmetric ? 1 : 0));
        CHECK(levels.size() >= 2);
      }
    }
}

TEST_CASE("fake quant: per-channel min/max maps each channel's min and max onto the grid endpoints") {
  Rng rng(9);
  for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
    Tensor w =
        fmt == MemoryFormat::contiguous ? randn({33, 7, 3, 3}, rng) : channels_last({33, 7, 3, 3}, rng);
    auto [mn, mx] = ops::channel_min_max(w);
    const auto lo = mn.to_vector(), hi = mx.to_vector();
    Tensor wc = w.to_format(MemoryFormat::contiguous);
    for (int bits : {2, 4, 8}) {
      const auto y = ops::fake_quant_per_channel_minmax(w, {.bits = bits}).to_vector();
      const auto inner = static_cast<std::size_t>(w.numel() / 33);
      for (std::size_t c = 0; c < 33; ++c) {
        const auto first = y.begin() + static_cast<std::ptrdiff_t>(c * inner);
        const auto [ymin, ymax] = std::minmax_element(first, first + static_cast<std::ptrdiff_t>(inner));
        const auto g = ops::fake_quant_grid(lo[c], hi[c], {.bits = bits});
        CHECK(*ymin == g.lo_edge());
        CHECK(*ymax == g.hi_edge());
        CHECK(std::abs(*ymin - lo[c]) <= 0.5f * g.delta + 1e-6f);
        CHECK(std::abs(*ymax - hi[c]) <= 0.5f * g.delta + 1e-6f);
        // and the channel min/max are the true ones
        const float* p = wc.f32() + c * inner;
        CHECK(lo[c] == *std::min_element(p, p + inner));
        CHECK(hi[c] == *std::max_element(p, p + inner));
      }
    }
  }
}

TEST_CASE("fake quant: straight-through gradient equals the upstream gradient") {
  Rng rng(10);
  for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
    Tensor x = random_input({2, 3, 4, 5}, rng, fmt);
    Tensor up = randn({2, 3, 4, 5}, rng);
    auto [lo, hi] = random_ranges(2, rng);
    const std::vector<std::function<Tensor()>> ops_under_test = {
        [&] { return ops::fake_quant_per_tensor(x, -0.5f, 0.5f, {.bits = 2}); },
        [&] { return ops::fake_quant_per_channel(x, lo, hi, {.bits = 3, .symmetric = true}); },
        [&] { return ops::fake_quant_per_channel_minmax(x, {.bits = 4}); }};
    for (const auto& f : ops_under_test) {
      x.zero_grad();
      Tensor y = f();
      REQUIRE(y.requires_grad());
      y.backward(up);
      check_bit_exact(x.grad(), up, "STE gradient");
    }
    NoGrad ng;
    CHECK_FALSE(ops::fake_quant_per_tensor(x, -0.5f, 0.5f, {.bits = 2}).requires_grad());
  }
}

TEST_CASE("fake quant: clipped STE zeroes the gradient outside the grid's range") {
  Rng rng(11);
  const FakeQuantSpec clipped{.bits = 2, .clipped_ste = true};
  // 2 bits on [0, 3]: the representable range is [0, 3]; edges are inclusive.
  Tensor x = vec({-0.1f, 0.0f, 1.2f, 3.0f, 3.01f, 2.9f});
  x.set_requires_grad(true);
  Tensor up = vec({1, 2, 3, 4, 5, 6});
  ops::fake_quant_per_tensor(x, 0.0f, 3.0f, clipped).backward(up);
  CHECK(x.grad().to_vector() == std::vector<float>{0, 2, 3, 4, 0, 6});

  // The mask uses the grid endpoints, not [lo, hi]: 3 bits on [-0.875, 0.875] represents [-1.0, 0.75].
  Tensor x3 = vec({-0.95f, 0.8f, 0.75f});
  x3.set_requires_grad(true);
  ops::fake_quant_per_tensor(x3, -0.875f, 0.875f, {.bits = 3, .clipped_ste = true}).backward(vec({1, 1, 1}));
  CHECK(x3.grad().to_vector() == std::vector<float>{1, 0, 1});

  // Against the reference mask, per tensor and per channel, both formats, a size with a tail.
  for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
    Tensor w = random_input({9, 5, 7, 3}, rng, fmt);
    Tensor g = randn({9, 5, 7, 3}, rng);
    auto [lo, hi] = random_ranges(9, rng);
    for (bool symmetric : {false, true}) {
      const FakeQuantSpec spec{.bits = 3, .symmetric = symmetric, .clipped_ste = true};
      w.zero_grad();
      ops::fake_quant_per_channel(w, lo, hi, spec).backward(g);
      check_bit_exact(w.grad(), ops::ref::fake_quant_clipped_ste_backward(g, w, lo, hi, spec),
                      "clipped per-channel");
      w.zero_grad();
      ops::fake_quant_per_tensor(w, -0.6f, 0.8f, spec).backward(g);
      check_bit_exact(w.grad(),
                      ops::ref::fake_quant_clipped_ste_backward(g, w, vec({-0.6f}), vec({0.8f}), spec),
                      "clipped per-tensor");
    }
  }
  // A large tensor goes through the parallel path.
  Tensor big = random_input({1000003}, rng);
  Tensor gb = randn({1000003}, rng);
  ops::fake_quant_per_tensor(big, -1.0f, 1.0f, {.bits = 4, .clipped_ste = true}).backward(gb);
  check_bit_exact(big.grad(),
                  ops::ref::fake_quant_clipped_ste_backward(gb, big, vec({-1.0f}), vec({1.0f}), {.bits = 4}),
                  "clipped big");
}

TEST_CASE("fake quant: errors name what is wrong") {
  Tensor x = Tensor::zeros({4, 3});
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_tensor(x, 0.0f, 1.0f, {.bits = 1}), doctest::Contains("bits"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_tensor(x, 0.0f, 1.0f, {.bits = 17}), doctest::Contains("bits"),
                       Error);
  CHECK_THROWS_AS(ops::fake_quant_per_channel_minmax(x, {.bits = 0}), Error);
  CHECK_NOTHROW(ops::fake_quant_per_tensor(x, 0.0f, 1.0f, {.bits = 16}));
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_tensor(x, 1.0f, 0.0f, {.bits = 4}),
                       doctest::Contains("lo 1 > hi 0"), Error);
  CHECK_THROWS_AS(ops::fake_quant_per_tensor(x, 0.0f, std::numeric_limits<float>::infinity(), {.bits = 4}),
                  Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x, vec({0, 0, 0, 1}), vec({1, 1, 1, 0}), {.bits = 4}),
                       doctest::Contains("lo[3]"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x, vec({0, 0, 0}), vec({1, 1, 1, 1}), {.bits = 4}),
                       doctest::Contains("lo must be f32 [4]"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x, vec({0, 0, 0, 0}), Tensor::zeros({4, 1}), {.bits = 4}),
                       doctest::Contains("hi must be f32 [4]"), Error);
  CHECK_THROWS_AS(ops::fake_quant_per_channel(x, vec({0, 0, 0, 0}), Tensor(), {.bits = 4}), Error);
  CHECK_THROWS_AS(ops::fake_quant_per_channel(Tensor::scalar(1.0f), vec({0}), vec({1}), {.bits = 4}), Error);
  CHECK_THROWS_AS(ops::fake_quant_per_tensor(Tensor::empty({3}, DType::s32), 0.0f, 1.0f, {.bits = 4}), Error);
  // Empty tensors are fine.
  CHECK(ops::fake_quant_per_tensor(Tensor::zeros({0, 3}), 0.0f, 1.0f, {.bits = 4}).numel() == 0);
  CHECK(ops::fake_quant_per_channel_minmax(Tensor::zeros({2, 0}), {.bits = 4}).numel() == 0);
}
