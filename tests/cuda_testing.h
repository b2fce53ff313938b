// Helpers for the CUDA tests (tests/test_cuda_*.cpp): every CUDA op is run on fresh random inputs
// against the CPU path on the same values, forward and backward, with the GPU allocator poisoning each
// new block (NaN bytes) so an element the kernel never writes fails the comparison. Without a GPU each
// test case prints the skip marker and returns; CTest reports the program as skipped (see
// tests/CMakeLists.txt), so CI on a CPU-only machine stays green and says why.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/device.h"
#include "engine/rng.h"
#include "engine/tensor.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq::testing {

inline bool gpu_present() {
  static const bool present = [] {
    const bool ok = cuda_available();
    if (!ok)
      std::printf("zsq-cuda-skip: no GPU (%s); CUDA tests skipped\n", cuda::unavailable_reason());
    else
      cuda::set_poison_allocations(true);
    return ok;
  }();
  return present;
}

// Returns from the current test case when no GPU is usable.
#define ZSQ_REQUIRE_GPU()                       \
  do {                                          \
    if (!::zsq::testing::gpu_present()) return; \
  } while (0)

inline const Device kGpu = Device::cuda(0);

// ||got - want|| / ||want|| over all elements (both tensors may live anywhere); infinity when got holds
// a NaN or infinity (an unwritten, poisoned element), or when the shapes differ.
inline double relative_error(const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape()) return INFINITY;
  const auto g = got.to_vector();
  const auto w = want.to_vector();
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    const double d = static_cast<double>(g[i]) - w[i];
    num += d * d;
    den += static_cast<double>(w[i]) * w[i];
  }
  if (den == 0.0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline void check_matches(const Tensor& gpu, const Tensor& cpu, double tolerance, const std::string& what) {
  REQUIRE_MESSAGE(gpu.defined(), what << ": GPU result undefined");
  REQUIRE_MESSAGE(cpu.defined(), what << ": CPU result undefined");
  CHECK_MESSAGE(gpu.device().is_cuda(), what << ": result left the GPU (" << gpu.device().str() << ")");
  CHECK_MESSAGE(gpu.shape() == cpu.shape(), what << ": shape " << gpu.str() << " vs CPU " << cpu.str());
  const double err = relative_error(gpu, cpu);
  CHECK_MESSAGE(err <= tolerance,
                what << ": relative error " << err << " > " << tolerance << " (" << gpu.str() << ")");
}

// Runs f on `inputs` (CPU tensors) and on their GPU copies; compares the outputs and, for every input
// that requires grad, the gradients under the same random upstream gradient. Inputs that do not
// require grad (labels, statistics) are copied as they are.
inline void compare_with_cpu(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             const std::vector<Tensor>& inputs, double tolerance, const std::string& what,
                             double grad_tolerance = -1.0, std::uint64_t seed = 11) {
  if (grad_tolerance < 0) grad_tolerance = tolerance;
  std::vector<Tensor> cpu_in, gpu_in;
  for (const auto& t : inputs) {
    Tensor c = t.detach().clone();
    Tensor g = t.detach().to(kGpu);
    if (t.requires_grad()) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    cpu_in.push_back(c);
    gpu_in.push_back(g);
  }
  Tensor cpu_out = f(cpu_in);
  Tensor gpu_out = f(gpu_in);
  check_matches(gpu_out, cpu_out, tolerance, what + " forward");
  if (!cpu_out.requires_grad()) return;
  REQUIRE_MESSAGE(gpu_out.requires_grad(), what << ": GPU output lost its autograd history");
  Rng rng(seed);
  Tensor upstream = randn(cpu_out.shape(), rng).to_format(cpu_out.format());
  cpu_out.backward(upstream);
  gpu_out.backward(upstream.to(kGpu));
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].requires_grad()) continue;
    REQUIRE_MESSAGE(gpu_in[k].grad().defined(), what << ": input " << k << " got no gradient on the GPU");
    check_matches(gpu_in[k].grad(), cpu_in[k].grad(), grad_tolerance,
                  what + " gradient of input " + std::to_string(k));
  }
}

// A random CPU tensor (normal, mean 0, std `scale`) in the given format.
inline Tensor random_cpu(const Shape& shape, Rng& rng, MemoryFormat format = MemoryFormat::contiguous,
                         bool requires_grad = true, float scale = 1.0f) {
  Tensor t = randn(shape, rng, 0.0f, scale).to_format(format);
  if (t.format() != format) t = t.clone();
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

}  // namespace zsq::testing
