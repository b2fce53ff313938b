#include "ops/moment_matching.h"

#include <omp.h>

#include <memory>
#include <vector>

#include "engine/autograd.h"

namespace zsq::ops {

namespace {

// Per-channel sums of f(x, c) over the rows of a [rows, C] array, in double.
template <typename F>
std::vector<double> channel_sums(const float* x, std::int64_t rows, std::int64_t C, F f) {
  const int threads = rows * C > (1 << 15) ? omp_get_max_threads() : 1;
  std::vector<double> partial(static_cast<std::size_t>(threads * C), 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* mine = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * C;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * C;
#pragma omp simd
      for (std::int64_t c = 0; c < C; ++c) mine[c] += f(row[c], c);
    }
  }
  std::vector<double> total(static_cast<std::size_t>(C), 0.0);
  for (int t = 0; t < threads; ++t)
    for (std::int64_t c = 0; c < C; ++c)
      total[static_cast<std::size_t>(c)] += partial[static_cast<std::size_t>(t * C + c)];
  return total;
}

}  // namespace

Tensor moment_matching_loss(const Tensor& x_in, const Tensor& target_mean, const Tensor& target_var) {
  ZSQ_CHECK(x_in.defined() && x_in.dtype() == DType::f32 && x_in.device().is_cpu() &&
                (x_in.dim() == 4 || x_in.dim() == 2),
            "moment_matching_loss: x must be an f32 CPU tensor [N, C, H, W] or [N, C], got {}", x_in.str());
  const std::int64_t C = x_in.size(1);
  for (const Tensor* t : {&target_mean, &target_var})
    ZSQ_CHECK(t->defined() && t->dtype() == DType::f32 && t->shape() == Shape{C},
              "moment_matching_loss: targets must be f32 [{}] for x {}, got {}", C, x_in.str(),
              t->defined() ? t->str() : "undefined");
  ZSQ_CHECK(x_in.numel() > 0, "moment_matching_loss: empty input {}", x_in.str());
  // Channels innermost: every row of C values is one (n, h, w) position.
  const Tensor x = x_in.dim() == 4 ? x_in.to_format(MemoryFormat::channels_last) : x_in;
  const std::int64_t rows = x.numel() / C;
  const float* px = x.f32();

  // Two passes, as ops::variance: the mean first (rounded to float), then squared deviations from it.
  auto stats = std::make_shared<std::vector<float>>(static_cast<std::size_t>(2 * C));  // mean, var
  float* mean = stats->data();
  float* var = mean + C;
  const auto sums = channel_sums(px, rows, C, [](float v, std::int64_t) { return static_cast<double>(v); });
  for (std::int64_t c = 0; c < C; ++c)
    mean[c] = static_cast<float>(sums[static_cast<std::size_t>(c)] / static_cast<double>(rows));
  const auto squares = channel_sums(px, rows, C, [=](float v, std::int64_t c) {
    const float d = v - mean[c];
    return static_cast<double>(d * d);
  });
  const float* tm = target_mean.to_format(MemoryFormat::contiguous).f32();
  const float* tv = target_var.to_format(MemoryFormat::contiguous).f32();
  std::vector<float> mean_gap(static_cast<std::size_t>(C)), var_gap(static_cast<std::size_t>(C));
  double loss = 0.0;
  for (std::int64_t c = 0; c < C; ++c) {
    var[c] = static_cast<float>(squares[static_cast<std::size_t>(c)] / static_cast<double>(rows));
    const double dm = static_cast<double>(mean[c]) - tm[c], dv = static_cast<double>(var[c]) - tv[c];
    loss += dm * dm + dv * dv;
    mean_gap[static_cast<std::size_t>(c)] = static_cast<float>(dm);
    var_gap[static_cast<std::size_t>(c)] = static_cast<float>(dv);
  }
  Tensor out = Tensor::scalar(static_cast<float>(loss / static_cast<double>(C)));

  Tensor saved = x_in.requires_grad() ? x.detach() : Tensor();
  const MemoryFormat in_format = x_in.format();
  return record(out, "moment_matching_loss", {x_in},
                [=, mean_gap = std::move(mean_gap), var_gap = std::move(var_gap)](const Tensor& g,
                                                                                  const std::vector<bool>&) {
                  const double scale = static_cast<double>(g.item()) * 2.0 / static_cast<double>(C) /
                                       static_cast<double>(rows);
                  std::vector<float> a(static_cast<std::size_t>(C)), b(a);  // dx = a_c + b_c (x - mu_c)
                  for (std::size_t c = 0; c < a.size(); ++c) {
                    a[c] = static_cast<float>(scale * mean_gap[c]);
                    b[c] = static_cast<float>(scale * 2.0 * var_gap[c]);
                  }
                  const float* mu = stats->data();
                  Tensor dx = Tensor::empty(saved.shape(), DType::f32, saved.format());
                  const float* xs = saved.f32();
                  float* d = dx.f32();
#pragma omp parallel for schedule(static) if (rows * C > (1 << 15))
                  for (std::int64_t r = 0; r < rows; ++r)
#pragma omp simd
                    for (std::int64_t c = 0; c < C; ++c)
                      d[r * C + c] = a[static_cast<std::size_t>(c)] +
                                     b[static_cast<std::size_t>(c)] * (xs[r * C + c] - mu[c]);
                  return std::vector<Tensor>{dx.dim() == 4 ? dx.to_format(in_format) : dx};
                });
}

}  // namespace zsq::ops
