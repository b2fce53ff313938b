#include <doctest/doctest.h>

#include <cmath>

#include "engine/optim.h"
#include "ops/elementwise.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

TEST_CASE("shared subexpressions receive the sum of both paths' gradients") {
  Tensor x = Tensor::from_vector({3}, {1.0f, -2.0f, 3.0f});
  x.set_requires_grad(true);
  Tensor y = ops::mul(x, x);                         // y = x^2
  Tensor z = ops::add(y, ops::mul_scalar(y, 2.0f));  // z = 3 x^2, y used twice
  z.backward(Tensor::full({3}, 1.0f));
  auto g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(6.0));
  CHECK(g[1] == doctest::Approx(-12.0));
  CHECK(g[2] == doctest::Approx(18.0));
}

TEST_CASE("a gradient tensor someone else holds is never summed in place") {
  // add() passes the caller's root gradient on to p unchanged; p's second gradient (from 3p) must be
  // added into a fresh tensor, not into the caller's.
  Tensor x = Tensor::from_vector({2}, {1.0f, -1.0f});
  x.set_requires_grad(true);
  Tensor p = ops::mul_scalar(x, 1.0f);
  const Tensor ones = Tensor::full({2}, 1.0f);
  ops::add(p, ops::mul_scalar(p, 3.0f)).backward(ones);
  CHECK(x.grad().to_vector() == std::vector<float>{4.0f, 4.0f});
  CHECK(ones.to_vector() == std::vector<float>{1.0f, 1.0f});
}

TEST_CASE("leaf gradients accumulate across backward calls until zero_grad") {
  Tensor x = Tensor::from_vector({2}, {1.0f, 2.0f});
  x.set_requires_grad(true);
  for (int i = 0; i < 3; ++i) ops::mul_scalar(x, 2.0f).backward(Tensor::full({2}, 1.0f));
  CHECK(x.grad().to_vector()[0] == doctest::Approx(6.0));
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("ops on tensors that need no gradient record no graph (pruning)") {
  Tensor a = Tensor::from_vector({2}, {1.0f, 2.0f});
  Tensor b = Tensor::from_vector({2}, {3.0f, 4.0f});
  b.set_requires_grad(true);
  Tensor c = ops::mul(a, a);
  CHECK_FALSE(c.requires_grad());
  CHECK(c.grad_fn() == nullptr);
  Tensor d = ops::mul(c, b);
  CHECK(d.requires_grad());
  REQUIRE(d.grad_fn() != nullptr);
  CHECK(d.grad_fn()->needs == std::vector<bool>{false, true});
  d.backward(Tensor::full({2}, 1.0f));
  CHECK_FALSE(a.grad().defined());
  CHECK(b.grad().to_vector()[1] == doctest::Approx(4.0));
}

TEST_CASE("NoGrad records nothing and restores the previous mode") {
  Tensor x = Tensor::from_vector({1}, {2.0f});
  x.set_requires_grad(true);
  {
    NoGrad guard;
    Tensor y = ops::mul(x, x);
    CHECK_FALSE(y.requires_grad());
    { NoGrad nested; }
    CHECK_FALSE(GradMode::enabled());
  }
  CHECK(GradMode::enabled());
  CHECK(ops::mul(x, x).requires_grad());
}

TEST_CASE("a graph is released after backward unless retained") {
  Tensor x = Tensor::from_vector({1}, {2.0f});
  x.set_requires_grad(true);
  Tensor y = ops::mul(ops::mul(x, x), x);
  y.backward({}, true);
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(24.0));
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("second time"), Error);
}

TEST_CASE("a deep chain does not overflow the stack") {
  Tensor x = Tensor::from_vector({1}, {1.0f});
  x.set_requires_grad(true);
  Tensor y = x;
  for (int i = 0; i < 20000; ++i) y = ops::add_scalar(y, 0.0f);
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(1.0));
}

TEST_CASE("backward without a seed needs a scalar") {
  Tensor x = Tensor::from_vector({2}, {1.0f, 2.0f});
  x.set_requires_grad(true);
  CHECK_THROWS_WITH_AS(ops::mul(x, x).backward(), doctest::Contains("scalar"), Error);
}

namespace {
Tensor param(std::vector<float> v) {
  Tensor t = Tensor::from_vector({static_cast<std::int64_t>(v.size())}, v);
  t.set_requires_grad(true);
  return t;
}
}  // namespace

TEST_CASE("SGD with momentum, Nesterov and weight decay matches hand-computed steps") {
  Tensor p = param({1.0f, -2.0f});
  Sgd sgd({p}, {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.0f, .weight_decay = 0.01f, .nesterov = true});
  // step 1: g = grad + wd p = [0.5+0.01, 1-0.02] = [0.51, 0.98]; buf = g; update = g + 0.9 g = 1.9 g
  p.set_grad(Tensor::from_vector({2}, {0.5f, 1.0f}));
  sgd.step();
  auto v = p.to_vector();
  CHECK(v[0] == doctest::Approx(1.0 - 0.1 * 1.9 * 0.51));
  CHECK(v[1] == doctest::Approx(-2.0 - 0.1 * 1.9 * 0.98));
  // step 2: g2 = grad + wd p1; buf2 = 0.9 buf + g2; update = g2 + 0.9 buf2
  const double p1 = v[0], g2 = 0.5 + 0.01 * p1, buf2 = 0.9 * 0.51 + g2;
  sgd.step();
  CHECK(p.to_vector()[0] == doctest::Approx(p1 - 0.1 * (g2 + 0.9 * buf2)));
}

