// cuBLAS linear/matmul and the blockwise attention kernels against the CPU path, forward and every
// input gradient, on fresh random inputs: odd sizes that are not multiples of the 64-row tiles, the
// head dims ZAQ's relation maps use (spatial: N = H W, D = C; channel: N = C, D = H W with scale -1),
// and the errors for operands on two devices.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
std::string dims_str(const Shape& s) {
  return shape_str(s);
}
}  // namespace

TEST_CASE("cuda: linear matches the CPU forward and gradients, with and without bias") {
  ZSQ_REQUIRE_GPU();
  Rng rng(3);
  // N x K -> M: batch 1, sizes that are not multiples of anything, a wide K, more outputs than inputs.
  const std::vector<Shape> sizes = {{1, 1, 1},     {1, 16, 10},   {7, 13, 5},  {64, 300, 10},
                                    {129, 65, 33}, {3, 1280, 10}, {33, 7, 257}};
  for (const auto& s : sizes)
    for (bool with_bias : {false, true}) {
      CAPTURE(dims_str(s));
      CAPTURE(with_bias);
      Tensor x = random_cpu({s[0], s[1]}, rng);
      Tensor w = random_cpu({s[2], s[1]}, rng, MemoryFormat::contiguous, true, 0.2f);
      std::vector<Tensor> inputs{x, w};
      if (with_bias) inputs.push_back(random_cpu({s[2]}, rng));
      compare_with_cpu(
          [&](const std::vector<Tensor>& in) {
            return ops::linear(in[0], in[1], with_bias ? in[2] : Tensor());
          },
          inputs, 1e-4, "linear");
    }
}

TEST_CASE("cuda: linear named pieces match the CPU (forward, data and weight gradients)") {
  ZSQ_REQUIRE_GPU();
  Rng rng(4);
  for (const Shape& s : std::vector<Shape>{{1, 5, 3}, {65, 31, 17}, {128, 64, 10}}) {
    CAPTURE(dims_str(s));
    Tensor x = random_cpu({s[0], s[1]}, rng, MemoryFormat::contiguous, false);
    Tensor w = random_cpu({s[2], s[1]}, rng, MemoryFormat::contiguous, false);
    Tensor b = random_cpu({s[2]}, rng, MemoryFormat::contiguous, false);
    Tensor g = random_cpu({s[0], s[2]}, rng, MemoryFormat::contiguous, false);
    check_matches(ops::linear_forward(x.to(kGpu), w.to(kGpu), b.to(kGpu)), ops::linear_forward(x, w, b), 1e-4,
                  "linear_forward");
    check_matches(ops::linear_backward_data(g.to(kGpu), w.to(kGpu)), ops::linear_backward_data(g, w), 1e-4,
                  "linear_backward_data");
    Tensor gw, gb, cgw, cgb;
    ops::linear_backward_weights(g.to(kGpu), x.to(kGpu), true, gw, gb);
    ops::linear_backward_weights(g, x, true, cgw, cgb);
    check_matches(gw, cgw, 1e-4, "linear_backward_weights weight");
    check_matches(gb, cgb, 1e-5, "linear_backward_weights bias");
    Tensor only_w, no_bias;
    ops::linear_backward_weights(g.to(kGpu), x.to(kGpu), false, only_w, no_bias);
    check_matches(only_w, cgw, 1e-4, "linear_backward_weights without bias");
    CHECK_FALSE(no_bias.defined());
  }
}

TEST_CASE("cuda: matmul matches the CPU forward and gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(5);
  for (const Shape& s : std::vector<Shape>{{1, 1, 1}, {5, 7, 3}, {64, 64, 64}, {130, 17, 65}, {2, 513, 3}}) {
    CAPTURE(dims_str(s));
    compare_with_cpu([](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); },
                     {random_cpu({s[0], s[1]}, rng), random_cpu({s[1], s[2]}, rng)}, 1e-4, "matmul");
  }
}

