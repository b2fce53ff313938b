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
    // One output channel (a generator's image layer): the AVX-512 single_output path under `auto`.
    {{2, 16, 7, 5}, {1, 16, 3, 3}, {1, 1, 1, 1, 1, 1, 1}, true},
    {{1, 32, 9, 8}, {1, 32, 3, 2}, {2, 1, 1, 0, 1, 2, 1}, false},  // strided, dilated, unpadded columns
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
    // Linear in each input: a large step has no truncation error and keeps the forward's f32 rounding
    // (other summation orders in the fast paths) well below the tolerance.
    check_gradients(
        [&](const std::vector<Tensor>& t) { return ops::conv2d(t[0], t[1], c.bias ? t[2] : Tensor(), c.p); },
        in, /*eps=*/5e-2);
  }
}

TEST_CASE("wide 3x3 convolutions run as Winograd and stay within rounding of the reference loops") {
  ops::ScopedConvAlgorithm algorithm(ops::ConvAlgorithm::auto_select);
  Rng rng(3);
  // Odd spatial sizes so partial 4x4 output tiles are exercised; channels >= kWinogradMinChannels.
  const Shape xs{2, 32, 9, 7}, ws{48, 32, 3, 3};
  const auto p = ops::Conv2dParams::same(3);
  const bool winograd = ops::dnnl_impl::conv2d_uses_winograd(xs, ws, p);
  if (!winograd) MESSAGE("oneDNN has no Winograd kernel on this machine: the direct path is checked instead");
  CHECK_FALSE(ops::dnnl_impl::conv2d_uses_winograd({2, 16, 9, 7}, {16, 16, 3, 3}, p));       // narrow: direct
  CHECK_FALSE(ops::dnnl_impl::conv2d_uses_winograd(xs, ws, ops::Conv2dParams::same(3, 2)));  // strided

  Tensor x = random_input(xs, rng, MemoryFormat::channels_last, false);
  Tensor w = random_input(ws, rng, MemoryFormat::contiguous, false);
  Tensor b = random_input({ws[0]}, rng, MemoryFormat::contiguous, false);
  Tensor y = ops::conv2d_forward(x, w, b, p);
  // Winograd's transforms add rounding of a few ulps of the partial sums (K = 288 terms of size ~1).
  check_close(y, ops::ref::conv2d_forward(x, w, b, p), 1e-4, 2e-4, "forward");
  Tensor g = random_input(y.shape(), rng, MemoryFormat::channels_last, false);
  Tensor gx = ops::conv2d_backward_data(g, w, xs, p);
  check_close(gx, ops::ref::conv2d_backward_data(g, w, xs, p), 1e-4, 2e-4, "backward data");
  Tensor gw, gb, rgw, rgb;
  ops::conv2d_backward_weights(g, x, ws, true, p, gw, gb);
  ops::ref::conv2d_backward_weights(g, x, ws, true, p, rgw, rgb);
  check_close(gw, rgw, 1e-4, 2e-4, "backward weights");
  check_close(gb, rgb, 1e-4, 1e-4, "backward bias");

  // Through autograd the weight pass reuses the forward pass's blocked copy of the input, and (when the
  // input needs a gradient too) the data pass's blocked copy of g: same results, bit for bit.
  for (const bool input_grad : {false, true}) {
    CAPTURE(input_grad);
    Tensor xg = x.clone();
    xg.set_requires_grad(input_grad);
    Tensor wg = w.clone();
    wg.set_requires_grad(true);
    Tensor bg = b.clone();
    bg.set_requires_grad(true);
    ops::conv2d(xg, wg, bg, p).backward(g);
    CHECK(wg.grad().to_vector() == gw.to_vector());
    CHECK(bg.grad().to_vector() == gb.to_vector());
    if (input_grad) CHECK(xg.grad().to_vector() == gx.to_vector());
  }

  // The setting really switches the algorithm: direct gives other roundings (bit-different results)
  // exactly when Winograd ran.
  ops::set_conv_algorithm(ops::ConvAlgorithm::direct);
  CHECK_FALSE(ops::dnnl_impl::conv2d_uses_winograd(xs, ws, p));
  Tensor y_direct = ops::conv2d_forward(x, w, b, p);
  CHECK((y.to_vector() != y_direct.to_vector()) == winograd);
  check_close(y_direct, ops::ref::conv2d_forward(x, w, b, p), 1e-4, 1e-4, "direct forward");
}

