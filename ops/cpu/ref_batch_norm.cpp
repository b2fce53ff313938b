// Naive batch normalization over logical (row-major) values with double accumulation and a two-pass
// variance: the oracle for the oneDNN path, including the running-stat update.
#include <cmath>

#include "ops/batch_norm.h"

namespace zsq::ops::ref {

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& options) {
  ZSQ_CHECK(x.dim() == 4 || x.dim() == 2, "ref::batch_norm: [N, C, H, W] or [N, C] expected, got {}",
            x.str());
  const auto N = x.size(0), C = x.size(1);
  const auto S = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const auto xv = x.to_vector();
  auto at = [&](std::int64_t n, std::int64_t c, std::int64_t s) {
    return static_cast<std::size_t>((n * C + c) * S + s);
  };
  const auto wv =
      weight.defined() ? weight.to_vector() : std::vector<float>(static_cast<std::size_t>(C), 1.0f);
  const auto bv = bias.defined() ? bias.to_vector() : std::vector<float>(static_cast<std::size_t>(C), 0.0f);
  const bool batch_stats = options.training || !running_mean.defined();
  const double count = static_cast<double>(N * S);
  std::vector<float> out(xv.size());
  for (std::int64_t c = 0; c < C; ++c) {
    double mean = 0.0, var = 0.0;
    if (batch_stats) {
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t s = 0; s < S; ++s) mean += xv[at(n, c, s)];
      mean /= count;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t s = 0; s < S; ++s) var += (xv[at(n, c, s)] - mean) * (xv[at(n, c, s)] - mean);
      var /= count;
    } else {
      mean = running_mean.f32()[c];
      var = running_var.f32()[c];
    }
    const double inv_std = 1.0 / std::sqrt(var + options.eps);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s)
        out[at(n, c, s)] = static_cast<float>((xv[at(n, c, s)] - mean) * inv_std * wv[c] + bv[c]);
    if (options.training && running_mean.defined()) {
      const double m = options.momentum;
      float* rm = running_mean.f32();
      float* rv = running_var.f32();
      rm[c] = static_cast<float>((1.0 - m) * rm[c] + m * mean);
      rv[c] = static_cast<float>((1.0 - m) * rv[c] + m * var * count / (count - 1.0));
    }
  }
  if (options.fuse_relu)
    for (auto& v : out) v = v > 0.0f ? v : 0.0f;
  return Tensor::from_vector(x.shape(), out);
}

}  // namespace zsq::ops::ref
