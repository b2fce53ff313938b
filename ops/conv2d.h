// 2-D convolution (cross-correlation, as in every DL framework).
//   x: f32 [N, C, H, W] in either format; weight: f32 [O, C/groups, KH, KW] contiguous; bias: [O] or
//   undefined. Output: f32 [N, O, OH, OW] channels-last, OH = (H + 2*pad_h - dil_h*(KH-1) - 1)/stride_h + 1.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

struct Conv2dParams {
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t dilation_h = 1, dilation_w = 1;
  std::int64_t groups = 1;

  static Conv2dParams same(std::int64_t kernel, std::int64_t stride = 1, std::int64_t groups = 1,
                           std::int64_t dilation = 1) {
    const auto pad = dilation * (kernel - 1) / 2;
    return {stride, stride, pad, pad, dilation, dilation, groups};
  }
};

// Validates shapes (errors name both tensors) and returns the output shape.
Shape conv2d_output_shape(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// Differentiable front function: validates, dispatches to the fast path, records the autograd node.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// Named pieces (no autograd), dispatched to oneDNN on the CPU.
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
// Writes grad_weight (same shape as weight, contiguous) and, when wanted, grad_bias [O].
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);

// What an inference-only convolution may fuse after the bias: a residual of the output's shape added
// element-wise, then a ReLU. Lets eval-mode networks run conv+BN(folded)+add+ReLU as one pass.
struct ConvEpilogue {
  Tensor residual;
  bool relu = false;
};

// y = relu?(conv(x, weight) + bias + residual?). No autograd: callers use it only when nothing needs a
// gradient (evaluation, calibration). The reference is conv2d_forward followed by add and relu.
Tensor conv2d_fused_inference(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const Conv2dParams& p, const ConvEpilogue& epilogue);

namespace ref {
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);
}  // namespace ref

namespace dnnl_impl {
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p,
                      bool training, const ConvEpilogue& epilogue = {});
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);
}  // namespace dnnl_impl

}  // namespace zsq::ops
