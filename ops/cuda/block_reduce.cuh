// Warp and block reductions shared by the quantization kernels (fake_quant.cu, quant_stats.cu). An Op
// supplies Value, identity(), combine(a, b) and a static shfl_down(v, offset); the reduction order is
// fixed by the thread layout, so a result does not depend on timing. CUDA-only header.
#pragma once
#include <cuda_runtime.h>

#include "ops/cuda/context.h"

namespace zsq::cuda::reduce_detail {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;

template <class Op>
__device__ __forceinline__ typename Op::Value warp_reduce(const Op& op, typename Op::Value v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v = op.combine(v, Op::shfl_down(v, offset));
  return v;
}

// The block's total, valid in thread 0. Every thread of a kThreads-thread block must call it.
template <class Op>
__device__ typename Op::Value block_reduce(const Op& op, typename Op::Value v) {
  __shared__ typename Op::Value warp_totals[kWarpsPerBlock];
  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = static_cast<int>(threadIdx.x) / kWarp;
  v = warp_reduce(op, v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_reduce(op, lane < kWarpsPerBlock ? warp_totals[lane] : op.identity());
  __syncthreads();  // warp_totals may be rewritten by the block's next reduction
  return v;
}

}  // namespace zsq::cuda::reduce_detail
