// zsq's depthwise convolution kernels (ops/cuda/depthwise_conv.h) against the CPU convolution with
// groups == channels, forward and the gradients of input, filter and bias, in both memory formats: the
// large-kernel-attention pair (5x5, then 7x7 with dilation 3), MobileNet's 3x3 with stride 1 and 2, and
// shapes that take the general path (even, non-square, stride 3). Odd spatial sizes, channel counts
// around the NHWC block width, batch 1.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "engine/autograd.h"
#include "ops/conv2d.h"
#include "ops/cuda/depthwise_conv.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

#if ZSQ_WITH_CUDA
namespace {

cuda::DepthwiseConvShape shape_of(const Tensor& x, const Tensor& w, const ops::Conv2dParams& p) {
  cuda::DepthwiseConvShape s;
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.KH = w.size(2), s.KW = w.size(3);
  s.stride_h = p.stride_h, s.stride_w = p.stride_w;
  s.pad_h = p.pad_h, s.pad_w = p.pad_w;
  s.dilation_h = p.dilation_h, s.dilation_w = p.dilation_w;
  return s;
}

// ops::conv2d with groups == channels on the CPU; on a GPU, the depthwise kernels with an autograd node
// of their own (the output keeps the input's memory format).
Tensor depthwise(const Tensor& x, const Tensor& w, const Tensor& b, const ops::Conv2dParams& p) {
  if (!x.is_cuda()) return ops::conv2d(x, w, b, p);
  const auto s = shape_of(x, w, p);
  const MemoryFormat format = x.format();
  const auto layout =
      format == MemoryFormat::channels_last ? cuda::DepthwiseLayout::nhwc : cuda::DepthwiseLayout::nchw;
  Tensor y = Tensor::empty({s.N, s.C, s.out_h(), s.out_w()}, DType::f32, format, x.device());
  cuda::depthwise_conv2d_forward(s, layout, x.cuda_f32(), w.cuda_f32(), b.defined() ? b.cuda_f32() : nullptr,
                                 y.cuda_f32());
  const bool with_bias = b.defined();
  std::vector<Tensor> inputs{x, w};
  if (with_bias) inputs.push_back(b);
  Tensor sx = x.detach(), sw = w.detach();
  return record(
      y, "depthwise_conv2d (test)", std::move(inputs),
      [=](const Tensor& upstream, const std::vector<bool>& needs) {
        Tensor g = upstream.to_format(format);
        std::vector<Tensor> grads(needs.size());
        if (needs[0]) {
          grads[0] = Tensor::empty(sx.shape(), DType::f32, format, sx.device());
          cuda::depthwise_conv2d_backward_data(s, layout, g.cuda_f32(), sw.cuda_f32(), grads[0].cuda_f32());
        }
        const bool bias_grad = with_bias && needs[2];
        if (needs[1] || bias_grad) {
          Tensor gw = Tensor::empty(sw.shape(), DType::f32, MemoryFormat::contiguous, sw.device());
          Tensor gb =
              bias_grad ? Tensor::empty({s.C}, DType::f32, MemoryFormat::contiguous, sw.device()) : Tensor();
          cuda::depthwise_conv2d_backward_weights(s, layout, g.cuda_f32(), sx.cuda_f32(), gw.cuda_f32(),
                                                  bias_grad ? gb.cuda_f32() : nullptr);
          if (needs[1]) grads[1] = gw;
          if (bias_grad) grads[2] = gb;
        }
        return grads;
      });
}

struct Case {
  std::int64_t N, C, H, W, KH, KW;
  ops::Conv2dParams p;
  const char* what;
};

ops::Conv2dParams params(std::int64_t stride, std::int64_t pad_h, std::int64_t pad_w, std::int64_t dil_h,
                         std::int64_t dil_w, std::int64_t C) {
  return {stride, stride, pad_h, pad_w, dil_h, dil_w, C};
}

const std::vector<Case> kCases = {
    // Large kernel attention: 5x5 "same", then 7x7 dilation 3 "same".
    {2, 16, 32, 32, 5, 5, params(1, 2, 2, 1, 1, 16), "LKA 5x5"},
    {2, 16, 32, 32, 7, 7, params(1, 9, 9, 3, 3, 16), "LKA 7x7 d3"},
    {1, 64, 16, 16, 5, 5, params(1, 2, 2, 1, 1, 64), "LKA 5x5, 64 channels"},
    {1, 64, 16, 16, 7, 7, params(1, 9, 9, 3, 3, 64), "LKA 7x7 d3, 64 channels"},
    {1, 24, 13, 17, 7, 7, params(1, 9, 9, 3, 3, 24), "7x7 d3, odd sizes"},
    {3, 33, 11, 9, 5, 5, params(1, 2, 2, 1, 1, 33), "5x5, 33 channels"},
    // MobileNet.
    {2, 32, 16, 16, 3, 3, params(1, 1, 1, 1, 1, 32), "3x3"},
    {2, 32, 15, 16, 3, 3, params(2, 1, 1, 1, 1, 32), "3x3 stride 2"},
    {1, 130, 7, 9, 3, 3, params(1, 1, 1, 1, 1, 130), "3x3, 130 channels (NHWC blocks of 32)"},
    {1, 7, 15, 14, 5, 5, params(2, 2, 2, 1, 1, 7), "5x5 stride 2"},
    {1, 4, 23, 21, 7, 7, params(2, 9, 9, 3, 3, 4), "7x7 d3 stride 2"},
    // Padding wider than the dilated filter, none at all, different dilations per axis.
    {1, 4, 6, 7, 3, 3, params(1, 3, 3, 1, 1, 4), "3x3 pad 3"},
    {1, 5, 12, 10, 7, 7, params(1, 0, 0, 1, 1, 5), "7x7 valid"},
    {1, 3, 20, 18, 5, 5, params(1, 4, 2, 2, 1, 3), "5x5 dilation 2 x 1"},
    // General path.
    {1, 6, 10, 12, 4, 4, params(1, 1, 1, 1, 1, 6), "4x4"},
    {2, 3, 9, 11, 3, 5, params(1, 1, 2, 2, 1, 3), "3x5"},
    {1, 2, 12, 12, 3, 3, params(3, 1, 1, 2, 2, 2), "3x3 stride 3 dilation 2"},
    {1, 1, 9, 9, 1, 1, params(1, 0, 0, 1, 1, 1), "1x1, one channel"},
};

}  // namespace

