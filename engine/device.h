// Where a tensor's bytes live. The CPU path is always present; the CUDA path is compiled only when
// ZSQ_WITH_CUDA is 1 and otherwise every CUDA entry throws "built without CUDA" (ops/cuda/no_cuda.cpp).
#pragma once
#include <cstddef>
#include <string>

namespace zsq {

enum class DeviceKind : unsigned char { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceKind::cuda, i}; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// Parses "cpu" or "cuda[:N]"; throws zsq::Error naming the bad value.
Device parse_device(const std::string& text);

// Raw allocation on a device. Host memory is 64-byte aligned so AVX-512 loads never split lines.
void* device_alloc(std::size_t bytes, Device device);
void device_free(void* ptr, Device device);
// Copies bytes between (possibly different) devices.
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes);

// True when this build has CUDA and a GPU is visible.
bool cuda_available();

}  // namespace zsq
