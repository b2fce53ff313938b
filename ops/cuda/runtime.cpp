// CUDA runtime entries used by the engine core (device storage and copies). Compiled only when the
// build has CUDA; errors name the call, file and line.
#include <cuda_runtime.h>

#include "engine/check.h"
#include "ops/cuda/cuda_runtime_api.h"

#define ZSQ_CUDA_CHECK(call)                                                                          \
  do {                                                                                                \
    const cudaError_t status_ = (call);                                                               \
    if (status_ != cudaSuccess)                                                                       \
      ::zsq::fail(::fmt::format("CUDA error '{}' in {} at {}:{}", cudaGetErrorString(status_), #call, \
                                __FILE__, __LINE__));                                                 \
  } while (0)

namespace zsq::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error so later calls start clean
    return 0;
  }
  return n;
}

void* alloc(std::size_t bytes, int device) {
  ZSQ_CHECK(device_count() > device, "--device cuda:{}: no such GPU ({} visible)", device, device_count());
  ZSQ_CUDA_CHECK(cudaSetDevice(device));
  void* ptr = nullptr;
  ZSQ_CUDA_CHECK(cudaMalloc(&ptr, bytes == 0 ? 1 : bytes));
  return ptr;
}

void free(void* ptr, int device) {
  cudaSetDevice(device);
  cudaFree(ptr);  // never throws from a destructor path
}

void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes) {
  const auto kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                  : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  ZSQ_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

}  // namespace zsq::cuda
