// Launchers for the CUDA moment-matching loss (ops/moment_matching.cpp: GDFQ's BN-statistics loss for
// one layer). Plain C++. Sums are in double, as on the CPU, through the two-level reduction of
// reduce_kernels.cuh (no atomics: the same input gives the same bits).
#pragma once
#include <cstdint>

namespace zsq::cuda {

// Moment matching on x = [batch, channels, spatial] (NCHW; spatial = H*W) or [batch, spatial,
// channels] (channels_last / a 2-D [N, C] with spatial 1). Forward: per-channel sums of x and x^2 in
// double, then stats = [3][channels] floats (mean, mean - target_mean, var - target_var) and
// loss[0] = mean_c (gap_mean^2 + gap_var^2).
void moment_matching_forward(const float* x, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             bool channels_last, const float* target_mean, const float* target_var,
                             float* stats, float* loss);
// dx = a_c + b_c (x - mean_c) with a_c, b_c from the upstream gradient g[0] (read on the device) and stats.
void moment_matching_backward(const float* g, const float* x, const float* stats, std::int64_t batch,
                              std::int64_t channels, std::int64_t spatial, bool channels_last, float* dx);

}  // namespace zsq::cuda