TEST_CASE("cuda: linear and matmul refuse operands on different devices") {
  ZSQ_REQUIRE_GPU();
  Rng rng(6);
  Tensor x = random_cpu({4, 8}, rng, MemoryFormat::contiguous, false);
  Tensor w = random_cpu({3, 8}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_cpu({3}, rng, MemoryFormat::contiguous, false);
  CHECK_THROWS_AS(ops::linear(x.to(kGpu), w, b), Error);
  CHECK_THROWS_AS(ops::linear(x, w.to(kGpu), b), Error);
  CHECK_THROWS_AS(ops::linear(x.to(kGpu), w.to(kGpu), b), Error);
  CHECK_THROWS_AS(ops::matmul(x.to(kGpu), random_cpu({8, 2}, rng, MemoryFormat::contiguous, false)), Error);
  Tensor gw, gb;
  CHECK_THROWS_AS(ops::linear_backward_weights(random_cpu({4, 3}, rng).to(kGpu), x, true, gw, gb), Error);
  std::string message;
  try {
    ops::linear(x.to(kGpu), w, Tensor());
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK_MESSAGE(message.find("different devices") != std::string::npos, message);
  CHECK_MESSAGE(message.find("cuda:0") != std::string::npos, message);
}

namespace {
struct AttentionCase {
  std::int64_t B, Nq, Nk, D, Dv;
  float scale;
};
// Odd sizes around the 64-row tiles, Nq != Nk, D != Dv, widths above 64 (chunked over blocks), batch 1,
// scale != 1 and negative, and ZAQ's shapes: spatial relation of ResNet-20's stages (N = 1024, 256, 64;
// D = 16, 32, 64) and of MobileNetV2's head (N = 16, D = 1280); channel relation (scale -1) of the same.
const std::vector<AttentionCase> kAttentionCases = {
    {1, 1, 1, 1, 1, 1.0f},          {2, 7, 7, 3, 3, 1.0f},          {1, 65, 65, 16, 16, 0.25f},
    {2, 300, 300, 16, 16, 1.0f},    {1, 7, 65, 64, 64, 0.125f},     {2, 65, 300, 3, 5, 1.0f},
    {1, 300, 7, 1, 16, 2.0f},       {3, 129, 257, 64, 17, 0.1f},    {1, 1, 300, 16, 1, 1.0f},
    {5, 33, 129, 7, 33, 0.3f},      {1, 200, 130, 16, 80, -0.5f},   {2, 70, 10, 33, 130, 0.3f},
    {2, 1024, 1024, 16, 16, 1.0f},  {2, 256, 256, 32, 32, 1.0f},    {2, 64, 64, 64, 64, 1.0f},
    {2, 16, 16, 1280, 1280, 1.0f},  {2, 16, 16, 1024, 1024, -1.0f}, {2, 64, 64, 64, 64, -1.0f},
    {1, 1280, 1280, 16, 16, -1.0f}, {3, 24, 24, 256, 256, -1.0f},
};

// Random rows with norm about 2, so softmax is neither uniform nor one-hot whatever D is (ZAQ feeds
// unit-norm rows).
Tensor attention_input(const Shape& shape, Rng& rng) {
  return random_cpu(shape, rng, MemoryFormat::contiguous, true,
                    2.0f / std::sqrt(static_cast<float>(shape[2])));
}
}  // namespace

TEST_CASE("cuda: attention matches the CPU blockwise path, forward and gradients of q, k and v") {
  ZSQ_REQUIRE_GPU();
  Rng rng(7);
  for (const auto& c : kAttentionCases) {
    CAPTURE(dims_str({c.B, c.Nq, c.Nk, c.D, c.Dv}));
    CAPTURE(c.scale);
    compare_with_cpu(
        [&](const std::vector<Tensor>& in) { return ops::attention(in[0], in[1], in[2], c.scale); },
        {attention_input({c.B, c.Nq, c.D}, rng), attention_input({c.B, c.Nk, c.D}, rng),
         attention_input({c.B, c.Nk, c.Dv}, rng)},
        1e-4, "attention");
  }
}

TEST_CASE("cuda: self-attention (q = k = v, as ZAQ calls it) sums the three gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(8);
  for (const auto& c : std::vector<AttentionCase>{
           {2, 100, 100, 16, 16, 1.0f}, {2, 32, 32, 64, 64, -1.0f}, {1, 65, 65, 200, 200, -1.0f}}) {
    CAPTURE(dims_str({c.B, c.Nq, c.D}));
    compare_with_cpu(
        [&](const std::vector<Tensor>& in) { return ops::attention(in[0], in[0], in[0], c.scale); },
        {attention_input({c.B, c.Nq, c.D}, rng)}, 1e-4, "self-attention");
  }
}

TEST_CASE("cuda: attention named pieces: logsumexp and each subset of the gradients") {
  ZSQ_REQUIRE_GPU();
  Rng rng(9);
  for (const auto& c : std::vector<AttentionCase>{{2, 65, 130, 16, 24, 0.5f}, {1, 20, 30, 70, 90, -1.0f}}) {
    CAPTURE(dims_str({c.B, c.Nq, c.Nk, c.D, c.Dv}));
    Tensor q = attention_input({c.B, c.Nq, c.D}, rng).detach();
    Tensor k = attention_input({c.B, c.Nk, c.D}, rng).detach();
    Tensor v = attention_input({c.B, c.Nk, c.Dv}, rng).detach();
    Tensor g = random_cpu({c.B, c.Nq, c.Dv}, rng, MemoryFormat::contiguous, false);
    Tensor lse, gpu_lse;
    Tensor out = ops::attention_forward(q, k, v, c.scale, &lse);
    Tensor gpu_out = ops::attention_forward(q.to(kGpu), k.to(kGpu), v.to(kGpu), c.scale, &gpu_lse);
    check_matches(gpu_out, out, 1e-4, "attention_forward");
    check_matches(gpu_lse, lse, 1e-5, "logsumexp");
    const auto all = ops::attention_backward(g, q, k, v, out, lse, c.scale);
    for (int which = 0; which < 3; ++which) {
      CAPTURE(which);
      const std::array<bool, 3> needs{which == 0, which == 1, which == 2};
      const auto one = ops::attention_backward(g.to(kGpu), q.to(kGpu), k.to(kGpu), v.to(kGpu), gpu_out,
                                               gpu_lse, c.scale, needs);
      CHECK(one.dq.defined() == needs[0]);
      CHECK(one.dk.defined() == needs[1]);
      CHECK(one.dv.defined() == needs[2]);
      if (needs[0]) check_matches(one.dq, all.dq, 1e-4, "dq alone");
      if (needs[1]) check_matches(one.dk, all.dk, 1e-4, "dk alone");
      if (needs[2]) check_matches(one.dv, all.dv, 1e-4, "dv alone");
    }
  }
}

TEST_CASE("cuda: attention refuses tensors on different devices") {
  ZSQ_REQUIRE_GPU();
  Rng rng(10);
  Tensor q = random_cpu({1, 5, 4}, rng, MemoryFormat::contiguous, false);
  Tensor k = random_cpu({1, 6, 4}, rng, MemoryFormat::contiguous, false);
  Tensor v = random_cpu({1, 6, 3}, rng, MemoryFormat::contiguous, false);
  CHECK_THROWS_AS(ops::attention(q.to(kGpu), k, v), Error);
  CHECK_THROWS_AS(ops::attention(q, k.to(kGpu), v), Error);
  CHECK_THROWS_AS(ops::attention(q.to(kGpu), k.to(kGpu), v), Error);
  Tensor lse;
  Tensor out = ops::attention_forward(q.to(kGpu), k.to(kGpu), v.to(kGpu), 1.0f, &lse);
  CHECK_THROWS_AS(
      ops::attention_backward(random_cpu({1, 5, 3}, rng), q.to(kGpu), k.to(kGpu), v.to(kGpu), out, lse, 1.0f),
      Error);
}
