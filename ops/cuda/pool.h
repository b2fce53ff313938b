// Launchers for the pooling and resampling kernels behind ops/pool.cpp (plain C++: no CUDA types).
// Every tensor is f32 (argmax s32) in the memory format `channels_last` names: NCHW when false, NHWC
// when true. Global results are [N, C, 1, 1], which read the same in both formats. Semantics follow the
// CPU path: max pooling keeps the first maximum of each window (row-major window order), average
// pooling divides by the number of in-bounds elements (count_include_pad = false), and every backward
// writes its whole output (gathers, no atomics, deterministic).
#pragma once
#include <cstdint>

namespace zsq::cuda {

// Global pooling over S = H * W positions of each (n, c). argmax[n * C + c] is the position s of the
// first maximum; argmax may be null when no backward pass will need it.
void global_avg_pool_forward(const float* x, float* out, std::int64_t N, std::int64_t C, std::int64_t S,
                             bool channels_last);
void global_max_pool_forward(const float* x, float* out, std::int32_t* argmax, std::int64_t N, std::int64_t C,
                             std::int64_t S, bool channels_last);
// grad_x[n, c, s] = grad_out[n, c] / S.
void global_avg_pool_backward(const float* grad_out, float* grad_x, std::int64_t N, std::int64_t C,
                              std::int64_t S, bool channels_last);
// grad_x[n, c, s] = s == argmax[n, c] ? grad_out[n, c] : 0.
void global_max_pool_backward(const float* grad_out, const std::int32_t* argmax, float* grad_x,
                              std::int64_t N, std::int64_t C, std::int64_t S, bool channels_last);

// Windowed pooling geometry (floor-mode output size; the caller has checked padding < kernel).
struct PoolGeometry {
  std::int64_t N, C, H, W, OH, OW;
  std::int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  bool channels_last;
};
// out: [N, C, OH, OW]. For max pooling, argmax (same element order as out) receives ih * W + iw of
// each window's first maximum; null when no backward pass will need it.
void pool2d_forward(const float* x, float* out, std::int32_t* argmax, const PoolGeometry& g, bool max);
// grad_out: [N, C, OH, OW], grad_x: [N, C, H, W]; argmax is required for max pooling.
void pool2d_backward(const float* grad_out, const std::int32_t* argmax, float* grad_x, const PoolGeometry& g,
                     bool max);

// x: [N, C, H, W] -> out: [N, C, 2H, 2W], and the backward sum of each 2x2 block.
void upsample_nearest2x_forward(const float* x, float* out, std::int64_t N, std::int64_t C, std::int64_t H,
                                std::int64_t W, bool channels_last);
void upsample_nearest2x_backward(const float* grad_out, float* grad_x, std::int64_t N, std::int64_t C,
                                 std::int64_t H, std::int64_t W, bool channels_last);

}  // namespace zsq::cuda
