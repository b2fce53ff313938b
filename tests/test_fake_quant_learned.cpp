// ops::fake_quant_learned_range: the forward equals the fixed-range quantizer bit for bit; the backward
// against a naive loop, against central differences of the function the LSQ gradient differentiates,
// and in use (Adam on the range alone finds the MSE-optimal clip of a known distribution).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "engine/optim.h"
#include "ops/fake_quant.h"
#include "ops/loss.h"
#include "tests/testing.h"

using namespace zsq;

namespace {

// Post-ReLU-like input with some values beyond any sensible range and some exact zeros.
Tensor activations(const Shape& shape, Rng& rng, MemoryFormat format) {
  Tensor x = randn(shape, rng);
  float* p = x.f32();
  for (std::int64_t i = 0; i < x.numel(); ++i)
    p[i] = i % 7 == 0 ? 0.0f : std::abs(p[i]) * (i % 11 == 0 ? 4.0f : 1.0f);
  return format == MemoryFormat::contiguous ? x : x.to_format(format);
}

struct ReferenceGrad {
  std::vector<double> dx;  // logical order
  double dhi = 0.0;
};

// The naive loop, in double where it sums: v = x / delta (f32 as the forward), inside [0, L] the input
// gradient passes and the range gets g * (round(v) - v); above it gets g * L; below nothing.
ReferenceGrad reference_backward(const Tensor& x, const Tensor& g, float hi, int bits) {
  const auto xs = x.to_vector(), gs = g.to_vector();
  const auto grid = ops::fake_quant_grid(0.0f, hi, {bits, false, false});
  ReferenceGrad r;
  r.dx.resize(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float v = xs[i] / grid.delta;
    if (v < 0.0f) continue;
    if (v > grid.qmax) {
      r.dhi += static_cast<double>(gs[i]) * grid.qmax;
      continue;
    }
    r.dx[i] = gs[i];
    r.dhi += static_cast<double>(gs[i]) * (std::nearbyint(v) - v);
  }
  r.dhi /= grid.qmax;
  return r;
}

}  // namespace

TEST_CASE("learned range: forward is the fixed-range quantizer on [0, hi], bit for bit") {
  Rng rng(1);
  for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last})
    for (int bits : {2, 3, 4, 8}) {
      Tensor x = activations({3, 5, 6, 7}, rng, format);
      Tensor hi = Tensor::from_vector({1}, {2.3f});
      const auto got = ops::fake_quant_learned_range(x, hi, bits);
      const auto want = ops::fake_quant_per_tensor(x, 0.0f, 2.3f, {bits, false, false});
      CHECK(got.format() == x.format());
      const auto a = got.to_vector(), b = want.to_vector();
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    }
}

TEST_CASE("learned range: backward equals the reference loop (both layouts, large tensor, format of g)") {
  Rng rng(2);
  for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last})
    for (const Shape& shape : {Shape{2, 3, 4, 5}, Shape{16, 16, 32, 32}}) {
      Tensor x = activations(shape, rng, format);
      x.set_requires_grad(true);
      Tensor hi = Tensor::from_vector({1}, {1.7f});
      hi.set_requires_grad(true);
      Tensor g = randn(shape, rng);  // contiguous: the op must read it in x's order
      ops::fake_quant_learned_range(x, hi, 3).backward(g);
      const auto ref = reference_backward(x, g, 1.7f, 3);
      const auto dx = x.grad().to_vector();
      for (std::size_t i = 0; i < dx.size(); ++i)
        REQUIRE_MESSAGE(dx[i] == static_cast<float>(ref.dx[i]), "dx differs at " << i);
      CHECK(hi.grad().to_vector()[0] == doctest::Approx(ref.dhi).epsilon(1e-5));
      CHECK(std::abs(ref.dhi) > 1.0);  // not a vacuous comparison
    }
}

