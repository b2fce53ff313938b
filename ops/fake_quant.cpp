#include "ops/fake_quant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/autograd.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/fake_quant.h"
#endif

namespace zsq::ops {

double fake_quant_levels(const FakeQuantSpec& spec) {
  ZSQ_CHECK(spec.bits >= kFakeQuantMinBits && spec.bits <= kFakeQuantMaxBits,
            "fake_quant: bits must be in [{}, {}], got {}", kFakeQuantMinBits, kFakeQuantMaxBits, spec.bits);
  return spec.symmetric ? std::ldexp(1.0, spec.bits - 1) - 1.0 : std::ldexp(1.0, spec.bits) - 1.0;
}

FakeQuantGrid fake_quant_grid(float lo, float hi, const FakeQuantSpec& spec) {
  const double levels = fake_quant_levels(spec);
  ZSQ_CHECK(std::isfinite(lo) && std::isfinite(hi), "fake_quant: range [{}, {}] is not finite", lo, hi);
  ZSQ_CHECK(lo <= hi, "fake_quant: range lo {} > hi {}", lo, hi);
  FakeQuantGrid g;
  if (spec.symmetric) {
    const double half = levels;  // 2^(k-1) - 1
    const double amax =
        std::max({std::abs(static_cast<double>(lo)), std::abs(static_cast<double>(hi)), 1e-8});
    g.delta = static_cast<float>(amax / half);
    g.qmin = static_cast<float>(-half);
    g.qmax = static_cast<float>(half);
  } else {  // levels = 2^k - 1
    const double range = std::max(static_cast<double>(hi) - static_cast<double>(lo), 1e-8);
    g.delta = static_cast<float>(range / levels);
    // f32 division, exactly as the element path computes x / delta, so x = lo lands on q = zero.
    const float zero = std::nearbyint(lo / g.delta);
    g.qmin = zero;
    g.qmax = static_cast<float>(static_cast<double>(zero) + levels);
  }
  ZSQ_CHECK(std::isfinite(g.qmin) && std::isfinite(g.qmax) && std::isfinite(g.lo_edge()) &&
                std::isfinite(g.hi_edge()),
            "fake_quant: range [{}, {}] at {} bits has no finite f32 grid (delta {})", lo, hi, spec.bits,
            g.delta);
  return g;
}

namespace {

void check_x(const char* op, const Tensor& x, bool per_channel) {
  ZSQ_CHECK(x.defined(), "{}: undefined input x", op);
  ZSQ_CHECK(x.dtype() == DType::f32, "{}: x must be an f32 tensor, got {}", op, x.str());
  if (per_channel) ZSQ_CHECK(x.dim() >= 1, "{}: x needs a channel dimension (dim 0), got {}", op, x.str());
}

void check_range_tensor(const char* op, const char* name, const Tensor& r, const Tensor& x) {
  ZSQ_CHECK(r.defined(), "{}: undefined {} (expected f32 [{}] for x {})", op, name, x.size(0), x.str());
  ZSQ_CHECK(r.dtype() == DType::f32 && r.dim() == 1 && r.size(0) == x.size(0),
            "{}: {} must be f32 [{}] (one entry per dim-0 channel of x {}), got {}", op, name, x.size(0),
            x.str(), r.str());
  ZSQ_CHECK(r.device() == x.device(), "{}: {} {} is on {} but x {} is on {}", op, name, r.str(),
            r.device().str(), x.str(), x.device().str());
}

// Per-channel grids as the parameter arrays the kernels take.
struct Grids {
  std::vector<float> delta, qmin, qmax;
  explicit Grids(std::size_t n) : delta(n), qmin(n), qmax(n) {}
  void set(std::size_t c, const FakeQuantGrid& g) {
    delta[c] = g.delta;
    qmin[c] = g.qmin;
    qmax[c] = g.qmax;
  }
};

std::int64_t inner_of(const Tensor& x, std::int64_t channels) {
  return channels == 0 ? 0 : x.numel() / channels;
}

Tensor run_forward(const Tensor& x, const Grids& grids, std::int64_t channels) {
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format());
  if (x.numel() > 0)
    avx512::fake_quant(x.f32(), out.f32(), channels, inner_of(x, channels), grids.delta.data(),
                       grids.qmin.data(), grids.qmax.data());
  return out;
}

// Records the straight-through backward: the gradient itself, or the clipped-STE mask of x.
Tensor attach_backward(Tensor out, const char* name, const Tensor& x, const Grids& grids,
                       std::int64_t channels, const FakeQuantSpec& spec) {
  if (!spec.clipped_ste)
    return record(out, name, {x},
                  [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
  if (!any_requires_grad({&x})) return out;
  std::vector<float> lo_edge(grids.delta.size()), hi_edge(grids.delta.size());
  for (std::size_t c = 0; c < lo_edge.size(); ++c) {
    lo_edge[c] = grids.qmin[c] * grids.delta[c];
    hi_edge[c] = grids.qmax[c] * grids.delta[c];
  }
  Tensor saved = x.detach();
  return record(out, name, {x},
                [saved, channels, lo_edge = std::move(lo_edge), hi_edge = std::move(hi_edge)](
                    const Tensor& g, const std::vector<bool>&) {
                  Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
                  Tensor dx = Tensor::empty(saved.shape(), DType::f32, saved.format());
                  if (saved.numel() > 0)
                    avx512::clipped_ste_backward(gg.f32(), saved.f32(), dx.f32(), channels,
                                                 inner_of(saved, channels), lo_edge.data(), hi_edge.data());
                  return std::vector<Tensor>{dx};
                });
}

#if ZSQ_WITH_CUDA
// The CUDA counterparts: grids stay on the device (a [3, channels] table, or one grid by value for a
// per-tensor call), and the clipped-STE node keeps the table alive for its backward.
Tensor device_grid_table(const Tensor* lo, const Tensor& hi, std::int64_t channels,
                         const FakeQuantSpec& spec) {
  Tensor table = Tensor::empty({3, channels}, DType::f32, MemoryFormat::contiguous, hi.device());
  cuda::fake_quant_grids(lo != nullptr ? lo->cuda_f32() : nullptr, hi.cuda_f32(), channels,
                         fake_quant_levels(spec), spec.symmetric, table.cuda_f32());
  return table;
}

Tensor run_forward_cuda(const Tensor& x, const cuda::FakeQuantGridArg& grid, std::int64_t channels) {
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  cuda::fake_quant_apply(x.cuda_f32(), out.cuda_f32(), channels, inner_of(x, channels), grid);
  return out;
}

Tensor attach_backward_cuda(Tensor out, const char* name, const Tensor& x, const cuda::FakeQuantGridArg& grid,
                            const Tensor& table, std::int64_t channels, const FakeQuantSpec& spec) {
  if (!spec.clipped_ste)
    return record(out, name, {x},
                  [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g}; });
  if (!any_requires_grad({&x})) return out;
  Tensor saved = x.detach();
  return record(out, name, {x}, [saved, grid, table, channels](const Tensor& g, const std::vector<bool>&) {
    Tensor gg = g.format() == saved.format() ? g : g.to_format(saved.format());
    Tensor dx = Tensor::empty(saved.shape(), DType::f32, saved.format(), saved.device());
    cuda::fake_quant_clipped_ste_backward(gg.cuda_f32(), saved.cuda_f32(), dx.cuda_f32(), channels,
                                          inner_of(saved, channels), grid);
    return std::vector<Tensor>{dx};
  });
}

// The per-channel op once its ranges are on the device.
Tensor per_channel_cuda(const char* op, const Tensor& x, const Tensor& lo, const Tensor& hi,
                        const FakeQuantSpec& spec) {
  const auto channels = x.size(0);
  Tensor table = device_grid_table(&lo, hi, channels, spec);
  const cuda::FakeQuantGridArg grid{table.cuda_f32()};
  return attach_backward_cuda(run_forward_cuda(x, grid, channels), op, x, grid, table, channels, spec);
}
#endif

}  // namespace

Tensor fake_quant_per_tensor(const Tensor& x, float lo, float hi, const FakeQuantSpec& spec) {
  check_x("fake_quant_per_tensor", x, false);
  const FakeQuantGrid grid = fake_quant_grid(lo, hi, spec);
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) {
    const cuda::FakeQuantGridArg arg{nullptr, grid.delta, grid.qmin, grid.qmax};
    return attach_backward_cuda(run_forward_cuda(x, arg, 1), "fake_quant_per_tensor", x, arg, Tensor(), 1,
                                spec);
  }
#endif
  Grids grids(1);
  grids.set(0, grid);
  return attach_backward(run_forward(x, grids, 1), "fake_quant_per_tensor", x, grids, 1, spec);
}

