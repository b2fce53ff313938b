// The CUDA entries the engine core needs (storage, copies, fills, format conversion, gradient
// accumulation, optimizer steps). Implemented in ops/cuda/runtime.cpp and engine_kernels.cu when the
// build has CUDA, and in ops/cuda/no_cuda.cpp (each throwing "built without CUDA") when it has not, so
// engine/ compiles the same either way.
#pragma once
#include <cstddef>
#include <cstdint>

namespace zsq::cuda {

// Number of visible GPUs; 0 when built without CUDA or when no device/driver is present.
int device_count();
// A one-line reason why no GPU is usable ("built without CUDA", the driver's error), for messages.
const char* unavailable_reason();
// Device memory from zsq's caching allocator (blocks are kept and reused by size; see runtime.cpp).
void* alloc(std::size_t bytes, int device);
void free(void* ptr, int device);
// Copies queued on zsq's stream; a copy to the host waits for it so the bytes are there on return.
void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes);
// Waits for all queued work on the current device.
void synchronize();
// Tests: fill every newly handed-out block with 0xFF bytes (NaN as f32) so an op that leaves part of
// its output unwritten fails the comparison with the CPU instead of passing on stale values.
void set_poison_allocations(bool on);
struct MemoryStats {
  std::size_t in_use = 0;  // bytes handed out and not yet freed
  std::size_t cached = 0;  // bytes held for reuse
  std::size_t peak = 0;    // largest in_use seen
};
MemoryStats memory_stats();
// Returns every cached block to the driver.
void empty_cache();

// Engine kernels (engine_kernels.cu).
void fill_f32(float* dst, std::int64_t n, float value);
void fill_bytes(void* dst, std::size_t bytes, unsigned char value);
// dst[sd(n,c,h,w)] = src[ss(n,c,h,w)] for 4-D shapes; strides in elements, elem_size 1 or 4.
void permute4(const void* src, const std::int64_t src_strides[4], void* dst,
              const std::int64_t dst_strides[4], const std::int64_t shape[4], int elem_size);
// out[i] = a[i] + b[i] (out may alias a).
void add_f32(const float* a, const float* b, float* out, std::int64_t n);
// SGD with momentum/Nesterov and decoupled-from-nothing (L2) weight decay, one parameter tensor; the
// same arithmetic as engine/optim.cpp's CPU loop. momentum_buffer may be null when momentum == 0.
void sgd_step(float* w, const float* g, float* momentum_buffer, std::int64_t n, float lr, float momentum,
              float dampening, float weight_decay, bool nesterov, bool first_step);
// Adam (L2 weight decay added to the gradient): the CPU loop's arithmetic, with step_size = lr / (1 -
// beta1^t) and sqrt_c2 = sqrt(1 - beta2^t) computed by the caller.
void adam_step(float* w, const float* g, float* m, float* v, std::int64_t n, float step_size, float beta1,
               float beta2, float eps, float weight_decay, float sqrt_c2);

}  // namespace zsq::cuda
