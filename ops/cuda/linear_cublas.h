// cuBLAS products behind ops/linear.cpp for tensors on a GPU (ops/cuda/linear_cublas.cpp, compiled by
// the host compiler): the same gemm and column_sums as ops::dnnl_impl, over row-major device tensors, so
// the front functions switch implementation by device and share everything else.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops::cuda_impl {

// C [N, M] = op(a) * op(b) (+ bias [M] broadcast over rows), op(t) = t^T when its flag is set. a, b and
// bias are f32 on the same GPU; C is allocated there.
Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias = {});
// Column sums of a row-major [rows, cols] device matrix -> [cols] (the bias gradient).
Tensor column_sums(const Tensor& m);

}  // namespace zsq::ops::cuda_impl
