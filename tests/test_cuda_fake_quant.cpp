// Fake quantization on a GPU against the CPU path (ops/fake_quant.h, ops/cuda/fake_quant.h): every
// forward output must be bit-identical (same grid arithmetic, same rounding), straight-through and
// clipped gradients exact, the learned-range gradients (reductions) within 1e-5. Bit widths 2, 3, 4 and 8,
// symmetric and asymmetric grids, channels-last activations and OIHW weights, shapes that are not
// multiples of a block or of 4, batch 1, and channels long enough to split across blocks.
// The quant layer on a GPU (observers, weight ranges, the student) is tested in tests/test_cuda_quant.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ops/fake_quant.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {

const int kBits[] = {2, 3, 4, 8};

std::string spec_name(const ops::FakeQuantSpec& spec) {
  return std::to_string(spec.bits) + (spec.symmetric ? " bits sym" : " bits asym") +
         (spec.clipped_ste ? " clipped" : "");
}

std::string format_name(MemoryFormat f) {
  return f == MemoryFormat::channels_last ? "channels_last" : "contiguous";
}

// Same values, bit for bit (+0.0 and -0.0 count as different), and the result stayed on the GPU.
void check_bit_equal(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  CHECK_MESSAGE(gpu.device().is_cuda(), what << ": result left the GPU");
  REQUIRE_MESSAGE(gpu.shape() == cpu.shape(), what << ": shape " << gpu.str() << " vs CPU " << cpu.str());
  CHECK_MESSAGE(gpu.format() == cpu.format(), what << ": format " << gpu.str() << " vs CPU " << cpu.str());
  const auto g = gpu.to_vector(), c = cpu.to_vector();
  std::size_t first = g.size();
  std::int64_t differing = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (std::memcmp(&g[i], &c[i], sizeof(float)) != 0) {
      if (first == g.size()) first = i;
      ++differing;
    }
  CHECK_MESSAGE(differing == 0, what << ": " << differing << " of " << g.size()
                                     << " elements differ, first at " << first << ": GPU "
                                     << (first < g.size() ? g[first] : 0.0f) << " CPU "
                                     << (first < g.size() ? c[first] : 0.0f));
}

// A random input that also holds values exactly on the half steps of `delta` (the round-half-even
// cases) and beyond both ends of the range.
Tensor input_with_ties(const Shape& shape, Rng& rng, MemoryFormat format, float delta, float scale) {
  auto v = randn(shape, rng, 0.0f, scale).to_vector();
  for (std::size_t i = 0; i < v.size(); i += 7)
    v[i] = (static_cast<float>(static_cast<int>(i % 23) - 11) + 0.5f) * delta;
  Tensor t = Tensor::from_vector(shape, v, format);
  t.set_requires_grad(true);
  return t;
}

Tensor uniform_tensor(const Shape& shape, Rng& rng, float lo, float hi, bool requires_grad = false) {
  Tensor t = rand_uniform(shape, rng, lo, hi);
  t.set_requires_grad(requires_grad);
  return t;
}

// Per-channel ranges around 0 of different widths; channel 0 is the degenerate [0, 0].
std::pair<Tensor, Tensor> channel_ranges(std::int64_t channels, Rng& rng) {
  auto lo = rand_uniform({channels}, rng, -2.0f, -0.1f).to_vector();
  auto hi = rand_uniform({channels}, rng, 0.2f, 2.5f).to_vector();
  lo[0] = hi[0] = 0.0f;
  if (channels > 2) {  // a range that does not contain 0
    lo[2] = 0.3f;
    hi[2] = 1.1f;
  }
  return {Tensor::from_vector({channels}, lo), Tensor::from_vector({channels}, hi)};
}

}  // namespace

TEST_CASE("cuda fake_quant_per_tensor: bit-identical forward, straight-through and clipped gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(1);
  struct Case {
    Shape shape;
    MemoryFormat format;
  };
  const Case cases[] = {{{3, 5, 7, 9}, MemoryFormat::contiguous},
                        {{3, 5, 7, 9}, MemoryFormat::channels_last},
                        {{1, 4, 6, 6}, MemoryFormat::channels_last},
                        {{1001}, MemoryFormat::contiguous},
                        {{2, 8, 64, 64}, MemoryFormat::contiguous}};
  for (const auto& c : cases)
    for (int bits : kBits)
      for (bool symmetric : {false, true})
        for (bool clipped : {false, true}) {
          const ops::FakeQuantSpec spec{bits, symmetric, clipped};
          const float lo = -1.3f, hi = 2.1f;
          const auto grid = ops::fake_quant_grid(lo, hi, spec);
          const std::string name =
              "per_tensor " + spec_name(spec) + " " + shape_str(c.shape) + " " + format_name(c.format);
          Tensor x = input_with_ties(c.shape, rng, c.format, grid.delta, 1.5f);
          auto f = [&](const std::vector<Tensor>& in) {
            return ops::fake_quant_per_tensor(in[0], lo, hi, spec);
          };
          compare_with_cpu(f, {x}, 0.0, name);
          NoGrad no_grad;
          check_bit_equal(f({x.to(kGpu)}), f({x}), name);
        }
}

