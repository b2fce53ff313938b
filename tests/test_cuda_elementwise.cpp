// The element-wise ops' CUDA path against the CPU: every unary and binary op forward and backward on
// fresh random inputs, in both memory formats and with operands in different formats, on odd shapes
// (ragged float4 tails, batch 1) and on a > 1M-element tensor (several grid-stride passes), plus views
// at an offset that is not 16-byte aligned (the scalar kernel) and the error for operands on two devices.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "ops/elementwise.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
using Op = std::function<Tensor(const std::vector<Tensor>&)>;

const MemoryFormat kFormats[] = {MemoryFormat::contiguous, MemoryFormat::channels_last};
const Shape kShapes[] = {{3, 5, 7, 9}, {1, 3, 1, 1}, {2, 16, 4, 4}, {1, 1, 1, 3}};
constexpr double kTol = 1e-6;

MemoryFormat other(MemoryFormat f) {
  return f == MemoryFormat::contiguous ? MemoryFormat::channels_last : MemoryFormat::contiguous;
}

std::string name_of(const std::string& op, const Shape& shape, MemoryFormat f) {
  return op + " " + shape_str(shape) + (f == MemoryFormat::channels_last ? " channels_last" : " contiguous");
}

// Random values in [0.5, 2.5): the domain of sqrt and log (and of their gradients).
Tensor positive_cpu(const Shape& shape, Rng& rng, MemoryFormat format) {
  Tensor t = rand_uniform(shape, rng, 0.5f, 2.5f).to_format(format);
  if (t.format() != format) t = t.clone();
  t.set_requires_grad(true);
  return t;
}

// A 1-D view of t's storage starting one float in: not 16-byte aligned, so the kernels take their
// scalar loop.
Tensor misaligned_view(const Tensor& t) {
  Tensor v = t.detach();
  v.impl()->offset_bytes += sizeof(float);
  v.impl()->shape = {t.numel() - 1};
  return v;
}
}  // namespace

TEST_CASE("cuda element-wise: unary ops match the CPU forward and backward in both formats") {
  ZSQ_REQUIRE_GPU();
  Rng rng(101);
  const std::pair<const char*, Op> ops_any[] = {
      {"affine_scalar", [](const auto& t) { return ops::affine_scalar(t[0], -1.75f, 0.3f); }},
      {"mul_scalar", [](const auto& t) { return ops::mul_scalar(t[0], 3.0f); }},
      {"add_scalar", [](const auto& t) { return ops::add_scalar(t[0], -0.5f); }},
      {"relu", [](const auto& t) { return ops::relu(t[0]); }},
      {"leaky_relu", [](const auto& t) { return ops::leaky_relu(t[0], 0.2f); }},
      {"leaky_relu default", [](const auto& t) { return ops::leaky_relu(t[0]); }},
      {"tanh", [](const auto& t) { return ops::tanh(t[0]); }},
      {"exp", [](const auto& t) { return ops::exp(t[0]); }},
  };
  const std::pair<const char*, Op> ops_positive[] = {
      {"sqrt", [](const auto& t) { return ops::sqrt(t[0]); }},
      {"log", [](const auto& t) { return ops::log(t[0]); }},
  };
  for (const auto& shape : kShapes)
    for (auto f : kFormats) {
      for (const auto& [name, op] : ops_any)
        compare_with_cpu(op, {random_cpu(shape, rng, f)}, kTol, name_of(name, shape, f));
      for (const auto& [name, op] : ops_positive)
        compare_with_cpu(op, {positive_cpu(shape, rng, f)}, kTol, name_of(name, shape, f));
    }
}

TEST_CASE("cuda element-wise: binary ops match the CPU with equal and with mixed operand formats") {
  ZSQ_REQUIRE_GPU();
  Rng rng(102);
  const std::pair<const char*, Op> ops_binary[] = {
      {"add", [](const auto& t) { return ops::add(t[0], t[1]); }},
      {"sub", [](const auto& t) { return ops::sub(t[0], t[1]); }},
      {"mul", [](const auto& t) { return ops::mul(t[0], t[1]); }},
      {"add_relu", [](const auto& t) { return ops::add_relu(t[0], t[1]); }},
  };
  for (const auto& shape : kShapes)
    for (auto fa : kFormats)
      for (auto fb : {fa, other(fa)})
        for (const auto& [name, op] : ops_binary) {
          const std::string what =
              name_of(name, shape, fa) + " with b " + (fb == fa ? "same format" : "other format");
          compare_with_cpu(op, {random_cpu(shape, rng, fa), random_cpu(shape, rng, fb)}, kTol, what);
        }
  // Only one operand requires a gradient: the other's slot is skipped (sub negates only when needed).
  compare_with_cpu([](const auto& t) { return ops::sub(t[0], t[1]); },
                   {random_cpu({3, 5, 7, 9}, rng, MemoryFormat::contiguous, false),
                    random_cpu({3, 5, 7, 9}, rng, MemoryFormat::channels_last)},
                   kTol, "sub, gradient for b only");
  compare_with_cpu(
      [](const auto& t) { return ops::mul(t[0], t[1]); },
      {random_cpu({3, 5, 7, 9}, rng), random_cpu({3, 5, 7, 9}, rng, MemoryFormat::contiguous, false)}, kTol,
      "mul, gradient for a only");
}

