#include "engine/device.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/check.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq {

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text.rfind("cuda", 0) == 0) {
    if (text.size() == 4) return Device::cuda(0);
    if (text[4] == ':') {
      try {
        return Device::cuda(std::stoi(text.substr(5)));
      } catch (const std::exception&) {
      }
    }
  }
  fail(fmt::format("unknown device '{}': expected cpu, cuda or cuda:N", text));
}

void* device_alloc(std::size_t bytes, Device device) {
  if (device.is_cuda()) return cuda::alloc(bytes, device.index);
  std::size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* ptr = std::aligned_alloc(64, rounded);
  if (ptr == nullptr) fail(fmt::format("out of host memory allocating {} bytes", bytes));
  return ptr;
}

void device_free(void* ptr, Device device) {
  if (ptr == nullptr) return;
  if (device.is_cuda()) {
    cuda::free(ptr, device.index);
    return;
  }
  std::free(ptr);
}

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  cuda::copy(dst, dst_device.is_cuda(), src, src_device.is_cuda(), bytes);
}

bool cuda_available() { return cuda::device_count() > 0; }

}  // namespace zsq