TEST_CASE("cuda fake_quant_per_channel: per dim-0 ranges on OIHW weights and channels-last activations") {
  ZSQ_REQUIRE_GPU();
  Rng rng(2);
  struct Case {
    Shape shape;
    MemoryFormat format;
  };
  const Case cases[] = {{{6, 4, 3, 3}, MemoryFormat::contiguous},     // OIHW, inner 36
                        {{5, 3, 7, 7}, MemoryFormat::channels_last},  // inner 147
                        {{1, 3, 5, 5}, MemoryFormat::channels_last},  // batch 1
                        {{7, 33}, MemoryFormat::contiguous},          // a linear weight
                        {{9, 260, 5, 5}, MemoryFormat::contiguous}};  // many elements per channel
  for (const auto& c : cases)
    for (int bits : kBits)
      for (bool symmetric : {false, true})
        for (bool clipped : {false, true}) {
          const ops::FakeQuantSpec spec{bits, symmetric, clipped};
          const std::string name =
              "per_channel " + spec_name(spec) + " " + shape_str(c.shape) + " " + format_name(c.format);
          const auto [lo, hi] = channel_ranges(c.shape[0], rng);
          Tensor x = random_cpu(c.shape, rng, c.format, true, 1.5f);
          auto f = [&](const std::vector<Tensor>& in) {
            return ops::fake_quant_per_channel(in[0], in[1], in[2], spec);
          };
          compare_with_cpu(f, {x, lo, hi}, 0.0, name);
          NoGrad no_grad;
          check_bit_equal(f({x.to(kGpu), lo.to(kGpu), hi.to(kGpu)}), f({x, lo, hi}), name);
        }
}

TEST_CASE(
    "cuda channel_min_max and fake_quant_per_channel_minmax: exact over warp and split-block reductions") {
  ZSQ_REQUIRE_GPU();
  Rng rng(3);
  struct Case {
    Shape shape;
    MemoryFormat format;
  };
  // inner 72 and 5 (one warp per channel), 2000 (one block), 100000 (split across blocks), 1.
  const Case cases[] = {
      {{16, 8, 3, 3}, MemoryFormat::contiguous}, {{4, 6, 5, 5}, MemoryFormat::channels_last},
      {{3, 2000}, MemoryFormat::contiguous},     {{2, 100000}, MemoryFormat::contiguous},
      {{1, 5}, MemoryFormat::contiguous},        {{5, 1}, MemoryFormat::contiguous}};
  for (const auto& c : cases) {
    Tensor w = random_cpu(c.shape, rng, c.format, true, 0.7f);
    {
      // A channel of zeros with negative zeros in it: the minimum and maximum are reported as +0.0.
      auto v = w.to_vector();
      const auto inner = w.numel() / c.shape[0];
      for (std::int64_t i = 0; i < inner; ++i) v[static_cast<std::size_t>(i)] = i % 2 ? -0.0f : 0.0f;
      w = Tensor::from_vector(c.shape, v, c.format);
      w.set_requires_grad(true);
    }
    const std::string shape = shape_str(c.shape) + " " + format_name(c.format);
    const auto [mn, mx] = ops::channel_min_max(w);
    const auto [gmn, gmx] = ops::channel_min_max(w.to(kGpu));
    check_bit_equal(gmn, mn, "channel min " + shape);
    check_bit_equal(gmx, mx, "channel max " + shape);
    for (int bits : kBits)
      for (bool symmetric : {false, true}) {
        const ops::FakeQuantSpec spec{bits, symmetric, bits == 3};
        const std::string name = "per_channel_minmax " + spec_name(spec) + " " + shape;
        auto f = [&](const std::vector<Tensor>& in) {
          return ops::fake_quant_per_channel_minmax(in[0], spec);
        };
        compare_with_cpu(f, {w}, 0.0, name);
        NoGrad no_grad;
        check_bit_equal(f({w.to(kGpu)}), f({w}), name);
      }
  }
}

