#include <doctest/doctest.h>

#include "ops/conv2d.h"
#include "ops/elementwise.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
struct ConvCase {
  Shape x, w;
  ops::Conv2dParams p;
  bool bias;
};
// Odd sizes, strides, dilation, groups (incl. depthwise) and 1x1 shortcuts.
const std::vector<ConvCase> kCases = {
    {{2, 3, 7, 5}, {4, 3, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true},
    {{1, 4, 9, 9}, {6, 4, 3, 3}, {2, 2, 1, 1, 1, 1, 1}, false},
    {{2, 4, 8, 7}, {4, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 4}, true},     // depthwise
    {{1, 6, 11, 10}, {6, 2, 3, 3}, {1, 1, 2, 2, 2, 2, 3}, false},  // grouped + dilated
    {{2, 5, 6, 6}, {3, 5, 1, 1}, {2, 2, 0, 0, 1, 1, 1}, false},    // 1x1 stride-2 shortcut
    {{1, 1, 8, 8}, {16, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, false},   // 1-channel stem
    {{1, 3, 5, 9}, {2, 3, 2, 4}, {1, 2, 0, 1, 1, 1, 1}, true},     // asymmetric kernel/stride/padding
};
}  // namespace

TEST_CASE("conv2d fast path matches the reference loops (forward, backward data, backward weights)") {
  Rng rng(1);
  for (const auto& c : kCases)
    for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      CAPTURE(shape_str(c.x));
      CAPTURE(shape_str(c.w));
      Tensor x = random_input(c.x, rng, fmt, false);
      Tensor w = random_input(c.w, rng, MemoryFormat::contiguous, false);
      Tensor b = c.bias ? random_input({c.w[0]}, rng, MemoryFormat::contiguous, false) : Tensor();
      Tensor y = ops::conv2d_forward(x, w, b, c.p);
      check_close(y, ops::ref::conv2d_forward(x, w, b, c.p), 1e-4, 1e-4, "forward");
      Tensor g = random_input(y.shape(), rng, fmt, false);
      check_close(ops::conv2d_backward_data(g, w, c.x, c.p), ops::ref::conv2d_backward_data(g, w, c.x, c.p),
                  1e-4, 1e-4, "backward data");
      Tensor gw, gb, rgw, rgb;
      ops::conv2d_backward_weights(g, x, c.w, c.bias, c.p, gw, gb);
      ops::ref::conv2d_backward_weights(g, x, c.w, c.bias, c.p, rgw, rgb);
      check_close(gw, rgw, 1e-4, 1e-4, "backward weights");
      if (c.bias) check_close(gb, rgb, 1e-4, 1e-4, "backward bias");
    }
}

TEST_CASE("conv2d gradients match finite differences on input, weight and bias") {
  Rng rng(2);
  for (const auto& c : kCases) {
    CAPTURE(shape_str(c.x));
    Tensor x = random_input(c.x, rng);
    Tensor w = random_input(c.w, rng);
    Tensor b = c.bias ? random_input({c.w[0]}, rng) : Tensor();
    std::vector<Tensor> in{x, w};
    if (c.bias) in.push_back(b);
    check_gradients(
        [&](const std::vector<Tensor>& t) { return ops::conv2d(t[0], t[1], c.bias ? t[2] : Tensor(), c.p); },
        in);
  }
}

TEST_CASE("conv2d rejects mismatched shapes with a message naming them") {
  Tensor x = Tensor::zeros({1, 3, 8, 8});
  Tensor w = Tensor::zeros({4, 2, 3, 3});
  CHECK_THROWS_WITH_AS(ops::conv2d(x, w, Tensor(), {}), doctest::Contains("[4, 2, 3, 3]"), Error);
  CHECK_THROWS_AS(ops::conv2d(Tensor::zeros({3, 8}), w, Tensor(), {}), Error);
  CHECK_THROWS_AS(ops::conv2d(Tensor::zeros({1, 2, 2, 2}), Tensor::zeros({4, 2, 5, 5}), Tensor(), {}), Error);
}

TEST_CASE("a frozen weight gets no gradient while the input still does") {
  Rng rng(3);
  Tensor x = random_input({1, 2, 5, 5}, rng);
  Tensor w = random_input({3, 2, 3, 3}, rng, MemoryFormat::contiguous, false);
  Tensor y = ops::conv2d(x, w, Tensor(), ops::Conv2dParams::same(3));
  y.backward(Tensor::full(y.shape(), 1.0f));
  CHECK(x.grad().defined());
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("fused inference convolution equals conv + bias + residual add + ReLU") {
  Rng rng(4);
  for (const auto& c : kCases)
    for (bool with_residual : {false, true})
      for (bool relu : {false, true}) {
        CAPTURE(shape_str(c.x));
        Tensor x = random_input(c.x, rng, MemoryFormat::channels_last, false);
        Tensor w = random_input(c.w, rng, MemoryFormat::contiguous, false);
        Tensor b = random_input({c.w[0]}, rng, MemoryFormat::contiguous, false);
        Tensor ref = ops::ref::conv2d_forward(x, w, b, c.p);
        Tensor residual;
        if (with_residual) {
          residual = random_input(ref.shape(), rng, MemoryFormat::contiguous, false);
          ref = ops::ref::add(ref, residual);
        }
        if (relu) ref = ops::ref::relu(ref);
        check_close(ops::conv2d_fused_inference(x, w, b, c.p, {residual, relu}), ref, 1e-4, 1e-4, "fused");
      }
  CHECK_THROWS_AS(
      ops::conv2d_fused_inference(Tensor::zeros({1, 2, 4, 4}), Tensor::zeros({3, 2, 3, 3}), Tensor(),
                                  ops::Conv2dParams::same(3), {Tensor::zeros({1, 3, 2, 2}), false}),
      Error);
}