TEST_CASE("cuda: depthwise conv matches the CPU grouped convolution, forward and gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(21);
  for (const auto& c : kCases)
    for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last})
      for (bool with_bias : {true, false}) {
        CAPTURE(c.what);
        CAPTURE(shape_str({c.N, c.C, c.H, c.W}));
        CAPTURE(format == MemoryFormat::channels_last);
        CAPTURE(with_bias);
        std::vector<Tensor> inputs{random_cpu({c.N, c.C, c.H, c.W}, rng, format),
                                   random_cpu({c.C, 1, c.KH, c.KW}, rng)};
        if (with_bias) inputs.push_back(random_cpu({c.C}, rng));
        const auto p = c.p;
        compare_with_cpu(
            [&](const std::vector<Tensor>& in) {
              return depthwise(in[0], in[1], with_bias ? in[2] : Tensor(), p);
            },
            inputs, 1e-4, c.what);
      }
}

TEST_CASE("cuda: depthwise conv matches the naive reference loops") {
  ZSQ_REQUIRE_GPU();
  Rng rng(22);
  const Case& c = kCases[1];  // LKA 7x7 d3
  Tensor x = random_cpu({c.N, c.C, c.H, c.W}, rng, MemoryFormat::contiguous, false);
  Tensor w = random_cpu({c.C, 1, c.KH, c.KW}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_cpu({c.C}, rng, MemoryFormat::contiguous, false);
  check_matches(depthwise(x.to(kGpu), w.to(kGpu), b.to(kGpu), c.p), ops::ref::conv2d_forward(x, w, b, c.p),
                1e-4, "forward vs ref");
}

TEST_CASE("cuda: the LKA and MobileNet depthwise shapes take the register-blocked path") {
  ZSQ_REQUIRE_GPU();
  for (std::size_t k = 0; k < 14; ++k) {
    const Case& c = kCases[k];
    CAPTURE(c.what);
    Tensor x = Tensor::empty({c.N, c.C, c.H, c.W});
    Tensor w = Tensor::empty({c.C, 1, c.KH, c.KW});
    CHECK(cuda::depthwise_conv2d_is_register_blocked(shape_of(x, w, c.p)));
  }
}

#else
TEST_CASE("cuda: depthwise conv (built without CUDA)") {
  ZSQ_REQUIRE_GPU();
}
#endif
