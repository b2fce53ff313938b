#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "ops/attention.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
struct Case {
  std::int64_t B, Nq, Nk, D, Dv;
  float scale;
};
// Odd sizes, Nq != Nk, D != Dv, sizes that do and do not divide the 64-query / 128-key blocks.
const std::vector<Case> kCases = {
    {1, 1, 1, 1, 1, 1.0f},       {2, 7, 7, 3, 3, 1.0f},       {1, 65, 65, 16, 16, 0.25f},
    {2, 300, 300, 16, 16, 1.0f}, {1, 7, 65, 64, 64, 0.125f},  {2, 65, 300, 3, 5, 1.0f},
    {1, 300, 7, 1, 16, 2.0f},    {3, 129, 257, 64, 17, 0.1f}, {1, 1, 300, 16, 1, 1.0f},
    {2, 64, 128, 32, 32, 0.5f},  {5, 33, 129, 7, 33, 0.3f},   {1, 200, 130, 16, 80, -0.5f},
};

Tensor sum3(const Tensor& a, const Tensor& b, const Tensor& c) {
  auto av = a.to_vector(), bv = b.to_vector(), cv = c.to_vector();
  for (std::size_t i = 0; i < av.size(); ++i) av[i] += bv[i] + cv[i];
  return Tensor::from_vector(a.shape(), av);
}

bool all_finite(const Tensor& t) {
  for (float x : t.to_vector())
    if (!std::isfinite(x)) return false;
  return true;
}

// Rows of x [B, N, D] scaled to unit length (the channel-normalized feature of ZAQ).
Tensor unit_rows(const Shape& shape, Rng& rng) {
  auto v = randn(shape, rng).to_vector();
  const auto D = shape[2];
  for (std::size_t r = 0; r < v.size() / static_cast<std::size_t>(D); ++r) {
    double n = 0.0;
    for (std::int64_t t = 0; t < D; ++t) n += static_cast<double>(v[r * D + t]) * v[r * D + t];
    for (std::int64_t t = 0; t < D; ++t) v[r * D + t] = static_cast<float>(v[r * D + t] / std::sqrt(n));
  }
  return Tensor::from_vector(shape, v);
}
}  // namespace

