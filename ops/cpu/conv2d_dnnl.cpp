// oneDNN convolution by the book: activations forced to nhwc (what the AVX-512 kernels like and what
// zsq's channels-last tensors already are), weights `any` so oneDNN picks its blocked layout, the
// forward descriptor as the hint for both backward passes, and every descriptor cached by shape.
// Master weights stay OIHW; the (small) reorders into each pass's layout are cached primitives.
// Wide 3x3 stride-1 layers use Winograd (see ConvAlgorithm in ops/conv2d.h); its kernels want blocked
// activations (`any`), so those are reordered in and out around the call.
#include <cstdlib>
#include <optional>

#include "ops/conv2d.h"
#include "ops/cpu/dnnl_context.h"

namespace zsq::ops::dnnl_impl {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {
struct ConvDescs {
  // src/dst: the nhwc tensors; src_prim/dst_prim: what the primitive is asked to use (the same for
  // direct, `any` for Winograd).
  memory::desc src, src_prim, weights_user, weights_any, bias, dst, dst_prim;
  dnnl::algorithm algorithm = dnnl::algorithm::convolution_direct;
  memory::dims strides, dilates, pad_l, pad_r;
  std::string key;
};

bool winograd_shape(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return conv_algorithm() == ConvAlgorithm::auto_select && p.groups == 1 && w[2] == 3 && w[3] == 3 &&
         p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 && p.dilation_w == 1 &&
         x[1] >= kWinogradMinChannels && w[0] >= kWinogradMinChannels;
}

ConvDescs describe(const Shape& x, const Shape& w, bool with_bias, const Conv2dParams& p,
                   bool allow_winograd = true);

// Whether oneDNN has a Winograd kernel for this shape on this machine (asked once per shape).
bool winograd_available(const ConvDescs& d) {
  return cpu::dnnl_cached<bool>("conv_wino_ok:" + d.key, [&] {
    try {
      dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training,
                                           dnnl::algorithm::convolution_winograd, d.src_prim, d.weights_any,
                                           d.dst_prim, d.strides, d.dilates, d.pad_l, d.pad_r);
      dnnl::convolution_forward::primitive_desc pd(desc, cpu::dnnl_engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  });
}

ConvDescs describe(const Shape& x, const Shape& w, bool with_bias, const Conv2dParams& p,
                   bool allow_winograd) {
  ConvDescs d;
  const auto O = w[0], KH = w[2], KW = w[3];
  const auto OH = (x[2] + 2 * p.pad_h - p.dilation_h * (KH - 1) - 1) / p.stride_h + 1;
  const auto OW = (x[3] + 2 * p.pad_w - p.dilation_w * (KW - 1) - 1) / p.stride_w + 1;
  d.src = cpu::activation_desc(x, MemoryFormat::channels_last);
  d.dst = cpu::activation_desc({x[0], O, OH, OW}, MemoryFormat::channels_last);
  if (p.groups == 1) {
    d.weights_user = memory::desc({O, w[1], KH, KW}, dt::f32, tag::oihw);
    d.weights_any = memory::desc({O, w[1], KH, KW}, dt::f32, tag::any);
  } else {
    // [O, C/G, KH, KW] row-major is exactly goihw with dims [G, O/G, C/G, KH, KW].
    memory::dims gd{p.groups, O / p.groups, w[1], KH, KW};
    d.weights_user = memory::desc(gd, dt::f32, tag::goihw);
    d.weights_any = memory::desc(gd, dt::f32, tag::any);
  }
  d.bias = with_bias ? memory::desc({O}, dt::f32, tag::x) : memory::desc();
  d.strides = {p.stride_h, p.stride_w};
  d.dilates = {p.dilation_h - 1, p.dilation_w - 1};
  d.pad_l = {p.pad_h, p.pad_w};
  // Right padding so that the output size matches the formula exactly (oneDNN checks consistency).
  d.pad_r = {(OH - 1) * p.stride_h + p.dilation_h * (KH - 1) + 1 - x[2] - p.pad_h,
             (OW - 1) * p.stride_w + p.dilation_w * (KW - 1) + 1 - x[3] - p.pad_w};
  d.key = fmt::format("{}|{}|b{}|s{},{}|p{},{}|d{},{}|g{}", shape_str(x), shape_str(w), with_bias, p.stride_h,
                      p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups);
  d.src_prim = d.src;
  d.dst_prim = d.dst;
  if (allow_winograd && winograd_shape(x, w, p)) {
    ConvDescs wino = d;
    wino.src_prim = memory::desc(d.src.dims(), dt::f32, tag::any);
    wino.dst_prim = memory::desc(d.dst.dims(), dt::f32, tag::any);
    if (winograd_available(wino)) {
      wino.algorithm = dnnl::algorithm::convolution_winograd;
      wino.key += "|wino";
      return wino;
    }
  }
  return d;
}

// Post-ops for the inference epilogue: binary add of the residual (read straight from its buffer, no
// copy into dst), then ReLU.
dnnl::primitive_attr epilogue_attr(const ConvEpilogue& e) {
  dnnl::primitive_attr attr;
  dnnl::post_ops ops;
  if (e.residual.defined()) ops.append_sum(1.0f);
  if (e.relu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  attr.set_post_ops(ops);
  return attr;
}

std::string epilogue_key(const ConvEpilogue& e) {
  return fmt::format("{}{}", e.residual.defined() ? "+res" : "", e.relu ? "+relu" : "");
}

dnnl::convolution_forward::primitive_desc& forward_pd(const ConvDescs& d, bool training,
                                                      const ConvEpilogue& epilogue = {}) {
  return cpu::dnnl_cached<dnnl::convolution_forward::primitive_desc>(
      (training ? "conv_fwd_train:" : "conv_fwd_infer:") + d.key + epilogue_key(epilogue), [&] {
        const auto prop = training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
        auto desc =
            d.bias ? dnnl::convolution_forward::desc(prop, d.algorithm, d.src_prim, d.weights_any, d.bias,
                                                     d.dst_prim, d.strides, d.dilates, d.pad_l, d.pad_r)
                   : dnnl::convolution_forward::desc(prop, d.algorithm, d.src_prim, d.weights_any, d.dst_prim,
                                                     d.strides, d.dilates, d.pad_l, d.pad_r);
        return dnnl::convolution_forward::primitive_desc(desc, epilogue_attr(epilogue), cpu::dnnl_engine());
      });
}

dnnl::convolution_backward_data::primitive_desc& backward_data_pd(const ConvDescs& d) {
  return cpu::dnnl_cached<dnnl::convolution_backward_data::primitive_desc>("conv_bwd_data:" + d.key, [&] {
    dnnl::convolution_backward_data::desc desc(d.algorithm, d.src_prim, d.weights_any, d.dst_prim, d.strides,
                                               d.dilates, d.pad_l, d.pad_r);
    return dnnl::convolution_backward_data::primitive_desc(desc, cpu::dnnl_engine(), forward_pd(d, true));
  });
}

}  // namespace

bool conv2d_uses_winograd(const Shape& x_shape, const Shape& weight_shape, const Conv2dParams& p) {
  return describe(x_shape, weight_shape, false, p).algorithm == dnnl::algorithm::convolution_winograd;
}

Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p,
                      bool training, const ConvEpilogue& epilogue, Tensor* blocked_input) {
  // Fused epilogues stay direct: the sum post-op accumulates into dst, which Winograd would put in a
  // scratch layout, and its kernels take no post-ops we rely on.
  const bool plain = !epilogue.residual.defined() && !epilogue.relu;
  const ConvDescs d = describe(x.shape(), weight.shape(), bias.defined(), p, plain);
  auto& pd = forward_pd(d, training, epilogue);
  auto& prim = cpu::dnnl_cached<dnnl::convolution_forward>(
      (training ? "conv_fwd_train_prim:" : "conv_fwd_infer_prim:") + d.key + epilogue_key(epilogue),
      [&] { return dnnl::convolution_forward(pd); });
  Tensor out = Tensor::empty({x.size(0), weight.size(0), d.dst.dims()[2], d.dst.dims()[3]}, DType::f32,
                             MemoryFormat::channels_last);
  auto src = cpu::ReorderedMemory::input(pd.src_desc(), cpu::activation_desc(x), x.raw_data());
  auto wts = cpu::ReorderedMemory::input(pd.weights_desc(), d.weights_user, weight.raw_data());
  auto dst = cpu::ReorderedMemory::output(pd.dst_desc(), d.dst, out.raw_data());
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, src.memory()}, {DNNL_ARG_WEIGHTS, wts.memory()}, {DNNL_ARG_DST, dst.memory()}};
  if (bias.defined()) args.emplace(DNNL_ARG_BIAS, memory(d.bias, cpu::dnnl_engine(), bias.raw_data()));
  if (epilogue.residual.defined()) out.copy_from(epilogue.residual);  // the sum post-op accumulates into dst
  if (std::getenv("ZSQ_VERBOSE_DNNL") != nullptr)
    fmt::print(stderr, "conv {} {}: {}\n", d.key, epilogue_key(epilogue), pd.impl_info_str());
  prim.execute(cpu::dnnl_stream(), args);
  dst.finish();
  cpu::dnnl_stream().wait();
  if (blocked_input != nullptr) *blocked_input = src.take_scratch();
  return out;
}

Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p, Tensor* blocked_grad_out) {
  const ConvDescs d = describe(x_shape, weight.shape(), false, p);
  auto& pd = backward_data_pd(d);
  auto& prim = cpu::dnnl_cached<dnnl::convolution_backward_data>(
      "conv_bwd_data_prim:" + d.key, [&] { return dnnl::convolution_backward_data(pd); });
  Tensor grad_x = Tensor::empty(x_shape, DType::f32, MemoryFormat::channels_last);
  auto diff_dst =
      cpu::ReorderedMemory::input(pd.diff_dst_desc(), cpu::activation_desc(grad_out), grad_out.raw_data());
  auto wts = cpu::ReorderedMemory::input(pd.weights_desc(), d.weights_user, weight.raw_data());
  auto diff_src = cpu::ReorderedMemory::output(pd.diff_src_desc(), d.src, grad_x.raw_data());
  prim.execute(cpu::dnnl_stream(), {{DNNL_ARG_DIFF_DST, diff_dst.memory()},
                                    {DNNL_ARG_WEIGHTS, wts.memory()},
                                    {DNNL_ARG_DIFF_SRC, diff_src.memory()}});
  diff_src.finish();
  cpu::dnnl_stream().wait();
  if (blocked_grad_out != nullptr) *blocked_grad_out = diff_dst.take_scratch();
  return grad_x;
}

