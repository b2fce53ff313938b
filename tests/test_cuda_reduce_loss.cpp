// Reductions, the softmax family, the losses and the moment-matching (BN-statistics) loss on the GPU
// against the CPU: forward and input gradients on fresh random inputs, every axis combination shape
// (rows, columns, mixed) in both memory formats, keepdim and unbiased, odd sizes and batch 1, inputs of
// more than 1M elements (split into block partials), the one-pass variance's hard cases (|mean| >> std,
// an outlier as the shift), labels with and without smoothing, and operands on
// different devices refused with a zsq::Error.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/loss.h"
#include "ops/moment_matching.h"
#include "ops/reduce.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {

const MemoryFormat kFormats[] = {MemoryFormat::contiguous, MemoryFormat::channels_last};
constexpr double kExact = 1e-6;   // copies, views, gathers
constexpr double kReduce = 1e-5;  // reductions and losses

using Axes = std::vector<std::int64_t>;

std::string describe(const std::string& op, const Shape& shape, MemoryFormat f, const Axes& axes = {},
                     bool keepdim = false) {
  std::string s = op + " " + shape_str(shape) + (f == MemoryFormat::channels_last ? " channels_last" : "");
  s += " axes {";
  for (std::size_t i = 0; i < axes.size(); ++i) s += (i ? ", " : "") + std::to_string(axes[i]);
  s += keepdim ? "} keepdim" : "}";
  return s;
}

// Normal values with mean `mean` (a large mean stresses the variance's two passes).
Tensor random_shifted(const Shape& shape, Rng& rng, MemoryFormat format, float mean, float stddev,
                      bool requires_grad = true) {
  Tensor t = randn(shape, rng, mean, stddev).to_format(format);
  if (t.format() != format) t = t.clone();
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor random_labels(std::int64_t n, std::int64_t classes, Rng& rng) {
  Tensor labels = Tensor::empty({n}, DType::s32);
  auto* p = labels.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i)
    p[i] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(classes)));
  return labels;
}

// Positive probabilities per row (a softmax of random logits) with a few exact zeros.
Tensor random_target(const Shape& shape, Rng& rng) {
  Tensor t = ops::softmax(randn(shape, rng)).detach().clone();
  float* p = t.f32();
  for (std::int64_t i = 0; i < t.numel(); i += 7) p[i] = 0.0f;
  t.set_requires_grad(true);
  return t;
}

const std::vector<Axes> kAxes4 = {{},   {0, 2, 3}, {1},          {2, 3}, {0},
                                  {-1}, {1, 3},    {0, 1, 2, 3}, {0, 2}, {3, 1, 0}};

}  // namespace

TEST_CASE("cuda sum and mean over axis sets in both formats, keepdim or not") {
  ZSQ_REQUIRE_GPU();
  Rng rng(1);
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{1, 6, 5, 3}, Shape{2, 8, 4, 4}})
    for (auto format : kFormats)
      for (const auto& axes : kAxes4)
        for (bool keepdim : {false, true}) {
          Tensor x = random_cpu(shape, rng, format);
          compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::sum(t[0], axes, keepdim); }, {x},
                           kReduce, describe("sum", shape, format, axes, keepdim));
          compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::mean(t[0], axes, keepdim); }, {x},
                           kReduce, describe("mean", shape, format, axes, keepdim));
        }
  for (const Shape& shape : {Shape{33, 517}, Shape{1001}, Shape{2, 3, 5}})
    for (const Axes& axes : {Axes{}, Axes{0}, Axes{-1}}) {
      Tensor x = random_cpu(shape, rng);
      compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::sum(t[0], axes); }, {x}, kReduce,
                       describe("sum", shape, MemoryFormat::contiguous, axes));
      compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::mean(t[0], axes, true); }, {x},
                       kReduce, describe("mean", shape, MemoryFormat::contiguous, axes, true));
    }
}

