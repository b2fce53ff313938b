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
void* alloc(std::size_t, int) {
  built_without_cuda();
}
void free(void*, int) {
  built_without_cuda();
}
void copy(void*, bool, const void*, bool, std::size_t) {
  built_without_cuda();
}

}  // namespace zsq::cuda
