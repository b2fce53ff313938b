#include "ops/conv2d.h"

#include <cstdlib>

#include "engine/autograd.h"
#include "ops/cuda/conv2d_cudnn.h"

namespace zsq::ops {

namespace {
// The CUDA path (ops/cuda/conv2d_cudnn.cpp), or stubs in a build without CUDA, where no tensor can be
// on a GPU and these are never reached.
#if ZSQ_WITH_CUDA
namespace gpu = cudnn_impl;
#else
namespace gpu {
[[noreturn]] void no_cuda() {
  fail("conv2d: zsq was built without CUDA");
}
Tensor conv2d_forward(const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&,
                      const ConvEpilogue& = {}) {
  no_cuda();
}
Tensor conv2d_backward_data(const Tensor&, const Tensor&, const Shape&, const Conv2dParams&) {
  no_cuda();
}
void conv2d_backward_weights(const Tensor&, const Tensor&, const Shape&, bool, const Conv2dParams&, Tensor&,
                             Tensor&) {
  no_cuda();
}
}  // namespace gpu
#endif

// Tensors of one call must share a device; the message names both.
void check_same_device(const char* op, const char* what, const Tensor& t, const char* other_what,
                       const Tensor& other) {
  if (t.defined() && other.defined() && t.device() != other.device()) [[unlikely]]
    fail(fmt::format("{}: {} and {} on different devices: {} on {} and {} on {}", op, what, other_what,
                     t.str(), t.device().str(), other.str(), other.device().str()));
}

ConvAlgorithm initial_conv_algorithm() {
  const char* env = std::getenv("ZSQ_CONV_ALGO");
  return env == nullptr ? ConvAlgorithm::auto_select : parse_conv_algorithm(env, "$ZSQ_CONV_ALGO");
}
ConvAlgorithm& conv_algorithm_setting() {
  static ConvAlgorithm setting = initial_conv_algorithm();
  return setting;
}
}  // namespace

ConvAlgorithm conv_algorithm() {
  return conv_algorithm_setting();
}
void set_conv_algorithm(ConvAlgorithm algorithm) {
  conv_algorithm_setting() = algorithm;
}

ConvAlgorithm parse_conv_algorithm(const std::string& name, const std::string& source) {
  if (name == "auto") return ConvAlgorithm::auto_select;
  if (name == "direct") return ConvAlgorithm::direct;
  throw Error(fmt::format("{}: unknown convolution algorithm '{}' (expected auto or direct)", source, name));
}

const char* to_string(ConvAlgorithm algorithm) {
  return algorithm == ConvAlgorithm::direct ? "direct" : "auto";
}

Shape conv2d_output_shape(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  ZSQ_CHECK(x.defined() && weight.defined(), "conv2d: undefined input or weight");
  check_same_device("conv2d", "weight", weight, "input", x);
  check_same_device("conv2d", "bias", bias, "input", x);
  ZSQ_CHECK(x.dim() == 4 && x.dtype() == DType::f32, "conv2d: input must be f32 [N, C, H, W], got {}",
            x.str());
  ZSQ_CHECK(weight.dim() == 4 && weight.dtype() == DType::f32 && weight.format() == MemoryFormat::contiguous,
            "conv2d: weight must be contiguous f32 [O, C/groups, KH, KW], got {}", weight.str());
  ZSQ_CHECK(p.groups >= 1 && p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 &&
                p.pad_h >= 0 && p.pad_w >= 0,
            "conv2d: bad parameters (groups {}, stride {}x{}, dilation {}x{}, padding {}x{})", p.groups,
            p.stride_h, p.stride_w, p.dilation_h, p.dilation_w, p.pad_h, p.pad_w);
  const auto C = x.size(1), O = weight.size(0);
  ZSQ_CHECK(C % p.groups == 0 && O % p.groups == 0 && weight.size(1) == C / p.groups,
            "conv2d: input {} and weight {} do not match with groups={}", x.str(), weight.str(), p.groups);
  if (bias.defined())
    ZSQ_CHECK(bias.dim() == 1 && bias.size(0) == O && bias.dtype() == DType::f32,
              "conv2d: bias must be f32 [{}], got {}", O, bias.str());
  const auto OH = (x.size(2) + 2 * p.pad_h - p.dilation_h * (weight.size(2) - 1) - 1) / p.stride_h + 1;
  const auto OW = (x.size(3) + 2 * p.pad_w - p.dilation_w * (weight.size(3) - 1) - 1) / p.stride_w + 1;
  ZSQ_CHECK(OH >= 1 && OW >= 1, "conv2d: input {} too small for weight {} (output {}x{})", x.str(),
            weight.str(), OH, OW);
  return {x.size(0), O, OH, OW};
}

Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  conv2d_output_shape(x, weight, bias, p);
  if (x.is_cuda()) return gpu::conv2d_forward(x, weight, bias, p);
  if (single_output::applies(x, weight.shape(), p)) return single_output::forward(x, weight, bias, p);
  return dnnl_impl::conv2d_forward(x, weight, bias, p, any_requires_grad({&x, &weight, &bias}));
}

