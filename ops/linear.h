// Fully connected layer: x f32 [N, K] contiguous, weight [M, K] (PyTorch layout), bias [M] or undefined.
// y = x * weight^T + bias, f32 [N, M]. 4-D activations are flattened by the caller (ops::flatten) first.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// Plain matrix product a [N, K] x b [K, M] -> [N, M].
Tensor matmul(const Tensor& a, const Tensor& b);

// Named pieces of linear (no autograd), dispatched to oneDNN on the CPU.
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias);
// grad_x [N, K] = grad_out [N, M] * weight [M, K].
Tensor linear_backward_data(const Tensor& grad_out, const Tensor& weight);
// grad_weight [M, K] = grad_out^T * x; grad_bias [M] = column sums of grad_out (only when with_bias).
void linear_backward_weights(const Tensor& grad_out, const Tensor& x, bool with_bias, Tensor& grad_weight,
                             Tensor& grad_bias);

namespace ref {
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor linear_backward_data(const Tensor& grad_out, const Tensor& weight);
void linear_backward_weights(const Tensor& grad_out, const Tensor& x, bool with_bias, Tensor& grad_weight,
                             Tensor& grad_bias);
}  // namespace ref

namespace dnnl_impl {
// C = op(a) * op(b) (+ bias [cols] broadcast over rows), op(t) = t^T when its flag is set. a and b are
// 2-D row-major f32; the oneDNN matmul primitive is cached by shapes and flags.
Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias = {});
// Column sums of a row-major [rows, cols] matrix -> [cols] (the bias gradient).
Tensor column_sums(const Tensor& m);
}  // namespace dnnl_impl

}  // namespace zsq::ops
