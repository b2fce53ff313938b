// Small parallel loop helpers for memory-bound CPU kernels: split contiguous ranges across OpenMP
// threads in cache-line-aligned chunks and let the compiler vectorize the body (AVX-512 via -march).
#pragma once
#include <cstdint>

namespace zsq::ops::cpu {

// Below this many elements a parallel region costs more than it saves.
constexpr std::int64_t kParallelThreshold = 1 << 15;

template <typename F>
void parallel_map1(const float* __restrict a, float* __restrict out, std::int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n > kParallelThreshold)
  for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i]);
}

template <typename F>
void parallel_map2(const float* __restrict a, const float* __restrict b, float* __restrict out,
                   std::int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n > kParallelThreshold)
  for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
}

}  // namespace zsq::ops::cpu
