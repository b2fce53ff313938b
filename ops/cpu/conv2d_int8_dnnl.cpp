// Int8Conv2d on oneDNN 2.6: one forward-inference primitive per batch size (built on first use), the
// s8 weights reordered once per weight layout oneDNN asks for (the same layout for every batch in
// practice), static output scales and post-ops fixed at construction.
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>

#include "engine/check.h"
#include "ops/conv2d_int8.h"
#include "ops/cpu/dnnl_context.h"

namespace zsq::ops {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Int8Conv2d::Impl {
  Int8ConvShape shape;
  Int8ConvEpilogue epilogue;
  std::vector<std::int8_t> weight;  // OIHW, the user copy (reordered per primitive layout below)
  std::vector<std::int32_t> bias;
  std::vector<float> output_scale;

  struct Prepared {
    dnnl::convolution_forward::primitive_desc pd;
    dnnl::convolution_forward primitive;
    memory weights;  // in pd.weights_desc()
  };
  mutable std::mutex mutex;
  mutable std::map<std::int64_t, Prepared> by_batch;

  memory::desc activation(std::int64_t batch, std::int64_t c, std::int64_t h, std::int64_t w, dt type) const {
    return memory::desc({batch, c, h, w}, type, tag::nhwc);
  }

  const Prepared& prepared(std::int64_t batch) const {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = by_batch.find(batch);
    if (it != by_batch.end()) return it->second;
    const auto& s = shape;
    const auto oh = s.out_height(), ow = s.out_width();
    const auto src = activation(batch, s.in_channels, s.height, s.width, dt::u8);
    const auto dst = activation(batch, s.out_channels, oh, ow, epilogue.u8_output ? dt::u8 : dt::f32);
    const memory::desc weights_any({s.out_channels, s.in_channels, s.kernel, s.kernel}, dt::s8, tag::any);
    const memory::desc bias_desc({s.out_channels}, dt::s32, tag::x);
    const memory::dims strides{s.stride, s.stride}, pad_l{s.padding, s.padding};
    const memory::dims pad_r{(oh - 1) * s.stride + s.kernel - s.height - s.padding,
                             (ow - 1) * s.stride + s.kernel - s.width - s.padding};
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference,
                                         dnnl::algorithm::convolution_direct, src, weights_any, bias_desc,
                                         dst, strides, pad_l, pad_r);
    dnnl::primitive_attr attr;
    attr.set_output_scales(1 << 1, output_scale);  // per output channel (dim 1 of NCHW dims)
    if (epilogue.src_zero_point) attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    dnnl::post_ops ops;
    if (epilogue.residual == Int8Residual::sum_u8) ops.append_sum(epilogue.residual_scale);
    if (epilogue.residual == Int8Residual::add_f32)
      ops.append_binary(dnnl::algorithm::binary_add, activation(batch, s.out_channels, oh, ow, dt::f32));
    if (epilogue.u8_output)
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, epilogue.clip_lo, epilogue.clip_hi);
    attr.set_post_ops(ops);
    Prepared p{dnnl::convolution_forward::primitive_desc(desc, attr, cpu::dnnl_engine()), {}, {}};
    p.primitive = dnnl::convolution_forward(p.pd);
    // Reuse the reordered weights of another batch size when oneDNN wants the same layout.
    for (const auto& [other_batch, other] : by_batch)
      if (other.pd.weights_desc() == p.pd.weights_desc()) p.weights = other.weights;
    if (!p.weights) {
      const memory::desc user({s.out_channels, s.in_channels, s.kernel, s.kernel}, dt::s8, tag::oihw);
      memory user_mem(user, cpu::dnnl_engine(), const_cast<std::int8_t*>(weight.data()));
      p.weights = memory(p.pd.weights_desc(), cpu::dnnl_engine());
      dnnl::reorder(user_mem, p.weights).execute(cpu::dnnl_stream(), user_mem, p.weights);
      cpu::dnnl_stream().wait();
    }
    if (std::getenv("ZSQ_VERBOSE_DNNL") != nullptr)
      fmt::print(stderr, "int8 conv {}->{} k{} s{} batch {}: {}\n", s.in_channels, s.out_channels, s.kernel,
                 s.stride, batch, p.pd.impl_info_str());
    return by_batch.emplace(batch, std::move(p)).first->second;
  }
};

