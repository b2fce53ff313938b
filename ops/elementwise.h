// Element-wise ops. Binary ops take two tensors of the same logical shape (formats may differ: the
// result takes the first operand's format). Kernels write fresh outputs; autograd accumulates.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
// a * scale + shift, scale and shift constants.
Tensor affine_scalar(const Tensor& a, float scale, float shift);
inline Tensor mul_scalar(const Tensor& a, float s) {
  return affine_scalar(a, s, 0.0f);
}
inline Tensor add_scalar(const Tensor& a, float s) {
  return affine_scalar(a, 1.0f, s);
}

Tensor relu(const Tensor& x);
// relu(a + b) in one pass (a residual block's output): one tensor written and read less than add
// followed by relu. Both inputs get the same gradient, zero where the output is 0.
Tensor add_relu(const Tensor& a, const Tensor& b);
Tensor leaky_relu(const Tensor& x, float negative_slope = 0.01f);
Tensor tanh(const Tensor& x);
// Element-wise square root; inputs must be > 0 where a gradient is taken.
Tensor sqrt(const Tensor& x);
// Natural logarithm; inputs must be > 0.
Tensor log(const Tensor& x);
// e^x.
Tensor exp(const Tensor& x);

// Reference loops (the test oracle; never optimized), in ops/cpu/ref_elementwise.cpp.
namespace ref {
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor affine_scalar(const Tensor& a, float scale, float shift);
Tensor relu(const Tensor& x);
Tensor add_relu(const Tensor& a, const Tensor& b);
Tensor leaky_relu(const Tensor& x, float negative_slope);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor log(const Tensor& x);
Tensor exp(const Tensor& x);
}  // namespace ref

}  // namespace zsq::ops
