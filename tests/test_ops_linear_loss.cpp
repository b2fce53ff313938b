#include <doctest/doctest.h>
#include <omp.h>

#include <array>
#include <cmath>

#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
Tensor labels_of(const std::vector<std::int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<std::int64_t>(v.size())}, DType::s32);
  for (std::size_t i = 0; i < v.size(); ++i) t.data<std::int32_t>()[i] = v[i];
  return t;
}
Tensor random_labels(std::int64_t n, std::int64_t k, Rng& rng) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(k)));
  return labels_of(v);
}
Tensor transpose(const Tensor& m) {
  auto v = m.to_vector();
  const auto r = m.size(0), c = m.size(1);
  std::vector<float> t(v.size());
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      t[static_cast<std::size_t>(j * r + i)] = v[static_cast<std::size_t>(i * c + j)];
  return Tensor::from_vector({c, r}, t);
}
// Positive values that need no renormalization to be valid "probabilities" for the KL gradient check.
Tensor positive_input(const Shape& shape, Rng& rng, bool requires_grad = true) {
  Tensor t = rand_uniform(shape, rng, 0.2f, 1.0f);
  t.set_requires_grad(requires_grad);
  return t;
}
}  // namespace

// ---------------------------------------------------------------------------------------------- linear

TEST_CASE("linear and matmul fast paths match the reference loops") {
  Rng rng(11);
  const std::vector<std::array<std::int64_t, 3>> sizes = {{1, 1, 1},  {3, 5, 4},    {7, 13, 11},
                                                          {2, 17, 1}, {32, 64, 10}, {65, 33, 129}};
  for (auto [N, K, M] : sizes)
    for (bool with_bias : {false, true}) {
      CAPTURE(N);
      CAPTURE(K);
      CAPTURE(M);
      Tensor x = random_input({N, K}, rng, MemoryFormat::contiguous, false);
      Tensor w = random_input({M, K}, rng, MemoryFormat::contiguous, false);
      Tensor b = with_bias ? random_input({M}, rng, MemoryFormat::contiguous, false) : Tensor();
      check_close(ops::linear(x, w, b), ops::ref::linear(x, w, b), 1e-4, 1e-4, "linear forward");
      Tensor g = random_input({N, M}, rng, MemoryFormat::contiguous, false);
      check_close(ops::linear_backward_data(g, w), ops::ref::linear_backward_data(g, w), 1e-4, 1e-4,
                  "linear backward data");
      Tensor gw, gb, rgw, rgb;
      ops::linear_backward_weights(g, x, with_bias, gw, gb);
      ops::ref::linear_backward_weights(g, x, with_bias, rgw, rgb);
      check_close(gw, rgw, 1e-4, 1e-4, "linear backward weights");
      // The reference backward is itself checked against plain products of transposes.
      check_close(rgw, ops::ref::matmul(transpose(g), x), 1e-5, 1e-5, "ref weights = g^T x");
      if (with_bias) check_close(gb, rgb, 1e-4, 1e-4, "linear backward bias");
      Tensor bm = random_input({K, M}, rng, MemoryFormat::contiguous, false);
      check_close(ops::matmul(x, bm), ops::ref::matmul(x, bm), 1e-4, 1e-4, "matmul");
    }
}

TEST_CASE("linear and matmul gradients match finite differences on input, weight and bias") {
  Rng rng(12);
  for (auto [N, K, M] : std::vector<std::array<std::int64_t, 3>>{{3, 5, 4}, {1, 7, 3}, {4, 1, 2}}) {
    CAPTURE(N);
    Tensor x = random_input({N, K}, rng), w = random_input({M, K}, rng), b = random_input({M}, rng);
    check_gradients([](const std::vector<Tensor>& t) { return ops::linear(t[0], t[1], t[2]); }, {x, w, b});
    check_gradients([](const std::vector<Tensor>& t) { return ops::linear(t[0], t[1], Tensor()); }, {x, w});
    Tensor bm = random_input({K, M}, rng);
    check_gradients([](const std::vector<Tensor>& t) { return ops::matmul(t[0], t[1]); }, {x, bm});
  }
}

