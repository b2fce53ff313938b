// Reductions over a set of axes of a contiguous-or-channels-last f32 tensor. `axes` may be negative
// (counted from the end); keepdim keeps reduced axes as size 1. Empty axes = all axes.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace zsq::ops {

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false);
// Biased (population) variance unless unbiased = true.
Tensor variance(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false,
                bool unbiased = false);
// Reshape without copying (a copy when x is channels-last and not layout-equivalent); differentiable.
Tensor reshape(const Tensor& x, const Shape& shape);
// [N, ...] -> [N, prod(...)]
Tensor flatten(const Tensor& x);

namespace ref {
Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim);
Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim);
Tensor variance(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim, bool unbiased);
}  // namespace ref

}  // namespace zsq::ops
