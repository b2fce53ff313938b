// The measurements behind `zsq bench kernels`: the machine's FMA and VNNI peaks, then GEMM and
// ResNet-20 convolution throughput in f32 (oneDNN), int8 (oneDNN) and int4 (zsq's own kernel), each as
// GOP/s (2 ops per multiply-add, median of timed runs after warm-up) and as a share of the matching peak.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zsq::cli {

struct KernelBenchOptions {
  bool quick = false;  // small sizes and few repeats (tests, smoke runs)
};

struct KernelRow {
  std::string group;                 // "gemm", "membound" (int4 vs int8 at small M) or "conv"
  std::string name;                  // the shape, e.g. "M=N=K=1024" or "16->32 3x3 s2 @32x32"
  std::string dtype;                 // "f32", "int8" or "int4"
  std::string impl;                  // oneDNN's impl_info_str() or the zsq kernel's name
  std::int64_t m = 0, n = 0, k = 0;  // the GEMM view (a convolution: M = batch * OH * OW, K = KH * KW * C)
  double ms = 0.0;                   // median milliseconds per call
  double gops = 0.0;                 // 2 * M * N * K / time
  double pct_peak = 0.0;             // of the FMA peak (f32) or the VNNI peak (int8, int4)
  double speedup_vs_int8 = 0.0;      // int4 rows of the membound group: int8 time / int4 time; else 0
};

struct KernelReport {
  int threads = 1;
  bool quick = false;
  double fma_gflops = 0.0, vnni_gops = 0.0;
  std::int64_t conv_batch = 0;
  std::vector<KernelRow> rows;
};

KernelReport run_kernel_bench(const KernelBenchOptions& options);

}  // namespace zsq::cli
