// Kernels around the cuDNN convolution and batch-norm calls (see conv_bn_kernels.h). All are
// memory-bound grid-stride loops; the element-wise ones move float4 when the pointers are 16-byte
// aligned and four consecutive elements share a row (so their channels are known without a division
// per element), with a scalar loop for the rest.
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/conv_bn_kernels.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/scratch.h"

namespace zsq::cuda {

namespace {

bool aligned16(const void* p) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

__device__ __forceinline__ std::int64_t global_thread() {
  return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_threads() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

// ---- convolution epilogue ----

__global__ void conv_epilogue_kernel(float* __restrict__ out, const float* __restrict__ bias,
                                     const float* __restrict__ residual, std::int64_t n,
                                     std::int64_t channels, bool relu) {
  for (std::int64_t i = global_thread(); i < n; i += grid_threads()) {
    float v = out[i];
    if (bias != nullptr) v += bias[i % channels];
    if (residual != nullptr) v += residual[i];
    out[i] = relu ? fmaxf(v, 0.0f) : v;
  }
}

// NCHW: element i belongs to channel (i / plane) % channels.
__global__ void conv_epilogue_nchw_kernel(float* __restrict__ out, const float* __restrict__ bias,
                                          const float* __restrict__ residual, std::int64_t n,
                                          std::int64_t plane, std::int64_t channels, bool relu) {
  for (std::int64_t i = global_thread(); i < n; i += grid_threads()) {
    float v = out[i];
    if (bias != nullptr) v += bias[(i / plane) % channels];
    if (residual != nullptr) v += residual[i];
    out[i] = relu ? fmaxf(v, 0.0f) : v;
  }
}

// channels % 4 == 0: the four elements of a vector are channels c..c+3 of one row.
__global__ void conv_epilogue_vec4_kernel(float4* __restrict__ out, const float* __restrict__ bias,
                                          const float4* __restrict__ residual, std::int64_t n4,
                                          std::int64_t channels, bool relu) {
  for (std::int64_t k = global_thread(); k < n4; k += grid_threads()) {
    float4 v = out[k];
    if (bias != nullptr) {
      const std::int64_t c = (4 * k) % channels;
      v.x += bias[c];
      v.y += bias[c + 1];
      v.z += bias[c + 2];
      v.w += bias[c + 3];
    }
    if (residual != nullptr) {
      const float4 r = residual[k];
      v.x += r.x;
      v.y += r.y;
      v.z += r.z;
      v.w += r.w;
    }
    if (relu) {
      v.x = fmaxf(v.x, 0.0f);
      v.y = fmaxf(v.y, 0.0f);
      v.z = fmaxf(v.z, 0.0f);
      v.w = fmaxf(v.w, 0.0f);
    }
    out[k] = v;
  }
}

// ---- ReLU and its mask ----

// Vector body over the first n4 * 4 elements, scalar tail (fewer than four) after it.
__global__ void relu_kernel(float* __restrict__ y, std::int64_t n, bool vectorized) {
  std::int64_t start = 0;
  if (vectorized) {
    const std::int64_t n4 = n / 4;
    float4* y4 = reinterpret_cast<float4*>(y);
    for (std::int64_t k = global_thread(); k < n4; k += grid_threads()) {
      float4 v = y4[k];
      v.x = fmaxf(v.x, 0.0f);
      v.y = fmaxf(v.y, 0.0f);
      v.z = fmaxf(v.z, 0.0f);
      v.w = fmaxf(v.w, 0.0f);
      y4[k] = v;
    }
    start = n4 * 4;
  }
  for (std::int64_t i = start + global_thread(); i < n; i += grid_threads()) y[i] = fmaxf(y[i], 0.0f);
}

__device__ __forceinline__ float masked(float g, float y) {
  return y > 0.0f ? g : 0.0f;
}

__global__ void relu_mask_kernel(const float* grad, const float* __restrict__ y, float* dst, std::int64_t n,
                                 bool vectorized) {
  std::int64_t start = 0;
  if (vectorized) {
    const std::int64_t n4 = n / 4;
    const float4* g4 = reinterpret_cast<const float4*>(grad);
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* d4 = reinterpret_cast<float4*>(dst);
    for (std::int64_t k = global_thread(); k < n4; k += grid_threads()) {
      const float4 g = g4[k];
      const float4 v = y4[k];
      d4[k] = make_float4(masked(g.x, v.x), masked(g.y, v.y), masked(g.z, v.z), masked(g.w, v.w));
    }
    start = n4 * 4;
  }
  for (std::int64_t i = start + global_thread(); i < n; i += grid_threads()) dst[i] = masked(grad[i], y[i]);
}

// ---- eval-mode batch-norm backward ----

__device__ __forceinline__ float bn_scale(const float* gamma, const float* var, float eps, std::int64_t c) {
  return (gamma != nullptr ? gamma[c] : 1.0f) / sqrtf(var[c] + eps);
}

__global__ void bn_eval_dx_kernel(const float* __restrict__ grad, const float* __restrict__ relu_output,
                                  const float* __restrict__ gamma, const float* __restrict__ var, float eps,
                                  float* __restrict__ dx, std::int64_t n, std::int64_t channels,
                                  std::int64_t inner) {
  for (std::int64_t i = global_thread(); i < n; i += grid_threads()) {
    const std::int64_t c = (i / inner) % channels;
    const float g = relu_output != nullptr ? masked(grad[i], relu_output[i]) : grad[i];
    dx[i] = g * bn_scale(gamma, var, eps, c);
  }
}

// Four consecutive elements: channels c..c+3 of one row (channels-last, channels % 4 == 0) or all of
// channel c (contiguous, spatial % 4 == 0).
__global__ void bn_eval_dx_vec4_kernel(const float4* __restrict__ grad,
                                       const float4* __restrict__ relu_output,
                                       const float* __restrict__ gamma, const float* __restrict__ var,
                                       float eps, float4* __restrict__ dx, std::int64_t n4,
                                       std::int64_t channels, std::int64_t inner) {
  for (std::int64_t k = global_thread(); k < n4; k += grid_threads()) {
    float4 g = grad[k];
    if (relu_output != nullptr) {
      const float4 y = relu_output[k];
      g = make_float4(masked(g.x, y.x), masked(g.y, y.y), masked(g.z, y.z), masked(g.w, y.w));
    }
    const std::int64_t c = (4 * k / inner) % channels;
    float4 s;
    if (inner == 1) {
      s = make_float4(bn_scale(gamma, var, eps, c), bn_scale(gamma, var, eps, c + 1),
                      bn_scale(gamma, var, eps, c + 2), bn_scale(gamma, var, eps, c + 3));
    } else {
      const float one = bn_scale(gamma, var, eps, c);
      s = make_float4(one, one, one, one);
    }
    dx[k] = make_float4(g.x * s.x, g.y * s.y, g.z * s.z, g.w * s.w);
  }
}

constexpr int kTileChannels = 32;  // channels-last reduction: one warp spans 32 adjacent channels
constexpr int kTileRows = 8;

// Channels-last [rows, channels]: block (32, 8) covers 32 channels; its rows are blockIdx.y, +gridDim.y
// ... (times 8). Writes partial sums of g' and g' * (x - mean) per (blockIdx.y, channel).
__global__ void bn_params_rows_kernel(const float* __restrict__ grad, const float* __restrict__ relu_output,
                                      const float* __restrict__ x, const float* __restrict__ mean,
                                      std::int64_t rows, std::int64_t channels, float* __restrict__ partial_g,
                                      float* __restrict__ partial_gx) {
  __shared__ float shared_g[kTileRows][kTileChannels + 1];
  __shared__ float shared_gx[kTileRows][kTileChannels + 1];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kTileChannels + threadIdx.x;
  float sum_g = 0.0f, sum_gx = 0.0f;
  if (c < channels) {
    const float m = mean[c];
    for (std::int64_t r = static_cast<std::int64_t>(blockIdx.y) * kTileRows + threadIdx.y; r < rows;
         r += static_cast<std::int64_t>(gridDim.y) * kTileRows) {
      const std::int64_t i = r * channels + c;
      const float g = relu_output != nullptr ? masked(grad[i], relu_output[i]) : grad[i];
      sum_g += g;
      sum_gx += g * (x[i] - m);
    }
  }
  shared_g[threadIdx.y][threadIdx.x] = sum_g;
  shared_gx[threadIdx.y][threadIdx.x] = sum_gx;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int k = 1; k < kTileRows; ++k) {
      sum_g += shared_g[k][threadIdx.x];
      sum_gx += shared_gx[k][threadIdx.x];
    }
    partial_g[blockIdx.y * channels + c] = sum_g;
    partial_gx[blockIdx.y * channels + c] = sum_gx;
  }
}

constexpr int kPlaneThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Contiguous [n, channels, spatial]: block blockIdx.x = channel walks that channel's n * spatial
// values (runs of `spatial` contiguous floats), split over gridDim.y blocks.
__global__ void bn_params_planes_kernel(const float* __restrict__ grad, const float* __restrict__ relu_output,
                                        const float* __restrict__ x, const float* __restrict__ mean,
                                        std::int64_t n, std::int64_t channels, std::int64_t spatial,
                                        float* __restrict__ partial_g, float* __restrict__ partial_gx) {
  __shared__ float shared_g[kPlaneThreads / 32];
  __shared__ float shared_gx[kPlaneThreads / 32];
  const std::int64_t c = blockIdx.x;
  const std::int64_t count = n * spatial;
  const float m = mean[c];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.y) * blockDim.x) {
    const std::int64_t b = j / spatial;
    const std::int64_t i = (b * channels + c) * spatial + (j - b * spatial);
    const float g = relu_output != nullptr ? masked(grad[i], relu_output[i]) : grad[i];
    sum_g += g;
    sum_gx += g * (x[i] - m);
  }
  sum_g = warp_sum(sum_g);
  sum_gx = warp_sum(sum_gx);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared_g[warp] = sum_g;
    shared_gx[warp] = sum_gx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < kPlaneThreads / 32; ++k) {
      sum_g += shared_g[k];
      sum_gx += shared_gx[k];
    }
    partial_g[blockIdx.y * channels + c] = sum_g;
    partial_gx[blockIdx.y * channels + c] = sum_gx;
  }
}

