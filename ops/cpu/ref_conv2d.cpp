// Naive convolution loops over logical indices, accumulating in double: the oracle for the oneDNN path.
#include "ops/conv2d.h"

namespace zsq::ops::ref {

namespace {
struct Geometry {
  std::int64_t N, C, H, W, O, KH, KW, OH, OW, G, CG, OG;
};
Geometry geometry(const Shape& x, const Shape& w, const Conv2dParams& p) {
  Geometry g{};
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.O = w[0], g.KH = w[2], g.KW = w[3];
  g.OH = (g.H + 2 * p.pad_h - p.dilation_h * (g.KH - 1) - 1) / p.stride_h + 1;
  g.OW = (g.W + 2 * p.pad_w - p.dilation_w * (g.KW - 1) - 1) / p.stride_w + 1;
  g.G = p.groups, g.CG = g.C / g.G, g.OG = g.O / g.G;
  return g;
}
// Calls f(n, o, oh, ow, c, kh, kw, ih, iw) for every in-bounds tap.
template <typename F>
void for_each_tap(const Geometry& g, const Conv2dParams& p, F f) {
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t o = 0; o < g.O; ++o)
      for (std::int64_t oh = 0; oh < g.OH; ++oh)
        for (std::int64_t ow = 0; ow < g.OW; ++ow)
          for (std::int64_t cg = 0; cg < g.CG; ++cg)
            for (std::int64_t kh = 0; kh < g.KH; ++kh)
              for (std::int64_t kw = 0; kw < g.KW; ++kw) {
                const auto ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
                const auto iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                f(n, o, oh, ow, (o / g.OG) * g.CG + cg, cg, kh, kw, ih, iw);
              }
}
}  // namespace

Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  const auto g = geometry(x.shape(), weight.shape(), p);
  auto xv = x.to_vector();
  auto wv = weight.to_vector();
  std::vector<double> acc(static_cast<std::size_t>(g.N * g.O * g.OH * g.OW), 0.0);
  for_each_tap(g, p,
               [&](auto n, auto o, auto oh, auto ow, auto c, auto cg, auto kh, auto kw, auto ih, auto iw) {
                 acc[((n * g.O + o) * g.OH + oh) * g.OW + ow] +=
                     static_cast<double>(xv[((n * g.C + c) * g.H + ih) * g.W + iw]) *
                     wv[((o * g.CG + cg) * g.KH + kh) * g.KW + kw];
               });
  std::vector<float> out(acc.size());
  auto bv = bias.defined() ? bias.to_vector() : std::vector<float>(static_cast<std::size_t>(g.O), 0.0f);
  for (std::size_t i = 0; i < acc.size(); ++i)
    out[i] = static_cast<float>(acc[i] + bv[(i / static_cast<std::size_t>(g.OH * g.OW)) % g.O]);
  return Tensor::from_vector({g.N, g.O, g.OH, g.OW}, out);
}

Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p) {
  const auto g = geometry(x_shape, weight.shape(), p);
  auto gv = grad_out.to_vector();
  auto wv = weight.to_vector();
  std::vector<double> acc(static_cast<std::size_t>(shape_numel(x_shape)), 0.0);
  for_each_tap(g, p,
               [&](auto n, auto o, auto oh, auto ow, auto c, auto cg, auto kh, auto kw, auto ih, auto iw) {
                 acc[((n * g.C + c) * g.H + ih) * g.W + iw] +=
                     static_cast<double>(gv[((n * g.O + o) * g.OH + oh) * g.OW + ow]) *
                     wv[((o * g.CG + cg) * g.KH + kh) * g.KW + kw];
               });
  return Tensor::from_vector(x_shape, std::vector<float>(acc.begin(), acc.end()));
}

void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  const auto g = geometry(x.shape(), weight_shape, p);
  auto gv = grad_out.to_vector();
  auto xv = x.to_vector();
  std::vector<double> acc(static_cast<std::size_t>(shape_numel(weight_shape)), 0.0);
  for_each_tap(g, p,
               [&](auto n, auto o, auto oh, auto ow, auto c, auto cg, auto kh, auto kw, auto ih, auto iw) {
                 acc[((o * g.CG + cg) * g.KH + kh) * g.KW + kw] +=
                     static_cast<double>(gv[((n * g.O + o) * g.OH + oh) * g.OW + ow]) *
                     xv[((n * g.C + c) * g.H + ih) * g.W + iw];
               });
  grad_weight = Tensor::from_vector(weight_shape, std::vector<float>(acc.begin(), acc.end()));
  if (with_bias) {
    std::vector<double> b(static_cast<std::size_t>(g.O), 0.0);
    for (std::size_t i = 0; i < gv.size(); ++i) b[(i / static_cast<std::size_t>(g.OH * g.OW)) % g.O] += gv[i];
    grad_bias = Tensor::from_vector({g.O}, std::vector<float>(b.begin(), b.end()));
  }
}

}  // namespace zsq::ops::ref
