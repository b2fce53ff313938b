// Convolutions with one output channel (a generator's image layer: 64 -> 1, 3x3, at full resolution).
// oneDNN's direct kernels block over output channels and ran this shape at about 11 GFLOP/s (13 ms
// forward and 14 ms weight gradient per batch of 128 at 32x32, ~5% of a GDFQ iteration). Here every output
// pixel is one dot product over taps x channels in AVX-512 registers, and the weight gradient keeps a
// tap's C accumulators in registers over a whole image. The data gradient stays with oneDNN, which is
// fast for this shape.
// GCC 12 reports -Wmaybe-uninitialized inside the intrinsics headers (GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <vector>

#include "ops/conv2d.h"

namespace zsq::ops::single_output {

namespace {

constexpr std::int64_t kLanes = 16;
constexpr std::int64_t kMaxChannels = 256;  // the weight gradient's register tile: C / 16 vectors

struct Geometry {
  std::int64_t N, C, H, W, KH, KW, OH, OW;
  Conv2dParams p;
  Geometry(const Shape& x, const Shape& w, const Conv2dParams& params)
      : N(x[0]), C(x[1]), H(x[2]), W(x[3]), KH(w[2]), KW(w[3]), p(params) {
    OH = (H + 2 * p.pad_h - p.dilation_h * (KH - 1) - 1) / p.stride_h + 1;
    OW = (W + 2 * p.pad_w - p.dilation_w * (KW - 1) - 1) / p.stride_w + 1;
  }
  std::int64_t in_row(std::int64_t oy, std::int64_t kh) const {
    return oy * p.stride_h - p.pad_h + kh * p.dilation_h;
  }
  std::int64_t in_col(std::int64_t ox, std::int64_t kw) const {
    return ox * p.stride_w - p.pad_w + kw * p.dilation_w;
  }
};

// OIHW [1, C, KH, KW] -> [KH][KW][C], so a tap's weights are contiguous like an nhwc pixel.
std::vector<float> taps_by_channel(const Tensor& weight, const Geometry& g) {
  const Tensor w = weight.to_format(MemoryFormat::contiguous);
  std::vector<float> out(static_cast<std::size_t>(g.KH * g.KW * g.C));
  for (std::int64_t c = 0; c < g.C; ++c)
    for (std::int64_t t = 0; t < g.KH * g.KW; ++t)
      out[static_cast<std::size_t>(t * g.C + c)] = w.f32()[c * g.KH * g.KW + t];
  return out;
}

}  // namespace

bool applies(const Tensor& x, const Shape& weight_shape, const Conv2dParams& p) {
  return conv_algorithm() == ConvAlgorithm::auto_select && x.device().is_cpu() && x.dim() == 4 &&
         weight_shape.size() == 4 && weight_shape[0] == 1 && p.groups == 1 && x.size(1) % kLanes == 0 &&
         x.size(1) <= kMaxChannels;
}

Tensor forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  const Geometry g(x_in.shape(), weight.shape(), p);
  const Tensor x = x_in.to_format(MemoryFormat::channels_last);  // nhwc: a pixel's C values contiguous
  const std::vector<float> wt = taps_by_channel(weight, g);
  const float b = bias.defined() ? bias.to_format(MemoryFormat::contiguous).f32()[0] : 0.0f;
  Tensor out = Tensor::empty({g.N, 1, g.OH, g.OW}, DType::f32, MemoryFormat::channels_last);
  const float* xp = x.f32();
  float* yp = out.f32();
  const std::int64_t rows = g.N * g.OH;
#pragma omp parallel for schedule(static) if (rows * g.OW * g.C > (1 << 16))
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::int64_t n = row / g.OH, oy = row % g.OH;
    for (std::int64_t ox = 0; ox < g.OW; ++ox) {
      __m512 acc = _mm512_setzero_ps();
      for (std::int64_t kh = 0; kh < g.KH; ++kh) {
        const std::int64_t iy = g.in_row(oy, kh);
        if (iy < 0 || iy >= g.H) continue;
        for (std::int64_t kw = 0; kw < g.KW; ++kw) {
          const std::int64_t ix = g.in_col(ox, kw);
          if (ix < 0 || ix >= g.W) continue;
          const float* pixel = xp + ((n * g.H + iy) * g.W + ix) * g.C;
          const float* tap = wt.data() + (kh * g.KW + kw) * g.C;
          for (std::int64_t c = 0; c < g.C; c += kLanes)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(pixel + c), _mm512_loadu_ps(tap + c), acc);
        }
      }
      yp[row * g.OW + ox] = _mm512_reduce_add_ps(acc) + b;
    }
  }
  return out;
}

