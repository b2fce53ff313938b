#include "ops/batch_norm.h"

#include "engine/autograd.h"
#include "ops/cuda/batch_norm_cudnn.h"

namespace zsq::ops {

namespace {
// The CUDA path (ops/cuda/batch_norm_cudnn.cpp), or stubs in a build without CUDA, where no tensor can
// be on a GPU and these are never reached.
#if ZSQ_WITH_CUDA
namespace gpu = cudnn_impl;
#else
namespace gpu {
[[noreturn]] void no_cuda() {
  fail("batch_norm: zsq was built without CUDA");
}
Tensor batch_norm_training(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float,
                           float, bool, Tensor*, Tensor*) {
  no_cuda();
}
Tensor batch_norm_inference(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float,
                            bool) {
  no_cuda();
}
void batch_norm_backward_training(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  float, const Tensor&, Tensor&, Tensor&, Tensor&) {
  no_cuda();
}
void batch_norm_backward_inference(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                   float, bool, const Tensor&, Tensor&, Tensor&, Tensor&) {
  no_cuda();
}
}  // namespace gpu
#endif

void check_channel_param(const char* what, const Tensor& t, const Tensor& x) {
  if (!t.defined()) return;
  ZSQ_CHECK(t.dim() == 1 && t.size(0) == x.size(1) && t.dtype() == DType::f32,
            "batch_norm: {} must be f32 [{}] to match input {}, got {}", what, x.size(1), x.str(), t.str());
  ZSQ_CHECK(t.device() == x.device(), "batch_norm: {} and input on different devices: {} on {} and {} on {}",
            what, t.str(), t.device().str(), x.str(), x.device().str());
}

void validate(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
              const Tensor& running_var, const BatchNormOptions& o) {
  ZSQ_CHECK(x.defined(), "batch_norm: undefined input");
  ZSQ_CHECK((x.dim() == 4 || x.dim() == 2) && x.dtype() == DType::f32,
            "batch_norm: input must be f32 [N, C, H, W] or [N, C], got {}", x.str());
  ZSQ_CHECK(x.numel() > 0, "batch_norm: empty input {}", x.str());
  check_channel_param("weight", weight, x);
  check_channel_param("bias", bias, x);
  check_channel_param("running_mean", running_mean, x);
  check_channel_param("running_var", running_var, x);
  ZSQ_CHECK(running_mean.defined() == running_var.defined(),
            "batch_norm: running_mean ({}) and running_var ({}) must both be defined or both undefined",
            running_mean.str(), running_var.str());
  ZSQ_CHECK(o.eps > 0.0f && o.momentum >= 0.0f && o.momentum <= 1.0f,
            "batch_norm: bad options (eps {}, momentum {})", o.eps, o.momentum);
  const std::int64_t per_channel = x.numel() / x.size(1);
  ZSQ_CHECK(!o.training || per_channel > 1,
            "batch_norm: training needs more than one value per channel, got input {}", x.str());
}
}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const BatchNormOptions& options) {
  validate(x, weight, bias, running_mean, running_var, options);
  const bool use_global_stats = !options.training && running_mean.defined();
  const bool recording = any_requires_grad({&x, &weight, &bias});
  // Eval mode saves a copy of the running stats so that a later update cannot change the backward.
  Tensor mean = use_global_stats ? (recording ? running_mean.clone() : running_mean) : Tensor();
  Tensor var = use_global_stats ? (recording ? running_var.clone() : running_var) : Tensor();
  const bool on_gpu = x.is_cuda();
  // What the backward needs to undo a fused ReLU: oneDNN's mask on the CPU; on the GPU the output
  // itself (its sign is the mask; it shares the output's storage, so it costs no memory).
  Tensor workspace;
  Tensor out;
  if (on_gpu) {
    // In training (and eval without running stats) mean / var receive cuDNN's saved batch mean and
    // inverse standard deviation, which is what its backward takes; cuDNN also updates the running
    // stats, with the convention below.
    out = use_global_stats
              ? gpu::batch_norm_inference(x, weight, bias, mean, var, options.eps, options.fuse_relu)
              : gpu::batch_norm_training(x, weight, bias, running_mean, running_var, options.momentum,
                                         options.eps, options.fuse_relu, recording ? &mean : nullptr,
                                         recording ? &var : nullptr);
    if (recording && options.fuse_relu) workspace = out.detach();
  } else {
    out = dnnl_impl::batch_norm_forward(x, weight, bias, mean, var, use_global_stats, recording, options.eps,
                                        options.fuse_relu, &workspace);
  }

  if (!on_gpu && options.training && running_mean.defined()) {
    const auto n = static_cast<double>(x.numel() / x.size(1));
    const double m = options.momentum;
    const float* bm = mean.f32();
    const float* bv = var.f32();
    float* rm = running_mean.f32();
    float* rv = running_var.f32();
    for (std::int64_t c = 0; c < x.size(1); ++c) {
      rm[c] = static_cast<float>((1.0 - m) * rm[c] + m * bm[c]);
      rv[c] = static_cast<float>((1.0 - m) * rv[c] + m * bv[c] * n / (n - 1.0));
    }
  }

  if (!recording) return out;
  Tensor saved_x = x.detach();
  Tensor saved_w = weight.defined() ? weight.detach() : Tensor();
  const float eps = options.eps;
  const MemoryFormat format = x.format();
  return record(out, "batch_norm", {x, weight, bias}, [=](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(3);
    const bool with_weight_grads = needs[1] || needs[2];
    Tensor gx, gw, gb;
    if (!on_gpu)
      dnnl_impl::batch_norm_backward(g.to_format(format), saved_x, saved_w, mean, var, use_global_stats,
                                     with_weight_grads, eps, gx, gw, gb, workspace);
    else if (use_global_stats)
      gpu::batch_norm_backward_inference(g.to_format(format), saved_x, saved_w, mean, var, eps,
                                         with_weight_grads, workspace, gx, gw, gb);
    else
      gpu::batch_norm_backward_training(g.to_format(format), saved_x, saved_w, mean, var, eps, workspace, gx,
                                        gw, gb);
    if (needs[0]) grads[0] = gx;
    if (needs[1]) grads[1] = gw;
    if (needs[2]) grads[2] = gb;
    return grads;
  });
}

}  // namespace zsq::ops
