// Kernel behind ops/cuda/bn_fold.h: one grid-stride pass over the weights (each thread recomputes its
// channel's scale: a weight tensor is small, and this keeps the fold one launch), the first `out`
// threads also write the bias.
#include <cstdint>

#include "ops/cuda/bn_fold.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"

namespace zsq::cuda {
namespace {

__device__ __forceinline__ float bn_scale(const float* gamma, const float* var, float eps, std::int64_t o) {
  return __fdiv_rn(gamma[o], __fsqrt_rn(__fadd_rn(var[o], eps)));
}

__global__ void fold_kernel(const float* __restrict__ w0, const float* __restrict__ conv_bias,
                            const float* __restrict__ gamma, const float* __restrict__ beta,
                            const float* __restrict__ mean, const float* __restrict__ var, float eps,
                            std::int64_t out, std::int64_t per_out, float* __restrict__ w,
                            float* __restrict__ b) {
  const std::int64_t n = out * per_out;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n || i < out;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (i < n) w[i] = __fmul_rn(w0[i], bn_scale(gamma, var, eps, i / per_out));
    if (i < out) {
      const float cb = conv_bias == nullptr ? 0.0f : conv_bias[i];
      b[i] = __fmaf_rn(__fsub_rn(cb, mean[i]), bn_scale(gamma, var, eps, i), beta[i]);
    }
  }
}

}  // namespace

void fold_conv_bn(const float* w0, const float* conv_bias, const float* gamma, const float* beta,
                  const float* mean, const float* var, float eps, std::int64_t out, std::int64_t per_out,
                  float* w, float* b) {
  if (out <= 0) return;
  const std::int64_t n = out * per_out > out ? out * per_out : out;
  fold_kernel<<<grid_for(n), kThreads, 0, stream()>>>(w0, conv_bias, gamma, beta, mean, var, eps, out,
                                                      per_out, w, b);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
