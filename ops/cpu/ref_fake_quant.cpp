// Naive fake-quantization loops over logical (row-major) values: the oracle the AVX-512 kernels are
// tested against. The grid of each range comes from fake_quant_grid() (double math for the step); the
// per-element math is the f32 formula of ops/fake_quant.h written out with std::nearbyint.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/fake_quant.h"

namespace zsq::ops::ref {
namespace {

float quantize(float x, const FakeQuantGrid& g) {
  float q = std::nearbyint(x / g.delta);  // round half to even in the default rounding mode
  q = q < g.qmin ? g.qmin : q;
  q = q > g.qmax ? g.qmax : q;
  return q * g.delta;
}

std::vector<float> values_of(const Tensor& r) {
  return r.defined() ? r.to_vector() : std::vector<float>{};
}

// Applies f(value, channel) to every logical element; channel = flat index / (numel / size(0)).
template <typename F>
Tensor per_channel_map(const Tensor& x, std::int64_t channels, F f) {
  auto v = x.to_vector();
  const auto n = static_cast<std::int64_t>(v.size());
  const std::int64_t inner = channels == 0 ? 0 : n / channels;
  for (std::int64_t i = 0; i < n; ++i)
    v[static_cast<std::size_t>(i)] = f(v[static_cast<std::size_t>(i)], i / inner, i);
  return Tensor::from_vector(x.shape(), v, x.format());
}

}  // namespace

Tensor fake_quant_per_tensor(const Tensor& x, float lo, float hi, const FakeQuantSpec& spec) {
  const FakeQuantGrid g = fake_quant_grid(lo, hi, spec);
  return per_channel_map(x, 1, [&](float v, std::int64_t, std::int64_t) { return quantize(v, g); });
}

Tensor fake_quant_per_channel(const Tensor& x, const Tensor& lo, const Tensor& hi,
                              const FakeQuantSpec& spec) {
  const auto l = values_of(lo), h = values_of(hi);
  ZSQ_CHECK(x.dim() >= 1 && static_cast<std::int64_t>(l.size()) == x.size(0) && l.size() == h.size(),
            "ref::fake_quant_per_channel: lo {} / hi {} do not match x {}", lo.str(), hi.str(), x.str());
  std::vector<FakeQuantGrid> grids;
  for (std::size_t c = 0; c < l.size(); ++c) grids.push_back(fake_quant_grid(l[c], h[c], spec));
  return per_channel_map(x, x.size(0), [&](float v, std::int64_t c, std::int64_t) {
    return quantize(v, grids[static_cast<std::size_t>(c)]);
  });
}

std::pair<Tensor, Tensor> channel_min_max(const Tensor& w) {
  ZSQ_CHECK(w.dim() >= 1, "ref::channel_min_max: w needs dim 0, got {}", w.str());
  const auto channels = w.size(0);
  const auto v = w.to_vector();
  const std::int64_t inner = channels == 0 ? 0 : w.numel() / channels;
  std::vector<float> mn(static_cast<std::size_t>(channels)), mx(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c) {
    float lo = inner == 0 ? 0.0f : std::numeric_limits<float>::infinity();
    float hi = inner == 0 ? 0.0f : -std::numeric_limits<float>::infinity();
    for (std::int64_t i = 0; i < inner; ++i) {
      const float e = v[static_cast<std::size_t>(c * inner + i)];
      lo = std::min(lo, e);
      hi = std::max(hi, e);
    }
    mn[static_cast<std::size_t>(c)] = lo + 0.0f;  // -0.0 -> +0.0
    mx[static_cast<std::size_t>(c)] = hi + 0.0f;
  }
  return {Tensor::from_vector({channels}, mn), Tensor::from_vector({channels}, mx)};
}

Tensor fake_quant_per_channel_minmax(const Tensor& w, const FakeQuantSpec& spec) {
  auto [mn, mx] = ref::channel_min_max(w);
  return ref::fake_quant_per_channel(w, mn, mx, spec);
}

Tensor fake_quant_clipped_ste_backward(const Tensor& grad_out, const Tensor& x, const Tensor& lo,
                                       const Tensor& hi, const FakeQuantSpec& spec) {
  ZSQ_CHECK(grad_out.shape() == x.shape(), "ref::fake_quant_clipped_ste_backward: grad {} vs x {}",
            grad_out.str(), x.str());
  const auto l = values_of(lo), h = values_of(hi);
  const bool per_tensor = l.size() == 1 && h.size() == 1;
  ZSQ_CHECK(per_tensor ||
                (x.dim() >= 1 && static_cast<std::int64_t>(l.size()) == x.size(0) && l.size() == h.size()),
            "ref::fake_quant_clipped_ste_backward: lo {} / hi {} do not match x {}", lo.str(), hi.str(),
            x.str());
  std::vector<FakeQuantGrid> grids;
  for (std::size_t c = 0; c < l.size(); ++c) grids.push_back(fake_quant_grid(l[c], h[c], spec));
  const auto g = grad_out.to_vector();
  return per_channel_map(x, per_tensor ? 1 : x.size(0), [&](float v, std::int64_t c, std::int64_t i) {
    const FakeQuantGrid& grid = grids[static_cast<std::size_t>(c)];
    return v >= grid.lo_edge() && v <= grid.hi_edge() ? g[static_cast<std::size_t>(i)] : 0.0f;
  });
}

}  // namespace zsq::ops::ref