TEST_CASE("blockwise attention forward and backward match the materializing reference") {
  const int saved_threads = omp_get_max_threads();
  Rng rng(31);
  for (int nthreads : {saved_threads, 1, 8}) {
    omp_set_num_threads(nthreads);
    for (const auto& c : kCases) {
      CAPTURE(nthreads);
      CAPTURE(shape_str({c.B, c.Nq, c.Nk, c.D, c.Dv}));
      CAPTURE(c.scale);
      Tensor q = random_input({c.B, c.Nq, c.D}, rng, MemoryFormat::contiguous, false);
      Tensor k = random_input({c.B, c.Nk, c.D}, rng, MemoryFormat::contiguous, false);
      Tensor v = random_input({c.B, c.Nk, c.Dv}, rng, MemoryFormat::contiguous, false);
      Tensor lse, ref_lse;
      Tensor out = ops::attention_forward(q, k, v, c.scale, &lse);
      Tensor ref_out = ops::ref::attention_forward(q, k, v, c.scale, &ref_lse);
      check_close(out, ref_out, 1e-4, 1e-5, "forward");
      check_close(lse, ref_lse, 1e-5, 1e-5, "logsumexp");
      check_close(ops::attention(q, k, v, c.scale), ref_out, 1e-4, 1e-5, "front function");

      Tensor g = random_input(out.shape(), rng, MemoryFormat::contiguous, false);
      auto fast = ops::attention_backward(g, q, k, v, out, lse, c.scale);
      auto ref = ops::ref::attention_backward(g, q, k, v, c.scale);
      check_close(fast.dq, ref.dq, 2e-4, 2e-4, "dq");
      check_close(fast.dk, ref.dk, 2e-4, 2e-4, "dk");
      check_close(fast.dv, ref.dv, 2e-4, 2e-4, "dv");
      // Each subset of needs gives the same values and leaves the rest undefined.
      for (int which = 0; which < 3; ++which) {
        std::array<bool, 3> needs{which == 0, which == 1, which == 2};
        auto one = ops::attention_backward(g, q, k, v, out, lse, c.scale, needs);
        CHECK(one.dq.defined() == needs[0]);
        CHECK(one.dk.defined() == needs[1]);
        CHECK(one.dv.defined() == needs[2]);
        const Tensor& got = which == 0 ? one.dq : which == 1 ? one.dk : one.dv;
        const Tensor& want = which == 0 ? fast.dq : which == 1 ? fast.dk : fast.dv;
        check_close(got, want, 1e-6, 1e-6, "single gradient");
      }
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("attention at the ZAQ stage-1 shape (N = 1024, D = 16) matches the reference") {
  Rng rng(32);
  Tensor x = unit_rows({2, 1024, 16}, rng);
  Tensor lse;
  Tensor out = ops::attention_forward(x, x, x, 1.0f, &lse);
  check_close(out, ops::ref::attention_forward(x, x, x, 1.0f), 1e-4, 1e-5, "forward");
  Tensor g = random_input(out.shape(), rng, MemoryFormat::contiguous, false);
  auto fast = ops::attention_backward(g, x, x, x, out, lse, 1.0f);
  auto ref = ops::ref::attention_backward(g, x, x, x, 1.0f);
  check_close(fast.dq, ref.dq, 2e-4, 2e-4, "dq");
  check_close(fast.dk, ref.dk, 2e-4, 2e-4, "dk");
  check_close(fast.dv, ref.dv, 2e-4, 2e-4, "dv");
}

TEST_CASE("attention gradients match finite differences on q, k and v") {
  Rng rng(33);
  auto f = [](float scale) {
    return [scale](const std::vector<Tensor>& t) { return ops::attention(t[0], t[1], t[2], scale); };
  };
  // Within one block, and across query blocks (70 > 64) and key blocks (130 > 128).
  for (auto c : std::vector<Case>{{2, 5, 7, 3, 4, 0.7f}, {1, 70, 130, 2, 3, 1.0f}}) {
    CAPTURE(shape_str({c.B, c.Nq, c.Nk, c.D, c.Dv}));
    Tensor q = random_input({c.B, c.Nq, c.D}, rng), k = random_input({c.B, c.Nk, c.D}, rng),
           v = random_input({c.B, c.Nk, c.Dv}, rng);
    check_gradients(f(c.scale), {q, k, v});
    // One input at a time (the others frozen): exercises each `needs` subset through autograd.
    for (int which = 0; which < 3; ++which) {
      CAPTURE(which);
      std::vector<Tensor> in{q.detach().clone(), k.detach().clone(), v.detach().clone()};
      in[static_cast<std::size_t>(which)].set_requires_grad(true);
      check_gradients(f(c.scale), in);
    }
  }
}

TEST_CASE("attention with one tensor as q, k and v (ZAQ's spatial relation) has the summed gradient") {
  Rng rng(34);
  auto self = [](const std::vector<Tensor>& t) { return ops::attention(t[0], t[0], t[0]); };
  check_gradients(self, {random_input({2, 9, 4}, rng)});
  check_gradients(self, {random_input({1, 140, 2}, rng)});  // crosses query and key blocks

  Tensor x = unit_rows({2, 300, 16}, rng).set_requires_grad(true);
  Tensor out = ops::attention(x, x, x);
  Tensor g = random_input(out.shape(), rng, MemoryFormat::contiguous, false);
  out.backward(g);
  auto ref = ops::ref::attention_backward(g, x, x, x, 1.0f);
  check_close(x.grad(), sum3(ref.dq, ref.dk, ref.dv), 2e-4, 2e-4, "dq + dk + dv");
}

TEST_CASE("large logits stay finite and accurate (unit vectors, scale 50 and beyond)") {
  Rng rng(35);
  for (float scale : {50.0f, 1000.0f, -200.0f}) {
    CAPTURE(scale);
    Tensor x = unit_rows({2, 300, 16}, rng);
    Tensor lse;
    Tensor out = ops::attention_forward(x, x, x, scale, &lse);
    CHECK(all_finite(out));
    CHECK(all_finite(lse));
    Tensor ref_lse;
    check_close(out, ops::ref::attention_forward(x, x, x, scale, &ref_lse), 1e-4, 1e-4, "forward");
    check_close(lse, ref_lse, 1e-5, 1e-4, "logsumexp");
    Tensor g = random_input(out.shape(), rng, MemoryFormat::contiguous, false);
    auto fast = ops::attention_backward(g, x, x, x, out, lse, scale);
    CHECK(all_finite(fast.dq));
    CHECK(all_finite(fast.dk));
    CHECK(all_finite(fast.dv));
    if (scale == 50.0f) {  // beyond, the gradient is dominated by rounding of near-one-hot rows
      auto ref = ops::ref::attention_backward(g, x, x, x, scale);
      check_close(sum3(fast.dq, fast.dk, fast.dv), sum3(ref.dq, ref.dk, ref.dv), 1e-3, 5e-3, "gradient");
    }
  }
}

TEST_CASE("attention records history only when an input requires grad") {
  Rng rng(36);
  Tensor q = random_input({1, 3, 2}, rng, MemoryFormat::contiguous, false);
  CHECK_FALSE(ops::attention(q, q, q).requires_grad());
  Tensor x = random_input({1, 3, 2}, rng);
  CHECK(ops::attention(q, x, q).requires_grad());
  NoGrad no_grad;
  CHECK_FALSE(ops::attention(x, x, x).requires_grad());
}

TEST_CASE("attention handles empty batches and query sets") {
  Tensor out = ops::attention(Tensor::zeros({2, 0, 3}), Tensor::zeros({2, 4, 3}), Tensor::zeros({2, 4, 5}));
  CHECK(out.shape() == Shape{2, 0, 5});
  CHECK(
      ops::attention(Tensor::zeros({0, 2, 3}), Tensor::zeros({0, 4, 3}), Tensor::zeros({0, 4, 5})).shape() ==
      Shape{0, 2, 5});
}

TEST_CASE("attention rejects mismatched shapes with messages naming them") {
  Tensor q = Tensor::zeros({2, 5, 3}), k = Tensor::zeros({2, 7, 3}), v = Tensor::zeros({2, 7, 4});
  CHECK_THROWS_WITH_AS(ops::attention(Tensor::zeros({5, 3}), k, v), doctest::Contains("[5, 3]"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, Tensor::zeros({2, 7, 4}), v), doctest::Contains("[2, 7, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, Tensor::zeros({2, 6, 4})), doctest::Contains("[2, 6, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(Tensor::zeros({3, 5, 3}), k, v),
                       doctest::Contains("batch sizes differ"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, Tensor::zeros({2, 0, 3}), Tensor::zeros({2, 0, 4})),
                       doctest::Contains("empty key set"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, Tensor::empty({2, 7, 4}, DType::s32)),
                       doctest::Contains("v must be"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, v, NAN), doctest::Contains("scale must be finite"), Error);
  Tensor lse;
  Tensor out = ops::attention_forward(q, k, v, 1.0f, &lse);
  CHECK_THROWS_WITH_AS(ops::attention_backward(Tensor::zeros({2, 5, 3}), q, k, v, out, lse, 1.0f),
                       doctest::Contains("[2, 5, 3]"), Error);
  CHECK_THROWS_WITH_AS(ops::attention_backward(out, q, k, v, out, Tensor::zeros({2, 4}), 1.0f),
                       doctest::Contains("[2, 4]"), Error);
}
