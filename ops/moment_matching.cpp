#include "ops/moment_matching.h"

#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "ops/cuda/moment_matching.h"

namespace zsq::ops {

namespace {

// Per-channel sums of x and x^2 over the rows of a [rows, C] array, in double: one read of x. Double
// sums keep E[x^2] - E[x]^2 accurate to ~1e-10 relative even for |mean| ~ 1e3 * stddev.
std::vector<double> channel_sums(const float* x, std::int64_t rows, std::int64_t C) {
  const int threads = rows * C > (1 << 15) ? omp_get_max_threads() : 1;
  std::vector<double> partial(static_cast<std::size_t>(threads * 2 * C), 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* sum = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * 2 * C;
    double* squares = sum + C;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * C;
#pragma omp simd
      for (std::int64_t c = 0; c < C; ++c) {
        const double v = row[c];
        sum[c] += v;
        squares[c] += v * v;
      }
    }
  }
  std::vector<double> total(static_cast<std::size_t>(2 * C), 0.0);
  for (int t = 0; t < threads; ++t)
    for (std::size_t i = 0; i < total.size(); ++i)
      total[i] += partial[static_cast<std::size_t>(t) * total.size() + i];
  return total;
}

#if ZSQ_WITH_CUDA
// The CUDA path reads x in its own format (no channels-last copy): ops/cuda/moment_matching.cu reduces
// NCHW by warp rows and channels_last by float4 columns, both summing in double as here.
Tensor moment_matching_cuda(const Tensor& x, const Tensor& target_mean, const Tensor& target_var) {
  const std::int64_t N = x.size(0), C = x.size(1);
  const std::int64_t spatial = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  // [N, C] and a 4-D map with C == 1 or H*W == 1 read the same in both formats: channels innermost.
  const bool channels_last = x.dim() == 2 || x.is_layout_equivalent(MemoryFormat::channels_last);
  const Device device = x.device();
  Tensor stats = Tensor::empty({3, C}, DType::f32, MemoryFormat::contiguous, device);  // mean, gaps
  Tensor out = Tensor::empty({}, DType::f32, MemoryFormat::contiguous, device);
  cuda::moment_matching_forward(x.cuda_f32(), N, C, spatial, channels_last, target_mean.cuda_f32(),
                                target_var.cuda_f32(), stats.cuda_f32(), out.cuda_f32());
  Tensor saved = x.requires_grad() ? x.detach() : Tensor();
  return record(out, "moment_matching_loss", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    Tensor dx = Tensor::empty(saved.shape(), DType::f32, saved.format(), device);
    cuda::moment_matching_backward(g.cuda_f32(), saved.cuda_f32(), stats.cuda_f32(), N, C, spatial,
                                   channels_last, dx.cuda_f32());
    return std::vector<Tensor>{dx};
  });
}
#endif

}  // namespace

Tensor moment_matching_loss(const Tensor& x_in, const Tensor& target_mean, const Tensor& target_var) {
  ZSQ_CHECK(x_in.defined() && x_in.dtype() == DType::f32 && (x_in.dim() == 4 || x_in.dim() == 2),
            "moment_matching_loss: x must be an f32 tensor [N, C, H, W] or [N, C], got {}",
            x_in.defined() ? x_in.str() : "undefined");
  const std::int64_t C = x_in.size(1);
  const std::string where = x_in.is_cuda() ? x_in.device().str() : "CPU";
  for (const Tensor* t : {&target_mean, &target_var})
    ZSQ_CHECK(
        t->defined() && t->dtype() == DType::f32 && t->device() == x_in.device() && t->shape() == Shape{C},
        "moment_matching_loss: targets must be f32 {} [{}] for x {} on {}, got {}", where, C, x_in.str(),
        x_in.device().str(), t->defined() ? t->str() + " on " + t->device().str() : "undefined");
  ZSQ_CHECK(x_in.numel() > 0, "moment_matching_loss: empty input {}", x_in.str());
#if ZSQ_WITH_CUDA
  if (x_in.is_cuda()) return moment_matching_cuda(x_in, target_mean, target_var);
#endif
  // Channels innermost: every row of C values is one (n, h, w) position.
  const Tensor x = x_in.dim() == 4 ? x_in.to_format(MemoryFormat::channels_last) : x_in;
  const std::int64_t rows = x.numel() / C;
  const float* px = x.f32();

  std::vector<float> mean(static_cast<std::size_t>(C));
  const auto sums = channel_sums(px, rows, C);
  // [C] tensors are contiguous already; the handles keep any copy alive while tm / tv are read.
  const Tensor target_mean_c = target_mean.to_format(MemoryFormat::contiguous);
  const Tensor target_var_c = target_var.to_format(MemoryFormat::contiguous);
  const float* tm = target_mean_c.f32();
  const float* tv = target_var_c.f32();
  std::vector<float> mean_gap(static_cast<std::size_t>(C)), var_gap(static_cast<std::size_t>(C));
  double loss = 0.0;
  for (std::int64_t c = 0; c < C; ++c) {
    const double m = sums[static_cast<std::size_t>(c)] / static_cast<double>(rows);
    const double v = std::max(0.0, sums[static_cast<std::size_t>(C + c)] / static_cast<double>(rows) - m * m);
    mean[static_cast<std::size_t>(c)] = static_cast<float>(m);
    const double dm = m - tm[c], dv = v - tv[c];
    loss += dm * dm + dv * dv;
    mean_gap[static_cast<std::size_t>(c)] = static_cast<float>(dm);
    var_gap[static_cast<std::size_t>(c)] = static_cast<float>(dv);
  }
  Tensor out = Tensor::scalar(static_cast<float>(loss / static_cast<double>(C)));

  Tensor saved = x_in.requires_grad() ? x.detach() : Tensor();
  const MemoryFormat in_format = x_in.format();
  return record(out, "moment_matching_loss", {x_in},
                [=, mean = std::move(mean), mean_gap = std::move(mean_gap), var_gap = std::move(var_gap)](
                    const Tensor& g, const std::vector<bool>&) {
                  const double scale = static_cast<double>(g.item()) * 2.0 / static_cast<double>(C) /
                                       static_cast<double>(rows);
                  std::vector<float> a(static_cast<std::size_t>(C)), b(a);  // dx = a_c + b_c (x - mu_c)
                  for (std::size_t c = 0; c < a.size(); ++c) {
                    a[c] = static_cast<float>(scale * mean_gap[c]);
                    b[c] = static_cast<float>(scale * 2.0 * var_gap[c]);
                  }
                  const float* mu = mean.data();
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
