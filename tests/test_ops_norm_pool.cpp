#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/batch_norm.h"
#include "ops/elementwise.h"
#include "ops/pool.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

namespace {
using i64 = std::int64_t;
constexpr MemoryFormat kFormats[] = {MemoryFormat::contiguous, MemoryFormat::channels_last};

const std::vector<Shape> kShapes = {{3, 5, 7, 9}, {2, 3, 1, 1}, {1, 17, 4, 6}, {4, 16, 8, 8}, {2, 1, 5, 3}};

// Random values with a channel-dependent offset, so that means are far from zero.
Tensor offset_input(const Shape& shape, Rng& rng, MemoryFormat format, bool requires_grad) {
  auto v = randn(shape, rng).to_vector();
  const i64 C = shape[1];
  const i64 inner = shape.size() == 4 ? shape[2] * shape[3] : 1;
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = v[i] * 1.5f + static_cast<float>((i / inner) % C) - 2.0f;
  Tensor t = Tensor::from_vector(shape, v, shape.size() == 4 ? format : MemoryFormat::contiguous);
  t.set_requires_grad(requires_grad);
  return t;
}

// A permutation of 0, 0.05, 0.1, ...: no ties, gaps far wider than the finite-difference step.
Tensor distinct_input(const Shape& shape, Rng& rng, MemoryFormat format) {
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * static_cast<float>(i) - 1.0f;
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
  Tensor t = Tensor::from_vector(shape, v, format);
  t.set_requires_grad(true);
  return t;
}

Tensor positive_vector(i64 n, Rng& rng) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = 0.5f + rng.uniform();
  return Tensor::from_vector({n}, v);
}

// Batch-norm backward in double from the textbook formulas (batch statistics or given statistics).
void ref_bn_backward(const Tensor& x, const Tensor& g, const Tensor& weight, const Tensor& rmean,
                     const Tensor& rvar, bool batch_stats, float eps, Tensor& gx, Tensor& gw, Tensor& gb) {
  const i64 N = x.size(0), C = x.size(1), S = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const auto xv = x.to_vector(), gv = g.to_vector();
  const auto wv =
      weight.defined() ? weight.to_vector() : std::vector<float>(static_cast<std::size_t>(C), 1.0f);
  std::vector<float> dx(xv.size()), dw(static_cast<std::size_t>(C)), db(static_cast<std::size_t>(C));
  auto at = [&](i64 n, i64 c, i64 s) { return static_cast<std::size_t>((n * C + c) * S + s); };
  const double count = static_cast<double>(N * S);
  for (i64 c = 0; c < C; ++c) {
    double mean = 0.0, var = 0.0;
    if (batch_stats) {
      for (i64 n = 0; n < N; ++n)
        for (i64 s = 0; s < S; ++s) mean += xv[at(n, c, s)];
      mean /= count;
      for (i64 n = 0; n < N; ++n)
        for (i64 s = 0; s < S; ++s) var += (xv[at(n, c, s)] - mean) * (xv[at(n, c, s)] - mean);
      var /= count;
    } else {
      mean = rmean.to_vector()[static_cast<std::size_t>(c)];
      var = rvar.to_vector()[static_cast<std::size_t>(c)];
    }
    const double inv_std = 1.0 / std::sqrt(var + eps);
    double sum_g = 0.0, sum_gx = 0.0;
    for (i64 n = 0; n < N; ++n)
      for (i64 s = 0; s < S; ++s) {
        sum_g += gv[at(n, c, s)];
        sum_gx += gv[at(n, c, s)] * (xv[at(n, c, s)] - mean) * inv_std;
      }
    dw[static_cast<std::size_t>(c)] = static_cast<float>(sum_gx);
    db[static_cast<std::size_t>(c)] = static_cast<float>(sum_g);
    const double a = wv[static_cast<std::size_t>(c)] * inv_std;
    for (i64 n = 0; n < N; ++n)
      for (i64 s = 0; s < S; ++s) {
        const double xhat = (xv[at(n, c, s)] - mean) * inv_std;
        dx[at(n, c, s)] =
            static_cast<float>(batch_stats ? a * (gv[at(n, c, s)] - sum_g / count - xhat * sum_gx / count)
                                           : a * gv[at(n, c, s)]);
      }
  }
  gx = Tensor::from_vector(x.shape(), dx);
  gw = Tensor::from_vector({C}, dw);
  gb = Tensor::from_vector({C}, db);
}

