// normalize_channels kernels: each channels-last row (one position's C channels) is handled by a group
// of `lanes` threads (a power of two up to a warp, about C), which read the row with consecutive
// threads on consecutive channels and reduce through warp shuffles. Small C (3, 16) thus does not leave
// most of a warp idle, and no shared memory or atomics are needed.
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/layout.h"

namespace zsq::cuda {

namespace {
using i64 = std::int64_t;

// Sum over the `lanes` threads of a group; every thread of the warp must call it (groups are aligned
// within the warp because lanes divides 32).
__device__ __forceinline__ double group_sum(double v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The row loop advances by whole blocks so every thread of a warp runs the same number of iterations
// (the shuffles need all 32); threads past the last row compute with zeros and write nothing.
__global__ void normalize_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                         float* __restrict__ norms, i64 rows, i64 C, float eps, int lanes) {
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  const i64 rows_per_block = blockDim.x / lanes;
  for (i64 base = blockIdx.x * rows_per_block; base < rows; base += gridDim.x * rows_per_block) {
    const i64 r = base + threadIdx.x / lanes;
    const bool valid = r < rows;
    const float* __restrict__ xr = x + r * C;
    double ss = 0.0;
    if (valid)
      for (i64 c = lane; c < C; c += lanes) ss += static_cast<double>(xr[c]) * xr[c];
    ss = group_sum(ss, lanes);
    if (!valid) continue;
    const float n = fmaxf(static_cast<float>(sqrt(ss)), eps);
    if (lane == 0) norms[r] = n;
    float* __restrict__ yr = y + r * C;
    for (i64 c = lane; c < C; c += lanes) yr[c] = xr[c] / n;
  }
}

__global__ void normalize_backward_kernel(const float* __restrict__ g, const float* __restrict__ y,
                                          const float* __restrict__ norms, float* __restrict__ dx, i64 rows,
                                          i64 C, float eps, int lanes) {
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  const i64 rows_per_block = blockDim.x / lanes;
  for (i64 base = blockIdx.x * rows_per_block; base < rows; base += gridDim.x * rows_per_block) {
    const i64 r = base + threadIdx.x / lanes;
    const bool valid = r < rows;
    const float n = valid ? norms[r] : 1.0f;
    const bool clamped = n <= eps;  // the direction of a (near-)zero vector is undefined: gradient 0
    const float* __restrict__ gr = g + r * C;
    const float* __restrict__ yr = y + r * C;
    double dot = 0.0;
    if (valid && !clamped)
      for (i64 c = lane; c < C; c += lanes) dot += static_cast<double>(yr[c]) * gr[c];
    dot = group_sum(dot, lanes);
    if (!valid) continue;
    float* __restrict__ dr = dx + r * C;
    const float d = static_cast<float>(dot);
    for (i64 c = lane; c < C; c += lanes) dr[c] = clamped ? 0.0f : (gr[c] - d * yr[c]) / n;
  }
}

// Threads per row: the smallest power of two >= C, at most a warp.
int lanes_for(i64 C) {
  int lanes = 1;
  while (lanes < 32 && lanes < C) lanes *= 2;
  return lanes;
}
}  // namespace

void normalize_rows_forward(const float* x, float* y, float* norms, std::int64_t rows, std::int64_t C,
                            float eps) {
  if (rows == 0 || C == 0) return;
  const int lanes = lanes_for(C);
  normalize_forward_kernel<<<grid_for(rows * lanes), kThreads, 0, stream()>>>(x, y, norms, rows, C, eps,
                                                                              lanes);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void normalize_rows_backward(const float* grad_y, const float* y, const float* norms, float* grad_x,
                             std::int64_t rows, std::int64_t C, float eps) {
  if (rows == 0 || C == 0) return;
  const int lanes = lanes_for(C);
  normalize_backward_kernel<<<grid_for(rows * lanes), kThreads, 0, stream()>>>(grad_y, y, norms, grad_x, rows,
                                                                               C, eps, lanes);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