TEST_CASE("linear rejects bad shapes with messages naming the tensors") {
  Tensor w = Tensor::zeros({4, 6});
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 6, 1, 1}), w, Tensor()),
                       doctest::Contains("flatten 4-D activations first"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 5}), w, Tensor()), doctest::Contains("[2, 5]"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({2, 6}), w, Tensor::zeros({3})), doctest::Contains("[3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})), doctest::Contains("[4, 5]"),
                       Error);
}

TEST_CASE("a frozen linear layer passes gradients to its input only") {
  Rng rng(13);
  Tensor x = random_input({3, 4}, rng);
  Tensor w = random_input({2, 4}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_input({2}, rng, MemoryFormat::contiguous, false);
  ops::linear(x, w, b).backward(Tensor::full({3, 2}, 1.0f));
  CHECK(x.grad().defined());
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(b.grad().defined());
}

// ------------------------------------------------------------------------------------------ reductions

namespace {
struct ReduceCase {
  Shape shape;
  std::vector<std::int64_t> axes;
};
const std::vector<ReduceCase> kReduceCases = {
    {{2, 3, 5, 7}, {}},
    {{2, 3, 5, 7}, {0}},
    {{2, 3, 5, 7}, {1}},
    {{2, 3, 5, 7}, {2, 3}},
    {{2, 3, 5, 7}, {0, 2, 3}},
    {{2, 3, 5, 7}, {-1}},
    {{2, 3, 5, 7}, {-3, -1}},
    {{2, 3, 5, 7}, {0, 1, 2, 3}},
    {{2, 3, 5, 7}, {1, 3}},
    {{2, 3, 5, 7}, {0, 1}},
    {{2, 3, 5, 7}, {0, 2}},
    {{3, 1, 4, 1}, {0, 2, 3}},
    {{2, 1, 3, 3}, {1}},
    {{4, 6, 1, 1}, {0, 2, 3}},
    {{7, 13}, {}},
    {{7, 13}, {0}},
    {{7, 13}, {1}},
    {{7, 13}, {-2, -1}},
    {{4, 5, 6}, {1}},
    {{4, 5, 6}, {0, 2}},
    {{4, 5, 6}, {-2}},
    {{17}, {0}},
    {{1}, {}},
};
}  // namespace

TEST_CASE("sum, mean and variance match the reference over many axis sets, formats and keepdim") {
  Rng rng(21);
  for (const auto& c : kReduceCases)
    for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      if (fmt == MemoryFormat::channels_last && c.shape.size() != 4) continue;
      for (bool keepdim : {false, true}) {
        CAPTURE(shape_str(c.shape));
        CAPTURE(fmt::format("{}", fmt::join(c.axes, ",")));
        CAPTURE(fmt == MemoryFormat::channels_last);
        CAPTURE(keepdim);
        Tensor x = random_input(c.shape, rng, fmt, false);
        if (fmt == MemoryFormat::channels_last) REQUIRE(x.format() == fmt);
        check_close(ops::sum(x, c.axes, keepdim), ops::ref::sum(x, c.axes, keepdim), 1e-5, 1e-5, "sum");
        check_close(ops::mean(x, c.axes, keepdim), ops::ref::mean(x, c.axes, keepdim), 1e-5, 1e-5, "mean");
        check_close(ops::variance(x, c.axes, keepdim, false), ops::ref::variance(x, c.axes, keepdim, false),
                    1e-5, 1e-5, "variance");
        if (x.numel() > ops::sum(x, c.axes).numel())
          check_close(ops::variance(x, c.axes, keepdim, true), ops::ref::variance(x, c.axes, keepdim, true),
                      1e-5, 1e-5, "unbiased variance");
        else  // one element per output: n - 1 = 0, NaN as in PyTorch
          CHECK(std::isnan(ops::variance(x, c.axes, keepdim, true).to_vector()[0]));
      }
    }
}