TEST_CASE("cuda element-wise: results stay on the GPU in the first operand's format") {
  ZSQ_REQUIRE_GPU();
  Rng rng(103);
  Tensor a = random_cpu({2, 3, 4, 5}, rng, MemoryFormat::channels_last, false).to(kGpu);
  Tensor b = random_cpu({2, 3, 4, 5}, rng, MemoryFormat::contiguous, false).to(kGpu);
  for (const Tensor& y : {ops::add(a, b), ops::mul(a, b), ops::add_relu(a, b), ops::relu(a), ops::exp(a)}) {
    CHECK(y.device() == kGpu);
    CHECK(y.format() == MemoryFormat::channels_last);
  }
  CHECK(ops::sub(b, a).format() == MemoryFormat::contiguous);
}

TEST_CASE("cuda element-wise: more than 1M elements, several grid-stride passes and a ragged tail") {
  ZSQ_REQUIRE_GPU();
  Rng rng(104);
  const Shape big{1, 3, 1031, 347};  // 1,073,271 elements: not a multiple of 4 or of the block
  for (auto f : kFormats) {
    compare_with_cpu([](const auto& t) { return ops::add(t[0], t[1]); },
                     {random_cpu(big, rng, f), random_cpu(big, rng, f)}, kTol, name_of("add", big, f));
    compare_with_cpu([](const auto& t) { return ops::tanh(t[0]); }, {random_cpu(big, rng, f)}, kTol,
                     name_of("tanh", big, f));
  }
  compare_with_cpu([](const auto& t) { return ops::leaky_relu(t[0], 0.1f); }, {random_cpu({1 << 21}, rng)},
                   kTol, "leaky_relu [2097152]");
}

TEST_CASE("cuda element-wise: views that are not 16-byte aligned take the scalar path") {
  ZSQ_REQUIRE_GPU();
  Rng rng(105);
  for (std::int64_t n : {2, 1001, 4099}) {
    CAPTURE(n);
    Tensor a_cpu = random_cpu({n}, rng, MemoryFormat::contiguous, false);
    Tensor b_cpu = random_cpu({n}, rng, MemoryFormat::contiguous, false);
    Tensor a = misaligned_view(a_cpu.to(kGpu)), b = misaligned_view(b_cpu.to(kGpu));
    Tensor a_ref = misaligned_view(a_cpu), b_ref = misaligned_view(b_cpu);
    check_matches(ops::mul(a, b), ops::mul(a_ref, b_ref), kTol, "mul of misaligned views");
    // One aligned operand, one not: still the scalar path for all three pointers.
    Tensor b_aligned = b.clone(), b_aligned_ref = b_ref.clone();
    check_matches(ops::add(a, b_aligned), ops::add(a_ref, b_aligned_ref), kTol, "add, one misaligned view");
    check_matches(ops::exp(a), ops::exp(a_ref), kTol, "exp of a misaligned view");
    check_matches(ops::affine_scalar(a, 2.0f, 1.0f), ops::affine_scalar(a_ref, 2.0f, 1.0f), kTol,
                  "affine_scalar of a misaligned view");
  }
}

TEST_CASE("cuda element-wise: operands on two devices are refused with a message naming both") {
  ZSQ_REQUIRE_GPU();
  Tensor cpu = Tensor::full({2, 3}, 1.0f);
  Tensor gpu = Tensor::full({2, 3}, 1.0f, MemoryFormat::contiguous, kGpu);
  for (const auto& [a, b] : {std::pair{cpu, gpu}, std::pair{gpu, cpu}}) {
    CHECK_THROWS_WITH_AS(ops::add(a, b), doctest::Contains("different devices"), Error);
    CHECK_THROWS_WITH_AS(ops::add(a, b), doctest::Contains("cuda:0"), Error);
    CHECK_THROWS_WITH_AS(ops::add(a, b), doctest::Contains("cpu"), Error);
    CHECK_THROWS_AS(ops::sub(a, b), Error);
    CHECK_THROWS_AS(ops::mul(a, b), Error);
    CHECK_THROWS_AS(ops::add_relu(a, b), Error);
  }
}
