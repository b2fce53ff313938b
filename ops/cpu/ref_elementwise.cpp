// Naive element-wise loops over logical (row-major) values: the oracle the fast paths are tested against.
#include <cmath>

#include "ops/elementwise.h"

namespace zsq::ops::ref {
namespace {
template <typename F>
Tensor unary(const Tensor& x, F f) {
  auto v = x.to_vector();
  for (auto& e : v) e = f(e);
  return Tensor::from_vector(x.shape(), v);
}
template <typename F>
Tensor binary(const Tensor& a, const Tensor& b, F f) {
  ZSQ_CHECK(a.shape() == b.shape(), "ref binary op: {} vs {}", a.str(), b.str());
  auto va = a.to_vector();
  auto vb = b.to_vector();
  for (std::size_t i = 0; i < va.size(); ++i) va[i] = f(va[i], vb[i]);
  return Tensor::from_vector(a.shape(), va);
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(a, b, [](float x, float y) { return x + y; });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary(a, b, [](float x, float y) { return x - y; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(a, b, [](float x, float y) { return x * y; });
}
Tensor affine_scalar(const Tensor& a, float scale, float shift) {
  return unary(a, [=](float x) { return x * scale + shift; });
}
Tensor relu(const Tensor& x) {
  return unary(x, [](float v) { return v > 0.0f ? v : 0.0f; });
}
Tensor add_relu(const Tensor& a, const Tensor& b) {
  return binary(a, b, [](float x, float y) { return x + y > 0.0f ? x + y : 0.0f; });
}
Tensor leaky_relu(const Tensor& x, float slope) {
  return unary(x, [=](float v) { return v > 0.0f ? v : v * slope; });
}
Tensor tanh(const Tensor& x) {
  return unary(x, [](float v) { return std::tanh(v); });
}
Tensor sqrt(const Tensor& x) {
  return unary(x, [](float v) { return std::sqrt(v); });
}
Tensor log(const Tensor& x) {
  return unary(x, [](float v) { return std::log(v); });
}
Tensor exp(const Tensor& x) {
  return unary(x, [](float v) { return std::exp(v); });
}

}  // namespace zsq::ops::ref