TEST_CASE("reductions have the expected output shapes") {
  Tensor x = Tensor::zeros({2, 3, 4, 5});
  CHECK(ops::sum(x).shape() == Shape{});
  CHECK(ops::sum(x, {}, true).shape() == Shape{1, 1, 1, 1});
  CHECK(ops::mean(x, {0, 2, 3}).shape() == Shape{3});
  CHECK(ops::mean(x, {0, 2, 3}, true).shape() == Shape{1, 3, 1, 1});
  CHECK(ops::variance(x, {-1, -2}).shape() == Shape{2, 3});
  CHECK(ops::sum(Tensor::scalar(3.0f)).item() == 3.0f);
  CHECK(ops::sum(Tensor::zeros({0, 3}), {0}).to_vector() == std::vector<float>{0, 0, 0});
}

TEST_CASE("large reductions take the parallel paths and still match the reference") {
  const int saved_threads = omp_get_max_threads();
  Rng rng(22);
  const std::vector<std::pair<Shape, std::vector<std::int64_t>>> cases = {{{64, 32, 8, 8}, {0, 2, 3}},
                                                                          {{8, 5000}, {0}},
                                                                          {{8, 5000}, {1}},
                                                                          {{40001}, {}},
                                                                          {{3, 9000, 2}, {1}},
                                                                          {{9000, 3, 2}, {0, 2}},
                                                                          {{5, 3, 40, 41}, {0, 2}},
                                                                          {{2, 3, 9000}, {0, 2}},
                                                                          {{16, 3, 40, 41}, {1}},
                                                                          {{1, 37, 70, 30}, {0, 2, 3}}};
  for (int nthreads : {saved_threads, 8}) {
    omp_set_num_threads(nthreads);
    for (const auto& [shape, axes] : cases)
      for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
        if (fmt == MemoryFormat::channels_last && shape.size() != 4) continue;
        CAPTURE(shape_str(shape));
        CAPTURE(fmt::format("{}", fmt::join(axes, ",")));
        CAPTURE(nthreads);
        Tensor x = random_input(shape, rng, fmt, false);
        check_close(ops::sum(x, axes), ops::ref::sum(x, axes, false), 1e-5, 1e-4, "sum");
        check_close(ops::variance(x, axes, false, true), ops::ref::variance(x, axes, false, true), 1e-5, 1e-5,
                    "variance");
        // Backward of a large reduction against the broadcast it should be.
        Tensor xg = x.clone().set_requires_grad(true);
        Tensor m = ops::mean(xg, axes, true);
        Tensor up = random_input(m.shape(), rng, MemoryFormat::contiguous, false);
        m.backward(up);
        auto gv = xg.grad().to_vector();
        auto uv = up.to_vector();
        // Logical broadcast of up / count.
        Shape ks = m.shape();
        double count = static_cast<double>(x.numel()) / static_cast<double>(m.numel());
        std::vector<std::int64_t> idx(shape.size(), 0);
        double worst = 0.0;
        for (std::size_t i = 0; i < gv.size(); ++i) {
          std::int64_t o = 0;
          for (std::size_t d = 0; d < shape.size(); ++d) o = o * ks[d] + (ks[d] == 1 ? 0 : idx[d]);
          worst = std::max(worst, std::abs(gv[i] - uv[static_cast<std::size_t>(o)] / count));
          for (auto d = static_cast<std::ptrdiff_t>(shape.size()) - 1; d >= 0; --d) {
            auto du = static_cast<std::size_t>(d);
            if (++idx[du] < shape[du]) break;
            idx[du] = 0;
          }
        }
        CHECK(worst < 1e-6);
      }
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("per-channel statistics of a channels-last tensor equal those of its NCHW copy, gradients too") {
  Rng rng(23);
  Tensor xc = random_input({6, 5, 9, 7}, rng);
  Tensor xl = random_input({6, 5, 9, 7}, rng, MemoryFormat::channels_last);
  {
    NoGrad ng;
    xl.copy_from(xc);
  }
  REQUIRE(xl.format() == MemoryFormat::channels_last);
  Tensor up_m = random_input({5}, rng, MemoryFormat::contiguous, false);
  Tensor up_v = random_input({5}, rng, MemoryFormat::contiguous, false);
  for (const Tensor& x : {xc, xl}) {
    Tensor m = ops::mean(x, {0, 2, 3}), v = ops::variance(x, {0, 2, 3});
    check_close(m, ops::ref::mean(xc, {0, 2, 3}, false), 1e-5, 1e-6, "mean");
    check_close(v, ops::ref::variance(xc, {0, 2, 3}, false, false), 1e-5, 1e-6, "variance");
    m.backward(up_m);
    v.backward(up_v);  // accumulates into x.grad
  }
  CHECK(xl.grad().format() == MemoryFormat::channels_last);
  check_close(xl.grad(), xc.grad(), 1e-5, 1e-6, "gradient");
}

TEST_CASE("reduction gradients match finite differences") {
  Rng rng(24);
  const std::vector<ReduceCase> cases = {{{2, 3, 4, 3}, {0, 2, 3}},
                                         {{2, 3, 4, 3}, {1}},
                                         {{2, 3, 4, 3}, {}},
                                         {{2, 3, 4, 3}, {-1, 0}},
                                         {{4, 5}, {0}},
                                         {{4, 5}, {-1}},
                                         {{3, 4, 2}, {0, 2}},
                                         {{2, 3, 1, 1}, {0, 2, 3}}};
  for (const auto& c : cases)
    for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      if (fmt == MemoryFormat::channels_last && c.shape.size() != 4) continue;
      for (bool keepdim : {false, true}) {
        CAPTURE(shape_str(c.shape));
        CAPTURE(fmt::format("{}", fmt::join(c.axes, ",")));
        CAPTURE(fmt == MemoryFormat::channels_last);
        Tensor x = random_input(c.shape, rng, fmt);
        auto axes = c.axes;
        check_gradients([&](const std::vector<Tensor>& t) { return ops::sum(t[0], axes, keepdim); }, {x});
        check_gradients([&](const std::vector<Tensor>& t) { return ops::mean(t[0], axes, keepdim); }, {x});
        check_gradients([&](const std::vector<Tensor>& t) { return ops::variance(t[0], axes, keepdim); },
                        {x});
        check_gradients(
            [&](const std::vector<Tensor>& t) { return ops::variance(t[0], axes, keepdim, true); }, {x});
      }
    }
}

