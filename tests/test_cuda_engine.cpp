// The CUDA device layer against the CPU: copies and format conversion, fills, the caching allocator,
// gradient accumulation, SGD and Adam steps, Module::to, and the errors a user sees for a CUDA tensor
// reaching CPU code or tensors on two devices.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/module.h"
#include "engine/optim.h"
#include "ops/elementwise.h"
#include "tests/cuda_testing.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

TEST_CASE("cuda: round trips keep values in both memory formats and every dtype") {
  ZSQ_REQUIRE_GPU();
  Rng rng(1);
  for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
    Tensor cpu = random_cpu({3, 5, 7, 9}, rng, format, false);
    Tensor gpu = cpu.to(kGpu);
    CHECK(gpu.device() == kGpu);
    CHECK(gpu.format() == format);
    CHECK(gpu.to_vector() == cpu.to_vector());
    // Format conversion on the device (permute kernel) both ways.
    const auto other =
        format == MemoryFormat::contiguous ? MemoryFormat::channels_last : MemoryFormat::contiguous;
    Tensor converted = gpu.to_format(other);
    CHECK(converted.device() == kGpu);
    CHECK(converted.format() == other);
    CHECK(converted.to_vector() == cpu.to_vector());
    CHECK(converted.to(Device::cpu()).to_vector() == cpu.to_vector());
    // copy_from across devices and formats.
    Tensor target = Tensor::empty(cpu.shape(), DType::f32, other, kGpu);
    target.copy_from(cpu);
    CHECK(target.to_vector() == cpu.to_vector());
    Tensor host = Tensor::empty(cpu.shape(), DType::f32, other);
    host.copy_from(gpu);
    CHECK(host.to_vector() == cpu.to_vector());
  }
  Tensor bytes = Tensor::empty({2, 3, 4, 5}, DType::u8);
  for (std::int64_t i = 0; i < bytes.numel(); ++i)
    bytes.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(i * 7);
  Tensor bytes_gpu = bytes.to(kGpu).to_format(MemoryFormat::channels_last);
  CHECK(bytes_gpu.to_vector() == bytes.to_vector());
}

TEST_CASE("cuda: fill, zeros and full write every element") {
  ZSQ_REQUIRE_GPU();
  // Odd sizes: more than one grid-stride pass and a ragged tail.
  for (std::int64_t n : {1, 255, 257, 1000003}) {
    Tensor t = Tensor::full({n}, 2.5f, MemoryFormat::contiguous, kGpu);
    for (float v : t.to_vector()) REQUIRE(v == 2.5f);
    Tensor z = Tensor::zeros({n}, DType::f32, MemoryFormat::contiguous, kGpu);
    for (float v : z.to_vector()) REQUIRE(v == 0.0f);
  }
}

TEST_CASE("cuda: the caching allocator reuses freed blocks and poisons new ones in tests") {
  ZSQ_REQUIRE_GPU();
  const auto before = cuda::memory_stats();
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({1 << 20}, DType::f32, MemoryFormat::contiguous, kGpu);
    first = t.raw_data();
    CHECK(cuda::memory_stats().in_use >= before.in_use + (4u << 20));
  }
  Tensor again = Tensor::empty({1 << 20}, DType::f32, MemoryFormat::contiguous, kGpu);
  CHECK(again.raw_data() == first);  // same rounded size: the cached block comes back
  // Poisoned: every byte 0xFF, a NaN as f32, so an op that skips elements fails its comparison.
  for (float v : again.to_vector()) REQUIRE(std::isnan(v));
}

TEST_CASE("cuda: CPU code reached with a CUDA tensor fails with a message naming it") {
  ZSQ_REQUIRE_GPU();
  Tensor t = Tensor::full({4}, 1.0f, MemoryFormat::contiguous, kGpu);
  CHECK_THROWS_WITH_AS(t.f32(), doctest::Contains("is on cuda:0"), Error);
  CHECK_THROWS_WITH_AS(
      Tensor::empty({4}, DType::f32, MemoryFormat::contiguous, Device::cuda(cuda::device_count())),
      doctest::Contains("no such GPU"), Error);
}