TEST_CASE("gradients through a Winograd convolution match finite differences") {
  ops::ScopedConvAlgorithm algorithm(ops::ConvAlgorithm::auto_select);
  Rng rng(4);
  const Shape xs{1, 32, 4, 3}, ws{32, 32, 3, 3};
  const auto p = ops::Conv2dParams::same(3);
  if (!ops::dnnl_impl::conv2d_uses_winograd(xs, ws, p))
    MESSAGE("no Winograd kernel here: direct path checked");
  // The convolution is linear in each input, so a large step has no truncation error and keeps f32
  // rounding of the 288-term sums (~1e-5) well below the tolerance.
  check_gradients([&](const std::vector<Tensor>& t) { return ops::conv2d(t[0], t[1], t[2], p); },
                  {random_input(xs, rng), random_input(ws, rng), random_input({ws[0]}, rng)}, /*eps=*/5e-2);
}

TEST_CASE("one-output-channel convolutions take the single_output path only where it applies") {
  ops::ScopedConvAlgorithm algorithm(ops::ConvAlgorithm::auto_select);
  const auto p = ops::Conv2dParams::same(3);
  const Tensor x64 = Tensor::zeros({2, 64, 8, 8}, DType::f32, MemoryFormat::channels_last);
  CHECK(ops::single_output::applies(x64, {1, 64, 3, 3}, p));
  CHECK_FALSE(ops::single_output::applies(x64, {2, 64, 3, 3}, p));  // two output channels
  CHECK_FALSE(ops::single_output::applies(Tensor::zeros({2, 8, 8, 8}), {1, 8, 3, 3}, p));  // C % 16
  // The same results as oneDNN's direct kernel, within rounding (other summation order), and the
  // autograd path's weight gradient is the named function's.
  Rng rng(8);
  Tensor x = random_input({3, 64, 10, 9}, rng, MemoryFormat::channels_last, false);
  Tensor w = random_input({1, 64, 3, 3}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_input({1}, rng, MemoryFormat::contiguous, false);
  Tensor y = ops::conv2d_forward(x, w, b, p);
  Tensor g = random_input(y.shape(), rng, MemoryFormat::channels_last, false);
  Tensor gw, gb;
  ops::conv2d_backward_weights(g, x, w.shape(), true, p, gw, gb);
  Tensor wg = w.clone();
  wg.set_requires_grad(true);
  ops::conv2d(x, wg, b, p).backward(g);
  CHECK(wg.grad().to_vector() == gw.to_vector());
  ops::set_conv_algorithm(ops::ConvAlgorithm::direct);
  CHECK_FALSE(ops::single_output::applies(x64, {1, 64, 3, 3}, p));
  check_close(y, ops::conv2d_forward(x, w, b, p), 1e-4, 1e-4, "forward vs oneDNN");
  Tensor dgw, dgb;
  ops::conv2d_backward_weights(g, x, w.shape(), true, p, dgw, dgb);
  check_close(gw, dgw, 1e-4, 1e-4, "weight gradient vs oneDNN");
  check_close(gb, dgb, 1e-4, 1e-4, "bias gradient vs oneDNN");
}

TEST_CASE("the convolution algorithm setting parses its names and rejects others by name") {
  CHECK(ops::parse_conv_algorithm("auto", "test") == ops::ConvAlgorithm::auto_select);
  CHECK(ops::parse_conv_algorithm("direct", "test") == ops::ConvAlgorithm::direct);
  CHECK_THROWS_WITH_AS(ops::parse_conv_algorithm("winograd", "$ZSQ_CONV_ALGO"),
                       doctest::Contains("$ZSQ_CONV_ALGO: unknown convolution algorithm 'winograd'"), Error);
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
