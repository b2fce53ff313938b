// oneDNN windowed pooling on the tensor's own layout (nhwc or nchw). Max pooling keeps the forward's
// index workspace for the backward pass; average pooling excludes padding from the divisor. The right
// padding is whatever makes the floor-mode output size exact (negative when the last rows are unused).
#include "ops/cpu/dnnl_context.h"
#include "ops/pool.h"

namespace zsq::ops::dnnl_impl {

using dnnl::memory;

namespace {
struct PoolDescs {
  memory::desc src, dst;
  memory::dims strides, kernel, pad_l, pad_r;
  std::string key;
};

PoolDescs describe(const Shape& x, MemoryFormat format, const Pool2dParams& p, bool max) {
  PoolDescs d;
  const auto OH = (x[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
  const auto OW = (x[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
  d.src = cpu::activation_desc(x, format);
  d.dst = cpu::activation_desc({x[0], x[1], OH, OW}, format);
  d.strides = {p.stride_h, p.stride_w};
  d.kernel = {p.kernel_h, p.kernel_w};
  d.pad_l = {p.pad_h, p.pad_w};
  d.pad_r = {(OH - 1) * p.stride_h + p.kernel_h - x[2] - p.pad_h,
             (OW - 1) * p.stride_w + p.kernel_w - x[3] - p.pad_w};
  d.key = fmt::format("{}|{}|{}|k{},{}|s{},{}|p{},{}", max ? "max" : "avg", shape_str(x),
                      format == MemoryFormat::channels_last ? "nhwc" : "nchw", p.kernel_h, p.kernel_w,
                      p.stride_h, p.stride_w, p.pad_h, p.pad_w);
  return d;
}

dnnl::algorithm algorithm(bool max) {
  return max ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding;
}

dnnl::pooling_forward::primitive_desc& forward_pd(const PoolDescs& d, bool max, bool training) {
  return cpu::dnnl_cached<dnnl::pooling_forward::primitive_desc>(
      (training ? "pool_fwd_train:" : "pool_fwd_infer:") + d.key, [&] {
        const auto prop = training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
        dnnl::pooling_forward::desc desc(prop, algorithm(max), d.src, d.dst, d.strides, d.kernel, d.pad_l,
                                         d.pad_r);
        return dnnl::pooling_forward::primitive_desc(desc, cpu::dnnl_engine());
      });
}
}  // namespace

Tensor pool2d_forward(const Tensor& x, const Pool2dParams& p, bool max, bool for_backward,
                      std::shared_ptr<void>& workspace) {
  const PoolDescs d = describe(x.shape(), x.format(), p, max);
  auto& pd = forward_pd(d, max, for_backward);
  auto& prim = cpu::dnnl_cached<dnnl::pooling_forward>(
      (for_backward ? "pool_fwd_train_prim:" : "pool_fwd_infer_prim:") + d.key,
      [&] { return dnnl::pooling_forward(pd); });
  const auto& od = d.dst.dims();
  Tensor out = Tensor::empty({od[0], od[1], od[2], od[3]}, DType::f32, x.format());
  auto& eng = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(d.src, eng, x.raw_data())},
                                       {DNNL_ARG_DST, memory(d.dst, eng, out.raw_data())}};
  workspace.reset();
  if (max && for_backward) {
    auto ws = std::make_shared<memory>(pd.workspace_desc(), eng);
    args.emplace(DNNL_ARG_WORKSPACE, *ws);
    workspace = ws;
  }
  prim.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
  return out;
}

Tensor pool2d_backward(const Tensor& grad_out, const Shape& x_shape, const Pool2dParams& p, bool max,
                       const std::shared_ptr<void>& workspace) {
  const PoolDescs d = describe(x_shape, grad_out.format(), p, max);
  auto& pd = cpu::dnnl_cached<dnnl::pooling_backward::primitive_desc>("pool_bwd:" + d.key, [&] {
    dnnl::pooling_backward::desc desc(algorithm(max), d.src, d.dst, d.strides, d.kernel, d.pad_l, d.pad_r);
    return dnnl::pooling_backward::primitive_desc(desc, cpu::dnnl_engine(), forward_pd(d, max, true));
  });
  auto& prim = cpu::dnnl_cached<dnnl::pooling_backward>("pool_bwd_prim:" + d.key,
                                                        [&] { return dnnl::pooling_backward(pd); });
  Tensor grad_x = Tensor::empty(x_shape, DType::f32, grad_out.format());
  auto& eng = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, memory(d.dst, eng, grad_out.raw_data())},
                                       {DNNL_ARG_DIFF_SRC, memory(d.src, eng, grad_x.raw_data())}};
  if (max) {
    ZSQ_CHECK(workspace != nullptr, "max_pool2d backward: no workspace saved by the forward pass");
    args.emplace(DNNL_ARG_WORKSPACE, *std::static_pointer_cast<memory>(workspace));
  }
  prim.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
  return grad_x;
}

}  // namespace zsq::ops::dnnl_impl
