// Layout views and per-position channel normalization used by feature-relation losses (ZAQ).
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

// [B, C, H, W] -> [B, H*W, C]: each row is one position's channel vector. Zero-copy for a channels-last
// (or layout-equivalent) input, one copy otherwise; differentiable.
Tensor positions_as_rows(const Tensor& x);

// y[b, :, h, w] = x[b, :, h, w] / max(||x[b, :, h, w]||_2, eps): L2-normalizes every position's channel
// vector (4-D input, either format; output is channels-last). Differentiable; the gradient at vectors
// with norm <= eps is 0.
Tensor normalize_channels(const Tensor& x, float eps = 1e-12f);

namespace ref {
Tensor normalize_channels(const Tensor& x, float eps);
}  // namespace ref

}  // namespace zsq::ops