TEST_CASE("cuda fake_quant_learned_range: bit-identical forward, input and range gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(4);
  struct Case {
    Shape shape;
    MemoryFormat format;
  };
  // 1M elements: the range gradient is summed over many blocks.
  const Case cases[] = {{{2, 3, 5, 5}, MemoryFormat::channels_last},
                        {{1, 16, 16, 16}, MemoryFormat::contiguous},
                        {{16, 16, 64, 64}, MemoryFormat::channels_last}};
  for (const auto& c : cases)
    for (int bits : kBits) {
      const std::string name = "learned_range " + std::to_string(bits) + " bits " + shape_str(c.shape) + " " +
                               format_name(c.format);
      const auto grid = ops::fake_quant_grid(0.0f, 1.7f, {bits, false, false});
      Tensor x = input_with_ties(c.shape, rng, c.format, grid.delta, 1.2f);
      Tensor hi = Tensor::from_vector({1}, {1.7f});
      hi.set_requires_grad(true);
      auto f = [&](const std::vector<Tensor>& in) {
        return ops::fake_quant_learned_range(in[0], in[1], bits);
      };
      compare_with_cpu(f, {x, hi}, 0.0, name, 1e-5);
      NoGrad no_grad;
      check_bit_equal(f({x.to(kGpu), hi.to(kGpu)}), f({x, hi}), name);
      // Only one of the two gradients wanted.
      Tensor x_only = x.detach();
      compare_with_cpu(f, {x_only, hi}, 0.0, name + " (range gradient only)", 1e-5);
    }
}

TEST_CASE("cuda fake_quant_per_channel_ratio: forward, weight and ratio gradients, ratio_channel_ranges") {
  ZSQ_REQUIRE_GPU();
  Rng rng(5);
  const Shape shapes[] = {{16, 8, 3, 3}, {10, 3000}, {6, 5}, {1, 4, 3, 3}};
  for (const auto& shape : shapes) {
    Tensor w = random_cpu(shape, rng, MemoryFormat::contiguous, true, 0.5f);
    Tensor ratio = uniform_tensor({shape[0]}, rng, 0.5f, 1.0f, true);
    const auto [lo, hi] = ops::ratio_channel_ranges(w, ratio);
    const auto [glo, ghi] = ops::ratio_channel_ranges(w.to(kGpu), ratio.to(kGpu));
    check_bit_equal(glo, lo, "ratio_channel_ranges lo " + shape_str(shape));
    check_bit_equal(ghi, hi, "ratio_channel_ranges hi " + shape_str(shape));
    for (int bits : kBits)
      for (bool symmetric : {false, true}) {
        const ops::FakeQuantSpec spec{bits, symmetric, false};
        const std::string name = "per_channel_ratio " + spec_name(spec) + " " + shape_str(shape);
        auto f = [&](const std::vector<Tensor>& in) {
          return ops::fake_quant_per_channel_ratio(in[0], in[1], spec);
        };
        compare_with_cpu(f, {w, ratio}, 0.0, name, 1e-5);
        NoGrad no_grad;
        check_bit_equal(f({w.to(kGpu), ratio.to(kGpu)}), f({w, ratio}), name);
      }
  }
}

TEST_CASE("cuda fake_quant: tensors on two devices are refused by name; refused ranges give NaN on the GPU") {
  ZSQ_REQUIRE_GPU();
  Rng rng(6);
  Tensor x = random_cpu({4, 3, 5, 5}, rng).to(kGpu);
  const auto [lo, hi] = channel_ranges(4, rng);
  const ops::FakeQuantSpec spec{4, false, false};
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x, lo, hi, spec), doctest::Contains("cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x, lo.to(kGpu), hi, spec), doctest::Contains("cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_learned_range(x, Tensor::from_vector({1}, {1.0f}), 4),
                       doctest::Contains("cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel_ratio(x, Tensor::full({4}, 1.0f), spec),
                       doctest::Contains("cpu"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel(x.to(Device::cpu()), lo.to(kGpu), hi.to(kGpu), spec),
                       doctest::Contains("cuda:0"), Error);

  // The CPU throws for these ranges; the GPU does not read them back, so the channel becomes NaN.
  NoGrad no_grad;
  Tensor bad_hi = Tensor::from_vector({1}, {-1.0f}).to(kGpu);
  for (float v : ops::fake_quant_learned_range(x, bad_hi, 4).to_vector()) REQUIRE(std::isnan(v));
  Tensor inverted_lo = Tensor::from_vector({4}, {0.0f, 1.0f, 0.0f, 0.0f}).to(kGpu);
  Tensor inverted_hi = Tensor::from_vector({4}, {1.0f, 0.5f, 1.0f, 1.0f}).to(kGpu);
  const auto out = ops::fake_quant_per_channel(x, inverted_lo, inverted_hi, spec).to_vector();
  const std::size_t inner = out.size() / 4;
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(std::isnan(out[i]) == (i / inner == 1));
  Tensor zero_ratio = Tensor::from_vector({4}, {1.0f, 0.0f, 1.0f, 1.0f}).to(kGpu);
  const auto [rlo, rhi] = ops::ratio_channel_ranges(x, zero_ratio);
  CHECK(std::isnan(rlo.to_vector()[1]));
  CHECK(std::isfinite(rlo.to_vector()[0]));
}