// Input gradient of windowed pooling from the definition (first maximum; average over in-bounds taps).
Tensor ref_pool_backward(const Tensor& x, const Tensor& g, const ops::Pool2dParams& p, bool max) {
  const i64 N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OH = g.size(2), OW = g.size(3);
  const auto xv = x.to_vector(), gv = g.to_vector();
  std::vector<double> dx(xv.size(), 0.0);
  for (i64 plane = 0; plane < N * C; ++plane)
    for (i64 oh = 0; oh < OH; ++oh)
      for (i64 ow = 0; ow < OW; ++ow) {
        std::vector<std::size_t> taps;
        for (i64 kh = 0; kh < p.kernel_h; ++kh)
          for (i64 kw = 0; kw < p.kernel_w; ++kw) {
            const i64 ih = oh * p.stride_h - p.pad_h + kh, iw = ow * p.stride_w - p.pad_w + kw;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
              taps.push_back(static_cast<std::size_t>((plane * H + ih) * W + iw));
          }
        const double go = gv[static_cast<std::size_t>((plane * OH + oh) * OW + ow)];
        if (max) {
          std::size_t best = taps[0];
          for (auto t : taps)
            if (xv[t] > xv[best]) best = t;
          dx[best] += go;
        } else {
          for (auto t : taps) dx[t] += go / static_cast<double>(taps.size());
        }
      }
  return Tensor::from_vector(x.shape(), std::vector<float>(dx.begin(), dx.end()));
}

bool fits(const Shape& x, const ops::Pool2dParams& p) {
  return x[2] + 2 * p.pad_h >= p.kernel_h && x[3] + 2 * p.pad_w >= p.kernel_w;
}

// kernel, stride, padding: square, overlapping with padding, asymmetric, unused trailing rows (7 / 2).
const std::vector<ops::Pool2dParams> kPoolParams = {
    {2, 2, 2, 2, 0, 0}, {3, 3, 2, 2, 1, 1}, {3, 2, 1, 2, 1, 0}, {2, 3, 1, 1, 0, 1}, {3, 3, 3, 3, 0, 0}};
}  // namespace

// ---------------------------------------------------------------- batch norm

TEST_CASE("batch_norm fast path matches the reference (training and eval, both formats, running stats)") {
  Rng rng(11);
  std::vector<Shape> shapes = kShapes;
  shapes.push_back({6, 4});
  shapes.push_back({2, 3});
  int variant = 0;
  for (const auto& shape : shapes)
    for (auto fmt : kFormats) {
      if (shape.size() == 2 && fmt == MemoryFormat::channels_last) continue;
      for (bool training : {true, false})
        for (bool with_running : {true, false}) {
          ++variant;
          CAPTURE(shape_str(shape));
          CAPTURE(static_cast<int>(fmt));
          CAPTURE(training);
          CAPTURE(with_running);
          const i64 C = shape[1];
          Tensor x = offset_input(shape, rng, fmt, false);
          // Alternate defined and undefined affine parameters.
          Tensor w = variant % 3 != 0 ? randn({C}, rng) : Tensor();
          Tensor b = variant % 2 != 0 ? randn({C}, rng) : Tensor();
          Tensor rm = with_running ? randn({C}, rng) : Tensor();
          Tensor rv = with_running ? positive_vector(C, rng) : Tensor();
          Tensor rm2 = with_running ? rm.clone() : Tensor();
          Tensor rv2 = with_running ? rv.clone() : Tensor();
          ops::BatchNormOptions o{training, 0.2f, 1e-5f};
          Tensor y = ops::batch_norm(x, w, b, rm, rv, o);
          CHECK(y.format() == x.format());
          CHECK(y.shape() == x.shape());
          check_close(y, ops::ref::batch_norm(x, w, b, rm2, rv2, o), 1e-4, 2e-5, "forward");
          if (with_running) {
            check_close(rm, rm2, 1e-5, 1e-6, "running_mean");
            check_close(rv, rv2, 1e-5, 1e-6, "running_var");
          }
        }
    }
}