Tensor fake_quant_per_channel(const Tensor& x, const Tensor& lo, const Tensor& hi,
                              const FakeQuantSpec& spec) {
  constexpr const char* op = "fake_quant_per_channel";
  check_x(op, x, true);
  check_range_tensor(op, "lo", lo, x);
  check_range_tensor(op, "hi", hi, x);
  const auto channels = x.size(0);
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) return per_channel_cuda(op, x, lo, hi, spec);
#endif
  Tensor lo_c = lo.to_format(MemoryFormat::contiguous), hi_c = hi.to_format(MemoryFormat::contiguous);
  const float* l = lo_c.f32();
  const float* h = hi_c.f32();
  Grids grids(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c) {
    ZSQ_CHECK(l[c] <= h[c], "{}: lo[{}] = {} > hi[{}] = {} (x {})", op, c, l[c], c, h[c], x.str());
    grids.set(static_cast<std::size_t>(c), fake_quant_grid(l[c], h[c], spec));
  }
  return attach_backward(run_forward(x, grids, channels), op, x, grids, channels, spec);
}

std::pair<Tensor, Tensor> channel_min_max(const Tensor& w) {
  check_x("channel_min_max", w, true);
  const auto channels = w.size(0);
  Tensor mn = Tensor::empty({channels}, DType::f32, MemoryFormat::contiguous, w.device());
  Tensor mx = Tensor::empty({channels}, DType::f32, MemoryFormat::contiguous, w.device());
#if ZSQ_WITH_CUDA
  if (w.is_cuda()) {
    cuda::channel_min_max(w.cuda_f32(), channels, inner_of(w, channels), mn.cuda_f32(), mx.cuda_f32());
    return {mn, mx};
  }
#endif
  avx512::channel_min_max(w.f32(), channels, inner_of(w, channels), mn.f32(), mx.f32());
  return {mn, mx};
}

