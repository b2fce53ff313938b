#include <doctest/doctest.h>

#include "ops/elementwise.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
const std::vector<Shape> kShapes = {{7}, {3, 5}, {2, 3, 5, 7}, {1, 17, 4, 6}, {2, 16, 33, 9}};
}

TEST_CASE("element-wise fast paths match the reference loops in both memory formats") {
  Rng rng(11);
  for (const auto& s : kShapes)
    for (auto fa : {MemoryFormat::contiguous, MemoryFormat::channels_last})
      for (auto fb : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
        if (s.size() != 4 && (fa != MemoryFormat::contiguous || fb != MemoryFormat::contiguous)) continue;
        CAPTURE(shape_str(s));
        Tensor a = random_input(s, rng, fa, false), b = random_input(s, rng, fb, false);
        check_close(ops::add(a, b), ops::ref::add(a, b), 0, 0, "add");
        check_close(ops::sub(a, b), ops::ref::sub(a, b), 0, 0, "sub");
        check_close(ops::mul(a, b), ops::ref::mul(a, b), 0, 0, "mul");
        check_close(ops::affine_scalar(a, -1.5f, 0.25f), ops::ref::affine_scalar(a, -1.5f, 0.25f), 1e-6, 1e-7,
                    "affine");
        check_close(ops::relu(a), ops::ref::relu(a), 0, 0, "relu");
        check_close(ops::add_relu(a, b), ops::ref::add_relu(a, b), 0, 0, "add_relu");
        check_close(ops::leaky_relu(a, 0.2f), ops::ref::leaky_relu(a, 0.2f), 0, 0, "leaky_relu");
        check_close(ops::tanh(a), ops::ref::tanh(a), 1e-6, 1e-6, "tanh");
        Tensor pos = ops::ref::affine_scalar(ops::ref::mul(a, a), 1.0f, 0.5f).to_format(a.format());
        check_close(ops::sqrt(pos), ops::ref::sqrt(pos), 1e-6, 1e-7, "sqrt");
        check_close(ops::log(pos), ops::ref::log(pos), 1e-6, 1e-6, "log");
        check_close(ops::exp(a), ops::ref::exp(a), 1e-6, 1e-6, "exp");
      }
}

TEST_CASE("element-wise gradients match finite differences") {
  Rng rng(12);
  for (const auto& s : std::vector<Shape>{{5}, {2, 3, 4, 5}}) {
    for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      if (s.size() != 4 && fmt != MemoryFormat::contiguous) continue;
      Tensor a = random_input(s, rng, fmt), b = random_input(s, rng);
      check_gradients([](const auto& t) { return ops::add(t[0], t[1]); }, {a, b});
      check_gradients([](const auto& t) { return ops::sub(t[0], t[1]); }, {a, b});
      check_gradients([](const auto& t) { return ops::mul(t[0], t[1]); }, {a, b});
      check_gradients([](const auto& t) { return ops::affine_scalar(t[0], 3.0f, 1.0f); }, {a});
      check_gradients([](const auto& t) { return ops::tanh(t[0]); }, {a});
      Tensor pos = ops::ref::affine_scalar(ops::ref::mul(a, a), 1.0f, 0.5f);
      pos.set_requires_grad(true);
      check_gradients([](const auto& t) { return ops::sqrt(t[0]); }, {pos});
      check_gradients([](const auto& t) { return ops::log(t[0]); }, {pos});
      check_gradients([](const auto& t) { return ops::exp(t[0]); }, {a});
      // Kinks: keep inputs away from 0 so central differences do not straddle them.
      auto vals = a.to_vector();
      for (auto& v : vals) v = v >= 0 ? v + 0.1f : v - 0.1f;
      Tensor k = Tensor::from_vector(s, vals, fmt);
      k.set_requires_grad(true);
      check_gradients([](const auto& t) { return ops::relu(t[0]); }, {k});
      check_gradients([](const auto& t) { return ops::leaky_relu(t[0], 0.1f); }, {k});
      Tensor zero = Tensor::zeros(s, DType::f32, fmt);  // so k + zero keeps k's distance from the kink
      zero.set_requires_grad(true);
      check_gradients([](const auto& t) { return ops::add_relu(t[0], t[1]); }, {k, zero});
      check_gradients([](const auto& t) { return ops::add_relu(t[1], t[0]); }, {k, zero});
    }
  }
}

TEST_CASE("binary ops name both shapes when they differ") {
  CHECK_THROWS_WITH_AS(ops::add(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), doctest::Contains("[2, 3]"),
                       Error);
  CHECK_THROWS_AS(ops::leaky_relu(Tensor::zeros({2}), -1.0f), Error);
}