TEST_CASE("batch_norm running statistics follow the momentum rule with the unbiased variance") {
  // Channel 0: 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3); channel 1: 0, 0, 4, 4 (mean 2, var 4,
  // unbiased 16/3).
  for (auto fmt : kFormats) {
    Tensor x = Tensor::from_vector({2, 2, 1, 2}, {1, 2, 0, 0, 3, 6, 4, 4}, fmt);
    Tensor rm = Tensor::from_vector({2}, {0.0f, 1.0f});
    Tensor rv = Tensor::from_vector({2}, {1.0f, 2.0f});
    const float eps = 1e-5f;
    Tensor y = ops::batch_norm(x, Tensor(), Tensor(), rm, rv, {true, 0.1f, eps});
    CHECK(rm.to_vector()[0] == doctest::Approx(0.3).epsilon(1e-6));
    CHECK(rm.to_vector()[1] == doctest::Approx(0.9 * 1.0 + 0.1 * 2.0).epsilon(1e-6));
    CHECK(rv.to_vector()[0] == doctest::Approx(0.9 * 1.0 + 0.1 * 14.0 / 3.0).epsilon(1e-6));
    CHECK(rv.to_vector()[1] == doctest::Approx(0.9 * 2.0 + 0.1 * 16.0 / 3.0).epsilon(1e-6));
    const auto yv = y.to_vector();
    CHECK(yv[0] == doctest::Approx((1.0 - 3.0) / std::sqrt(3.5 + eps)).epsilon(1e-5));
    CHECK(yv[5] == doctest::Approx((6.0 - 3.0) / std::sqrt(3.5 + eps)).epsilon(1e-5));
    CHECK(yv[6] == doctest::Approx((4.0 - 2.0) / std::sqrt(4.0 + eps)).epsilon(1e-5));

    // Eval mode normalizes with the running statistics and leaves them alone.
    const auto rm_before = rm.to_vector(), rv_before = rv.to_vector();
    Tensor w = Tensor::from_vector({2}, {2.0f, 3.0f});
    Tensor b = Tensor::from_vector({2}, {0.5f, -1.0f});
    Tensor ye = ops::batch_norm(x, w, b, rm, rv, {false, 0.1f, eps});
    CHECK(rm.to_vector() == rm_before);
    CHECK(rv.to_vector() == rv_before);
    CHECK(ye.to_vector()[5] ==
          doctest::Approx((6.0 - rm_before[0]) / std::sqrt(rv_before[0] + eps) * 2.0 + 0.5).epsilon(1e-5));
    CHECK(ye.to_vector()[7] ==
          doctest::Approx((4.0 - rm_before[1]) / std::sqrt(rv_before[1] + eps) * 3.0 - 1.0).epsilon(1e-5));
  }
}

TEST_CASE("batch_norm without running statistics uses batch statistics in both modes") {
  Rng rng(12);
  for (auto fmt : kFormats) {
    Tensor x = offset_input({4, 3, 5, 2}, rng, fmt, false);
    Tensor train = ops::batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), {true, 0.1f, 1e-5f});
    Tensor eval = ops::batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), {false, 0.1f, 1e-5f});
    check_close(train, eval, 0.0, 0.0, "train vs eval");
    // Per channel: zero mean, unit (biased) variance.
    const auto v = train.to_vector();
    for (i64 c = 0; c < 3; ++c) {
      double s = 0.0, q = 0.0;
      for (i64 n = 0; n < 4; ++n)
        for (i64 i = 0; i < 10; ++i) {
          const double e = v[static_cast<std::size_t>((n * 3 + c) * 10 + i)];
          s += e;
          q += e * e;
        }
      CHECK(s / 40.0 == doctest::Approx(0.0).epsilon(1e-5).scale(1.0));
      CHECK(q / 40.0 == doctest::Approx(1.0).epsilon(1e-4));
    }
  }
}

