// Element-wise kernels: one templated grid-stride kernel per arity, instantiated per op. Memory-bound,
// so the work is in the access pattern: float4 loads and stores when every pointer is 16-byte aligned
// (fresh allocations are; a view at an odd offset falls back to the scalar loop), consecutive threads on
// consecutive elements, and a grid capped at a few waves so each thread streams several vectors.
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/elementwise.h"

namespace zsq::cuda {

namespace {
using i64 = std::int64_t;

template <UnaryOp Op>
__device__ __forceinline__ float apply_unary(float x, float p0, float p1) {
  if constexpr (Op == UnaryOp::affine) {
    return x * p0 + p1;
  } else if constexpr (Op == UnaryOp::relu) {
    return x > 0.0f ? x : 0.0f;
  } else if constexpr (Op == UnaryOp::leaky_relu) {
    return x > 0.0f ? x : x * p0;
  } else if constexpr (Op == UnaryOp::tanh) {
    return tanhf(x);
  } else if constexpr (Op == UnaryOp::sqrt) {
    return sqrtf(x);
  } else if constexpr (Op == UnaryOp::log) {
    return logf(x);
  } else {
    static_assert(Op == UnaryOp::exp);
    return expf(x);
  }
}

template <BinaryOp Op>
__device__ __forceinline__ float apply_binary(float a, float b, float p0) {
  if constexpr (Op == BinaryOp::add) {
    return a + b;
  } else if constexpr (Op == BinaryOp::sub) {
    return a - b;
  } else if constexpr (Op == BinaryOp::mul) {
    return a * b;
  } else if constexpr (Op == BinaryOp::add_relu) {
    return a + b > 0.0f ? a + b : 0.0f;
  } else if constexpr (Op == BinaryOp::relu_grad) {
    return b > 0.0f ? a : 0.0f;
  } else if constexpr (Op == BinaryOp::leaky_relu_grad) {
    return b > 0.0f ? a : a * p0;
  } else if constexpr (Op == BinaryOp::tanh_grad) {
    return a * (1.0f - b * b);
  } else if constexpr (Op == BinaryOp::sqrt_grad) {
    return a * 0.5f / b;
  } else {
    static_assert(Op == BinaryOp::div);
    return a / b;
  }
}

__device__ __forceinline__ i64 first_index() {
  return blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ i64 grid_stride() {
  return static_cast<i64>(gridDim.x) * blockDim.x;
}

// Vec4: the first n / 4 * 4 elements as float4, then the (at most 3) remaining ones one per thread.
template <UnaryOp Op, bool Vec4>
__global__ void unary_kernel(const float* __restrict__ a, float* __restrict__ out, i64 n, float p0,
                             float p1) {
  i64 done = 0;
  if constexpr (Vec4) {
    const i64 n4 = n / 4;
    const auto* a4 = reinterpret_cast<const float4*>(a);
    auto* o4 = reinterpret_cast<float4*>(out);
    for (i64 k = first_index(); k < n4; k += grid_stride()) {
      float4 v = a4[k];
      v.x = apply_unary<Op>(v.x, p0, p1);
      v.y = apply_unary<Op>(v.y, p0, p1);
      v.z = apply_unary<Op>(v.z, p0, p1);
      v.w = apply_unary<Op>(v.w, p0, p1);
      o4[k] = v;
    }
    done = n4 * 4;
  }
  for (i64 k = done + first_index(); k < n; k += grid_stride()) out[k] = apply_unary<Op>(a[k], p0, p1);
}

template <BinaryOp Op, bool Vec4>
__global__ void binary_kernel(const float* __restrict__ a, const float* __restrict__ b,
                              float* __restrict__ out, i64 n, float p0) {
  i64 done = 0;
  if constexpr (Vec4) {
    const i64 n4 = n / 4;
    const auto* a4 = reinterpret_cast<const float4*>(a);
    const auto* b4 = reinterpret_cast<const float4*>(b);
    auto* o4 = reinterpret_cast<float4*>(out);
    for (i64 k = first_index(); k < n4; k += grid_stride()) {
      const float4 x = a4[k];
      const float4 y = b4[k];
      float4 r;
      r.x = apply_binary<Op>(x.x, y.x, p0);
      r.y = apply_binary<Op>(x.y, y.y, p0);
      r.z = apply_binary<Op>(x.z, y.z, p0);
      r.w = apply_binary<Op>(x.w, y.w, p0);
      o4[k] = r;
    }
    done = n4 * 4;
  }
  for (i64 k = done + first_index(); k < n; k += grid_stride()) out[k] = apply_binary<Op>(a[k], b[k], p0);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// Threads needed: one per float4 (the tail rides on the first threads), or one per element.
i64 work_items(i64 n, bool vec4) {
  return vec4 ? (n + 3) / 4 : n;
}

template <UnaryOp Op>
void launch_unary(const float* a, float* out, i64 n, float p0, float p1) {
  const bool vec4 = aligned16(a) && aligned16(out);
  const int blocks = grid_for(work_items(n, vec4));
  if (vec4)
    unary_kernel<Op, true><<<blocks, kThreads, 0, stream()>>>(a, out, n, p0, p1);
  else
    unary_kernel<Op, false><<<blocks, kThreads, 0, stream()>>>(a, out, n, p0, p1);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <BinaryOp Op>
void launch_binary(const float* a, const float* b, float* out, i64 n, float p0) {
  const bool vec4 = aligned16(a) && aligned16(b) && aligned16(out);
  const int blocks = grid_for(work_items(n, vec4));
  if (vec4)
    binary_kernel<Op, true><<<blocks, kThreads, 0, stream()>>>(a, b, out, n, p0);
  else
    binary_kernel<Op, false><<<blocks, kThreads, 0, stream()>>>(a, b, out, n, p0);
  ZSQ_CUDA_LAUNCH_CHECK();
}
}  // namespace

void unary_f32(UnaryOp op, const float* a, float* out, std::int64_t n, float p0, float p1) {
  if (n <= 0) return;
  switch (op) {
    case UnaryOp::affine:
      return launch_unary<UnaryOp::affine>(a, out, n, p0, p1);
    case UnaryOp::relu:
      return launch_unary<UnaryOp::relu>(a, out, n, p0, p1);
    case UnaryOp::leaky_relu:
      return launch_unary<UnaryOp::leaky_relu>(a, out, n, p0, p1);
    case UnaryOp::tanh:
      return launch_unary<UnaryOp::tanh>(a, out, n, p0, p1);
    case UnaryOp::sqrt:
      return launch_unary<UnaryOp::sqrt>(a, out, n, p0, p1);
    case UnaryOp::log:
      return launch_unary<UnaryOp::log>(a, out, n, p0, p1);
    case UnaryOp::exp:
      return launch_unary<UnaryOp::exp>(a, out, n, p0, p1);
  }
  raise_error("unary_f32: unknown op");
}

void binary_f32(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, float p0) {
  if (n <= 0) return;
  switch (op) {
    case BinaryOp::add:
      return launch_binary<BinaryOp::add>(a, b, out, n, p0);
    case BinaryOp::sub:
      return launch_binary<BinaryOp::sub>(a, b, out, n, p0);
    case BinaryOp::mul:
      return launch_binary<BinaryOp::mul>(a, b, out, n, p0);
    case BinaryOp::add_relu:
      return launch_binary<BinaryOp::add_relu>(a, b, out, n, p0);
    case BinaryOp::relu_grad:
      return launch_binary<BinaryOp::relu_grad>(a, b, out, n, p0);
    case BinaryOp::leaky_relu_grad:
      return launch_binary<BinaryOp::leaky_relu_grad>(a, b, out, n, p0);
    case BinaryOp::tanh_grad:
      return launch_binary<BinaryOp::tanh_grad>(a, b, out, n, p0);
    case BinaryOp::sqrt_grad:
      return launch_binary<BinaryOp::sqrt_grad>(a, b, out, n, p0);
    case BinaryOp::div:
      return launch_binary<BinaryOp::div>(a, b, out, n, p0);
  }
  raise_error("binary_f32: unknown op");
}

}  // namespace zsq::cuda
