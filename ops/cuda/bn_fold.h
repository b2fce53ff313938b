// Folding an eval-mode batch norm into the preceding convolution on the device (models/layers.cpp's
// ConvBnAct inference path), launcher for ops/cuda/bn_fold.cu. Plain C++, device pointers.
#pragma once
#include <cstdint>

namespace zsq::cuda {

// For output channel o (per_out weights each), scale = gamma[o] / sqrt(var[o] + eps):
//   w[o, i] = w0[o, i] * scale,  b[o] = beta[o] + (conv_bias[o] - mean[o]) * scale (conv_bias may be null)
// with the CPU loop's float operations (the bias as one FMA, as GCC contracts it).
void fold_conv_bn(const float* w0, const float* conv_bias, const float* gamma, const float* beta,
                  const float* mean, const float* var, float eps, std::int64_t out, std::int64_t per_out,
                  float* w, float* b);

}  // namespace zsq::cuda
