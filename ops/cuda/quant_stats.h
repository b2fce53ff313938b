// Statistics the quantization layer (quant/) reads back from CUDA tensors: an activation's min/max
// (range observers), its histogram (the MSE observer) and the first exploded parameter (divergence
// checks). Observers keep their state on the host (their ranges feed per-tensor fake quantization as
// floats), so each of these reduces on the device and copies only its small result back: one
// synchronization per call instead of a copy of the whole tensor. Kernels in ops/cuda/quant_stats.cu.
#pragma once
#include <cstddef>
#include <cstdint>

namespace zsq::cuda {

struct MinMaxCount {
  float lo = 0.0f, hi = 0.0f;    // over the finite and infinite values (NaN skipped)
  std::uint64_t non_finite = 0;  // NaN or Inf values
};
// Min, max and non-finite count of x[0..n), n > 0 (quant/observer.cpp's tensor_min_max). Synchronizes.
MinMaxCount tensor_min_max(const float* x, std::int64_t n);

constexpr int kHistogramBins = 2048;  // quant::MseObserver::kBins
// Adds x[0..n) into a kHistogramBins-bin histogram (bin of v: the MseObserver's bin_of with span start
// lo and 1/width inv) and writes per bin the count, sum and sum of squares to host arrays of
// kHistogramBins doubles each. The counts are exact; the sums are the same values added in another
// order than the CPU's (double atomics). Synchronizes.
void histogram(const float* x, std::int64_t n, double lo, double inv, double* count, double* sum,
               double* sumsq);

// For each of `count` device arrays (ptrs[k] with sizes[k] floats): the first index whose value is NaN,
// infinite or beyond `limit` in magnitude, or -1, into the host array first[k]. One copy back.
void first_outside(const float* const* ptrs, const std::int64_t* sizes, std::size_t count, float limit,
                   std::int64_t* first);

// One float of device memory, read back (synchronizes).
float read_float(const float* ptr);

}  // namespace zsq::cuda
