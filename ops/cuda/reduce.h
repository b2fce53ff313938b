// Launchers for the CUDA reductions behind ops/reduce.cpp (sum, mean, variance over any axis set, and
// their backward passes). Plain C++: the front files include it without the CUDA toolkit's headers.
//
// Sums accumulate in double (per thread, then a fixed-order tree, then a fixed-order combine of block
// partials): FP64 is cheap next to the memory traffic on the H100/H200, the CPU path also sums in
// double, and no atomics are used, so results match the CPU to ~1e-7 and are bit-reproducible.
#pragma once
#include <cstdint>

namespace zsq::cuda {

constexpr int kMaxReduceDims = 8;

// A reduction of a dense f32 tensor described in its memory order: dims outermost first, each either
// reduced or kept. Kept dims carry their stride in the row-major output (0 on reduced dims). Size-1
// dims may be present (they are dropped); out_numel and count follow from the sizes.
struct ReduceLayout {
  int ndim = 0;
  std::int64_t size[kMaxReduceDims] = {};
  std::int64_t out_stride[kMaxReduceDims] = {};
  bool reduced[kMaxReduceDims] = {};
};

// out[o] = scale * (sum of the inputs reducing into o).
void reduce_sum(const float* x, const ReduceLayout& layout, double scale, float* out);
// var[o] = sum (x - mean[o])^2 / denom and the float mean[o], in one pass over x (shifted sums; see
// reduce.cu for why they stay accurate when |mean| >> std).
void reduce_variance(const float* x, const ReduceLayout& layout, double denom, float* var, float* mean);
// dx[i] = g[o(i)] * scale for every input position i (x's memory order): sum / mean backward.
void reduce_broadcast_backward(const float* g, const ReduceLayout& layout, float scale, float* dx);
// dx[i] = float(g[o] * two_over_denom) * (x[i] - mean[o]): variance backward.
void variance_backward(const float* g, const float* x, const float* mean, const ReduceLayout& layout,
                       double two_over_denom, float* dx);

}  // namespace zsq::cuda