Tensor fake_quant_per_channel_minmax(const Tensor& w, const FakeQuantSpec& spec) {
  constexpr const char* op = "fake_quant_per_channel_minmax";
  check_x(op, w, true);
  const auto channels = w.size(0);
#if ZSQ_WITH_CUDA
  // A non-finite min/max gives a NaN grid here instead of the CPU's exception (ops/cuda/fake_quant.h).
  if (w.is_cuda()) {
    const auto [lo, hi] = channel_min_max(w.detach());
    return per_channel_cuda(op, w, lo, hi, spec);
  }
#endif
  std::vector<float> mn(static_cast<std::size_t>(channels)), mx(static_cast<std::size_t>(channels));
  avx512::channel_min_max(w.f32(), channels, inner_of(w, channels), mn.data(), mx.data());
  Grids grids(static_cast<std::size_t>(channels));
  for (std::size_t c = 0; c < mn.size(); ++c) {
    ZSQ_CHECK(std::isfinite(mn[c]) && std::isfinite(mx[c]),
              "{}: channel {} of w {} has a non-finite min {} / max {}", op, c, w.str(), mn[c], mx[c]);
    grids.set(c, fake_quant_grid(mn[c], mx[c], spec));
  }
  return attach_backward(run_forward(w, grids, channels), op, w, grids, channels, spec);
}

}  // namespace zsq::ops