TEST_CASE("cuda variance (biased and unbiased) over axis sets in both formats") {
  ZSQ_REQUIRE_GPU();
  Rng rng(2);
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{1, 6, 5, 3}, Shape{4, 12, 2, 8}})
    for (auto format : kFormats)
      for (const auto& axes : kAxes4)
        for (bool unbiased : {false, true}) {
          std::int64_t count = 1;
          for (auto axis : axes) count *= shape[static_cast<std::size_t>(axis)];
          if (axes.empty()) count = shape_numel(shape);
          // One value per group: the unbiased variance divides by 0 on both devices (inf/NaN), so a
          // relative error says nothing.
          if (unbiased && count == 1) continue;
          Tensor x = random_shifted(shape, rng, format, 2.5f, 1.5f);
          compare_with_cpu(
              [&](const std::vector<Tensor>& t) { return ops::variance(t[0], axes, unbiased, unbiased); },
              {x}, kReduce,
              describe(unbiased ? "unbiased variance" : "variance", shape, format, axes, unbiased));
        }
  for (const Axes& axes : {Axes{}, Axes{0}, Axes{1}}) {
    Tensor x = random_shifted({29, 131}, rng, MemoryFormat::contiguous, -1.0f, 3.0f);
    compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::variance(t[0], axes); }, {x}, kReduce,
                     describe("variance", {29, 131}, MemoryFormat::contiguous, axes));
  }
}

TEST_CASE("cuda reductions of more than 1M elements: per-channel and full") {
  ZSQ_REQUIRE_GPU();
  Rng rng(3);
  const Shape shape{8, 64, 48, 48};  // 1,179,648 elements
  for (auto format : kFormats) {
    Tensor x = random_shifted(shape, rng, format, 3.0f, 2.0f);
    for (const Axes& axes : {Axes{0, 2, 3}, Axes{}}) {
      compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::sum(t[0], axes); }, {x}, kReduce,
                       describe("sum", shape, format, axes));
      compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::mean(t[0], axes, true); }, {x},
                       kReduce, describe("mean", shape, format, axes, true));
      compare_with_cpu([&](const std::vector<Tensor>& t) { return ops::variance(t[0], axes); }, {x}, kReduce,
                       describe("variance", shape, format, axes));
    }
  }
  // A zero-mean full sum: the result is small next to the terms, so float accumulation would show.
  Tensor z = random_cpu({1 << 20}, rng);
  compare_with_cpu([](const std::vector<Tensor>& t) { return ops::sum(t[0]); }, {z}, kReduce, "sum of 2^20");
}

// The one-pass variance (sums shifted by each channel's first input) where plain sum / sum of squares
// would cancel: mean 100, std 0.01 over 2^18 values per channel (1 + mean^2 / var = 1e8). Also an outlier
// as the shift itself (the first input of every channel 1e4 std away), the worst case of the shift.
TEST_CASE("cuda one-pass variance: large mean next to a small std, and an outlier as the shift") {
  ZSQ_REQUIRE_GPU();
  Rng rng(12);
  constexpr double kShifted = 1e-4;
  // The gradient 2 (x - mean) / n is ill-conditioned here on either device: x near 100 has an ulp of
  // 7.6e-6, so x - mean (about 0.01) carries a relative rounding error near 4e-4 whichever float mean
  // it is taken from (measured on an H100: 3.1e-4 between the devices). The forward holds 1e-4.
  constexpr double kShiftedGradient = 1e-3;
  const Shape shape{256, 64, 32, 32};
  for (auto format : kFormats) {
    Tensor x = random_shifted(shape, rng, format, 100.0f, 0.01f);
    compare_with_cpu(
        [](const std::vector<Tensor>& t) {
          return ops::variance(t[0], {0, 2, 3});
        },
        {x}, kShifted, describe("variance mean 100 std 0.01", shape, format, {0, 2, 3}), kShiftedGradient);
    compare_with_cpu(
        [](const std::vector<Tensor>& t) {
          return ops::variance(t[0], {0, 2, 3}, false, true);
        },
        {x}, kShifted, describe("unbiased variance mean 100 std 0.01", shape, format, {0, 2, 3}),
        kShiftedGradient);
  }
  const Shape small{64, 8, 5, 5};
  for (auto format : kFormats) {
    Tensor x = random_shifted(small, rng, format, 0.0f, 1.0f, false);
    for (std::int64_t c = 0; c < small[1]; ++c)
      x.f32()[format == MemoryFormat::channels_last ? c : c * 25] = 1e4f;
    x.set_requires_grad(true);
    compare_with_cpu(
        [](const std::vector<Tensor>& t) {
          return ops::variance(t[0], {0, 2, 3});
        },
        {x}, kReduce, describe("variance with outliers first", small, format, {0, 2, 3}));
  }
}

