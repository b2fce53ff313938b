// The few CUDA runtime entries the engine core needs. Implemented in ops/cuda/runtime.cu when the
// build has CUDA, and in ops/cuda/no_cuda.cpp (each throwing "built without CUDA") when it has not.
#pragma once
#include <cstddef>

namespace zsq::cuda {

// Number of visible GPUs; 0 when built without CUDA or when no device/driver is present.
int device_count();
void* alloc(std::size_t bytes, int device);
void free(void* ptr, int device);
void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes);

}  // namespace zsq::cuda
