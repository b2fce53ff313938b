// Naive integer convolution: the definition in ops/conv2d_int8.h, one output element at a time.
#include <algorithm>
#include <cmath>

#include "ops/conv2d_int8.h"

namespace zsq::ops::ref {

void conv2d_int8(const Int8ConvShape& s, const Int8ConvEpilogue& e, std::int64_t batch,
                 const std::uint8_t* src, const std::int8_t* weight, const std::int32_t* bias,
                 const float* output_scale, void* dst, const float* residual, std::int32_t src_zero_point) {
  const auto oh_n = s.out_height(), ow_n = s.out_width();
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t oh = 0; oh < oh_n; ++oh)
      for (std::int64_t ow = 0; ow < ow_n; ++ow)
        for (std::int64_t o = 0; o < s.out_channels; ++o) {
          std::int64_t acc = 0;
          for (std::int64_t kh = 0; kh < s.kernel; ++kh)
            for (std::int64_t kw = 0; kw < s.kernel; ++kw) {
              const auto ih = oh * s.stride - s.padding + kh, iw = ow * s.stride - s.padding + kw;
              if (ih < 0 || ih >= s.height || iw < 0 || iw >= s.width) continue;
              for (std::int64_t c = 0; c < s.in_channels; ++c) {
                const std::int32_t x = src[((n * s.height + ih) * s.width + iw) * s.in_channels + c];
                const std::int32_t w = weight[((o * s.in_channels + c) * s.kernel + kh) * s.kernel + kw];
                acc += static_cast<std::int64_t>(w) * (x - src_zero_point);
              }
            }
          const auto index = ((n * oh_n + oh) * ow_n + ow) * s.out_channels + o;
          float v = static_cast<float>(acc + bias[o]) * output_scale[o];
          if (e.residual == Int8Residual::sum_u8)
            v += e.residual_scale * static_cast<float>(static_cast<std::uint8_t*>(dst)[index]);
          if (e.residual == Int8Residual::add_f32) v += residual[index];
          if (e.u8_output) {
            v = std::clamp(v, e.clip_lo, e.clip_hi);
            static_cast<std::uint8_t*>(dst)[index] = static_cast<std::uint8_t>(std::nearbyint(v));
          } else {
            static_cast<float*>(dst)[index] = v;
          }
        }
}

}  // namespace zsq::ops::ref