TEST_CASE("cuda keepdim reduction backward with a channels_last upstream gradient") {
  ZSQ_REQUIRE_GPU();
  Rng rng(4);
  Tensor x = random_cpu({3, 4, 5, 6}, rng, MemoryFormat::channels_last);
  Tensor c = x.detach().clone().set_requires_grad(true);
  Tensor g = x.detach().to(kGpu).set_requires_grad(true);
  Tensor yc = ops::variance(c, {1}, true), yg = ops::variance(g, {1}, true);
  Tensor up = random_cpu(yc.shape(), rng, MemoryFormat::channels_last, false);
  yc.backward(up);
  yg.backward(up.to(kGpu));
  check_matches(g.grad(), c.grad(), kReduce, "variance {1} keepdim, channels_last upstream");
}

TEST_CASE("cuda reshape and flatten of channels_last and contiguous inputs") {
  ZSQ_REQUIRE_GPU();
  Rng rng(5);
  for (auto format : kFormats)
    for (const Shape& shape : {Shape{2, 3, 4, 5}, Shape{3, 7, 1, 1}, Shape{1, 1, 3, 5}}) {
      Tensor x = random_cpu(shape, rng, format);
      compare_with_cpu([](const std::vector<Tensor>& t) { return ops::flatten(t[0]); }, {x}, kExact,
                       describe("flatten", shape, format));
      compare_with_cpu(
          [](const std::vector<Tensor>& t) {
            return ops::reshape(t[0], {-1, t[0].size(3)});
          },
          {x}, kExact, describe("reshape", shape, format));
    }
}

TEST_CASE("cuda softmax and log_softmax (warp rows and block rows)") {
  ZSQ_REQUIRE_GPU();
  Rng rng(6);
  for (const Shape& shape : {Shape{37, 10}, Shape{1, 1}, Shape{5, 2000}, Shape{3, 1025}, Shape{9, 1024}}) {
    Tensor x = random_cpu(shape, rng, MemoryFormat::contiguous, true, 4.0f);
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::softmax(t[0]); }, {x}, kReduce,
                     "softmax " + shape_str(shape));
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::log_softmax(t[0]); }, {x}, kReduce,
                     "log_softmax " + shape_str(shape));
  }
}

TEST_CASE("cuda cross_entropy with label_smoothing 0 and 0.1") {
  ZSQ_REQUIRE_GPU();
  Rng rng(7);
  for (const Shape& shape : {Shape{37, 10}, Shape{1, 3}, Shape{4, 1500}, Shape{300, 100}})
    for (float smoothing : {0.0f, 0.1f}) {
      Tensor logits = random_cpu(shape, rng, MemoryFormat::contiguous, true, 3.0f);
      Tensor labels = random_labels(shape[0], shape[1], rng);
      compare_with_cpu(
          [=](const std::vector<Tensor>& t) { return ops::cross_entropy(t[0], t[1], smoothing); },
          {logits, labels}, kReduce,
          "cross_entropy " + shape_str(shape) + " smoothing " + std::to_string(smoothing));
    }
}

TEST_CASE("cuda kl_div, mse and l1 (mixed formats, odd sizes, more than 1M elements)") {
  ZSQ_REQUIRE_GPU();
  Rng rng(8);
  for (const Shape& shape : {Shape{7, 13}, Shape{64, 10}, Shape{1, 1}}) {
    Tensor log_input = random_cpu(shape, rng);
    Tensor target = random_target(shape, rng);
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::kl_div(t[0], t[1]); },
                     {log_input, target}, kReduce, "kl_div " + shape_str(shape));
  }
  struct Case {
    Shape shape;
    MemoryFormat fa, fb;
  };
  const Case cases[] = {{{7, 13}, MemoryFormat::contiguous, MemoryFormat::contiguous},
                        {{3, 5, 7, 9}, MemoryFormat::channels_last, MemoryFormat::contiguous},
                        {{2, 8, 4, 4}, MemoryFormat::channels_last, MemoryFormat::channels_last},
                        {{1000003}, MemoryFormat::contiguous, MemoryFormat::contiguous},
                        {{4, 64, 64, 65}, MemoryFormat::contiguous, MemoryFormat::channels_last}};
  for (const auto& c : cases) {
    Tensor a = random_cpu(c.shape, rng, c.fa);
    Tensor b = random_cpu(c.shape, rng, c.fb);
    const std::string what = shape_str(c.shape) +
                             (c.fa == MemoryFormat::channels_last ? " a channels_last" : "") +
                             (c.fb == MemoryFormat::channels_last ? " b channels_last" : "");
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::mse(t[0], t[1]); }, {a, b}, kReduce,
                     "mse " + what);
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::l1(t[0], t[1]); }, {a, b}, kReduce,
                     "l1 " + what);
  }
  // Only one side wants a gradient.
  Tensor a = random_cpu({5, 11}, rng);
  Tensor b = random_cpu({5, 11}, rng, MemoryFormat::contiguous, false);
  compare_with_cpu([](const std::vector<Tensor>& t) { return ops::mse(t[0], t[1]); }, {a, b}, kReduce,
                   "mse, b constant");
  compare_with_cpu([](const std::vector<Tensor>& t) { return ops::l1(t[1], t[0]); }, {a, b}, kReduce,
                   "l1, a constant");
}

