// oneDNN batch normalization on the tensor's own layout: nhwc for channels-last tensors (and for any
// tensor whose bytes read the same as nhwc: 2-D [N, C] viewed as [N, C, 1, 1], C == 1, H*W == 1), nchw
// otherwise. Scale and shift are always passed (use_scale | use_shift, ones / zeros when undefined), so
// one primitive per shape serves every module. Descriptors and primitives are cached by shape.
#include <cmath>
#include <vector>

#include "ops/batch_norm.h"
#include "ops/cpu/dnnl_context.h"
#include "ops/cpu/kernels.h"

namespace zsq::ops::dnnl_impl {

using dnnl::memory;
using tag = memory::format_tag;
using flags_t = dnnl::normalization_flags;

namespace {

struct BnDescs {
  memory::desc data;
  std::string key;
  std::int64_t C;
  bool fuse_relu = false;
};

BnDescs describe(const Tensor& x, bool use_global_stats, float eps, bool fuse_relu) {
  const auto& s = x.shape();
  BnDescs d;
  d.C = s[1];
  memory::dims dims{s[0], s[1], x.dim() == 4 ? s[2] : 1, x.dim() == 4 ? s[3] : 1};
  const bool nhwc = x.dim() == 2 || x.is_layout_equivalent(MemoryFormat::channels_last);
  d.data = memory::desc(dims, memory::data_type::f32, nhwc ? tag::nhwc : tag::nchw);
  d.key = fmt::format("{}|{}|{}|{}{}", fmt::join(dims, "x"), nhwc ? "nhwc" : "nchw",
                      use_global_stats ? "g" : "b", eps, fuse_relu ? "|relu" : "");
  d.fuse_relu = fuse_relu;
  return d;
}

flags_t bn_flags(bool use_global_stats, bool fuse_relu) {
  auto f = flags_t::use_scale | flags_t::use_shift;
  if (fuse_relu) f = f | flags_t::fuse_norm_relu;
  return use_global_stats ? f | flags_t::use_global_stats : f;
}

dnnl::batch_normalization_forward::primitive_desc& forward_pd(const BnDescs& d, bool use_global_stats,
                                                              bool training, float eps) {
  return cpu::dnnl_cached<dnnl::batch_normalization_forward::primitive_desc>(
      (training ? "bn_fwd_train:" : "bn_fwd_infer:") + d.key, [&] {
        const auto prop = training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
        dnnl::batch_normalization_forward::desc desc(prop, d.data, eps,
                                                     bn_flags(use_global_stats, d.fuse_relu));
        return dnnl::batch_normalization_forward::primitive_desc(desc, cpu::dnnl_engine());
      });
}

// A [C] parameter, or a constant buffer standing in for an undefined one.
struct Param {
  std::vector<float> constant;
  void* ptr;
  Param(const Tensor& t, std::int64_t C, float value) {
    if (t.defined()) {
      ptr = t.raw_data();
    } else {
      constant.assign(static_cast<std::size_t>(C), value);
      ptr = constant.data();
    }
  }
};

}  // namespace

Tensor batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& mean,
                          Tensor& var, bool use_global_stats, bool for_backward, float eps, bool fuse_relu,
                          Tensor* workspace) {
  const BnDescs d = describe(x, use_global_stats, eps, fuse_relu);
  // Batch statistics are outputs of the training-kind primitive only.
  const bool training = for_backward || !use_global_stats;
  auto& pd = forward_pd(d, use_global_stats, training, eps);
  auto& prim = cpu::dnnl_cached<dnnl::batch_normalization_forward>(
      (training ? "bn_fwd_train_prim:" : "bn_fwd_infer_prim:") + d.key,
      [&] { return dnnl::batch_normalization_forward(pd); });
  if (!use_global_stats) {
    mean = Tensor::empty({d.C});
    var = Tensor::empty({d.C});
  }
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format());
  Param scale(weight, d.C, 1.0f), shift(bias, d.C, 0.0f);
  auto& eng = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(d.data, eng, x.raw_data())},
                                       {DNNL_ARG_DST, memory(d.data, eng, out.raw_data())},
                                       {DNNL_ARG_SCALE, memory(pd.weights_desc(), eng, scale.ptr)},
                                       {DNNL_ARG_SHIFT, memory(pd.weights_desc(), eng, shift.ptr)},
                                       {DNNL_ARG_MEAN, memory(pd.mean_desc(), eng, mean.raw_data())},
                                       {DNNL_ARG_VARIANCE, memory(pd.variance_desc(), eng, var.raw_data())}};
  if (fuse_relu && training) {
    ZSQ_CHECK(workspace != nullptr, "batch_norm_forward: fused ReLU for backward needs a workspace");
    *workspace = Tensor::empty({static_cast<std::int64_t>(pd.workspace_desc().get_size())}, DType::u8);
    args.emplace(DNNL_ARG_WORKSPACE, memory(pd.workspace_desc(), eng, workspace->raw_data()));
  }
  prim.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
  return out;
}