TEST_CASE("batch_norm backward matches the textbook formulas on larger inputs") {
  Rng rng(13);
  for (const Shape& shape : {Shape{8, 16, 10, 10}, Shape{3, 5, 7, 9}, Shape{32, 24}})
    for (auto fmt : kFormats)
      for (bool training : {true, false}) {
        if (shape.size() == 2 && fmt == MemoryFormat::channels_last) continue;
        CAPTURE(shape_str(shape));
        CAPTURE(static_cast<int>(fmt));
        CAPTURE(training);
        const i64 C = shape[1];
        Tensor x = offset_input(shape, rng, fmt, true);
        Tensor w = randn({C}, rng).set_requires_grad(true);
        Tensor b = randn({C}, rng).set_requires_grad(true);
        Tensor rm = randn({C}, rng), rv = positive_vector(C, rng);
        Tensor rm0 = rm.clone(), rv0 = rv.clone();
        Tensor y = ops::batch_norm(x, w, b, rm, rv, {training, 0.1f, 1e-5f});
        // The upstream gradient in the other format exercises the conversion.
        Tensor g = offset_input(
            shape, rng,
            fmt == MemoryFormat::contiguous ? MemoryFormat::channels_last : MemoryFormat::contiguous, false);
        y.backward(g);
        Tensor gx, gw, gb;
        ref_bn_backward(x, g, w, rm0, rv0, training, 1e-5f, gx, gw, gb);
        CHECK(x.grad().format() == x.format());
        check_close(x.grad(), gx, 1e-3, 1e-4, "grad x");
        check_close(w.grad(), gw, 1e-3, 1e-3, "grad weight");
        check_close(b.grad(), gb, 1e-4, 1e-3, "grad bias");

        // x alone (the backward_data path) gives the same input gradient.
        Tensor x2 = x.detach().clone().set_requires_grad(true);
        Tensor rm1 = rm0.clone(), rv1 = rv0.clone();
        Tensor y2 = ops::batch_norm(x2, w.detach(), b.detach(), rm1, rv1, {training, 0.1f, 1e-5f});
        y2.backward(g);
        check_close(x2.grad(), gx, 1e-3, 1e-4, "grad x (data only)");

        // Weights alone (a frozen input).
        Tensor w3 = w.detach().clone().set_requires_grad(true);
        Tensor rm3 = rm0.clone(), rv3 = rv0.clone();
        Tensor y3 = ops::batch_norm(x.detach(), w3, Tensor(), rm3, rv3, {training, 0.1f, 1e-5f});
        y3.backward(g);
        check_close(w3.grad(), gw, 1e-3, 1e-3, "grad weight (frozen input)");
      }
}

TEST_CASE("batch_norm gradients match finite differences (training and eval, input, gamma, beta)") {
  Rng rng(14);
  for (const Shape& shape : {Shape{2, 3, 3, 4}, Shape{3, 2, 1, 1}, Shape{1, 4, 2, 3}, Shape{5, 3}})
    for (auto fmt : kFormats)
      for (bool training : {true, false})
        for (bool affine : {true, false}) {
          if (shape.size() == 2 && fmt == MemoryFormat::channels_last) continue;
          CAPTURE(shape_str(shape));
          CAPTURE(static_cast<int>(fmt));
          CAPTURE(training);
          CAPTURE(affine);
          const i64 C = shape[1];
          Tensor x = offset_input(shape, rng, fmt, true);
          Tensor w = affine ? positive_vector(C, rng).set_requires_grad(true) : Tensor();
          Tensor b = affine ? randn({C}, rng).set_requires_grad(true) : Tensor();
          Tensor rm = randn({C}, rng), rv = positive_vector(C, rng);
          const ops::BatchNormOptions o{training, 0.1f, 1e-5f};
          std::vector<Tensor> in{x};
          if (affine) in.insert(in.end(), {w, b});
          check_gradients(
              [&](const std::vector<Tensor>& t) {
                // Training mode would move the running stats on every evaluation; give it none.
                return ops::batch_norm(t[0], affine ? t[1] : Tensor(), affine ? t[2] : Tensor(),
                                       training ? Tensor() : rm, training ? Tensor() : rv, o);
              },
              in, 1e-2, 2e-2, 3e-3);
        }
}

TEST_CASE("batch_norm rejects wrong channel counts and shapes with messages naming them") {
  Tensor x = Tensor::zeros({2, 3, 4, 4});
  Tensor c3 = Tensor::full({3}, 1.0f), c4 = Tensor::full({4}, 1.0f);
  const ops::BatchNormOptions o;
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, c4, c3, c3, c3, o),
                       doctest::Contains("weight must be f32 [3] to match input f32[2, 3, 4, 4], got f32[4]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, c3, c4, c3, c3, o), doctest::Contains("bias"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, c3, c3, c4, c3, o), doctest::Contains("running_mean"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, c3, c3, c3, c4, o), doctest::Contains("running_var"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, c3, c3, c3, Tensor(), o), doctest::Contains("both"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(Tensor::zeros({2, 3, 4}), c3, c3, c3, c3, o),
                       doctest::Contains("[2, 3, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, c3, o),
                       doctest::Contains("more than one value per channel"), Error);
  // Eval mode accepts a single value per channel.
  CHECK_NOTHROW(ops::batch_norm(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, c3, {false, 0.1f, 1e-5f}));
}