// One thread per channel sums its `parts` partials (coalesced across channels).
__global__ void bn_params_finish_kernel(const float* __restrict__ partial_g,
                                        const float* __restrict__ partial_gx, std::int64_t parts,
                                        std::int64_t channels, const float* __restrict__ var, float eps,
                                        float* __restrict__ dgamma, float* __restrict__ dbeta) {
  for (std::int64_t c = global_thread(); c < channels; c += grid_threads()) {
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (std::int64_t p = 0; p < parts; ++p) {
      sum_g += partial_g[p * channels + c];
      sum_gx += partial_gx[p * channels + c];
    }
    if (dbeta != nullptr) dbeta[c] = sum_g;
    if (dgamma != nullptr) dgamma[c] = sum_gx / sqrtf(var[c] + eps);
  }
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}
std::int64_t clamp64(std::int64_t v, std::int64_t lo, std::int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

}  // namespace

void conv_epilogue_channels_last(float* out, const float* bias, const float* residual, std::int64_t rows,
                                 std::int64_t channels, bool relu) {
  const std::int64_t n = rows * channels;
  if (n == 0 || (bias == nullptr && residual == nullptr && !relu)) return;
  if (channels % 4 == 0 && aligned16(out) && aligned16(residual)) {
    const std::int64_t n4 = n / 4;
    conv_epilogue_vec4_kernel<<<grid_for(n4), kThreads, 0, stream()>>>(
        reinterpret_cast<float4*>(out), bias, reinterpret_cast<const float4*>(residual), n4, channels, relu);
  } else {
    conv_epilogue_kernel<<<grid_for(n), kThreads, 0, stream()>>>(out, bias, residual, n, channels, relu);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

void conv_epilogue_nchw(float* out, const float* bias, const float* residual, std::int64_t n,
                        std::int64_t plane, std::int64_t channels, bool relu) {
  if (n == 0 || (bias == nullptr && residual == nullptr && !relu)) return;
  conv_epilogue_nchw_kernel<<<grid_for(n), kThreads, 0, stream()>>>(out, bias, residual, n, plane, channels,
                                                                    relu);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void relu_inplace(float* y, std::int64_t n) {
  if (n == 0) return;
  const bool vectorized = aligned16(y);
  relu_kernel<<<grid_for(vectorized ? (n + 3) / 4 : n), kThreads, 0, stream()>>>(y, n, vectorized);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void relu_mask(const float* grad, const float* y, float* dst, std::int64_t n) {
  if (n == 0) return;
  const bool vectorized = aligned16(grad) && aligned16(y) && aligned16(dst);
  relu_mask_kernel<<<grid_for(vectorized ? (n + 3) / 4 : n), kThreads, 0, stream()>>>(grad, y, dst, n,
                                                                                      vectorized);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void batch_norm_eval_backward_data(const float* grad, const float* relu_output, const float* gamma,
                                   const float* var, float eps, float* dx, const ChannelLayout& layout) {
  const std::int64_t n = layout.numel();
  if (n == 0) return;
  const std::int64_t inner = layout.inner();
  const bool rows_of_four = inner == 1 ? layout.channels % 4 == 0 : inner % 4 == 0;
  if (rows_of_four && aligned16(grad) && aligned16(relu_output) && aligned16(dx)) {
    const std::int64_t n4 = n / 4;  // n is a multiple of channels (or of spatial), so of 4
    bn_eval_dx_vec4_kernel<<<grid_for(n4), kThreads, 0, stream()>>>(
        reinterpret_cast<const float4*>(grad), reinterpret_cast<const float4*>(relu_output), gamma, var, eps,
        reinterpret_cast<float4*>(dx), n4, layout.channels, inner);
  } else {
    bn_eval_dx_kernel<<<grid_for(n), kThreads, 0, stream()>>>(grad, relu_output, gamma, var, eps, dx, n,
                                                              layout.channels, inner);
  }
  ZSQ_CUDA_LAUNCH_CHECK();
}

void batch_norm_eval_backward_params(const float* grad, const float* relu_output, const float* x,
                                     const float* mean, const float* var, float eps, float* dgamma,
                                     float* dbeta, const ChannelLayout& layout) {
  const std::int64_t C = layout.channels;
  if (C == 0) return;
  // Enough blocks to fill the chip a few times over; each partial covers at least a block's worth of
  // values so the partial buffer stays small.
  const std::int64_t target_blocks = 4 * static_cast<std::int64_t>(multiprocessor_count());
  constexpr std::int64_t kMaxParts = 1024;
  if (layout.channels_last || layout.spatial == 1) {
    const std::int64_t rows = layout.n * layout.spatial;
    const std::int64_t tiles = ceil_div(C, kTileChannels);
    const std::int64_t parts =
        clamp64(ceil_div(target_blocks, tiles), 1, clamp64(ceil_div(rows, kTileRows), 1, kMaxParts));
    Scratch partials(static_cast<std::size_t>(2 * parts * C) * sizeof(float));
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(parts));
    const dim3 block(kTileChannels, kTileRows);
    bn_params_rows_kernel<<<grid, block, 0, stream()>>>(
        grad, relu_output, x, mean, rows, C, partials.as<float>(), partials.as<float>() + parts * C);
    ZSQ_CUDA_LAUNCH_CHECK();
    bn_params_finish_kernel<<<grid_for(C), kThreads, 0, stream()>>>(
        partials.as<float>(), partials.as<float>() + parts * C, parts, C, var, eps, dgamma, dbeta);
    ZSQ_CUDA_LAUNCH_CHECK();
    return;
  }
  const std::int64_t count = layout.n * layout.spatial;
  const std::int64_t parts =
      clamp64(ceil_div(target_blocks, C), 1, clamp64(ceil_div(count, kPlaneThreads), 1, kMaxParts));
  Scratch partials(static_cast<std::size_t>(2 * parts * C) * sizeof(float));
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(parts));
  bn_params_planes_kernel<<<grid, kPlaneThreads, 0, stream()>>>(grad, relu_output, x, mean, layout.n, C,
                                                                layout.spatial, partials.as<float>(),
                                                                partials.as<float>() + parts * C);
  ZSQ_CUDA_LAUNCH_CHECK();
  bn_params_finish_kernel<<<grid_for(C), kThreads, 0, stream()>>>(
      partials.as<float>(), partials.as<float>() + parts * C, parts, C, var, eps, dgamma, dbeta);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