namespace {
// The weight pass with its source given either as the nhwc tensor `x` or as the forward pass's
// blocked copy (`blocked`, in the forward primitive's source layout), and its output gradient as the
// nhwc `grad_out` or, when defined, the data pass's blocked copy of it (`blocked_grad`).
void backward_weights(const Tensor& grad_out, const Tensor& blocked_grad, const Tensor& x,
                      const Tensor& blocked, const Shape& x_shape, const Shape& weight_shape, bool with_bias,
                      const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  const ConvDescs d = describe(x_shape, weight_shape, with_bias, p);
  auto& pd = cpu::dnnl_cached<dnnl::convolution_backward_weights::primitive_desc>("conv_bwd_w:" + d.key, [&] {
    auto desc =
        with_bias
            ? dnnl::convolution_backward_weights::desc(d.algorithm, d.src_prim, d.weights_any, d.bias,
                                                       d.dst_prim, d.strides, d.dilates, d.pad_l, d.pad_r)
            : dnnl::convolution_backward_weights::desc(d.algorithm, d.src_prim, d.weights_any, d.dst_prim,
                                                       d.strides, d.dilates, d.pad_l, d.pad_r);
    return dnnl::convolution_backward_weights::primitive_desc(desc, cpu::dnnl_engine(), forward_pd(d, true));
  });
  auto& prim = cpu::dnnl_cached<dnnl::convolution_backward_weights>(
      "conv_bwd_w_prim:" + d.key, [&] { return dnnl::convolution_backward_weights(pd); });
  grad_weight = Tensor::empty(weight_shape);
  std::optional<cpu::ReorderedMemory> src;
  memory src_memory;
  if (blocked.defined()) {
    ZSQ_CHECK(pd.src_desc() == forward_pd(d, true).src_desc() &&
                  static_cast<std::size_t>(blocked.numel()) * sizeof(float) >= pd.src_desc().get_size(),
              "conv2d backward weights: the forward pass's blocked input does not fit this pass ({})", d.key);
    src_memory = memory(pd.src_desc(), cpu::dnnl_engine(), blocked.raw_data());
  } else {
    src.emplace(cpu::ReorderedMemory::input(pd.src_desc(), cpu::activation_desc(x), x.raw_data()));
    src_memory = src->memory();
  }
  std::optional<cpu::ReorderedMemory> diff_dst;
  memory diff_dst_memory;
  if (blocked_grad.defined()) {
    // The data pass has no bias: its descriptors are the bias-free ones.
    const ConvDescs data_d = describe(x_shape, weight_shape, false, p);
    ZSQ_CHECK(
        pd.diff_dst_desc() == backward_data_pd(data_d).diff_dst_desc() &&
            static_cast<std::size_t>(blocked_grad.numel()) * sizeof(float) >= pd.diff_dst_desc().get_size(),
        "conv2d backward weights: the data pass's blocked output gradient does not fit this pass ({})",
        d.key);
    diff_dst_memory = memory(pd.diff_dst_desc(), cpu::dnnl_engine(), blocked_grad.raw_data());
  } else {
    diff_dst.emplace(
        cpu::ReorderedMemory::input(pd.diff_dst_desc(), cpu::activation_desc(grad_out), grad_out.raw_data()));
    diff_dst_memory = diff_dst->memory();
  }
  auto diff_w = cpu::ReorderedMemory::output(pd.diff_weights_desc(), d.weights_user, grad_weight.raw_data());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src_memory},
                                       {DNNL_ARG_DIFF_DST, diff_dst_memory},
                                       {DNNL_ARG_DIFF_WEIGHTS, diff_w.memory()}};
  if (with_bias) {
    grad_bias = Tensor::empty({weight_shape[0]});
    args.emplace(DNNL_ARG_DIFF_BIAS, memory(d.bias, cpu::dnnl_engine(), grad_bias.raw_data()));
  }
  prim.execute(cpu::dnnl_stream(), args);
  diff_w.finish();
  cpu::dnnl_stream().wait();
}
}  // namespace

void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  backward_weights(grad_out, Tensor(), x, Tensor(), x.shape(), weight_shape, with_bias, p, grad_weight,
                   grad_bias);
}

void conv2d_backward_weights_blocked(const Tensor& grad_out, const Tensor& blocked_grad_out,
                                     const Tensor& blocked_input, const Shape& x_shape,
                                     const Shape& weight_shape, bool with_bias, const Conv2dParams& p,
                                     Tensor& grad_weight, Tensor& grad_bias) {
  backward_weights(grad_out, blocked_grad_out, Tensor(), blocked_input, x_shape, weight_shape, with_bias, p,
                   grad_weight, grad_bias);
}

}  // namespace zsq::ops::dnnl_impl
