// 2-D convolution (cross-correlation, as in every DL framework).
//   x: f32 [N, C, H, W] in either format; weight: f32 [O, C/groups, KH, KW] contiguous; bias: [O] or
//   undefined. Output: f32 [N, O, OH, OW] channels-last, OH = (H + 2*pad_h - dil_h*(KH-1) - 1)/stride_h + 1.
#pragma once
#include <string>

#include "engine/tensor.h"

namespace zsq::ops {

struct Conv2dParams {
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t dilation_h = 1, dilation_w = 1;
  std::int64_t groups = 1;

  static Conv2dParams same(std::int64_t kernel, std::int64_t stride = 1, std::int64_t groups = 1,
                           std::int64_t dilation = 1) {
    const auto pad = dilation * (kernel - 1) / 2;
    return {stride, stride, pad, pad, dilation, dilation, groups};
  }
};

// Validates shapes (errors name both tensors) and returns the output shape.
Shape conv2d_output_shape(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// Differentiable front function: validates, dispatches to the fast path, records the autograd node.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// Named pieces (no autograd), dispatched to oneDNN on the CPU.
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
// Writes grad_weight (same shape as weight, contiguous) and, when wanted, grad_bias [O].
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);

// What an inference-only convolution may fuse after the bias: a residual of the output's shape added
// element-wise, then a ReLU. Lets eval-mode networks run conv+BN(folded)+add+ReLU as one pass.
struct ConvEpilogue {
  Tensor residual;
  bool relu = false;
};

// y = relu?(conv(x, weight) + bias + residual?). No autograd: callers use it only when nothing needs a
// gradient (evaluation, calibration). The reference is conv2d_forward followed by add and relu.
Tensor conv2d_fused_inference(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const Conv2dParams& p, const ConvEpilogue& epilogue);

// Which oneDNN algorithm the CPU convolutions may use.
//   auto   (default) Winograd F(4x4, 3x3) for 3x3 stride-1 dense convolutions whose input and output
//          both have at least kWinogradMinChannels channels, direct otherwise. Winograd needs 2.25x
//          fewer multiplications; measured 2.0-2.6x faster than direct on wide layers on an AVX-512
//          machine, slower on 16-channel ones (docs/results.md). Results differ from direct by
//          rounding only (f32 throughout; tests bound the difference against the reference loop).
//   direct every convolution direct (the pre-Winograd numerics, bit for bit).
// The initial value comes from $ZSQ_CONV_ALGO (auto | direct; anything else is an error at first use).
// Where oneDNN has no Winograd kernel for the machine, auto falls back to direct silently.
enum class ConvAlgorithm : unsigned char { auto_select, direct };
inline constexpr std::int64_t kWinogradMinChannels = 32;
ConvAlgorithm conv_algorithm();
void set_conv_algorithm(ConvAlgorithm algorithm);
ConvAlgorithm parse_conv_algorithm(const std::string& name, const std::string& source);
const char* to_string(ConvAlgorithm algorithm);

// Sets the algorithm for a scope (a benchmark case, a test) and restores the previous one on exit.
class ScopedConvAlgorithm {
 public:
  explicit ScopedConvAlgorithm(ConvAlgorithm algorithm) : saved_(conv_algorithm()) {
    set_conv_algorithm(algorithm);
  }
  ~ScopedConvAlgorithm() { set_conv_algorithm(saved_); }
  ScopedConvAlgorithm(const ScopedConvAlgorithm&) = delete;
  ScopedConvAlgorithm& operator=(const ScopedConvAlgorithm&) = delete;

 private:
  ConvAlgorithm saved_;
};

namespace ref {
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);
}  // namespace ref

// One output channel (ops/cpu/conv2d_single_output.cpp): AVX-512 forward and weight gradient, used by
// the conv2d functions above under ConvAlgorithm auto when `applies` (C a multiple of 16, at most 256,
// groups 1, CPU); `direct` keeps oneDNN for these too. The data gradient is always oneDNN's.
namespace single_output {
bool applies(const Tensor& x, const Shape& weight_shape, const Conv2dParams& p);
Tensor forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
void backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape, bool with_bias,
                      const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);
}  // namespace single_output

namespace dnnl_impl {
// blocked_input: when given and the primitive wanted the input in another layout (Winograd), receives
// that reordered copy (flat storage) so conv2d_backward_weights can reuse it instead of reordering the
// input a second time; left undefined otherwise.
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p,
                      bool training, const ConvEpilogue& epilogue = {}, Tensor* blocked_input = nullptr);
// blocked_grad_out: as blocked_input, for the output gradient (the weight pass can reuse it).
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p, Tensor* blocked_grad_out = nullptr);
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);
// The weight gradient from the forward pass's blocked_input (x itself is not needed then) and, when
// defined, the data pass's blocked_grad_out (grad_out is then not read).
void conv2d_backward_weights_blocked(const Tensor& grad_out, const Tensor& blocked_grad_out,
                                     const Tensor& blocked_input, const Shape& x_shape,
                                     const Shape& weight_shape, bool with_bias, const Conv2dParams& p,
                                     Tensor& grad_weight, Tensor& grad_bias);
// Whether a plain (no epilogue) convolution of these shapes runs as Winograd under the current setting
// on this machine.
bool conv2d_uses_winograd(const Shape& x_shape, const Shape& weight_shape, const Conv2dParams& p);
}  // namespace dnnl_impl

}  // namespace zsq::ops
