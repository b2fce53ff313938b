// Launchers for normalize_channels' kernels (ops/layout.cpp; plain C++, no CUDA types). Rows are the
// channel vectors of a channels-last tensor: rows = N * H * W contiguous rows of C floats.
#pragma once
#include <cstdint>

namespace zsq::cuda {

// y[r, :] = x[r, :] / norm[r] with norm[r] = max(||x[r, :]||_2, eps) (sum of squares in double, as the
// CPU loop). norms receives norm[r] for the backward pass.
void normalize_rows_forward(const float* x, float* y, float* norms, std::int64_t rows, std::int64_t C,
                            float eps);
// dx[r, :] = (g[r, :] - <y[r, :], g[r, :]> y[r, :]) / norm[r], and 0 where norm[r] <= eps.
void normalize_rows_backward(const float* grad_y, const float* y, const float* norms, float* grad_x,
                             std::int64_t rows, std::int64_t C, float eps);

}  // namespace zsq::cuda