Int8Conv2d::Int8Conv2d(const Int8ConvShape& shape, std::vector<std::int8_t> weight,
                       std::vector<std::int32_t> bias, std::vector<float> output_scale,
                       const Int8ConvEpilogue& epilogue)
    : impl_(std::make_unique<Impl>()) {
  ZSQ_CHECK(shape.in_channels > 0 && shape.out_channels > 0 && shape.kernel > 0 && shape.stride > 0 &&
                shape.padding >= 0 && shape.out_height() > 0 && shape.out_width() > 0,
            "int8 conv: bad shape {}->{} kernel {} stride {} pad {} on {}x{}", shape.in_channels,
            shape.out_channels, shape.kernel, shape.stride, shape.padding, shape.height, shape.width);
  ZSQ_CHECK(static_cast<std::int64_t>(weight.size()) == shape.weight_numel(),
            "int8 conv: {} weights given, shape needs {}", weight.size(), shape.weight_numel());
  ZSQ_CHECK(static_cast<std::int64_t>(bias.size()) == shape.out_channels &&
                static_cast<std::int64_t>(output_scale.size()) == shape.out_channels,
            "int8 conv: bias ({}) and output scales ({}) need one entry per output channel ({})", bias.size(),
            output_scale.size(), shape.out_channels);
  for (float s : output_scale) ZSQ_CHECK(std::isfinite(s), "int8 conv: output scale {} is not finite", s);
  ZSQ_CHECK((!epilogue.u8_output || (epilogue.clip_lo >= 0.0f && epilogue.clip_hi <= 255.0f &&
                                     epilogue.clip_lo <= epilogue.clip_hi)),
            "int8 conv: u8 clip range [{}, {}] must lie in [0, 255]", epilogue.clip_lo, epilogue.clip_hi);
  impl_->shape = shape;
  impl_->epilogue = epilogue;
  impl_->weight = std::move(weight);
  impl_->bias = std::move(bias);
  impl_->output_scale = std::move(output_scale);
}

Int8Conv2d::~Int8Conv2d() = default;
Int8Conv2d::Int8Conv2d(Int8Conv2d&&) noexcept = default;
Int8Conv2d& Int8Conv2d::operator=(Int8Conv2d&&) noexcept = default;

const Int8ConvShape& Int8Conv2d::shape() const {
  return impl_->shape;
}
const Int8ConvEpilogue& Int8Conv2d::epilogue() const {
  return impl_->epilogue;
}

std::string Int8Conv2d::implementation(std::int64_t batch) const {
  return impl_->prepared(batch).pd.impl_info_str();
}

void Int8Conv2d::forward(std::int64_t batch, const std::uint8_t* src, void* dst, const float* residual,
                         std::int32_t src_zero_point) const {
  ZSQ_CHECK(batch > 0, "int8 conv: batch must be positive, got {}", batch);
  const auto& e = impl_->epilogue;
  ZSQ_CHECK(e.residual != Int8Residual::add_f32 || residual != nullptr,
            "int8 conv: the add_f32 epilogue needs a residual tensor");
  ZSQ_CHECK(e.src_zero_point || src_zero_point == 0,
            "int8 conv: a source zero point was given but the layer was built without one");
  const auto& p = impl_->prepared(batch);
  auto& engine = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(p.pd.src_desc(), engine, const_cast<std::uint8_t*>(src))},
      {DNNL_ARG_WEIGHTS, p.weights},
      {DNNL_ARG_BIAS, memory(p.pd.bias_desc(), engine, impl_->bias.data())},
      {DNNL_ARG_DST, memory(p.pd.dst_desc(), engine, dst)}};
  std::int32_t zp = src_zero_point;
  if (e.src_zero_point)
    args.emplace(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC,
                 memory(memory::desc({1}, dt::s32, tag::x), engine, &zp));
  if (e.residual == Int8Residual::add_f32) {
    const auto& s = impl_->shape;
    args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
                 memory(impl_->activation(batch, s.out_channels, s.out_height(), s.out_width(), dt::f32),
                        engine, const_cast<float*>(residual)));
  }
  p.primitive.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
}

}  // namespace zsq::ops
