// Integer convolution for the deploy-form model (DESIGN.md §4): u8 activations (optionally with a source
// zero point), s8 weights (8-bit values, or 4-bit values held in s8), s32 bias, per-output-channel
// output scales and a fused epilogue, channels-last (NHWC) in and out. No autograd: inference only.
//
// What it computes, for every output element (n, oh, ow, o):
//   acc = sum over in-bounds taps of w[o, c, kh, kw] * (src[n, ih, iw, c] - src_zero_point)
//         (padding is the real value 0, i.e. the u8 value src_zero_point: it contributes nothing)
//   v   = (acc + bias[o]) * output_scale[o]
//   v  += residual_scale * dst[n, oh, ow, o]    (Residual::sum_u8: dst holds a u8 residual on entry)
//   v  += residual[n, oh, ow, o]                (Residual::add_f32: a separate f32 tensor)
//   u8 output:  dst = round_half_even(clamp(v, clip_lo, clip_hi))   f32 output: dst = v
// With output_scale = s_src * s_w[o] / s_dst the u8 result is the next layer's quantized activation,
// and the clip [qmin, qmax] of its grid doubles as the ReLU.
//
// The fast path is one oneDNN 2.6 int8 primitive per (shape, batch): u8 x s8 -> u8/f32 with output
// scales, source zero points, sum / binary-add post-ops and eltwise_clip; weights are reordered once
// into the layout oneDNN picks. ref::conv2d_int8 is the naive loop the tests compare it with.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace zsq::ops {

struct Int8ConvShape {
  std::int64_t in_channels = 0, out_channels = 0;
  std::int64_t kernel = 1, stride = 1, padding = 0;
  std::int64_t height = 0, width = 0;  // of the input
  std::int64_t out_height() const { return (height + 2 * padding - kernel) / stride + 1; }
  std::int64_t out_width() const { return (width + 2 * padding - kernel) / stride + 1; }
  std::int64_t weight_numel() const { return out_channels * in_channels * kernel * kernel; }
};

enum class Int8Residual : std::uint8_t { none, sum_u8, add_f32 };

struct Int8ConvEpilogue {
  bool u8_output = true;
  float clip_lo = 0.0f, clip_hi = 255.0f;  // u8 output only; within [0, 255]
  Int8Residual residual = Int8Residual::none;
  float residual_scale = 1.0f;  // sum_u8 only
  bool src_zero_point = false;  // when false the source zero point is 0
};

class Int8Conv2d {
 public:
  // weight: OIHW s8 [out, in, k, k]; bias: s32 [out] (in accumulator units); output_scale: f32 [out].
  Int8Conv2d(const Int8ConvShape& shape, std::vector<std::int8_t> weight, std::vector<std::int32_t> bias,
             std::vector<float> output_scale, const Int8ConvEpilogue& epilogue);
  ~Int8Conv2d();
  Int8Conv2d(Int8Conv2d&&) noexcept;
  Int8Conv2d& operator=(Int8Conv2d&&) noexcept;

  // src: u8 NHWC [batch, H, W, in]; dst: u8 or f32 NHWC [batch, OH, OW, out]; residual: f32 NHWC of the
  // dst shape for add_f32, else ignored.
  void forward(std::int64_t batch, const std::uint8_t* src, void* dst, const float* residual = nullptr,
               std::int32_t src_zero_point = 0) const;
  // oneDNN's implementation string for this batch size (creates the primitive if needed).
  std::string implementation(std::int64_t batch) const;
  const Int8ConvShape& shape() const;
  const Int8ConvEpilogue& epilogue() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

namespace ref {
// The definition above as plain loops (the test oracle; never optimized).
void conv2d_int8(const Int8ConvShape& shape, const Int8ConvEpilogue& epilogue, std::int64_t batch,
                 const std::uint8_t* src, const std::int8_t* weight, const std::int32_t* bias,
                 const float* output_scale, void* dst, const float* residual, std::int32_t src_zero_point);
}  // namespace ref

}  // namespace zsq::ops