TEST_CASE("cuda: gradients accumulate on the device") {
  ZSQ_REQUIRE_GPU();
  Rng rng(2);
  Tensor x_cpu = random_cpu({257, 3}, rng);
  Tensor x = x_cpu.detach().to(kGpu);
  x.set_requires_grad(true);
  // x used twice: the two branch gradients meet in add_gradients; two backward passes accumulate.
  for (int pass = 0; pass < 2; ++pass) {
    Tensor y = ops::add(ops::mul_scalar(x, 2.0f), ops::mul_scalar(x, 3.0f));
    y.backward(Tensor::full(y.shape(), 1.0f, MemoryFormat::contiguous, kGpu));
  }
  REQUIRE(x.grad().defined());
  CHECK(x.grad().device() == kGpu);
  for (float v : x.grad().to_vector()) REQUIRE(v == doctest::Approx(10.0f));
}

namespace {
// One parameter and its gradient, on either device.
struct ParamPair {
  Tensor cpu, gpu;
};
ParamPair make_param(const Shape& shape, Rng& rng) {
  Tensor w = randn(shape, rng);
  ParamPair p{w.clone(), w.to(kGpu)};
  p.cpu.set_requires_grad(true);
  p.gpu.set_requires_grad(true);
  return p;
}
void set_same_grad(ParamPair& p, Rng& rng) {
  Tensor g = randn(p.cpu.shape(), rng);
  p.cpu.set_grad(g.clone());
  p.gpu.set_grad(g.to(kGpu));
}
}  // namespace

TEST_CASE("cuda: SGD (momentum, Nesterov, weight decay) and Adam steps match the CPU") {
  ZSQ_REQUIRE_GPU();
  Rng rng(3);
  for (int variant = 0; variant < 3; ++variant) {
    ParamPair p = make_param({1031}, rng);
    SgdOptions o;
    o.lr = 0.05f;
    o.weight_decay = 5e-4f;
    o.momentum = variant == 0 ? 0.0f : 0.9f;
    o.nesterov = variant == 2;
    Sgd cpu({p.cpu}, o), gpu({p.gpu}, o);
    for (int step = 0; step < 4; ++step) {
      set_same_grad(p, rng);
      cpu.step();
      gpu.step();
    }
    check_matches(p.gpu, p.cpu, 1e-6, fmt::format("SGD variant {}", variant));
  }
  ParamPair p = make_param({4, 5, 3, 3}, rng);
  AdamOptions ao;
  ao.lr = 1e-3f;
  ao.weight_decay = 1e-4f;
  Adam cpu({p.cpu}, ao), gpu({p.gpu}, ao);
  for (int step = 0; step < 5; ++step) {
    set_same_grad(p, rng);
    cpu.step();
    gpu.step();
  }
  check_matches(p.gpu, p.cpu, 1e-6, "Adam");
  // Optimizer state saved from the GPU reloads onto the CPU (checkpoints are device-free).
  Adam restored({p.cpu.detach().clone()}, ao);
  restored.load_state(gpu.state());
  CHECK(restored.state().size() == gpu.state().size());
}

namespace {
struct TwoParams : Module {
  TwoParams() {
    Rng rng(5);
    w = register_parameter("w", randn({3, 4}, rng));
    b = register_buffer("b", randn({4}, rng));
  }
  Tensor forward(const Tensor& x) override { return ops::mul(x, w); }
  Tensor w, b;
};
}  // namespace

TEST_CASE("cuda: Module::to moves parameters and buffers in place and back") {
  ZSQ_REQUIRE_GPU();
  TwoParams m;
  const auto before = flat_state(m);
  Tensor handle = m.w;  // a handle taken before the move (as an optimizer holds one) follows it
  m.to(kGpu);
  CHECK(m.device() == kGpu);
  CHECK(handle.device() == kGpu);
  CHECK(m.b.device() == kGpu);
  m.to(Device::cpu());
  CHECK(m.device() == Device::cpu());
  CHECK(flat_state(m) == before);
}

TEST_CASE("cuda: an op given tensors on two devices names both") {
  ZSQ_REQUIRE_GPU();
  Tensor a = Tensor::full({3}, 1.0f);
  Tensor b = Tensor::full({3}, 1.0f, MemoryFormat::contiguous, kGpu);
  CHECK_THROWS_WITH_AS(ops::add(a, b), doctest::Contains("cuda:0"), Error);
}