TEST_CASE("cuda embedding with repeated indices") {
  ZSQ_REQUIRE_GPU();
  Rng rng(9);
  for (const Shape& index_shape : {Shape{37}, Shape{4, 6}, Shape{1}}) {
    Tensor table = random_cpu({11, 7}, rng);
    Tensor indices = random_labels(shape_numel(index_shape), 11, rng);
    indices = view_as_shape(indices, index_shape);
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::embedding(t[0], t[1]); },
                     {table, indices}, kExact, "embedding " + shape_str(index_shape), kReduce);
  }
  Tensor wide = random_cpu({50, 128}, rng);
  compare_with_cpu([](const std::vector<Tensor>& t) { return ops::embedding(t[0], t[1]); },
                   {wide, random_labels(300, 50, rng)}, kExact, "embedding [50, 128] x 300", kReduce);
}

TEST_CASE("cuda moment_matching_loss for NCHW, channels_last and [N, C], odd and large shapes") {
  ZSQ_REQUIRE_GPU();
  Rng rng(10);
  const Shape shapes[] = {{4, 16, 7, 9}, {1, 3, 5, 5},  {2, 8, 4, 4},   {6, 1, 5, 5},
                          {5, 7, 1, 1},  {3, 33, 3, 3}, {8, 64, 48, 48}};
  for (const Shape& shape : shapes)
    for (auto format : kFormats) {
      const std::int64_t C = shape[1];
      Tensor x = random_shifted(shape, rng, format, 0.5f, 1.5f);
      Tensor tm = random_cpu({C}, rng, MemoryFormat::contiguous, false);
      Tensor tv = rand_uniform({C}, rng, 0.5f, 3.0f);
      compare_with_cpu(
          [](const std::vector<Tensor>& t) { return ops::moment_matching_loss(t[0], t[1], t[2]); },
          {x, tm, tv}, kReduce, describe("moment_matching_loss", shape, format));
    }
  for (const Shape& shape : {Shape{17, 12}, Shape{1, 5}, Shape{4096, 3}}) {
    Tensor x = random_shifted(shape, rng, MemoryFormat::contiguous, -2.0f, 1.0f);
    Tensor tm = random_cpu({shape[1]}, rng, MemoryFormat::contiguous, false);
    Tensor tv = rand_uniform({shape[1]}, rng, 0.5f, 3.0f);
    compare_with_cpu([](const std::vector<Tensor>& t) { return ops::moment_matching_loss(t[0], t[1], t[2]); },
                     {x, tm, tv}, kReduce, "moment_matching_loss " + shape_str(shape));
  }
}

TEST_CASE("cuda losses refuse operands on different devices") {
  ZSQ_REQUIRE_GPU();
  Rng rng(11);
  Tensor a = random_cpu({4, 5}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_cpu({4, 5}, rng, MemoryFormat::contiguous, false);
  CHECK_THROWS_WITH_AS(ops::mse(a, b.to(kGpu)), doctest::Contains("different devices"), Error);
  CHECK_THROWS_WITH_AS(ops::mse(a.to(kGpu), b), doctest::Contains("different devices"), Error);
  CHECK_THROWS_AS(ops::l1(a.to(kGpu), b), Error);
  CHECK_THROWS_AS(ops::kl_div(a.to(kGpu), b), Error);
  CHECK_THROWS_AS(ops::cross_entropy(a.to(kGpu), random_labels(4, 5, rng)), Error);
  CHECK_THROWS_AS(ops::embedding(a.to(kGpu), random_labels(3, 4, rng)), Error);
  Tensor x = random_cpu({2, 5, 3, 3}, rng, MemoryFormat::channels_last, false).to(kGpu);
  CHECK_THROWS_WITH_AS(ops::moment_matching_loss(x, Tensor::zeros({5}), Tensor::zeros({5})),
                       doctest::Contains("targets must be f32 cuda:0 [5]"), Error);
}
