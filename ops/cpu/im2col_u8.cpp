// im2col for u8 NHWC activations (see im2col_u8.h): each (kh, kw) tap of an output pixel is one
// contiguous run of C input bytes, copied whole or filled with the pad value.
#include "ops/cpu/im2col_u8.h"

#include <cstring>

#include "engine/check.h"

namespace zsq::ops::cpu {

void im2col_nhwc_u8(const std::uint8_t* src, const Im2colShape& s, std::uint8_t pad_value,
                    std::uint8_t* dst) {
  const Conv2dParams& p = s.p;
  ZSQ_CHECK(p.groups == 1, "im2col_nhwc_u8: grouped convolution (groups={}) is not supported", p.groups);
  ZSQ_CHECK((s.n >= 1 && s.h >= 1 && s.w >= 1 && s.c >= 1 && s.kh >= 1 && s.kw >= 1),
            "im2col_nhwc_u8: sizes must be positive, got n={} h={} w={} c={} kernel {}x{}", s.n, s.h, s.w,
            s.c, s.kh, s.kw);
  ZSQ_CHECK((p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 &&
             p.pad_w >= 0),
            "im2col_nhwc_u8: bad stride/dilation/padding");
  const std::int64_t oh = s.oh(), ow = s.ow(), c = s.c, row_bytes = s.cols();
  ZSQ_CHECK(oh >= 1 && ow >= 1, "im2col_nhwc_u8: the kernel is larger than the padded input");
  const auto run = static_cast<std::size_t>(c);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t n = 0; n < s.n; ++n)
    for (std::int64_t y = 0; y < oh; ++y) {
      const std::uint8_t* image = src + n * s.h * s.w * c;
      std::uint8_t* out = dst + ((n * oh + y) * ow) * row_bytes;
      for (std::int64_t x = 0; x < ow; ++x)
        for (std::int64_t i = 0; i < s.kh; ++i) {
          const std::int64_t iy = y * p.stride_h - p.pad_h + i * p.dilation_h;
          for (std::int64_t j = 0; j < s.kw; ++j, out += c) {
            const std::int64_t ix = x * p.stride_w - p.pad_w + j * p.dilation_w;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w)
              std::memset(out, pad_value, run);
            else
              std::memcpy(out, image + (iy * s.w + ix) * c, run);
          }
        }
    }
}

}  // namespace zsq::ops::cpu
