// Moment matching: how far a batch's per-channel statistics are from target ones (GDFQ's BN-statistics
// loss for one BN layer, ALGORITHMS.md §1):
//   L = mean_c (mu_c - target_mean_c)^2 + mean_c (var_c - target_var_c)^2
// with mu_c and var_c the batch mean and biased variance of channel c over every other axis (N, H, W).
// It equals mse(mean(x, {0,2,3}), target_mean) + mse(variance(x, {0,2,3}), target_var), but reads x
// once forward (sums of x and x^2 in double) and once backward, writing one gradient
//   dL/dx = g * (2/C) * ((mu_c - tm_c) + 2 (var_c - tv_c) (x - mu_c)) / M,   M = N*H*W,
// where the composed ops read x five times and sum three gradient tensors.
// x: f32 [N, C, H, W] (either format) or [N, C]; targets: f32 [C], constants (no gradient).
// The per-channel sums are in double, each thread over a fixed share of rows, combined in thread
// order: the same thread count gives the same bits. In double, E[x^2] - E[x]^2 keeps the variance to
// about 1e-10 relative even when |mean| is 1e3 standard deviations.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

Tensor moment_matching_loss(const Tensor& x, const Tensor& target_mean, const Tensor& target_var);

}  // namespace zsq::ops
