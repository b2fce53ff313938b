// CUDA runtime entries used by the engine core: the caching allocator, copies and synchronization.
// Compiled only when the build has CUDA; errors name the call, file and line.
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/check.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::cuda {

namespace {
std::string& no_gpu_reason() {
  static std::string reason;
  return reason;
}

// Device blocks are cached by rounded size and handed out again without cudaMalloc/cudaFree: both
// synchronize the whole device, and a training step frees and reallocates the same activation sizes
// every iteration. All zsq work runs on one stream per device, so a freed block may be reused at once:
// any later use is queued after every earlier read of it. Sizes round up to 512 bytes below 1 MiB and
// to 2 MiB above (bounded waste; few distinct large sizes).
class DeviceCache {
 public:
  void* alloc(std::size_t bytes, int device) {
    const std::size_t size = round(bytes);
    std::lock_guard lock(mutex_);
    auto& bucket = free_[key(device, size)];
    void* ptr = nullptr;
    if (!bucket.empty()) {
      ptr = bucket.back();
      bucket.pop_back();
      stats_.cached -= size;
    } else {
      cudaError_t status = cudaMalloc(&ptr, size);
      if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        release_cached_locked();
        status = cudaMalloc(&ptr, size);
      }
      if (status != cudaSuccess) {
        cudaGetLastError();
        fail(fmt::format("CUDA: cannot allocate {} bytes on cuda:{} ('{}'; {} bytes in use by zsq)", bytes,
                         device, cudaGetErrorString(status), stats_.in_use));
      }
    }
    live_[ptr] = size;
    stats_.in_use += size;
    if (stats_.in_use > stats_.peak) stats_.peak = stats_.in_use;
    if (poison_) ZSQ_CUDA_CHECK(cudaMemsetAsync(ptr, 0xFF, size, stream()));
    return ptr;
  }

  void release(void* ptr, int device) {
    std::lock_guard lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) return;  // not ours: never free what we did not hand out
    const std::size_t size = it->second;
    live_.erase(it);
    stats_.in_use -= size;
    stats_.cached += size;
    free_[key(device, size)].push_back(ptr);
  }

  void empty() {
    std::lock_guard lock(mutex_);
    release_cached_locked();
  }
  MemoryStats stats() {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void set_poison(bool on) { poison_ = on; }

 private:
  static std::size_t round(std::size_t bytes) {
    constexpr std::size_t kSmall = 512, kLarge = std::size_t{2} << 20, kSplit = std::size_t{1} << 20;
    if (bytes == 0) bytes = 1;
    return bytes < kSplit ? (bytes + kSmall - 1) / kSmall * kSmall : (bytes + kLarge - 1) / kLarge * kLarge;
  }
  static std::size_t key(int device, std::size_t size) {
    return size * 16 + static_cast<std::size_t>(device);
  }

  void release_cached_locked() {
    cudaDeviceSynchronize();  // queued work may still read a cached block
    // Each block is freed on its own device; the caller's current device is restored afterwards, since
    // alloc() remembers the device it last set and skips cudaSetDevice when it is unchanged.
    int caller_device = 0;
    cudaGetDevice(&caller_device);
    for (auto& [k, blocks] : free_) {
      for (void* p : blocks) {
        cudaSetDevice(static_cast<int>(k % 16));
        cudaFree(p);
      }
      blocks.clear();
    }
    cudaSetDevice(caller_device);
    stats_.cached = 0;
  }

  std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  std::unordered_map<void*, std::size_t> live_;
  MemoryStats stats_;
  bool poison_ = false;
};

DeviceCache& cache() {
  static auto* c =
      new DeviceCache;  // never destroyed: tensors freed during static destruction still return here
  return *c;
}
}  // namespace

int device_count() {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    no_gpu_reason() = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky "no device" error so later calls start clean
    return 0;
  }
  if (n == 0) no_gpu_reason() = "no CUDA device is visible";
  return n;
}

const char* unavailable_reason() {
  if (device_count() > 0) return "";
  return no_gpu_reason().c_str();
}

void* alloc(std::size_t bytes, int device) {
  // Every op output comes through here: the device count is read once and cudaSetDevice is called only
  // when the device changes (each is a driver call, a measurable share of a small kernel's time).
  static const int count = device_count();
  thread_local int current = -1;
  ZSQ_CHECK(device < count, "--device cuda:{}: no such GPU ({} visible{}{})", device, count,
            count ? "" : ": ", count ? "" : no_gpu_reason());
  if (device != current) {
    ZSQ_CUDA_CHECK(cudaSetDevice(device));
    current = device;
  }
  return cache().alloc(bytes, device);
}

void free(void* ptr, int device) {
  cache().release(ptr, device);  // never throws from a destructor path
}

void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, std::size_t bytes) {
  if (bytes == 0) return;
  const auto kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                  : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  if (!dst_on_device && !src_on_device) {
    std::memcpy(dst, src, bytes);
    return;
  }
  ZSQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream()));
  // Host memory is pageable: the caller may reuse or free it on return, and a result read on the host
  // must be complete. Device-to-device copies stay asynchronous.
  if (!dst_on_device || !src_on_device) ZSQ_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void synchronize() {
  ZSQ_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void set_poison_allocations(bool on) {
  cache().set_poison(on);
}
MemoryStats memory_stats() {
  return cache().stats();
}
void empty_cache() {
  cache().empty();
}

}  // namespace zsq::cuda