// ---------------------------------------------------------------- pooling

TEST_CASE("pooling and upsampling fast paths match the reference (both formats)") {
  Rng rng(21);
  for (const auto& shape : kShapes)
    for (auto fmt : kFormats) {
      CAPTURE(shape_str(shape));
      CAPTURE(static_cast<int>(fmt));
      Tensor x = random_input(shape, rng, fmt, false);
      Tensor y = ops::global_avg_pool(x);
      CHECK(y.format() == x.format());
      check_close(y, ops::ref::global_avg_pool(x), 1e-5, 1e-6, "global_avg_pool");
      check_close(ops::global_max_pool(x), ops::ref::global_max_pool(x), 0.0, 0.0, "global_max_pool");
      Tensor up = ops::upsample_nearest2x(x);
      CHECK(up.format() == x.format());
      check_close(up, ops::ref::upsample_nearest2x(x), 0.0, 0.0, "upsample_nearest2x");
      for (const auto& p : kPoolParams) {
        if (!fits(shape, p)) continue;
        CAPTURE(p.kernel_h);
        CAPTURE(p.stride_h);
        CAPTURE(p.pad_h);
        CAPTURE(p.kernel_w);
        CAPTURE(p.stride_w);
        CAPTURE(p.pad_w);
        Tensor a = ops::avg_pool2d(x, p);
        CHECK(a.format() == x.format());
        check_close(a, ops::ref::avg_pool2d(x, p), 1e-5, 1e-6, "avg_pool2d");
        check_close(ops::max_pool2d(x, p), ops::ref::max_pool2d(x, p), 0.0, 0.0, "max_pool2d");
      }
    }
}

TEST_CASE("pooling and upsampling backward match the definitions (both formats)") {
  Rng rng(22);
  for (const auto& shape : kShapes)
    for (auto fmt : kFormats) {
      CAPTURE(shape_str(shape));
      CAPTURE(static_cast<int>(fmt));
      Tensor x = distinct_input(shape, rng, fmt);
      const ops::Pool2dParams global{shape[2], shape[3], shape[2], shape[3], 0, 0};
      std::vector<std::pair<ops::Pool2dParams, bool>> cases{{global, false}, {global, true}};
      for (const auto& p : kPoolParams)
        if (fits(shape, p)) cases.insert(cases.end(), {{p, false}, {p, true}});
      for (std::size_t k = 0; k < cases.size(); ++k) {
        const auto& [p, max] = cases[k];
        CAPTURE(k);
        x.zero_grad();
        Tensor y = k < 2 ? (max ? ops::global_max_pool(x) : ops::global_avg_pool(x))
                         : (max ? ops::max_pool2d(x, p) : ops::avg_pool2d(x, p));
        // The upstream gradient in the other format exercises the conversion.
        Tensor g = random_input(
            y.shape(), rng,
            fmt == MemoryFormat::contiguous ? MemoryFormat::channels_last : MemoryFormat::contiguous, false);
        y.backward(g);
        CHECK(x.grad().format() == x.format());
        check_close(x.grad(), ref_pool_backward(x, g, p, max), 1e-5, 1e-6,
                    max ? "max backward" : "avg backward");
      }
      x.zero_grad();
      Tensor up = ops::upsample_nearest2x(x);
      Tensor g = random_input(up.shape(), rng, fmt, false);
      up.backward(g);
      // Each input element receives the sum of its 2x2 block.
      const auto gv = g.to_vector();
      std::vector<float> want(static_cast<std::size_t>(x.numel()));
      const i64 H = shape[2], W = shape[3];
      for (i64 plane = 0; plane < shape[0] * shape[1]; ++plane)
        for (i64 h = 0; h < H; ++h)
          for (i64 w = 0; w < W; ++w) {
            auto at = [&](i64 oh, i64 ow) {
              return gv[static_cast<std::size_t>((plane * 2 * H + oh) * 2 * W + ow)];
            };
            want[static_cast<std::size_t>((plane * H + h) * W + w)] =
                (at(2 * h, 2 * w) + at(2 * h, 2 * w + 1)) + (at(2 * h + 1, 2 * w) + at(2 * h + 1, 2 * w + 1));
          }
      check_close(x.grad(), Tensor::from_vector(shape, want), 1e-6, 1e-6, "upsample backward");
    }
}

