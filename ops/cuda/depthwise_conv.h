// Depthwise convolution kernels (one filter per channel: groups == channels, weight [C, 1, KH, KW]),
// the building block of large-kernel attention (a 5x5 depthwise conv, then a 7x7 one with dilation 3)
// and of MobileNet's 3x3 layers. Launchers over raw device pointers (plain C++: no CUDA types);
// implemented in ops/cuda/depthwise_conv.cu. Input and output share one layout, NCHW or NHWC.
//
// Square 3x3, 5x5 and 7x7 kernels with stride 1 or 2 (any dilation and padding) take a register-blocked
// path: each thread produces 4 output rows spaced by the dilation, so consecutive rows' taps land on
// the same input rows and one column of 4 + K - 1 loads (stride 1) feeds 4 K multiply-adds. The data
// gradient takes it for stride 1 (it is then the forward with the flipped filter). Everything else
// runs a general one-output-per-thread path. Nothing synchronizes with the host.
#pragma once
#include <cstdint>

namespace zsq::cuda {

enum class DepthwiseLayout : unsigned char { nchw, nhwc };

struct DepthwiseConvShape {
  std::int64_t N = 0, C = 0, H = 0, W = 0;  // input
  std::int64_t KH = 1, KW = 1;
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t dilation_h = 1, dilation_w = 1;

  std::int64_t out_h() const { return (H + 2 * pad_h - dilation_h * (KH - 1) - 1) / stride_h + 1; }
  std::int64_t out_w() const { return (W + 2 * pad_w - dilation_w * (KW - 1) - 1) / stride_w + 1; }
};

// y [N, C, out_h, out_w] = depthwise conv of x [N, C, H, W] with weight [C, 1, KH, KW] (contiguous),
// plus bias [C] when not null.
void depthwise_conv2d_forward(const DepthwiseConvShape& s, DepthwiseLayout layout, const float* x,
                              const float* weight, const float* bias, float* y);
// grad_x [N, C, H, W] from grad_y [N, C, out_h, out_w]; overwritten.
void depthwise_conv2d_backward_data(const DepthwiseConvShape& s, DepthwiseLayout layout, const float* grad_y,
                                    const float* weight, float* grad_x);
// grad_weight [C, 1, KH, KW] and, when not null, grad_bias [C]; overwritten. Two passes without
// atomics on global memory: per-block partial sums (in zsq::cuda::workspace) and a deterministic sum.
void depthwise_conv2d_backward_weights(const DepthwiseConvShape& s, DepthwiseLayout layout,
                                       const float* grad_y, const float* x, float* grad_weight,
                                       float* grad_bias);

// Whether the forward (and weight gradient) of these shapes takes the register-blocked path.
bool depthwise_conv2d_is_register_blocked(const DepthwiseConvShape& s);

}  // namespace zsq::cuda
