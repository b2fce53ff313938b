// Naive reductions over logical (row-major) indices in double: the oracle for ops/reduce.cpp.
#include <limits>

#include "ops/reduce.h"

namespace zsq::ops::ref {

namespace {
struct Mapping {
  Shape out_shape;
  std::vector<std::size_t> out_index;  // for every logical input element
  std::int64_t out_numel = 1, count = 1;
};

Mapping map_axes(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  const auto nd = x.dim();
  const Shape& s = x.shape();
  std::vector<bool> red(static_cast<std::size_t>(nd), axes.empty());
  for (auto a : axes) {
    ZSQ_CHECK(a >= -nd && a < nd, "ref reduce: axis {} out of range for {}", a, x.str());
    red[static_cast<std::size_t>(a < 0 ? a + nd : a)] = true;
  }
  Mapping m;
  Shape kept(s);
  for (std::size_t d = 0; d < s.size(); ++d) {
    if (red[d]) {
      kept[d] = 1;
      m.count *= s[d];
    } else {
      m.out_shape.push_back(s[d]);
    }
  }
  if (keepdim) m.out_shape = kept;
  m.out_numel = shape_numel(kept);
  m.out_index.resize(static_cast<std::size_t>(x.numel()));
  std::vector<std::int64_t> idx(s.size(), 0);
  for (std::size_t i = 0; i < m.out_index.size(); ++i) {
    std::int64_t o = 0;
    for (std::size_t d = 0; d < s.size(); ++d) o = o * kept[d] + (red[d] ? 0 : idx[d]);
    m.out_index[i] = static_cast<std::size_t>(o);
    for (auto d = static_cast<std::ptrdiff_t>(s.size()) - 1; d >= 0; --d) {
      auto du = static_cast<std::size_t>(d);
      if (++idx[du] < s[du]) break;
      idx[du] = 0;
    }
  }
  return m;
}

std::vector<double> sums(const Mapping& m, const std::vector<float>& v) {
  std::vector<double> acc(static_cast<std::size_t>(m.out_numel), 0.0);
  for (std::size_t i = 0; i < v.size(); ++i) acc[m.out_index[i]] += v[i];
  return acc;
}

Tensor make(const Mapping& m, const std::vector<double>& acc, double scale) {
  std::vector<float> out(acc.size());
  for (std::size_t i = 0; i < acc.size(); ++i) out[i] = static_cast<float>(acc[i] * scale);
  return Tensor::from_vector(m.out_shape, out);
}
}  // namespace

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  auto m = map_axes(x, axes, keepdim);
  return make(m, sums(m, x.to_vector()), 1.0);
}

Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  auto m = map_axes(x, axes, keepdim);
  return make(m, sums(m, x.to_vector()), 1.0 / static_cast<double>(m.count));
}

Tensor variance(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim, bool unbiased) {
  auto m = map_axes(x, axes, keepdim);
  auto v = x.to_vector();
  auto mu = sums(m, v);
  for (auto& e : mu) e /= static_cast<double>(m.count);
  std::vector<double> acc(mu.size(), 0.0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double d = v[i] - mu[m.out_index[i]];
    acc[m.out_index[i]] += d * d;
  }
  return make(m, acc, 1.0 / (static_cast<double>(m.count) - (unbiased ? 1.0 : 0.0)));
}

}  // namespace zsq::ops::ref
