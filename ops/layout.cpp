// Layout views and channel normalization. positions_as_rows is a view (or one to_format copy), so it
// works on any device as is; normalize_channels runs ops/cuda/layout.cu on a GPU and the loop below on
// the CPU, with the same autograd record shape.
#include "ops/layout.h"

#include <cmath>

#include "engine/autograd.h"
#include "ops/cuda/layout.h"

namespace zsq::ops {

Tensor positions_as_rows(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dim() == 4 && x.dtype() == DType::f32,
            "positions_as_rows: f32 [B, C, H, W] expected, got {}", x.str());
  const Shape in_shape = x.shape();
  Tensor cl =
      x.is_layout_equivalent(MemoryFormat::channels_last) ? x : x.to_format(MemoryFormat::channels_last);
  Tensor rows = cl.detach();
  rows.impl()->shape = {in_shape[0], in_shape[2] * in_shape[3], in_shape[1]};
  rows.impl()->format = MemoryFormat::contiguous;
  return record(rows, "positions_as_rows", {x}, [in_shape](const Tensor& g, const std::vector<bool>&) {
    Tensor back = g.detach();
    back.impl()->shape = in_shape;
    back.impl()->format = MemoryFormat::channels_last;
    return std::vector<Tensor>{back};
  });
}

namespace {
// Channel vectors of a channels-last tensor are contiguous rows of length C.
Tensor rows_cl(const Tensor& x) {
  return x.is_layout_equivalent(MemoryFormat::channels_last) ? view_as_format(x, MemoryFormat::channels_last)
                                                             : x.to_format(MemoryFormat::channels_last);
}
}  // namespace

Tensor normalize_channels(const Tensor& x, float eps) {
  ZSQ_CHECK(x.defined() && x.dim() == 4 && x.dtype() == DType::f32,
            "normalize_channels: f32 [B, C, H, W] expected, got {}", x.str());
  ZSQ_CHECK(eps > 0, "normalize_channels: eps must be positive");
  Tensor in = rows_cl(x);
  const auto C = x.size(1), rows = x.numel() / C;
  Tensor out = Tensor::empty(x.shape(), DType::f32, MemoryFormat::channels_last, x.device());
  Tensor norms = Tensor::empty({rows}, DType::f32, MemoryFormat::contiguous, x.device());
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) {
    cuda::normalize_rows_forward(in.cuda_f32(), out.cuda_f32(), norms.cuda_f32(), rows, C, eps);
    Tensor saved_y = out.detach();
    return record(out, "normalize_channels", {x},
                  [saved_y, norms, C, rows, eps](const Tensor& g, const std::vector<bool>&) {
                    Tensor gr = rows_cl(g);
                    Tensor dx = Tensor::empty(saved_y.shape(), DType::f32, MemoryFormat::channels_last,
                                              saved_y.device());
                    cuda::normalize_rows_backward(gr.cuda_f32(), saved_y.cuda_f32(), norms.cuda_f32(),
                                                  dx.cuda_f32(), rows, C, eps);
                    return std::vector<Tensor>{dx};
                  });
  }
#endif
  const float* px = in.f32();
  float* py = out.f32();
  float* pn = norms.f32();
#pragma omp parallel for schedule(static) if (rows * C > 65536)
  for (std::int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (std::int64_t c = 0; c < C; ++c) ss += static_cast<double>(px[r * C + c]) * px[r * C + c];
    const float n = std::max(static_cast<float>(std::sqrt(ss)), eps);
    pn[r] = n;
    for (std::int64_t c = 0; c < C; ++c) py[r * C + c] = px[r * C + c] / n;
  }
  Tensor saved_y = out.detach();
  return record(out, "normalize_channels", {x},
                [saved_y, norms, C, rows, eps](const Tensor& g, const std::vector<bool>&) {
                  // dx = (g - y <y, g>) / n while ||x|| > eps. At (near-)zero vectors, which ReLU features
                  // produce often, the direction is undefined and x / eps would give a 1/eps gain that blows
                  // up training: the gradient there is 0.
                  Tensor gr = rows_cl(g);
                  Tensor dx = Tensor::empty(saved_y.shape(), DType::f32, MemoryFormat::channels_last);
                  const float* pg = gr.f32();
                  const float* py = saved_y.f32();
                  const float* pn = norms.f32();
                  float* pd = dx.f32();
#pragma omp parallel for schedule(static) if (rows * C > 65536)
                  for (std::int64_t r = 0; r < rows; ++r) {
                    const bool clamped = pn[r] <= eps;
                    double dot = 0;
                    if (!clamped)
                      for (std::int64_t c = 0; c < C; ++c)
                        dot += static_cast<double>(py[r * C + c]) * pg[r * C + c];
                    for (std::int64_t c = 0; c < C; ++c)
                      pd[r * C + c] =
                          clamped ? 0.0f : (pg[r * C + c] - static_cast<float>(dot) * py[r * C + c]) / pn[r];
                  }
                  return std::vector<Tensor>{dx};
                });
}

namespace ref {
Tensor normalize_channels(const Tensor& x, float eps) {
  auto v = x.to_vector();
  const auto B = x.size(0), C = x.size(1), S = x.size(2) * x.size(3);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < S; ++s) {
      double ss = 0;
      for (std::int64_t c = 0; c < C; ++c)
        ss += static_cast<double>(v[(b * C + c) * S + s]) * v[(b * C + c) * S + s];
      const double n = std::max(std::sqrt(ss), static_cast<double>(eps));
      for (std::int64_t c = 0; c < C; ++c)
        v[(b * C + c) * S + s] = static_cast<float>(v[(b * C + c) * S + s] / n);
    }
  return Tensor::from_vector(x.shape(), v);
}
}  // namespace ref

}  // namespace zsq::ops
