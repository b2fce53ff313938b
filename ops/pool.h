// Pooling and resampling on 4-D f32 inputs [N, C, H, W] (either format; outputs keep the format).
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

struct Pool2dParams {
  std::int64_t kernel_h = 2, kernel_w = 2;
  std::int64_t stride_h = 2, stride_w = 2;
  std::int64_t pad_h = 0, pad_w = 0;
};

// [N, C, H, W] -> [N, C, 1, 1]
Tensor global_avg_pool(const Tensor& x);
Tensor global_max_pool(const Tensor& x);
// Windowed pooling; avg excludes padding from the divisor (count_include_pad = false).
// OH = (H + 2*pad_h - kernel_h) / stride_h + 1 (floor); padding must be smaller than the kernel.
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor max_pool2d(const Tensor& x, const Pool2dParams& p);
// Nearest-neighbour upsampling by 2 in H and W.
Tensor upsample_nearest2x(const Tensor& x);

namespace ref {
Tensor global_avg_pool(const Tensor& x);
Tensor global_max_pool(const Tensor& x);
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor max_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor upsample_nearest2x(const Tensor& x);
}  // namespace ref

// oneDNN windowed pooling (no validation, no autograd). The forward returns the output in x's format;
// for max pooling with for_backward it also returns the index workspace the backward pass needs.
namespace dnnl_impl {
Tensor pool2d_forward(const Tensor& x, const Pool2dParams& p, bool max, bool for_backward,
                      std::shared_ptr<void>& workspace);
// grad_out has the output's shape and x's format; returns the input gradient in that format.
Tensor pool2d_backward(const Tensor& grad_out, const Shape& x_shape, const Pool2dParams& p, bool max,
                       const std::shared_ptr<void>& workspace);
}  // namespace dnnl_impl

}  // namespace zsq::ops
