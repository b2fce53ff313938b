// Naive softmax and loss loops over logical values in double: the oracle for ops/loss.cpp.
#include <cmath>
#include <limits>

#include "ops/loss.h"

namespace zsq::ops::ref {

namespace {
// log-softmax of each row of a row-major [N, K] matrix, in double.
std::vector<double> log_softmax_rows(const std::vector<float>& x, std::int64_t N, std::int64_t K) {
  std::vector<double> out(x.size());
  for (std::int64_t n = 0; n < N; ++n) {
    double m = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < K; ++j)
      m = std::max(m, static_cast<double>(x[static_cast<std::size_t>(n * K + j)]));
    double s = 0.0;
    for (std::int64_t j = 0; j < K; ++j) s += std::exp(x[static_cast<std::size_t>(n * K + j)] - m);
    const double lse = m + std::log(s);
    for (std::int64_t j = 0; j < K; ++j)
      out[static_cast<std::size_t>(n * K + j)] = x[static_cast<std::size_t>(n * K + j)] - lse;
  }
  return out;
}

Tensor scalar(double v) {
  return Tensor::scalar(static_cast<float>(v));
}
}  // namespace

Tensor softmax(const Tensor& x) {
  auto l = log_softmax_rows(x.to_vector(), x.size(0), x.size(1));
  std::vector<float> out(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) out[i] = static_cast<float>(std::exp(l[i]));
  return Tensor::from_vector(x.shape(), out);
}

Tensor log_softmax(const Tensor& x) {
  auto l = log_softmax_rows(x.to_vector(), x.size(0), x.size(1));
  return Tensor::from_vector(x.shape(), std::vector<float>(l.begin(), l.end()));
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  const auto N = logits.size(0), K = logits.size(1);
  auto l = log_softmax_rows(logits.to_vector(), N, K);
  auto y = labels.to_vector();
  double total = 0.0;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t j = 0; j < K; ++j) {
      const double q =
          (j == static_cast<std::int64_t>(y[static_cast<std::size_t>(n)]) ? 1.0 - label_smoothing : 0.0) +
          static_cast<double>(label_smoothing) / static_cast<double>(K);
      total -= q * l[static_cast<std::size_t>(n * K + j)];
    }
  return scalar(total / static_cast<double>(N));
}

Tensor kl_div(const Tensor& log_input, const Tensor& target) {
  auto x = log_input.to_vector();
  auto t = target.to_vector();
  double total = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (t[i] != 0.0f) total += static_cast<double>(t[i]) * (std::log(static_cast<double>(t[i])) - x[i]);
  return scalar(total / static_cast<double>(log_input.size(0)));
}

Tensor mse(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector();
  auto vb = b.to_vector();
  double total = 0.0;
  for (std::size_t i = 0; i < va.size(); ++i) total += (static_cast<double>(va[i]) - vb[i]) * (va[i] - vb[i]);
  return scalar(total / static_cast<double>(va.size()));
}

Tensor l1(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector();
  auto vb = b.to_vector();
  double total = 0.0;
  for (std::size_t i = 0; i < va.size(); ++i) total += std::abs(static_cast<double>(va[i]) - vb[i]);
  return scalar(total / static_cast<double>(va.size()));
}

Tensor embedding(const Tensor& table, const Tensor& indices) {
  const auto D = table.size(1);
  auto tv = table.to_vector();
  auto iv = indices.to_vector();
  std::vector<float> out;
  for (float i : iv)
    for (std::int64_t j = 0; j < D; ++j)
      out.push_back(tv[static_cast<std::size_t>(static_cast<std::int64_t>(i) * D + j)]);
  Shape shape = indices.shape();
  shape.push_back(D);
  return Tensor::from_vector(shape, out);
}

}  // namespace zsq::ops::ref
