// ops::fake_quant_learned_range (declared in ops/fake_quant.h): the forward reuses the fixed-range
// kernel, the backward is one fused pass giving the clipped input gradient and the range gradient.
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "ops/fake_quant.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/fake_quant.h"
#endif

namespace zsq::ops {

namespace {

void check_same_device(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  ZSQ_CHECK(t.device() == x.device(), "{}: {} {} is on {} but its input {} is on {}", op, name, t.str(),
            t.device().str(), x.str(), x.device().str());
}

#if ZSQ_WITH_CUDA
// The learned range on the GPU: hi stays on the device (its grid is computed there, so no step reads it
// back); a hi that is not finite and > 0 gives NaN outputs instead of the CPU's exception.
Tensor learned_range_cuda(const Tensor& x, const Tensor& hi, int bits) {
  const FakeQuantSpec spec{bits, false, false};
  Tensor table = Tensor::empty({3, 1}, DType::f32, MemoryFormat::contiguous, x.device());
  cuda::fake_quant_grids(nullptr, hi.cuda_f32(), 1, fake_quant_levels(spec), false, table.cuda_f32());
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  cuda::fake_quant_apply(x.cuda_f32(), out.cuda_f32(), 1, x.numel(),
                         cuda::FakeQuantGridArg{table.cuda_f32()});
  if (!any_requires_grad({&x, &hi})) return out;
  Tensor saved = x.detach();
  return record(
      out, "fake_quant_learned_range", {x, hi},
      [saved, table, hi_shape = hi.shape()](const Tensor& g, const std::vector<bool>& needs) {
        const Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
        Tensor dx =
            needs[0] ? Tensor::empty(saved.shape(), DType::f32, saved.format(), saved.device()) : Tensor();
        Tensor dhi = needs[1] ? Tensor::empty(hi_shape, DType::f32, MemoryFormat::contiguous, saved.device())
                              : Tensor();
        cuda::fake_quant_range_backward(gg.cuda_f32(), saved.cuda_f32(), needs[0] ? dx.cuda_f32() : nullptr,
                                        1, saved.numel(), table.cuda_f32(), nullptr,
                                        needs[1] ? dhi.cuda_f32() : nullptr);
        return std::vector<Tensor>{dx, dhi};
      });
}

Tensor per_channel_ratio_cuda(const Tensor& w, const Tensor& ratio, const FakeQuantSpec& spec) {
  const auto [lo, hi] = ratio_channel_ranges(w, ratio);
  const auto channels = w.size(0);
  const std::int64_t inner = channels == 0 ? 0 : w.numel() / channels;
  Tensor table = Tensor::empty({3, channels}, DType::f32, MemoryFormat::contiguous, w.device());
  cuda::fake_quant_grids(lo.cuda_f32(), hi.cuda_f32(), channels, fake_quant_levels(spec), spec.symmetric,
                         table.cuda_f32());
  Tensor out = Tensor::empty(w.shape(), DType::f32, w.format(), w.device());
  cuda::fake_quant_apply(w.cuda_f32(), out.cuda_f32(), channels, inner,
                         cuda::FakeQuantGridArg{table.cuda_f32()});
  if (!any_requires_grad({&w, &ratio})) return out;
  Tensor saved = w.detach();
  Tensor r = ratio.detach().clone();  // the forward's ratios, as the CPU path's copy
  return record(
      out, "fake_quant_per_channel_ratio", {w, ratio},
      [saved, table, r, channels, inner](const Tensor& g, const std::vector<bool>& needs) {
        const Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
        Tensor dw =
            needs[0] ? Tensor::empty(saved.shape(), DType::f32, saved.format(), saved.device()) : Tensor();
        Tensor dr = needs[1] ? Tensor::empty({channels}, DType::f32, MemoryFormat::contiguous, saved.device())
                             : Tensor();
        cuda::fake_quant_range_backward(gg.cuda_f32(), saved.cuda_f32(), needs[0] ? dw.cuda_f32() : nullptr,
                                        channels, inner, table.cuda_f32(), r.cuda_f32(),
                                        needs[1] ? dr.cuda_f32() : nullptr);
        return std::vector<Tensor>{dw, dr};
      });
}
#endif

}  // namespace

Tensor fake_quant_learned_range(const Tensor& x, const Tensor& hi, int bits) {
  constexpr const char* op = "fake_quant_learned_range";
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "{}: x must be an f32 tensor, got {}", op,
            x.defined() ? x.str() : std::string("undefined"));
  ZSQ_CHECK(hi.defined() && hi.dtype() == DType::f32 && hi.numel() == 1,
            "{}: hi must be an f32 tensor of one element, got {}", op,
            hi.defined() ? hi.str() : std::string("undefined"));
  check_same_device(op, "hi", hi, x);
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) return learned_range_cuda(x, hi, bits);
#endif
  const float range_hi = hi.detach().to_vector()[0];
  ZSQ_CHECK(std::isfinite(range_hi) && range_hi > 0.0f,
            "{}: the learned range [0, {}] must have a finite hi > 0", op, range_hi);
  const FakeQuantSpec spec{bits, false, false};
  const FakeQuantGrid grid = fake_quant_grid(0.0f, range_hi, spec);  // qmin = 0, qmax = L
  Tensor out;
  {
    NoGrad no_grad;  // the node below replaces the fixed-range op's straight-through node
    out = fake_quant_per_tensor(x.detach(), 0.0f, range_hi, spec);
  }
  if (!any_requires_grad({&x, &hi})) return out;
  Tensor saved = x.detach();
  return record(out, op, {x, hi},
                [saved, grid, hi_shape = hi.shape()](const Tensor& g, const std::vector<bool>& needs) {
                  const Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
                  const float* gp = gg.f32();
                  const float* xp = saved.f32();
                  const std::int64_t n = saved.numel();
                  const float delta = grid.delta, qmax = grid.qmax;
                  Tensor dx = needs[0] ? Tensor::empty(saved.shape(), DType::f32, saved.format()) : Tensor();
                  float* dxp = needs[0] ? dx.f32() : nullptr;
                  double range_sum = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : range_sum) if (n > (1 << 15))
                  for (std::int64_t i = 0; i < n; ++i) {
                    const float v = xp[i] / delta;  // IEEE division, as the forward kernel
                    const bool below = v<0.0f, above = v> qmax;
                    const float c = below ? 0.0f : (above ? qmax : std::nearbyint(v) - v);
                    if (dxp != nullptr) dxp[i] = below || above ? 0.0f : gp[i];
                    range_sum += static_cast<double>(gp[i]) * static_cast<double>(c);
                  }
                  Tensor dhi;
                  if (needs[1])
                    dhi = Tensor::from_vector(hi_shape,
                                              {static_cast<float>(range_sum / static_cast<double>(qmax))});
                  return std::vector<Tensor>{dx, dhi};
                });
}

