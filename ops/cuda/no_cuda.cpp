// Built when ZSQ_WITH_CUDA is 0: every CUDA entry fails with one clear message instead of a link error
// or a crash, so `--device cuda` on a CPU-only build tells the user what to rebuild.
#include "engine/check.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::cuda {
namespace {
[[noreturn]] void built_without_cuda() {
  fail("zsq was built without CUDA (configure with -DZSQ_WITH_CUDA=ON on a machine with the CUDA toolkit)");
}
}  // namespace

int device_count() {
  return 0;
}
const char* unavailable_reason() {
  return "zsq was built without CUDA";
}
void* alloc(std::size_t, int) {
  built_without_cuda();
}
void free(void*, int) {}
void copy(void*, bool, const void*, bool, std::size_t) {
  built_without_cuda();
}
void synchronize() {}
void set_poison_allocations(bool) {}
MemoryStats memory_stats() {
  return {};
}
void empty_cache() {}
void fill_f32(float*, std::int64_t, float) {
  built_without_cuda();
}
void fill_bytes(void*, std::size_t, unsigned char) {
  built_without_cuda();
}
void permute4(const void*, const std::int64_t[4], void*, const std::int64_t[4], const std::int64_t[4], int) {
  built_without_cuda();
}
void add_f32(const float*, const float*, float*, std::int64_t) {
  built_without_cuda();
}
void sgd_step(float*, const float*, float*, std::int64_t, float, float, float, float, bool, bool) {
  built_without_cuda();
}
void adam_step(float*, const float*, float*, float*, std::int64_t, float, float, float, float, float, float) {
  built_without_cuda();
}

}  // namespace zsq::cuda