TEST_CASE("plain SGD and heavy-ball momentum") {
  Tensor p = param({1.0f});
  Sgd plain({p}, {.lr = 0.5f});
  p.set_grad(Tensor::from_vector({1}, {2.0f}));
  plain.step();
  CHECK(p.item() == doctest::Approx(0.0));
  Tensor q = param({0.0f});
  Sgd heavy({q}, {.lr = 1.0f, .momentum = 0.5f});
  q.set_grad(Tensor::from_vector({1}, {1.0f}));
  heavy.step();  // buf = 1 -> q = -1
  heavy.step();  // buf = 1.5 -> q = -2.5
  CHECK(q.item() == doctest::Approx(-2.5));
}

TEST_CASE("Adam matches hand-computed bias-corrected steps and its state round-trips") {
  Tensor p = param({1.0f});
  Adam adam({p}, {.lr = 0.1f});
  p.set_grad(Tensor::from_vector({1}, {0.2f}));
  adam.step();  // m_hat = g, v_hat = g^2 -> step = lr * g / (|g| + eps) = 0.1
  CHECK(p.item() == doctest::Approx(0.9).epsilon(1e-6));
  p.set_grad(Tensor::from_vector({1}, {-0.4f}));
  adam.step();
  const double m = 0.9 * 0.1 * 0.2 + 0.1 * -0.4, v = 0.999 * 0.001 * 0.04 + 0.001 * 0.16;
  const double expected = 0.9 - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.999 * 0.999)) + 1e-8);
  CHECK(p.item() == doctest::Approx(expected).epsilon(1e-5));

  Tensor p2 = param({p.item()});
  Adam resumed({p2}, {.lr = 0.1f});
  resumed.load_state(adam.state());
  p.set_grad(Tensor::from_vector({1}, {0.3f}));
  p2.set_grad(Tensor::from_vector({1}, {0.3f}));
  adam.step();
  resumed.step();
  CHECK(p.item() == p2.item());
}

TEST_CASE("Adam on a large parameter (parallel, vectorized path) matches the per-element formula") {
  Rng rng(3);
  const std::int64_t n = (1 << 17) + 5;  // above the parallel threshold, with a vector tail
  Tensor p = randn({n}, rng);
  p.set_requires_grad(true);
  const std::vector<float> w0 = p.to_vector();
  Adam adam({p}, {.lr = 0.01f, .weight_decay = 0.1f});
  std::vector<float> m(static_cast<std::size_t>(n), 0.0f), v(m), w(w0);
  for (int step = 1; step <= 2; ++step) {
    const Tensor g = randn({n}, rng);
    p.set_grad(g);
    adam.step();
    const double c1 = 1 - std::pow(0.9, step), c2 = 1 - std::pow(0.999, step);
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double gi = g.f32()[i] + 0.1 * w[i];
      m[i] = static_cast<float>(0.9 * m[i] + 0.1 * gi);
      v[i] = static_cast<float>(0.999 * v[i] + 0.001 * gi * gi);
      w[i] = static_cast<float>(w[i] - 0.01 / c1 * m[i] / (std::sqrt(v[i] / c2) + 1e-8));
    }
  }
  const auto got = p.to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::fabs(double(got[i]) - w[i]));
  CHECK(worst < 1e-6);
  CHECK(got != w0);
}

TEST_CASE("learning-rate schedules") {
  MultiStepSchedule ms(0.1f, {10, 20}, 0.1f);
  CHECK(ms.at(9) == doctest::Approx(0.1));
  CHECK(ms.at(10) == doctest::Approx(0.01));
  CHECK(ms.at(25) == doctest::Approx(0.001));
  CosineSchedule cos(0.1f, 100, 0.0f);
  CHECK(cos.at(0) == doctest::Approx(0.1));
  CHECK(cos.at(50) == doctest::Approx(0.05));
  CHECK(cos.at(100) == doctest::Approx(0.0));
}

TEST_CASE("format conversions keep logical values") {
  Rng rng(5);
  Tensor a = randn({2, 3, 4, 5}, rng);
  Tensor cl = a.to_format(MemoryFormat::channels_last);
  CHECK(cl.format() == MemoryFormat::channels_last);
  CHECK(cl.to_vector() == a.to_vector());
  CHECK(cl.f32()[1] == a.f32()[20]);  // NHWC: next element in memory is the next channel
  Tensor one = randn({2, 1, 4, 5}, rng);
  CHECK(one.to_format(MemoryFormat::channels_last).raw_data() == one.raw_data());  // same bytes, no copy
}