std::pair<Tensor, Tensor> ratio_channel_ranges(const Tensor& w, const Tensor& ratio) {
  constexpr const char* op = "fake_quant_per_channel_ratio";
  ZSQ_CHECK(w.defined() && w.dtype() == DType::f32 && w.dim() >= 1,
            "{}: w must be an f32 tensor with a channel dimension, got {}", op,
            w.defined() ? w.str() : std::string("undefined"));
  ZSQ_CHECK(ratio.defined() && ratio.dtype() == DType::f32 && ratio.dim() == 1 && ratio.size(0) == w.size(0),
            "{}: ratio must be f32 [{}] (one per output channel of w {}), got {}", op, w.size(0), w.str(),
            ratio.defined() ? ratio.str() : std::string("undefined"));
  check_same_device(op, "ratio", ratio, w);
  auto [lo, hi] = channel_min_max(w.detach());
#if ZSQ_WITH_CUDA
  // A ratio that is not finite and > 0 gives NaN ranges here instead of the CPU's exception.
  if (w.is_cuda()) {
    Tensor lo_r = Tensor::empty({w.size(0)}, DType::f32, MemoryFormat::contiguous, w.device());
    Tensor hi_r = Tensor::empty({w.size(0)}, DType::f32, MemoryFormat::contiguous, w.device());
    cuda::ratio_ranges(lo.cuda_f32(), hi.cuda_f32(), ratio.cuda_f32(), w.size(0), lo_r.cuda_f32(),
                       hi_r.cuda_f32());
    return {lo_r, hi_r};
  }
#endif
  const auto r = ratio.detach().to_vector();
  for (std::int64_t c = 0; c < w.size(0); ++c) {
    ZSQ_CHECK(std::isfinite(r[c]) && r[c] > 0.0f, "{}: ratio[{}] = {} must be finite and > 0 (w {})", op, c,
              r[c], w.str());
    lo.f32()[c] *= r[c];
    hi.f32()[c] *= r[c];
  }
  return {lo, hi};
}

Tensor fake_quant_per_channel_ratio(const Tensor& w, const Tensor& ratio, const FakeQuantSpec& spec) {
#if ZSQ_WITH_CUDA
  if (w.is_cuda()) return per_channel_ratio_cuda(w, ratio, spec);
#endif
  const auto [lo, hi] = ratio_channel_ranges(w, ratio);
  const auto channels = w.size(0);
  std::vector<FakeQuantGrid> grids(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c) grids[c] = fake_quant_grid(lo.f32()[c], hi.f32()[c], spec);
  Tensor out;
  {
    NoGrad no_grad;  // the node below replaces the fixed-range op's straight-through node
    out = fake_quant_per_channel(w.detach(), lo, hi, spec);
  }
  if (!any_requires_grad({&w, &ratio})) return out;
  Tensor saved = w.detach();
  std::vector<float> r = ratio.detach().to_vector();
  return record(
      out, "fake_quant_per_channel_ratio", {w, ratio},
      [saved, grids = std::move(grids), r = std::move(r)](const Tensor& g, const std::vector<bool>& needs) {
        const Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
        const std::int64_t channels = saved.size(0);
        const std::int64_t inner = channels == 0 ? 0 : saved.numel() / channels;
        Tensor dw = needs[0] ? Tensor::empty(saved.shape(), DType::f32, saved.format()) : Tensor();
        Tensor dr = Tensor::zeros({channels});
    // In both 4-D formats dim 0 is outermost: channel c is one contiguous block.
#pragma omp parallel for schedule(static) if (saved.numel() > (1 << 15))
        for (std::int64_t c = 0; c < channels; ++c) {
          const auto& grid = grids[static_cast<std::size_t>(c)];
          const float* x = saved.f32() + c * inner;
          const float* gp = gg.f32() + c * inner;
          float* d = needs[0] ? dw.f32() + c * inner : nullptr;
          double sum = 0.0;
          for (std::int64_t i = 0; i < inner; ++i) {
            const float v = x[i] / grid.delta;
            const bool below = v<grid.qmin, above = v> grid.qmax;
            const float k = below ? grid.qmin : (above ? grid.qmax : std::nearbyint(v) - v);
            if (d != nullptr) d[i] = below || above ? 0.0f : gp[i];
            sum += static_cast<double>(gp[i]) * static_cast<double>(k);
          }
          dr.f32()[c] = static_cast<float>(sum * grid.delta / r[static_cast<std::size_t>(c)]);
        }
        return std::vector<Tensor>{dw, needs[1] ? dr : Tensor()};
      });
}

}  // namespace zsq::ops
