// Kernels behind the engine core's CUDA entries (cuda_runtime_api.h): fills, NCHW <-> NHWC
// permutation, gradient accumulation and the optimizer updates. All are memory-bound grid-stride loops
// on zsq's stream; the optimizer arithmetic is the CPU loop's, line for line, so a CUDA run follows the
// same trajectory up to rounding.
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::cuda {

namespace {
__global__ void fill_kernel(float* dst, std::int64_t n, float value) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = value;
}

struct Dims4 {
  std::int64_t shape[4];
  std::int64_t src[4];
  std::int64_t dst[4];
};

// One thread per destination element, walked in the destination's memory order so the writes are
// coalesced (the reads are strided; one side always is).
template <typename T>
__global__ void permute4_kernel(const T* __restrict__ src, T* __restrict__ dst, Dims4 d, std::int64_t n) {
  // Destination order: the dimension with stride 1 is innermost. Decompose the linear destination
  // index by sorting dims by descending destination stride (done on the host into order[]).
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t rest = i, src_off = 0, dst_off = 0;
    // d.shape/src/dst are given in destination memory order (outermost first).
    for (int k = 3; k >= 0; --k) {
      const std::int64_t idx = rest % d.shape[k];
      rest /= d.shape[k];
      src_off += idx * d.src[k];
      dst_off += idx * d.dst[k];
    }
    dst[dst_off] = src[src_off];
  }
}

__global__ void add_kernel(const float* a, const float* b, float* out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void sgd_plain_kernel(float* __restrict__ w, const float* __restrict__ g, std::int64_t n, float lr,
                                 float wd) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    w[i] -= lr * (g[i] + wd * w[i]);
}

__global__ void sgd_momentum_kernel(float* __restrict__ w, const float* __restrict__ g,
                                    float* __restrict__ buf, std::int64_t n, float lr, float mu, float damp,
                                    float wd, bool nesterov, bool first) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] + wd * w[i];
    const float b = first ? gi : mu * buf[i] + (1.0f - damp) * gi;
    buf[i] = b;
    w[i] -= lr * (nesterov ? gi + mu * b : b);
  }
}

__global__ void adam_kernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, std::int64_t n, float step_size, float b1, float b2,
                            float eps, float wd, float sqrt_c2) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] + wd * w[i];
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] -= step_size * mi / (sqrtf(vi) / sqrt_c2 + eps);
  }
}
}  // namespace

void fill_f32(float* dst, std::int64_t n, float value) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n), kThreads, 0, stream()>>>(dst, n, value);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void fill_bytes(void* dst, std::size_t bytes, unsigned char value) {
  if (bytes == 0) return;
  ZSQ_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream()));
}

void permute4(const void* src, const std::int64_t src_strides[4], void* dst,
              const std::int64_t dst_strides[4], const std::int64_t shape[4], int elem_size) {
  const std::int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
  if (n == 0) return;
  // Order the logical dims by descending destination stride so that consecutive threads write
  // consecutive destination elements.
  int order[4] = {0, 1, 2, 3};
  for (int a = 0; a < 4; ++a)
    for (int b = a + 1; b < 4; ++b)
      if (dst_strides[order[b]] > dst_strides[order[a]]) {
        const int t = order[a];
        order[a] = order[b];
        order[b] = t;
      }
  Dims4 d{};
  for (int k = 0; k < 4; ++k) {
    d.shape[k] = shape[order[k]];
    d.src[k] = src_strides[order[k]];
    d.dst[k] = dst_strides[order[k]];
  }
  if (elem_size == 4)
    permute4_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<const std::uint32_t*>(src),
                                                            static_cast<std::uint32_t*>(dst), d, n);
  else if (elem_size == 1)
    permute4_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<const std::uint8_t*>(src),
                                                            static_cast<std::uint8_t*>(dst), d, n);
  else
    raise_error("permute4: element size must be 1 or 4");
  ZSQ_CUDA_LAUNCH_CHECK();
}

void add_f32(const float* a, const float* b, float* out, std::int64_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, n);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void sgd_step(float* w, const float* g, float* momentum_buffer, std::int64_t n, float lr, float momentum,
              float dampening, float weight_decay, bool nesterov, bool first_step) {
  if (n == 0) return;
  if (momentum == 0.0f)
    sgd_plain_kernel<<<grid_for(n), kThreads, 0, stream()>>>(w, g, n, lr, weight_decay);
  else
    sgd_momentum_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
        w, g, momentum_buffer, n, lr, momentum, dampening, weight_decay, nesterov, first_step);
  ZSQ_CUDA_LAUNCH_CHECK();
}

void adam_step(float* w, const float* g, float* m, float* v, std::int64_t n, float step_size, float beta1,
               float beta2, float eps, float weight_decay, float sqrt_c2) {
  if (n == 0) return;
  adam_kernel<<<grid_for(n), kThreads, 0, stream()>>>(w, g, m, v, n, step_size, beta1, beta2, eps,
                                                      weight_decay, sqrt_c2);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace zsq::cuda
