// Pooling, nearest upsampling and the layout ops on the GPU against the CPU: forward and input
// gradients on fresh random inputs in both memory formats, odd shapes and batch 1, windowed pooling
// with padding, overlapping and gapped windows, global pooling large enough to be split into chunks
// (the two-level reduction), an upstream gradient in the other format, and normalize_channels' zero
// vectors.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "ops/layout.h"
#include "ops/pool.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
const MemoryFormat kFormats[] = {MemoryFormat::contiguous, MemoryFormat::channels_last};
constexpr double kExact = 1e-6;   // max pooling, upsampling: selections and sums of four
constexpr double kReduce = 1e-5;  // averages, norms

std::string name_of(const std::string& op, const Shape& shape, MemoryFormat f) {
  return op + " " + shape_str(shape) + (f == MemoryFormat::channels_last ? " channels_last" : " contiguous");
}

bool fits(const Shape& s, const ops::Pool2dParams& p) {
  return s[2] + 2 * p.pad_h >= p.kernel_h && s[3] + 2 * p.pad_w >= p.kernel_w;
}

// The upstream gradient arrives in the other format than the output: the backward converts it.
void check_backward_with_other_format_upstream(const std::function<Tensor(const Tensor&)>& op,
                                               const Tensor& x_cpu, double tol, const std::string& what) {
  Tensor c = x_cpu.detach().clone().set_requires_grad(true);
  Tensor g = x_cpu.detach().to(kGpu).set_requires_grad(true);
  Tensor yc = op(c), yg = op(g);
  Rng rng(7);
  const auto other =
      yc.format() == MemoryFormat::contiguous ? MemoryFormat::channels_last : MemoryFormat::contiguous;
  Tensor upstream = random_cpu(yc.shape(), rng, other, false);
  yc.backward(upstream);
  yg.backward(upstream.to(kGpu));
  CHECK(g.grad().format() == g.format());
  check_matches(g.grad(), c.grad(), tol, what + " gradient (upstream in the other format)");
}
}  // namespace

TEST_CASE("cuda pooling: global average and max pooling match the CPU forward and backward") {
  ZSQ_REQUIRE_GPU();
  Rng rng(201);
  const Shape shapes[] = {{3, 5, 7, 9}, {1, 3, 1, 1}, {2, 64, 8, 8}, {1, 1, 1, 1}, {4, 33, 5, 3}};
  for (const auto& shape : shapes)
    for (auto f : kFormats) {
      compare_with_cpu([](const auto& t) { return ops::global_avg_pool(t[0]); }, {random_cpu(shape, rng, f)},
                       kReduce, name_of("global_avg_pool", shape, f));
      compare_with_cpu([](const auto& t) { return ops::global_max_pool(t[0]); }, {random_cpu(shape, rng, f)},
                       kExact, name_of("global_max_pool", shape, f));
    }
}

TEST_CASE("cuda pooling: global pooling over many positions and few planes (split reduction)") {
  ZSQ_REQUIRE_GPU();
  Rng rng(202);
  // Few (n, c) planes or channel groups and large S: the reduction is split into chunks and combined.
  const Shape shapes[] = {{1, 3, 211, 199}, {2, 40, 97, 101}, {1, 1, 1, 70001}};
  for (const auto& shape : shapes)
    for (auto f : kFormats) {
      compare_with_cpu([](const auto& t) { return ops::global_avg_pool(t[0]); }, {random_cpu(shape, rng, f)},
                       kReduce, name_of("global_avg_pool", shape, f));
      compare_with_cpu([](const auto& t) { return ops::global_max_pool(t[0]); }, {random_cpu(shape, rng, f)},
                       kExact, name_of("global_max_pool", shape, f));
    }
}

TEST_CASE("cuda pooling: windowed average and max pooling match the CPU (padding, overlap, gaps)") {
  ZSQ_REQUIRE_GPU();
  Rng rng(203);
  const Shape shapes[] = {{3, 5, 7, 9}, {1, 1, 4, 4}, {2, 16, 8, 8}, {1, 40, 11, 6}};
  const ops::Pool2dParams params[] = {
      {2, 2, 2, 2, 0, 0},  // the usual halving
      {3, 3, 2, 2, 1, 1},  // overlapping windows with padding (ResNet stem)
      {3, 3, 1, 1, 1, 1},  // same-size output, every input in up to 9 windows
      {2, 3, 1, 2, 0, 1},  // rectangular, padding in w only
      {1, 1, 2, 2, 0, 0},  // gaps: stride > kernel leaves inputs with zero gradient
      {3, 2, 3, 1, 2, 1},  // stride == kernel in h with the largest padding allowed
  };
  for (const auto& shape : shapes)
    for (auto f : kFormats)
      for (const auto& p : params) {
        if (!fits(shape, p)) continue;
        const std::string geometry = " k" + std::to_string(p.kernel_h) + "x" + std::to_string(p.kernel_w) +
                                     " s" + std::to_string(p.stride_h) + "x" + std::to_string(p.stride_w) +
                                     " p" + std::to_string(p.pad_h) + "x" + std::to_string(p.pad_w);
        compare_with_cpu([&](const auto& t) { return ops::avg_pool2d(t[0], p); }, {random_cpu(shape, rng, f)},
                         kReduce, name_of("avg_pool2d", shape, f) + geometry);
        compare_with_cpu([&](const auto& t) { return ops::max_pool2d(t[0], p); }, {random_cpu(shape, rng, f)},
                         kExact, name_of("max_pool2d", shape, f) + geometry);
        // Without autograd the max forward keeps no argmax.
        compare_with_cpu([&](const auto& t) { return ops::max_pool2d(t[0], p); },
                         {random_cpu(shape, rng, f, false)}, kExact,
                         name_of("max_pool2d (no grad)", shape, f) + geometry);
      }
}

