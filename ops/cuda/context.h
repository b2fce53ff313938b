// Per-device CUDA state: one stream on which every zsq kernel, copy and library call is queued (so
// ordering needs no events and freed blocks can be reused at once), and the cuDNN and cuBLAS handles
// bound to it. Created on first use for the current device (zsq uses one GPU: cuda:0 unless --device
// names another). CUDA-only header.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>

namespace zsq::cuda {

cudaStream_t stream();
cudnnHandle_t cudnn();
cublasHandle_t cublas();
cublasLtHandle_t cublas_lt();
// Scratch memory for library calls (cuDNN workspaces), grown on demand and kept: a conv's workspace is
// the same every step, and a cudaMalloc per call would synchronize the device.
void* workspace(std::size_t bytes);
// Multiprocessor count of the current device (grid sizing for grid-stride kernels).
int multiprocessor_count();

// Threads per block for simple element-wise kernels, and a grid that covers n elements with
// grid-stride loops without launching far more blocks than the chip can hold at once.
constexpr int kThreads = 256;
inline int grid_for(std::int64_t n, int threads = kThreads) {
  const std::int64_t wanted = (n + threads - 1) / threads;
  const std::int64_t cap = static_cast<std::int64_t>(multiprocessor_count()) * 32;
  return static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

}  // namespace zsq::cuda