TEST_CASE("pooling and upsampling gradients match finite differences") {
  Rng rng(23);
  for (const Shape& shape : {Shape{2, 3, 5, 4}, Shape{1, 2, 1, 1}, Shape{1, 5, 3, 3}})
    for (auto fmt : kFormats) {
      CAPTURE(shape_str(shape));
      CAPTURE(static_cast<int>(fmt));
      auto fd = [&](const std::function<Tensor(const Tensor&)>& op) {
        check_gradients([&](const std::vector<Tensor>& t) { return op(t[0]); },
                        {distinct_input(shape, rng, fmt)});
      };
      fd([](const Tensor& x) { return ops::global_avg_pool(x); });
      fd([](const Tensor& x) { return ops::global_max_pool(x); });
      fd([](const Tensor& x) { return ops::upsample_nearest2x(x); });
      for (const auto& p : kPoolParams) {
        if (!fits(shape, p)) continue;
        fd([&](const Tensor& x) { return ops::avg_pool2d(x, p); });
        fd([&](const Tensor& x) { return ops::max_pool2d(x, p); });
      }
    }
}

TEST_CASE("pooling rejects bad inputs and parameters with clear messages") {
  Tensor x = Tensor::zeros({1, 2, 4, 4});
  CHECK_THROWS_WITH_AS(ops::global_avg_pool(Tensor::zeros({2, 4})), doctest::Contains("[2, 4]"), Error);
  CHECK_THROWS_WITH_AS(ops::upsample_nearest2x(Tensor::zeros({2, 4, 3})), doctest::Contains("[2, 4, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::max_pool2d(x, {2, 2, 2, 2, 2, 0}), doctest::Contains("padding must be smaller"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::avg_pool2d(x, {5, 5, 1, 1, 0, 0}),
                       doctest::Contains("smaller than the 5x5 kernel"), Error);
  CHECK_THROWS_AS(ops::avg_pool2d(x, {2, 2, 0, 2, 0, 0}), Error);
}

TEST_CASE("batch_norm with fused ReLU equals batch_norm then relu, forward and backward") {
  Rng rng(21);
  for (const Shape& shape : {Shape{2, 3, 5, 7}, Shape{4, 16, 8, 8}, Shape{3, 5}})
    for (auto fmt : kFormats)
      for (bool training : {true, false}) {
        if (shape.size() == 2 && fmt == MemoryFormat::channels_last) continue;
        CAPTURE(shape_str(shape));
        CAPTURE(training);
        const i64 C = shape[1];
        Tensor x = offset_input(shape, rng, fmt, true);
        Tensor w = positive_vector(C, rng).set_requires_grad(true);
        Tensor b = randn({C}, rng).set_requires_grad(true);
        Tensor rm = randn({C}, rng), rv = positive_vector(C, rng);
        ops::BatchNormOptions plain{training, 0.1f, 1e-5f};
        ops::BatchNormOptions fused = plain;
        fused.fuse_relu = true;
        Tensor rm2 = rm.clone(), rv2 = rv.clone();
        Tensor y_fused = ops::batch_norm(x, w, b, rm, rv, fused);
        Tensor y_plain = ops::relu(ops::batch_norm(x, w, b, rm2, rv2, plain));
        check_close(y_fused, y_plain, 1e-5, 1e-6, "forward");
        check_close(y_fused, ops::ref::batch_norm(x, w, b, rm.clone(), rv.clone(), fused), 1e-4, 1e-5,
                    "reference");
        check_close(rm, rm2, 0, 0, "running mean");
        Tensor g = randn(shape, rng);
        y_fused.backward(g);
        auto gx = x.grad(), gw = w.grad(), gb = b.grad();
        x.zero_grad(), w.zero_grad(), b.zero_grad();
        y_plain.backward(g);
        check_close(gx, x.grad(), 1e-4, 1e-5, "dx");
        check_close(gw, w.grad(), 1e-4, 1e-5, "dgamma");
        check_close(gb, b.grad(), 1e-4, 1e-5, "dbeta");
        // (No finite differences here: the ReLU kink sits inside every step; the composed ops are checked
        // above.)
      }
}
