// Error checks for CUDA, cuDNN and cuBLAS calls. Each failure throws zsq::Error naming the status,
// the call and its file and line, so a bad launch or a library refusal reads like any other zsq error
// instead of a silent wrong answer. CUDA-only header: include it from .cu files and ops/cuda/*.cpp.
// It does not include fmt: nvcc's front end rejects fmt 9's headers, so .cu files see only these
// declarations and the formatting happens in check.cpp (host compiler).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

namespace zsq::cuda {
[[noreturn]] void raise_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void raise_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line);
[[noreturn]] void raise_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);
// Throws zsq::Error with `message` (for argument checks inside .cu files).
[[noreturn]] void raise_error(const char* message);
}  // namespace zsq::cuda

#define ZSQ_CUDA_CHECK(call)                                             \
  do {                                                                   \
    const cudaError_t status_ = (call);                                  \
    if (status_ != cudaSuccess) [[unlikely]]                             \
      ::zsq::cuda::raise_cuda_error(status_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad configuration (too many threads, too much shared memory) is only
// reported through cudaGetLastError.
#define ZSQ_CUDA_LAUNCH_CHECK() ZSQ_CUDA_CHECK(cudaGetLastError())

#define ZSQ_CUDNN_CHECK(call)                                             \
  do {                                                                    \
    const cudnnStatus_t status_ = (call);                                 \
    if (status_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                     \
      ::zsq::cuda::raise_cudnn_error(status_, #call, __FILE__, __LINE__); \
  } while (0)

#define ZSQ_CUBLAS_CHECK(call)                                             \
  do {                                                                     \
    const cublasStatus_t status_ = (call);                                 \
    if (status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                     \
      ::zsq::cuda::raise_cublas_error(status_, #call, __FILE__, __LINE__); \
  } while (0)
