// ops::fake_quant_learned_range (declared in ops/fake_quant.h): the forward reuses the fixed-range
// kernel, the backward is one fused pass giving the clipped input gradient and the range gradient.
#include <cmath>

#include "engine/autograd.h"
#include "ops/fake_quant.h"

namespace zsq::ops {

Tensor fake_quant_learned_range(const Tensor& x, const Tensor& hi, int bits) {
  constexpr const char* op = "fake_quant_learned_range";
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32 && x.device().is_cpu(),
            "{}: x must be an f32 CPU tensor, got {}", op, x.defined() ? x.str() : std::string("undefined"));
  ZSQ_CHECK(hi.defined() && hi.dtype() == DType::f32 && hi.device().is_cpu() && hi.numel() == 1,
            "{}: hi must be an f32 CPU tensor of one element, got {}", op,
            hi.defined() ? hi.str() : std::string("undefined"));
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

}  // namespace zsq::ops
