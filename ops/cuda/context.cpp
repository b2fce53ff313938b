#include "ops/cuda/context.h"

#include <array>
#include <mutex>

#include "engine/check.h"
#include "ops/cuda/check.h"

namespace zsq::cuda {
namespace {
struct DeviceState {
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublas_lt = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int multiprocessors = 0;
};
constexpr int kMaxDevices = 16;
std::array<DeviceState, kMaxDevices> states;
std::mutex state_mutex;

DeviceState& current() {
  int device = 0;
  ZSQ_CUDA_CHECK(cudaGetDevice(&device));
  ZSQ_CHECK(device < kMaxDevices, "cuda:{}: zsq handles at most {} GPUs", device, kMaxDevices);
  DeviceState& s = states[static_cast<std::size_t>(device)];
  if (s.stream == nullptr) {
    std::lock_guard lock(state_mutex);
    if (s.stream == nullptr) {
      cudaDeviceProp prop{};
      ZSQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
      s.multiprocessors = prop.multiProcessorCount;
      cudaStream_t stream = nullptr;
      ZSQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      s.stream = stream;
    }
  }
  return s;
}
}  // namespace

cudaStream_t stream() {
  return current().stream;
}

cudnnHandle_t cudnn() {
  DeviceState& s = current();
  if (s.cudnn == nullptr) {
    ZSQ_CUDNN_CHECK(cudnnCreate(&s.cudnn));
    ZSQ_CUDNN_CHECK(cudnnSetStream(s.cudnn, s.stream));
  }
  return s.cudnn;
}

cublasHandle_t cublas() {
  DeviceState& s = current();
  if (s.cublas == nullptr) {
    ZSQ_CUBLAS_CHECK(cublasCreate(&s.cublas));
    ZSQ_CUBLAS_CHECK(cublasSetStream(s.cublas, s.stream));
    // fp32 stays fp32: TF32 tensor cores would change results by ~1e-3 against the CPU path, which
    // is larger than the tests' tolerance and than what a user expects from an f32 engine.
    ZSQ_CUBLAS_CHECK(cublasSetMathMode(s.cublas, CUBLAS_DEFAULT_MATH));
  }
  return s.cublas;
}

cublasLtHandle_t cublas_lt() {
  DeviceState& s = current();
  if (s.cublas_lt == nullptr) ZSQ_CUBLAS_CHECK(cublasLtCreate(&s.cublas_lt));
  return s.cublas_lt;
}

void* workspace(std::size_t bytes) {
  DeviceState& s = current();
  if (bytes > s.workspace_bytes) {
    if (s.workspace != nullptr) {
      // The old block may still be read by queued work: wait before returning it.
      ZSQ_CUDA_CHECK(cudaStreamSynchronize(s.stream));
      ZSQ_CUDA_CHECK(cudaFree(s.workspace));
    }
    s.workspace = nullptr;
    s.workspace_bytes = 0;  // stays consistent if the allocation below throws
    ZSQ_CUDA_CHECK(cudaMalloc(&s.workspace, bytes));
    s.workspace_bytes = bytes;
  }
  return s.workspace;
}

int multiprocessor_count() {
  return current().multiprocessors;
}

}  // namespace zsq::cuda
