// Naive triple loops in double over logical values: the oracle for the oneDNN matmul path.
#include "ops/linear.h"

namespace zsq::ops::ref {

namespace {
// C[i, j] = sum_k A(i, k) * B(k, j) (+ bias[j]) with A, B read through index functions.
template <typename FA, typename FB>
Tensor product(std::int64_t n, std::int64_t k, std::int64_t m, FA a, FB b, const Tensor& bias) {
  std::vector<float> bv =
      bias.defined() ? bias.to_vector() : std::vector<float>(static_cast<std::size_t>(m), 0.0f);
  std::vector<float> out(static_cast<std::size_t>(n * m));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < m; ++j) {
      double acc = bv[static_cast<std::size_t>(j)];
      for (std::int64_t t = 0; t < k; ++t) acc += static_cast<double>(a(i, t)) * b(t, j);
      out[static_cast<std::size_t>(i * m + j)] = static_cast<float>(acc);
    }
  return Tensor::from_vector({n, m}, out);
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const auto N = x.size(0), K = x.size(1), M = weight.size(0);
  auto xv = x.to_vector();
  auto wv = weight.to_vector();
  return product(
      N, K, M, [&](auto i, auto t) { return xv[static_cast<std::size_t>(i * K + t)]; },
      [&](auto t, auto j) { return wv[static_cast<std::size_t>(j * K + t)]; }, bias);
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  const auto N = a.size(0), K = a.size(1), M = b.size(1);
  auto av = a.to_vector();
  auto bv = b.to_vector();
  return product(
      N, K, M, [&](auto i, auto t) { return av[static_cast<std::size_t>(i * K + t)]; },
      [&](auto t, auto j) { return bv[static_cast<std::size_t>(t * M + j)]; }, Tensor());
}

Tensor linear_backward_data(const Tensor& grad_out, const Tensor& weight) {
  return matmul(grad_out, weight);
}

void linear_backward_weights(const Tensor& grad_out, const Tensor& x, bool with_bias, Tensor& grad_weight,
                             Tensor& grad_bias) {
  const auto N = grad_out.size(0), M = grad_out.size(1), K = x.size(1);
  auto gv = grad_out.to_vector();
  auto xv = x.to_vector();
  grad_weight = product(
      M, N, K, [&](auto j, auto n) { return gv[static_cast<std::size_t>(n * M + j)]; },
      [&](auto n, auto t) { return xv[static_cast<std::size_t>(n * K + t)]; }, Tensor());
  if (with_bias) {
    std::vector<float> b(static_cast<std::size_t>(M));
    for (std::int64_t j = 0; j < M; ++j) {
      double acc = 0.0;
      for (std::int64_t n = 0; n < N; ++n) acc += gv[static_cast<std::size_t>(n * M + j)];
      b[static_cast<std::size_t>(j)] = static_cast<float>(acc);
    }
    grad_bias = Tensor::from_vector({M}, b);
  }
}

}  // namespace zsq::ops::ref
