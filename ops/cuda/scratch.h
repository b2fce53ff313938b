// Device memory for a kernel launcher's intermediate results (block partials, per-channel terms), from
// zsq's caching allocator for the duration of the launcher. Freeing right after the launches needs no
// synchronization: all zsq work is on one stream, so a later user of the block is queued after the
// kernels that read it. Host code; usable from .cu files (no fmt, no engine headers).
#pragma once
#include <cstddef>

#include "ops/cuda/check.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::cuda {

class Scratch {
 public:
  explicit Scratch(std::size_t bytes) {
    ZSQ_CUDA_CHECK(cudaGetDevice(&device_));
    if (bytes > 0) ptr_ = alloc(bytes, device_);
  }
  ~Scratch() {
    if (ptr_ != nullptr) free(ptr_, device_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  int device_ = 0;
  void* ptr_ = nullptr;
};

}  // namespace zsq::cuda