TEST_CASE("learned range: gradients match central differences of the straight-through surrogate") {
  // The LSQ gradient is the exact derivative of F(x, hi) = sum_i u_i * f_i with, for each element,
  // f = x + delta * r (r = round(v) - v frozen at the evaluation point) inside the grid, delta * L above
  // it and 0 below. Small steps keep every element in its region, so the differences are clean.
  Rng rng(3);
  const int bits = 3;
  const float hi0 = 1.3f;
  Tensor x = activations({2, 3, 5, 5}, rng, MemoryFormat::contiguous);
  Tensor u = randn(x.shape(), rng);
  const auto xs = x.to_vector(), us = u.to_vector();
  const auto grid0 = ops::fake_quant_grid(0.0f, hi0, {bits, false, false});
  std::vector<float> r(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float v = xs[i] / grid0.delta;
    r[i] = std::nearbyint(v) - v;
  }
  auto surrogate = [&](const std::vector<double>& xv, double hi) {
    const double delta = hi / grid0.qmax, delta0 = grid0.delta;
    double s = 0.0;
    for (std::size_t i = 0; i < xv.size(); ++i) {
      const double v0 = xs[i] / delta0;  // region decided at the evaluation point
      const double f = v0 < 0 ? 0.0 : (v0 > grid0.qmax ? delta * grid0.qmax : xv[i] + delta * r[i]);
      s += us[i] * f;
    }
    return s;
  };
  x.set_requires_grad(true);
  Tensor hi = Tensor::from_vector({1}, {hi0});
  hi.set_requires_grad(true);
  ops::fake_quant_learned_range(x, hi, bits).backward(u);
  std::vector<double> xd(xs.begin(), xs.end());
  const double eps = 1e-4;
  const double fd_hi = (surrogate(xd, hi0 + eps) - surrogate(xd, hi0 - eps)) / (2 * eps);
  CHECK(hi.grad().to_vector()[0] == doctest::Approx(fd_hi).epsilon(1e-3));
  const auto dx = x.grad().to_vector();
  for (std::size_t i = 0; i < xd.size(); i += 7) {
    auto plus = xd, minus = xd;
    plus[i] += eps, minus[i] -= eps;
    const double fd = (surrogate(plus, hi0) - surrogate(minus, hi0)) / (2 * eps);
    CHECK(dx[i] == doctest::Approx(fd).epsilon(1e-3).scale(1.0));
  }
}