namespace {
// Eval-mode input gradient with frozen affine parameters: dx = dy * gamma / sqrt(running_var + eps), one
// read and one write. (oneDNN's backward_data refuses use_scale, and prop backward would also reduce.)
Tensor scale_by_channel(const Tensor& grad_out, const Tensor& weight, const Tensor& var, float eps) {
  const auto& s = grad_out.shape();
  const std::int64_t N = s[0], C = s[1], S = grad_out.numel() / (N * C);
  std::vector<float> k(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c)
    k[static_cast<std::size_t>(c)] =
        (weight.defined() ? weight.f32()[c] : 1.0f) / std::sqrt(var.f32()[c] + eps);
  Tensor grad_x = Tensor::empty(s, DType::f32, grad_out.format());
  const float* __restrict g = grad_out.f32();
  float* __restrict dx = grad_x.f32();
  const float* __restrict kc = k.data();
  const bool rows = grad_out.dim() == 2 || grad_out.is_layout_equivalent(MemoryFormat::channels_last);
  if (rows) {  // [N*S rows][C]
#pragma omp parallel for schedule(static) if (grad_out.numel() > cpu::kParallelThreshold)
    for (std::int64_t r = 0; r < N * S; ++r) {
#pragma omp simd
      for (std::int64_t c = 0; c < C; ++c) dx[r * C + c] = g[r * C + c] * kc[c];
    }
  } else {  // [N*C planes][S]
#pragma omp parallel for schedule(static) if (grad_out.numel() > cpu::kParallelThreshold)
    for (std::int64_t p = 0; p < N * C; ++p) {
      const float kp = kc[p % C];
#pragma omp simd
      for (std::int64_t i = 0; i < S; ++i) dx[p * S + i] = g[p * S + i] * kp;
    }
  }
  return grad_x;
}
}  // namespace

void batch_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& var, bool use_global_stats, bool with_weight_grads, float eps,
                         Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                         const Tensor& relu_workspace) {
  const bool fuse_relu = relu_workspace.defined();
  if (use_global_stats && !with_weight_grads && !fuse_relu) {
    grad_x = scale_by_channel(grad_out, weight, var, eps);
    return;
  }
  // Prop kind `backward` always: backward_data rejects use_scale in oneDNN 2.6, and the scale / shift
  // gradients are the very reductions the input gradient needs, so they come for free.
  const BnDescs d = describe(x, use_global_stats, eps, fuse_relu);
  auto& pd = cpu::dnnl_cached<dnnl::batch_normalization_backward::primitive_desc>("bn_bwd:" + d.key, [&] {
    dnnl::batch_normalization_backward::desc desc(dnnl::prop_kind::backward, d.data, d.data, eps,
                                                  bn_flags(use_global_stats, d.fuse_relu));
    return dnnl::batch_normalization_backward::primitive_desc(desc, cpu::dnnl_engine(),
                                                              forward_pd(d, use_global_stats, true, eps));
  });
  auto& prim = cpu::dnnl_cached<dnnl::batch_normalization_backward>(
      "bn_bwd_prim:" + d.key, [&] { return dnnl::batch_normalization_backward(pd); });
  grad_x = Tensor::empty(x.shape(), DType::f32, x.format());
  grad_weight = Tensor::empty({d.C});
  grad_bias = Tensor::empty({d.C});
  Param scale(weight, d.C, 1.0f), shift(Tensor(), d.C, 0.0f);
  auto& eng = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(d.data, eng, x.raw_data())},
      {DNNL_ARG_DIFF_DST, memory(d.data, eng, grad_out.raw_data())},
      {DNNL_ARG_SCALE, memory(pd.weights_desc(), eng, scale.ptr)},
      {DNNL_ARG_SHIFT, memory(pd.weights_desc(), eng, shift.ptr)},
      {DNNL_ARG_MEAN, memory(pd.mean_desc(), eng, mean.raw_data())},
      {DNNL_ARG_VARIANCE, memory(pd.variance_desc(), eng, var.raw_data())},
      {DNNL_ARG_DIFF_SRC, memory(d.data, eng, grad_x.raw_data())},
      {DNNL_ARG_DIFF_SCALE, memory(pd.diff_weights_desc(), eng, grad_weight.raw_data())},
      {DNNL_ARG_DIFF_SHIFT, memory(pd.diff_weights_desc(), eng, grad_bias.raw_data())}};
  if (fuse_relu)
    args.emplace(DNNL_ARG_WORKSPACE, memory(pd.workspace_desc(), eng, relu_workspace.raw_data()));
  prim.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
}

}  // namespace zsq::ops::dnnl_impl