TEST_CASE("reductions reject bad axes with a message") {
  Tensor x = Tensor::zeros({2, 3, 4});
  CHECK_THROWS_WITH_AS(ops::sum(x, {3}), doctest::Contains("axis 3 is out of range for f32[2, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::mean(x, {-4}), doctest::Contains("axis -4"), Error);
  CHECK_THROWS_WITH_AS(ops::variance(x, {1, -2}), doctest::Contains("more than once"), Error);
  CHECK_THROWS_AS(ops::sum(Tensor::empty({3}, DType::s32)), Error);
}

TEST_CASE("reshape and flatten are zero-copy views where the layout allows and differentiable") {
  Rng rng(25);
  Tensor x = random_input({2, 3, 4, 5}, rng);
  Tensor r = ops::reshape(x, {6, -1});
  CHECK(r.shape() == Shape{6, 20});
  CHECK(r.raw_data() == x.raw_data());
  CHECK(r.to_vector() == x.to_vector());
  // A pooled channels-last map flattens without a copy.
  Tensor pooled = random_input({4, 8, 1, 1}, rng, MemoryFormat::channels_last);
  REQUIRE(pooled.format() == MemoryFormat::channels_last);
  Tensor f = ops::flatten(pooled);
  CHECK(f.shape() == Shape{4, 8});
  CHECK(f.raw_data() == pooled.raw_data());
  // A general channels-last tensor is copied into logical order.
  Tensor cl = random_input({2, 3, 4, 5}, rng, MemoryFormat::channels_last);
  Tensor fc = ops::flatten(cl);
  CHECK(fc.shape() == Shape{2, 60});
  CHECK(fc.to_vector() == cl.to_vector());
  CHECK(ops::reshape(x, {2, 3, 4, 5}).grad_fn() != x.grad_fn());
  for (const Tensor& in : {x, cl, pooled})
    check_gradients([](const std::vector<Tensor>& t) { return ops::flatten(t[0]); }, {in});
  check_gradients([](const std::vector<Tensor>& t) { return ops::reshape(t[0], {5, 4, 6}); }, {cl});
  CHECK_THROWS_WITH_AS(ops::reshape(x, {7, 17}), doctest::Contains("[7, 17]"), Error);
  CHECK_THROWS_AS(ops::reshape(x, {-1, -1}), Error);
  CHECK_THROWS_AS(ops::reshape(x, {7, -1}), Error);
}

// -------------------------------------------------------------------------------------- softmax, losses

namespace {
const std::vector<Shape> kMatrixShapes = {{1, 1}, {3, 5}, {7, 13}, {64, 1000}, {300, 10}};
}

TEST_CASE("softmax and log_softmax match the reference and stay finite on extreme logits") {
  Rng rng(31);
  for (const auto& s : kMatrixShapes) {
    CAPTURE(shape_str(s));
    Tensor x = random_input(s, rng, MemoryFormat::contiguous, false);
    check_close(ops::softmax(x), ops::ref::softmax(x), 1e-5, 1e-7, "softmax");
    check_close(ops::log_softmax(x), ops::ref::log_softmax(x), 1e-5, 1e-5, "log_softmax");
  }
  Tensor big = Tensor::from_vector({2, 3}, {1000.0f, 0.0f, -1000.0f, -1e4f, -1e4f + 1.0f, -1e4f});
  check_close(ops::softmax(big), ops::ref::softmax(big), 1e-5, 1e-7, "softmax extreme");
  check_close(ops::log_softmax(big), ops::ref::log_softmax(big), 1e-5, 1e-3, "log_softmax extreme");
  auto lv = ops::log_softmax(big).to_vector();
  CHECK(lv[0] == 0.0f);
  CHECK(lv[2] == doctest::Approx(-2000.0f));
}

TEST_CASE("softmax family gradients match finite differences") {
  Rng rng(32);
  for (const auto& s : std::vector<Shape>{{1, 1}, {3, 5}, {2, 9}}) {
    CAPTURE(shape_str(s));
    Tensor x = random_input(s, rng);
    check_gradients([](const std::vector<Tensor>& t) { return ops::softmax(t[0]); }, {x});
    check_gradients([](const std::vector<Tensor>& t) { return ops::log_softmax(t[0]); }, {x});
  }
}

TEST_CASE("cross_entropy matches hand-computed values and the reference") {
  // Row 0: logits (1, 2, 3), label 2: log(e + e^2 + e^3) - 3. Row 1: (0, 0), padded with -inf-like
  // values is not allowed, so a second tiny case checks log(2).
  Tensor logits = Tensor::from_vector({1, 3}, {1.0f, 2.0f, 3.0f});
  const double expected = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0;
  Tensor loss = ops::cross_entropy(logits, labels_of({2}));
  CHECK(loss.shape() == Shape{});
  CHECK(loss.item() == doctest::Approx(expected).epsilon(1e-6));
  CHECK(ops::cross_entropy(Tensor::zeros({2, 2}), labels_of({0, 1})).item() ==
        doctest::Approx(std::log(2.0)).epsilon(1e-6));
  // Label smoothing 0.3 over K = 3: q = (0.1, 0.1, 0.8) for label 2.
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double smoothed = -(0.1 * (1.0 - lse) + 0.1 * (2.0 - lse) + 0.8 * (3.0 - lse));
  CHECK(ops::cross_entropy(logits, labels_of({2}), 0.3f).item() == doctest::Approx(smoothed).epsilon(1e-6));

  Rng rng(33);
  for (const auto& s : kMatrixShapes)
    for (float eps : {0.0f, 0.1f}) {
      CAPTURE(shape_str(s));
      Tensor x = random_input(s, rng, MemoryFormat::contiguous, false);
      Tensor y = random_labels(s[0], s[1], rng);
      check_close(ops::cross_entropy(x, y, eps), ops::ref::cross_entropy(x, y, eps), 1e-5, 1e-6,
                  "cross_entropy");
    }
}

TEST_CASE("cross_entropy gradients match finite differences, with and without smoothing") {
  Rng rng(34);
  for (const auto& s : std::vector<Shape>{{1, 1}, {4, 5}, {3, 2}})
    for (float eps : {0.0f, 0.2f}) {
      CAPTURE(shape_str(s));
      Tensor x = random_input(s, rng);
      Tensor y = random_labels(s[0], s[1], rng);
      check_gradients([&](const std::vector<Tensor>& t) { return ops::cross_entropy(t[0], y, eps); }, {x});
    }
}

TEST_CASE("cross_entropy names a bad label and its index") {
  Tensor x = Tensor::zeros({3, 4});
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, labels_of({0, 5, 1})),
                       doctest::Contains("label 5 at index 1 is out of range [0, 4)"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, labels_of({0, 1, -1})), doctest::Contains("label -1 at index 2"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(x, labels_of({0, 1})), doctest::Contains("s32 [3]"), Error);
  CHECK_THROWS_AS(ops::cross_entropy(x, Tensor::zeros({3})), Error);  // f32 labels
  CHECK_THROWS_AS(ops::cross_entropy(x, labels_of({0, 1, 2}), 1.0f), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(Tensor::zeros({3, 4, 1, 1}), labels_of({0, 1, 2})),
                       doctest::Contains("2-D"), Error);
}

TEST_CASE("kl_div is zero for equal distributions, handles zero targets and matches the reference") {
  Rng rng(35);
  Tensor p = ops::softmax(random_input({5, 7}, rng, MemoryFormat::contiguous, false));
  Tensor kl = ops::kl_div(ops::log_softmax(ops::log_softmax(p)), ops::softmax(ops::log_softmax(p)));
  CHECK(kl.shape() == Shape{});
  CHECK(std::abs(kl.item()) < 1e-6);
  // 0 * log 0 = 0: a one-hot target gives -input[label] / N.
  Tensor logq = ops::log_softmax(random_input({2, 3}, rng, MemoryFormat::contiguous, false));
  Tensor onehot = Tensor::from_vector({2, 3}, {0, 1, 0, 0, 0, 1});
  auto lq = logq.to_vector();
  CHECK(ops::kl_div(logq, onehot).item() == doctest::Approx(-(lq[1] + lq[5]) / 2.0).epsilon(1e-6));
  for (const auto& s : kMatrixShapes) {
    CAPTURE(shape_str(s));
    Tensor x = ops::log_softmax(random_input(s, rng, MemoryFormat::contiguous, false));
    Tensor t = ops::softmax(random_input(s, rng, MemoryFormat::contiguous, false));
    check_close(ops::kl_div(x, t), ops::ref::kl_div(x, t), 1e-5, 1e-6, "kl_div");
    CHECK(ops::kl_div(x, t).item() >= -1e-6f);
  }
  // Equal channels-last maps in different formats (batchmean over a 4-D input).
  Tensor a = rand_uniform({2, 3, 4, 5}, rng, 0.1f, 1.0f);
  Tensor la = ops::log_softmax(ops::reshape(a, {2, 60}));
  CHECK(std::abs(ops::kl_div(la, ops::softmax(ops::reshape(a, {2, 60}))).item()) < 1e-6);
}

TEST_CASE("kl_div gradients match finite differences on input and target") {
  Rng rng(36);
  for (const auto& s : std::vector<Shape>{{1, 1}, {3, 4}, {2, 3, 2, 2}}) {
    CAPTURE(shape_str(s));
    Tensor x = random_input(s, rng);
    Tensor t = positive_input(s, rng);
    check_gradients([](const std::vector<Tensor>& v) { return ops::kl_div(v[0], v[1]); }, {x, t});
  }
}

TEST_CASE("mse and l1 match the reference across formats, with gradients") {
  Rng rng(37);
  for (const auto& s : std::vector<Shape>{{1}, {3, 5}, {2, 3, 5, 7}, {64, 16, 8, 8}}) {
    for (auto fa : {MemoryFormat::contiguous, MemoryFormat::channels_last})
      for (auto fb : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
        if (s.size() != 4 && (fa != MemoryFormat::contiguous || fb != MemoryFormat::contiguous)) continue;
        CAPTURE(shape_str(s));
        Tensor a = random_input(s, rng, fa, false), b = random_input(s, rng, fb, false);
        Tensor m = ops::mse(a, b);
        CHECK(m.shape() == Shape{});
        check_close(m, ops::ref::mse(a, b), 1e-5, 1e-6, "mse");
        check_close(ops::l1(a, b), ops::ref::l1(a, b), 1e-5, 1e-6, "l1");
      }
  }
  for (const auto& s : std::vector<Shape>{{1}, {3, 5}, {2, 3, 2, 2}})
    for (auto fb : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      if (s.size() != 4 && fb != MemoryFormat::contiguous) continue;
      Tensor a = random_input(s, rng), b = random_input(s, rng, fb);
      check_gradients([](const std::vector<Tensor>& v) { return ops::mse(v[0], v[1]); }, {a, b});
      check_gradients([](const std::vector<Tensor>& v) { return ops::l1(v[0], v[1]); }, {a, b});
    }
  // The l1 subgradient is 0 where the operands are equal.
  Tensor a = Tensor::from_vector({3}, {1.0f, 2.0f, 3.0f}).set_requires_grad(true);
  Tensor b = Tensor::from_vector({3}, {0.0f, 2.0f, 5.0f});
  ops::l1(a, b).backward();
  auto g = a.grad().to_vector();
  CHECK(g[0] == doctest::Approx(1.0f / 3));
  CHECK(g[1] == 0.0f);
  CHECK(g[2] == doctest::Approx(-1.0f / 3));
  CHECK_THROWS_WITH_AS(ops::mse(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), doctest::Contains("[3, 2]"),
                       Error);
  CHECK_THROWS_AS(ops::l1(Tensor::zeros({2}), Tensor::zeros({3})), Error);
}

TEST_CASE("embedding gathers rows, scatters gradients (repeated indices add) and rejects bad indices") {
  Rng rng(38);
  Tensor table = random_input({6, 5}, rng);
  Tensor idx = labels_of({3, 0, 3, 5, 1, 3});
  Tensor out = ops::embedding(table, idx);
  CHECK(out.shape() == Shape{6, 5});
  check_close(out, ops::ref::embedding(table, idx), 0.0, 0.0, "embedding");
  check_gradients([&](const std::vector<Tensor>& t) { return ops::embedding(t[0], idx); }, {table});
  Tensor big = random_input({1000, 33}, rng, MemoryFormat::contiguous, false);
  Tensor bidx = random_labels(4000, 1000, rng);
  check_close(ops::embedding(big, bidx), ops::ref::embedding(big, bidx), 0.0, 0.0, "embedding large");
  // Gradient of sum(embedding) counts how often each row was used.
  Tensor t2 = Tensor::zeros({4, 2}).set_requires_grad(true);
  ops::embedding(t2, labels_of({2, 2, 0, 2})).backward(Tensor::full({4, 2}, 1.0f));
  CHECK(t2.grad().to_vector() == std::vector<float>{1, 1, 0, 0, 3, 3, 0, 0});
  CHECK_THROWS_WITH_AS(ops::embedding(table, labels_of({0, 6})),
                       doctest::Contains("index 6 at position 1 is out of range [0, 6)"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(table, labels_of({-2})), doctest::Contains("index -2 at position 0"),
                       Error);
  CHECK_THROWS_AS(ops::embedding(table, Tensor::zeros({2})), Error);
}