TEST_CASE("learned range: Adam on hi alone finds the MSE-optimal clip of |N(0, 1)| at 3 bits") {
  Rng rng(4);
  Tensor x = randn({64, 1024}, rng);
  for (std::int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = std::abs(x.f32()[i]);
  // Brute-force optimum over a fine grid of hi, with the quantizer itself.
  float best_hi = 0.0f;
  double best = INFINITY;
  for (float h = 0.5f; h <= 8.0f; h += 0.01f) {
    const auto q = ops::fake_quant_per_tensor(x, 0.0f, h, {3, false, false}).to_vector();
    const auto xs = x.to_vector();
    double e = 0.0;
    for (std::size_t i = 0; i < xs.size(); ++i) e += (q[i] - xs[i]) * static_cast<double>(q[i] - xs[i]);
    if (e < best) best = e, best_hi = h;
  }
  Tensor hi = Tensor::from_vector({1}, {7.5f});  // far too wide, as a min/max range with outliers is
  hi.set_requires_grad(true);
  Adam adam({hi}, {.lr = 0.05f});
  for (int step = 0; step < 400; ++step) {
    adam.zero_grad();
    ops::mse(ops::fake_quant_learned_range(x, hi, 3), x).backward();
    adam.step();
    if (step == 300) adam.set_lr(0.005f);
  }
  const float learned = hi.to_vector()[0];
  CAPTURE(best_hi);
  CHECK(learned == doctest::Approx(best_hi).epsilon(0.08));
  CHECK(learned < 0.6f * 7.5f);
}

TEST_CASE("learned range: errors name what is wrong") {
  Tensor x = Tensor::zeros({4, 3});
  CHECK_THROWS_WITH_AS(ops::fake_quant_learned_range(x, Tensor::from_vector({2}, {1, 2}), 3),
                       doctest::Contains("one element"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_learned_range(x, Tensor::from_vector({1}, {-1.0f}), 3),
                       doctest::Contains("hi > 0"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_learned_range(x, Tensor::from_vector({1}, {NAN}), 3),
                       doctest::Contains("finite"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_learned_range(x, Tensor::from_vector({1}, {1.0f}), 1),
                       doctest::Contains("bits"), Error);
  CHECK_THROWS_AS(ops::fake_quant_learned_range(Tensor(), Tensor::from_vector({1}, {1.0f}), 3), Error);
}

// ---- learned per-channel weight clip ratios ----

namespace {
Tensor ratios(std::vector<float> r) {
  return Tensor::from_vector({static_cast<std::int64_t>(r.size())}, r);
}

// Naive loop over logical values: per channel, the grid of [r min, r max] and the backward formulas.
void reference_ratio_backward(const Tensor& w, const Tensor& g, const std::vector<float>& r,
                              const ops::FakeQuantSpec& spec, std::vector<double>& dw,
                              std::vector<double>& dr) {
  const auto ws = w.to_vector(), gs = g.to_vector();
  const auto channels = w.size(0), inner = w.numel() / channels;
  dw.assign(ws.size(), 0.0);
  dr.assign(static_cast<std::size_t>(channels), 0.0);
  for (std::int64_t c = 0; c < channels; ++c) {
    float mn = ws[c * inner], mx = ws[c * inner];
    for (std::int64_t i = 0; i < inner; ++i)
      mn = std::min(mn, ws[c * inner + i]), mx = std::max(mx, ws[c * inner + i]);
    const auto grid = ops::fake_quant_grid(r[c] * mn, r[c] * mx, spec);
    for (std::int64_t i = 0; i < inner; ++i) {
      const auto k = static_cast<std::size_t>(c * inner + i);
      const float v = ws[k] / grid.delta;
      double factor;
      if (v < grid.qmin) {
        factor = grid.qmin;
      } else if (v > grid.qmax) {
        factor = grid.qmax;
      } else {
        factor = std::nearbyint(v) - v;
        dw[k] = gs[k];
      }
      dr[static_cast<std::size_t>(c)] += gs[k] * factor * grid.delta / r[c];
    }
  }
}
}  // namespace

TEST_CASE("weight clip ratios: forward is the per-channel quantizer on [r min, r max], bit for bit") {
  Rng rng(5);
  for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last})
    for (bool symmetric : {false, true}) {
      Tensor w = randn({6, 3, 3, 3}, rng);
      if (format == MemoryFormat::channels_last) w = w.to_format(format);
      const std::vector<float> r{1.0f, 0.9f, 0.75f, 0.5f, 0.31f, 1.0f};
      const ops::FakeQuantSpec spec{3, symmetric, false};
      const auto got = ops::fake_quant_per_channel_ratio(w, ratios(r), spec);
      auto [lo, hi] = ops::channel_min_max(w);
      for (std::size_t c = 0; c < r.size(); ++c) lo.f32()[c] *= r[c], hi.f32()[c] *= r[c];
      const auto want = ops::fake_quant_per_channel(w, lo, hi, spec);
      CHECK(got.format() == w.format());
      CHECK(got.to_vector() == want.to_vector());
      const auto [elo, ehi] = ops::ratio_channel_ranges(w, ratios(r));
      CHECK(elo.to_vector() == lo.to_vector());
      CHECK(ehi.to_vector() == hi.to_vector());
      // Ratio 1 everywhere is the plain min/max quantizer.
      CHECK(ops::fake_quant_per_channel_ratio(w, ratios(std::vector<float>(6, 1.0f)), spec).to_vector() ==
            ops::fake_quant_per_channel_minmax(w, spec).to_vector());
    }
}

TEST_CASE("weight clip ratios: backward equals the reference loop") {
  Rng rng(6);
  for (auto format : {MemoryFormat::contiguous, MemoryFormat::channels_last})
    for (bool symmetric : {false, true}) {
      Tensor w = randn({16, 8, 3, 3}, rng);
      if (format == MemoryFormat::channels_last) w = w.to_format(format);
      w.set_requires_grad(true);
      std::vector<float> r(16);
      for (std::size_t c = 0; c < r.size(); ++c) r[c] = 0.4f + 0.6f * static_cast<float>(c) / 15.0f;
      Tensor ratio = ratios(r);
      ratio.set_requires_grad(true);
      Tensor g = randn(w.shape(), rng);
      const ops::FakeQuantSpec spec{3, symmetric, false};
      ops::fake_quant_per_channel_ratio(w, ratio, spec).backward(g);
      std::vector<double> dw, dr;
      reference_ratio_backward(w, g, r, spec, dw, dr);
      const auto got_dw = w.grad().to_vector(), got_dr = ratio.grad().to_vector();
      for (std::size_t i = 0; i < dw.size(); ++i)
        REQUIRE_MESSAGE(got_dw[i] == static_cast<float>(dw[i]), "dw at " << i);
      for (std::size_t c = 0; c < dr.size(); ++c)
        CHECK(got_dr[c] == doctest::Approx(dr[c]).epsilon(1e-5).scale(1e-3));
      CHECK(std::abs(dr[0]) > 1e-3);
    }
}

TEST_CASE("weight clip ratios: the ratio gradient matches central differences of the surrogate") {
  // As for the activation range: with k = round(v) - v frozen inside the grid (qmin / qmax outside),
  // channel c's output is w + delta(r) * k inside and delta(r) * qmin|qmax outside, delta linear in r.
  Rng rng(7);
  Tensor w = randn({4, 2, 3, 3}, rng);
  const std::vector<float> r0{0.95f, 0.8f, 0.6f, 0.45f};
  Tensor u = randn(w.shape(), rng);
  const ops::FakeQuantSpec spec{3, false, false};
  Tensor ratio = ratios(r0);
  ratio.set_requires_grad(true);
  ops::fake_quant_per_channel_ratio(w, ratio, spec).backward(u);
  const auto analytic = ratio.grad().to_vector();
  const auto ws = w.to_vector(), us = u.to_vector();
  const std::int64_t inner = 18;
  for (std::int64_t c = 0; c < 4; ++c) {
    float mn = ws[c * inner], mx = ws[c * inner];
    for (std::int64_t i = 0; i < inner; ++i)
      mn = std::min(mn, ws[c * inner + i]), mx = std::max(mx, ws[c * inner + i]);
    const auto grid = ops::fake_quant_grid(r0[c] * mn, r0[c] * mx, spec);
    auto surrogate = [&](double r) {
      const double delta = static_cast<double>(grid.delta) * r / r0[c];
      double s = 0.0;
      for (std::int64_t i = 0; i < inner; ++i) {
        const float v = ws[c * inner + i] / grid.delta;
        const double f = v < grid.qmin   ? delta * grid.qmin
                         : v > grid.qmax ? delta * grid.qmax
                                         : ws[c * inner + i] + delta * (std::nearbyint(v) - v);
        s += us[c * inner + i] * f;
      }
      return s;
    };
    const double eps = 1e-4;
    CHECK(analytic[c] ==
          doctest::Approx((surrogate(r0[c] + eps) - surrogate(r0[c] - eps)) / (2 * eps)).epsilon(1e-3));
  }
}

TEST_CASE("weight clip ratios: Adam on the ratios alone finds each channel's MSE-optimal clip at 3 bits") {
  Rng rng(8);
  Tensor w = randn({8, 4096}, rng);  // Gaussian rows: the optimal 3-bit clip is well inside min/max
  const ops::FakeQuantSpec spec{3, false, false};
  Tensor ratio = ratios(std::vector<float>(8, 1.0f));
  ratio.set_requires_grad(true);
  Adam adam({ratio}, {.lr = 0.01f});
  for (int step = 0; step < 300; ++step) {
    adam.zero_grad();
    ops::mse(ops::fake_quant_per_channel_ratio(w, ratio, spec), w).backward();
    adam.step();
    if (step == 200) adam.set_lr(0.001f);
  }
  const auto learned = ratio.to_vector();
  const auto ws = w.to_vector();
  for (std::int64_t c = 0; c < 8; ++c) {
    // Brute force over ratios on a fine grid, with the quantizer itself.
    double best = INFINITY;
    float best_r = 1.0f;
    for (float rr = 0.2f; rr <= 1.0f; rr += 0.0025f) {
      std::vector<float> one(8, 1.0f);
      one[static_cast<std::size_t>(c)] = rr;
      const auto q = ops::fake_quant_per_channel_ratio(w, ratios(one), spec).to_vector();
      double e = 0.0;
      for (std::int64_t i = c * 4096; i < (c + 1) * 4096; ++i)
        e += (q[i] - ws[i]) * static_cast<double>(q[i] - ws[i]);
      if (e < best) best = e, best_r = rr;
    }
    CAPTURE(c);
    CHECK(learned[c] == doctest::Approx(best_r).epsilon(0.08));
    CHECK(learned[c] < 0.85f);
  }
}

TEST_CASE("weight clip ratios: errors name what is wrong") {
  Tensor w = Tensor::zeros({4, 3});
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel_ratio(w, ratios({1, 1, 1}), {3, false, false}),
                       doctest::Contains("ratio must be f32 [4]"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel_ratio(w, ratios({1, 1, 0, 1}), {3, false, false}),
                       doctest::Contains("ratio[2]"), Error);
  CHECK_THROWS_WITH_AS(ops::fake_quant_per_channel_ratio(w, ratios({1, NAN, 1, 1}), {3, false, false}),
                       doctest::Contains("ratio[1]"), Error);
}
