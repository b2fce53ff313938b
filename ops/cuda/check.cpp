// Formats the CUDA/cuDNN/cuBLAS errors raised by check.h's macros (host compiler: fmt is fine here).
#include "ops/cuda/check.h"

#include "engine/check.h"

namespace zsq::cuda {

void raise_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  fail(fmt::format("CUDA error '{}' in {} at {}:{}", cudaGetErrorString(status), call, file, line));
}

void raise_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line) {
  fail(fmt::format("cuDNN error '{}' in {} at {}:{}", cudnnGetErrorString(status), call, file, line));
}

void raise_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  fail(fmt::format("cuBLAS error '{}' ({}) in {} at {}:{}", cublasGetStatusName(status),
                   static_cast<int>(status), call, file, line));
}

void raise_error(const char* message) {
  fail(message);
}

}  // namespace zsq::cuda