TEST_CASE("cuda pooling: outputs keep the input's format; gradients accept an upstream in the other format") {
  ZSQ_REQUIRE_GPU();
  Rng rng(204);
  const ops::Pool2dParams p{3, 3, 2, 2, 1, 1};
  for (auto f : kFormats) {
    Tensor x = random_cpu({2, 6, 9, 7}, rng, f);
    Tensor xg = x.detach().to(kGpu);
    for (const Tensor& y : {ops::avg_pool2d(xg, p), ops::max_pool2d(xg, p), ops::upsample_nearest2x(xg),
                            ops::global_avg_pool(xg), ops::global_max_pool(xg)}) {
      CHECK(y.device() == kGpu);
      CHECK(y.format() == f);
    }
    const std::string fmt = f == MemoryFormat::channels_last ? " channels_last" : " contiguous";
    check_backward_with_other_format_upstream([&](const Tensor& t) { return ops::avg_pool2d(t, p); }, x,
                                              kReduce, "avg_pool2d" + fmt);
    check_backward_with_other_format_upstream([&](const Tensor& t) { return ops::max_pool2d(t, p); }, x,
                                              kExact, "max_pool2d" + fmt);
    check_backward_with_other_format_upstream([](const Tensor& t) { return ops::upsample_nearest2x(t); }, x,
                                              kExact, "upsample_nearest2x" + fmt);
  }
}

TEST_CASE("cuda upsampling: nearest 2x matches the CPU forward and backward") {
  ZSQ_REQUIRE_GPU();
  Rng rng(205);
  const Shape shapes[] = {{3, 5, 7, 9}, {1, 1, 1, 1}, {2, 16, 4, 4}, {1, 3, 33, 17}};
  for (const auto& shape : shapes)
    for (auto f : kFormats)
      compare_with_cpu([](const auto& t) { return ops::upsample_nearest2x(t[0]); },
                       {random_cpu(shape, rng, f)}, kExact, name_of("upsample_nearest2x", shape, f));
}

TEST_CASE("cuda layout: normalize_channels matches the CPU forward and backward") {
  ZSQ_REQUIRE_GPU();
  Rng rng(206);
  // C = 1 (layout-equivalent formats), small C (a partial warp per row), C > 32 (lanes loop), odd sizes.
  const Shape shapes[] = {{3, 5, 7, 9}, {2, 1, 3, 3}, {1, 3, 1, 1}, {2, 64, 4, 4}, {2, 100, 3, 5}};
  for (const auto& shape : shapes)
    for (auto f : kFormats) {
      compare_with_cpu([](const auto& t) { return ops::normalize_channels(t[0]); },
                       {random_cpu(shape, rng, f)}, kReduce, name_of("normalize_channels", shape, f));
      compare_with_cpu([](const auto& t) { return ops::normalize_channels(t[0], 0.5f); },
                       {random_cpu(shape, rng, f, true, 0.3f)}, kReduce,
                       name_of("normalize_channels eps 0.5 (some rows clamped)", shape, f));
    }
  // Zero vectors stay finite and pass no gradient, as on the CPU.
  Tensor z = Tensor::zeros({2, 4, 1, 3}, DType::f32, MemoryFormat::contiguous, kGpu);
  z.set_requires_grad(true);
  Tensor y = ops::normalize_channels(z);
  CHECK(y.device() == kGpu);
  CHECK(y.format() == MemoryFormat::channels_last);
  for (float v : y.to_vector()) CHECK(v == 0.0f);
  y.backward(Tensor::full({2, 4, 1, 3}, 1.0f, MemoryFormat::channels_last, kGpu));
  for (float v : z.grad().to_vector()) CHECK(v == 0.0f);
}

TEST_CASE("cuda layout: positions_as_rows matches the CPU and maps the gradient back") {
  ZSQ_REQUIRE_GPU();
  Rng rng(207);
  const Shape shapes[] = {{3, 5, 7, 9}, {2, 1, 3, 3}, {1, 8, 1, 1}};
  for (const auto& shape : shapes)
    for (auto f : kFormats)
      compare_with_cpu([](const auto& t) { return ops::positions_as_rows(t[0]); },
                       {random_cpu(shape, rng, f)}, kExact, name_of("positions_as_rows", shape, f));
  // Zero copy for a channels-last input on the GPU too.
  Tensor cl = random_cpu({2, 3, 4, 5}, rng, MemoryFormat::channels_last, false).to(kGpu);
  CHECK(ops::positions_as_rows(cl).raw_data() == cl.raw_data());
}
