#include "quant/weight_ranges.h"

#include <cmath>
#include <vector>
#if ZSQ_WITH_CUDA
#include "ops/cuda/fake_quant.h"
#endif

namespace zsq::quant {

namespace {

// Squared error of quantizing v[0..n) on `grid`, with fake_quant's per-element math. Summed in
// double lanes: a channel holds at most a few thousand values.
double squared_error(const float* __restrict v, std::int64_t n, const ops::FakeQuantGrid& grid) {
  const float delta = grid.delta, qmin = grid.qmin, qmax = grid.qmax;
  double err = 0.0;
#pragma omp simd reduction(+ : err)
  for (std::int64_t i = 0; i < n; ++i) {
    const float q = std::fmin(std::fmax(std::nearbyint(v[i] / delta), qmin), qmax) * delta;
    const double d = static_cast<double>(q) - static_cast<double>(v[i]);
    err += d * d;
  }
  return err;
}

}  // namespace

std::pair<Tensor, Tensor> mse_channel_ranges(const Tensor& w, const ops::FakeQuantSpec& spec,
                                             const WeightClipSearch& search) {
  ZSQ_CHECK(search.candidates >= 2, "weight mse ranges: need at least 2 candidate ratios, got {}",
            search.candidates);
  ZSQ_CHECK(search.min_ratio > 0.0f && search.min_ratio <= 1.0f,
            "weight mse ranges: min_ratio must be in (0, 1], got {}", search.min_ratio);
  auto [mn, mx] = ops::channel_min_max(w);  // validates w (f32, 2-D or 4-D)
#if ZSQ_WITH_CUDA
  if (w.is_cuda()) {
    // The same search on the device (it runs on every forward of a student with weight_observer=mse).
    // A channel the checks below would refuse gets NaN ranges, so its weights quantize to NaN.
    const Tensor rows = w.detach().to_format(MemoryFormat::contiguous);
    const std::int64_t channels = w.size(0), inner = channels > 0 ? w.numel() / channels : 0;
    Tensor lo = Tensor::empty({channels}, DType::f32, MemoryFormat::contiguous, w.device());
    Tensor hi = Tensor::empty({channels}, DType::f32, MemoryFormat::contiguous, w.device());
    cuda::mse_channel_ranges(rows.cuda_f32(), channels, inner, mn.cuda_f32(), mx.cuda_f32(),
                             ops::fake_quant_levels(spec), spec.symmetric, search.candidates,
                             search.min_ratio, lo.cuda_f32(), hi.cuda_f32());
    return {lo, hi};
  }
#endif
  // Logical order, so the sums (and thus near-tie choices) do not depend on the memory format.
  const Tensor values = w.detach().to_format(MemoryFormat::contiguous);
  const std::int64_t channels = w.size(0), inner = channels > 0 ? w.numel() / channels : 0;
  Tensor lo = Tensor::empty({channels}), hi = Tensor::empty({channels});
  const float* v = values.f32();
  const float *pmn = mn.f32(), *pmx = mx.f32();
  float *plo = lo.f32(), *phi = hi.f32();
  // Nothing may throw inside the parallel region: check every channel's full range here. Every
  // smaller candidate [r * min, r * max] then has a representable grid too (|zero| cannot grow).
  for (std::int64_t c = 0; c < channels; ++c) {
    ZSQ_CHECK(std::isfinite(pmn[c]) && std::isfinite(pmx[c]),
              "weight mse ranges: channel {} of w {} has a non-finite min {} / max {}", c, w.str(), pmn[c],
              pmx[c]);
    (void)ops::fake_quant_grid(pmn[c], pmx[c], spec);
  }
  std::vector<unsigned char> non_finite(static_cast<std::size_t>(channels), 0);
#pragma omp parallel for schedule(dynamic, 4) if (w.numel() > (1 << 14))
  for (std::int64_t c = 0; c < channels; ++c) {
    const float* block = v + c * inner;
    double best_err = INFINITY;
    float best_lo = pmn[c], best_hi = pmx[c];
    // From r = 1 down; a smaller ratio must be strictly better (relative 1e-9) to win.
    for (int i = search.candidates - 1; i >= 0; --i) {
      const float r =
          i == search.candidates - 1
              ? 1.0f
              : static_cast<float>(search.min_ratio + (1.0 - search.min_ratio) * i / (search.candidates - 1));
      const float clo = r * pmn[c], chi = r * pmx[c];
      const double err = squared_error(block, inner, ops::fake_quant_grid(clo, chi, spec));
      if (!std::isfinite(err)) {  // a NaN weight (min/max skip NaNs): reported below
        non_finite[static_cast<std::size_t>(c)] = 1;
        break;
      }
      if (err < best_err * (1.0 - 1e-9)) {
        best_err = err;
        best_lo = clo;
        best_hi = chi;
      }
    }
    plo[c] = best_lo;
    phi[c] = best_hi;
  }
  for (std::int64_t c = 0; c < channels; ++c)
    ZSQ_CHECK(!non_finite[static_cast<std::size_t>(c)],
              "weight mse ranges: channel {} of w {} holds a non-finite value", c, w.str());
  return {lo, hi};
}

std::pair<Tensor, Tensor> weight_channel_ranges(const Tensor& w, const ops::FakeQuantSpec& spec,
                                                const QConfig& config) {
  if (config.weight_observer == ObserverKind::mse)
    return mse_channel_ranges(w, spec, {config.mse_candidates, config.mse_min_ratio});
  return ops::channel_min_max(w);
}

}  // namespace zsq::quant
