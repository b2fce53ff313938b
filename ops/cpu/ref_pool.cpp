// Naive pooling loops over logical (row-major) values with double accumulation: the oracle for the
// hand-written and oneDNN paths. Max pooling takes the first maximum of each window.
#include <limits>

#include "ops/pool.h"

namespace zsq::ops::ref {

namespace {
using i64 = std::int64_t;

template <typename F>
Tensor windowed(const Tensor& x, const Pool2dParams& p, F reduce) {
  const i64 N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const i64 OH = (H + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
  const i64 OW = (W + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
  const auto xv = x.to_vector();
  std::vector<float> out(static_cast<std::size_t>(N * C * OH * OW));
  std::vector<float> window;
  for (i64 plane = 0; plane < N * C; ++plane)
    for (i64 oh = 0; oh < OH; ++oh)
      for (i64 ow = 0; ow < OW; ++ow) {
        window.clear();
        for (i64 kh = 0; kh < p.kernel_h; ++kh)
          for (i64 kw = 0; kw < p.kernel_w; ++kw) {
            const i64 ih = oh * p.stride_h - p.pad_h + kh, iw = ow * p.stride_w - p.pad_w + kw;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
              window.push_back(xv[static_cast<std::size_t>((plane * H + ih) * W + iw)]);
          }
        out[static_cast<std::size_t>((plane * OH + oh) * OW + ow)] = reduce(window);
      }
  return Tensor::from_vector({N, C, OH, OW}, out);
}

float mean_of(const std::vector<float>& v) {
  double s = 0.0;
  for (float e : v) s += e;
  return static_cast<float>(s / static_cast<double>(v.size()));
}

float max_of(const std::vector<float>& v) {
  float m = -std::numeric_limits<float>::infinity();
  for (float e : v)
    if (e > m) m = e;
  return m;
}

Pool2dParams global_params(const Tensor& x) {
  return {x.size(2), x.size(3), x.size(2), x.size(3), 0, 0};
}
}  // namespace

Tensor global_avg_pool(const Tensor& x) {
  return windowed(x, global_params(x), mean_of);
}
Tensor global_max_pool(const Tensor& x) {
  return windowed(x, global_params(x), max_of);
}
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) {
  return windowed(x, p, mean_of);
}
Tensor max_pool2d(const Tensor& x, const Pool2dParams& p) {
  return windowed(x, p, max_of);
}

Tensor upsample_nearest2x(const Tensor& x) {
  const i64 N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto xv = x.to_vector();
  std::vector<float> out(static_cast<std::size_t>(N * C * 4 * H * W));
  for (i64 plane = 0; plane < N * C; ++plane)
    for (i64 oh = 0; oh < 2 * H; ++oh)
      for (i64 ow = 0; ow < 2 * W; ++ow)
        out[static_cast<std::size_t>((plane * 2 * H + oh) * 2 * W + ow)] =
            xv[static_cast<std::size_t>((plane * H + oh / 2) * W + ow / 2)];
  return Tensor::from_vector({N, C, 2 * H, 2 * W}, out);
}

}  // namespace zsq::ops::ref