void backward_weights(const Tensor& grad_out, const Tensor& x_in, const Shape& weight_shape, bool with_bias,
                      const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  const Geometry g(x_in.shape(), weight_shape, p);
  const Tensor x = x_in.to_format(MemoryFormat::channels_last);
  const Tensor dy = grad_out.to_format(MemoryFormat::channels_last);  // one channel: n, oy, ox
  const std::int64_t taps = g.KH * g.KW, vectors = g.C / kLanes;
  // Each thread sums its images into its own [taps][C] block; the blocks are then added in thread
  // order, so a given thread count always gives the same bits.
  const int threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<std::size_t>(threads * taps * g.C), 0.0f);
  std::vector<double> partial_bias(static_cast<std::size_t>(threads), 0.0);
  const float* xp = x.f32();
  const float* gp = dy.f32();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    float* mine = partial.data() + static_cast<std::size_t>(t) * taps * g.C;
    double bias_sum = 0.0;
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < g.N; ++n) {
      const float* image_grad = gp + n * g.OH * g.OW;
      if (with_bias)
        for (std::int64_t i = 0; i < g.OH * g.OW; ++i) bias_sum += image_grad[i];
      for (std::int64_t tap = 0; tap < taps; ++tap) {
        const std::int64_t kh = tap / g.KW, kw = tap % g.KW;
        __m512 acc[kMaxChannels / kLanes];
        for (std::int64_t v = 0; v < vectors; ++v) acc[v] = _mm512_setzero_ps();
        for (std::int64_t oy = 0; oy < g.OH; ++oy) {
          const std::int64_t iy = g.in_row(oy, kh);
          if (iy < 0 || iy >= g.H) continue;
          for (std::int64_t ox = 0; ox < g.OW; ++ox) {
            const std::int64_t ix = g.in_col(ox, kw);
            if (ix < 0 || ix >= g.W) continue;
            const __m512 gv = _mm512_set1_ps(image_grad[oy * g.OW + ox]);
            const float* pixel = xp + ((n * g.H + iy) * g.W + ix) * g.C;
            for (std::int64_t v = 0; v < vectors; ++v)
              acc[v] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(pixel + v * kLanes), acc[v]);
          }
        }
        float* dst = mine + tap * g.C;
        for (std::int64_t v = 0; v < vectors; ++v)
          _mm512_storeu_ps(dst + v * kLanes, _mm512_add_ps(_mm512_loadu_ps(dst + v * kLanes), acc[v]));
      }
    }
    partial_bias[static_cast<std::size_t>(t)] = bias_sum;
  }
  grad_weight = Tensor::zeros(weight_shape);  // OIHW [1, C, KH, KW]
  float* gw = grad_weight.f32();
  for (int t = 0; t < threads; ++t)
    for (std::int64_t tap = 0; tap < taps; ++tap)
      for (std::int64_t c = 0; c < g.C; ++c)
        gw[c * taps + tap] += partial[static_cast<std::size_t>((t * taps + tap) * g.C + c)];
  if (with_bias) {
    double sum = 0.0;
    for (const double s : partial_bias) sum += s;
    grad_bias = Tensor::full({1}, static_cast<float>(sum));
  }
}

}  // namespace zsq::ops::single_output