Tensor conv2d_fused_inference(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const Conv2dParams& p, const ConvEpilogue& epilogue) {
  const Shape out_shape = conv2d_output_shape(x, weight, bias, p);
  if (epilogue.residual.defined())
    ZSQ_CHECK(epilogue.residual.shape() == out_shape && epilogue.residual.dtype() == DType::f32,
              "conv2d_fused_inference: residual {} does not match the output {}", epilogue.residual.str(),
              shape_str(out_shape));
  check_same_device("conv2d_fused_inference", "residual", epilogue.residual, "input", x);
  if (x.is_cuda()) return gpu::conv2d_forward(x, weight, bias, p, epilogue);
  return dnnl_impl::conv2d_forward(x, weight, bias, p, false, epilogue);
}

Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p) {
  check_same_device("conv2d_backward_data", "weight", weight, "output gradient", grad_out);
  if (grad_out.is_cuda()) return gpu::conv2d_backward_data(grad_out, weight, x_shape, p);
  return dnnl_impl::conv2d_backward_data(grad_out, weight, x_shape, p);
}

void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  check_same_device("conv2d_backward_weights", "input", x, "output gradient", grad_out);
  if (grad_out.is_cuda())
    return gpu::conv2d_backward_weights(grad_out, x, weight_shape, with_bias, p, grad_weight, grad_bias);
  if (single_output::applies(x, weight_shape, p))
    return single_output::backward_weights(grad_out, x, weight_shape, with_bias, p, grad_weight, grad_bias);
  dnnl_impl::conv2d_backward_weights(grad_out, x, weight_shape, with_bias, p, grad_weight, grad_bias);
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  conv2d_output_shape(x, weight, bias, p);
  const bool weight_grad = weight.requires_grad() || bias.requires_grad();
  // A Winograd layer hands back its blocked copy of the input: the weight pass reuses it instead of
  // reordering x again, and x itself need not be kept.
  Tensor blocked_x;
  const bool on_gpu = x.is_cuda();
  Tensor out = on_gpu ? gpu::conv2d_forward(x, weight, bias, p)
               : single_output::applies(x, weight.shape(), p)
                   ? single_output::forward(x, weight, bias, p)
                   : dnnl_impl::conv2d_forward(x, weight, bias, p, any_requires_grad({&x, &weight, &bias}),
                                               {}, weight_grad ? &blocked_x : nullptr);
  // The input is saved only when the weight gradient will need it.
  Tensor saved_x = weight_grad && !blocked_x.defined() ? x.detach() : Tensor();
  Tensor saved_w = weight.detach();
  const Shape x_shape = x.shape();
  const bool with_bias = bias.defined();
  std::vector<Tensor> inputs{x, weight};
  if (with_bias) inputs.push_back(bias);
  return record(out, "conv2d", std::move(inputs), [=](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(needs.size());
    if (on_gpu) {
      if (needs[0]) grads[0] = gpu::conv2d_backward_data(g, saved_w, x_shape, p);
      if (needs[1] || (with_bias && needs[2])) {
        Tensor gw, gb;
        gpu::conv2d_backward_weights(g, saved_x, saved_w.shape(), with_bias, p, gw, gb);
        grads[1] = gw;
        if (with_bias) grads[2] = gb;
      }
      return grads;
    }
    // On the blocked (Winograd) path the weight pass also reuses the data pass's blocked copy of g.
    Tensor blocked_g;
    if (needs[0])
      grads[0] =
          dnnl_impl::conv2d_backward_data(g, saved_w, x_shape, p, blocked_x.defined() ? &blocked_g : nullptr);
    if (needs[1] || (with_bias && needs[2])) {
      Tensor gw, gb;
      if (blocked_x.defined())
        dnnl_impl::conv2d_backward_weights_blocked(g, blocked_g, blocked_x, x_shape, saved_w.shape(),
                                                   with_bias, p, gw, gb);
      else
        conv2d_backward_weights(g, saved_x, saved_w.shape(), with_bias, p, gw, gb);
      grads[1] = gw;
      if (with_bias) grads[2] = gb;
    }
    return grads;
  });
}

}  // namespace zsq::ops
