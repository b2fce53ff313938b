#include "ops/batch_norm.h"

#include "engine/autograd.h"
#include "ops/cuda/batch_norm_cudnn.h"
#include "ops/cuda/batch_norm_kernels.h"

namespace zsq::ops {

namespace {
// The CUDA paths: zsq's own kernels (ops/cuda/batch_norm_kernels.cu, the default) and cuDNN's legacy
// batch-norm API (ops/cuda/batch_norm_cudnn.cpp, chosen by its settings / $ZSQ_CUDNN_BN). Both save the
// batch mean and 1 / sqrt(var + eps) for the backward and share one contract (batch_norm_cudnn.h). In a
// build without CUDA no tensor can be on a GPU and the stubs are never reached.
struct GpuBatchNorm {
  Tensor (*training)(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                     const Tensor& running_var, float momentum, float eps, bool fuse_relu, Tensor* saved_mean,
                     Tensor* saved_inv_std);
  Tensor (*inference)(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                      const Tensor& var, float eps, bool fuse_relu);
  void (*backward_training)(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                            const Tensor& saved_mean, const Tensor& saved_inv_std, float eps,
                            const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                            Tensor& grad_bias);
  void (*backward_inference)(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                             const Tensor& mean, const Tensor& var, float eps, bool with_weight_grads,
                             const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight,
                             Tensor& grad_bias);
};

#if ZSQ_WITH_CUDA
namespace own_gpu {
// x as [outer, C, inner] in memory: NCHW [N, C, H*W]; channels-last and [N, C] rows of C.
cuda::BatchNormLayout layout_of(const Tensor& x) {
  const std::int64_t N = x.size(0), C = x.size(1), S = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  if (x.dim() == 2 || x.format() == MemoryFormat::channels_last) return {N * S, C, 1};
  return {N, C, S};
}

const float* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.cuda_f32() : nullptr;
}

Tensor channel_vector(const Tensor& x) {
  return Tensor::empty({x.size(1)}, DType::f32, MemoryFormat::contiguous, x.device());
}

// The kernels index grad, x and the ReLU output alike: they must read as the same bytes layout.
void check_same_layout(const Tensor& grad_out, const Tensor& x, const Tensor& relu_output) {
  ZSQ_CHECK(grad_out.shape() == x.shape() && grad_out.is_layout_equivalent(x.format()) &&
                (!relu_output.defined() || relu_output.is_layout_equivalent(x.format())),
            "batch_norm backward (CUDA): gradient {} and input {} must share shape and layout",
            grad_out.str(), x.str());
}

Tensor training(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                const Tensor& running_var, float momentum, float eps, bool fuse_relu, Tensor* saved_mean,
                Tensor* saved_inv_std) {
  const cuda::BatchNormLayout layout = layout_of(x);
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  Tensor mean = channel_vector(x), inv_std = channel_vector(x);
  const bool update = running_mean.defined() && running_var.defined();
  cuda::batch_norm_batch_stats(x.cuda_f32(), layout, eps, momentum, mean.cuda_f32(), inv_std.cuda_f32(),
                               update ? running_mean.cuda_f32() : nullptr,
                               update ? running_var.cuda_f32() : nullptr);
  cuda::batch_norm_normalize(x.cuda_f32(), layout, mean.cuda_f32(), inv_std.cuda_f32(), /*stat_is_var=*/false,
                             eps, ptr_or_null(weight), ptr_or_null(bias), fuse_relu, out.cuda_f32());
  if (saved_mean != nullptr) *saved_mean = mean;
  if (saved_inv_std != nullptr) *saved_inv_std = inv_std;
  return out;
}

Tensor inference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                 const Tensor& var, float eps, bool fuse_relu) {
  Tensor out = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  cuda::batch_norm_normalize(x.cuda_f32(), layout_of(x), mean.cuda_f32(), var.cuda_f32(),
                             /*stat_is_var=*/true, eps, ptr_or_null(weight), ptr_or_null(bias), fuse_relu,
                             out.cuda_f32());
  return out;
}

void backward_training(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                       const Tensor& saved_mean, const Tensor& saved_inv_std, float eps,
                       const Tensor& relu_output, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias) {
  check_same_layout(grad_out, x, relu_output);
  grad_x = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  grad_weight = channel_vector(x);
  grad_bias = channel_vector(x);
  cuda::batch_norm_grad(grad_out.cuda_f32(), ptr_or_null(relu_output), x.cuda_f32(), layout_of(x),
                        saved_mean.cuda_f32(), saved_inv_std.cuda_f32(), /*batch_stats=*/true, eps,
                        ptr_or_null(weight), grad_x.cuda_f32(), grad_weight.cuda_f32(), grad_bias.cuda_f32());
}

void backward_inference(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& var, float eps, bool with_weight_grads, const Tensor& relu_output,
                        Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias) {
  check_same_layout(grad_out, x, relu_output);
  grad_x = Tensor::empty(x.shape(), DType::f32, x.format(), x.device());
  if (with_weight_grads) {
    grad_weight = channel_vector(x);
    grad_bias = channel_vector(x);
  }
  cuda::batch_norm_grad(grad_out.cuda_f32(), ptr_or_null(relu_output), x.cuda_f32(), layout_of(x),
                        mean.cuda_f32(), var.cuda_f32(), /*batch_stats=*/false, eps, ptr_or_null(weight),
                        grad_x.cuda_f32(), with_weight_grads ? grad_weight.cuda_f32() : nullptr,
                        with_weight_grads ? grad_bias.cuda_f32() : nullptr);
}
}  // namespace own_gpu

// The implementation the settings choose now; a forward keeps it for its backward.
const GpuBatchNorm* gpu_batch_norm() {
  static constexpr GpuBatchNorm kOwn{own_gpu::training, own_gpu::inference, own_gpu::backward_training,
                                     own_gpu::backward_inference};
  static constexpr GpuBatchNorm kCudnn{cudnn_impl::batch_norm_training, cudnn_impl::batch_norm_inference,
                                       cudnn_impl::batch_norm_backward_training,
                                       cudnn_impl::batch_norm_backward_inference};
  return cudnn_impl::cudnn_batch_norm_settings().use_cudnn ? &kCudnn : &kOwn;
}
#else
namespace no_gpu {
[[noreturn]] void no_cuda() {
  fail("batch_norm: zsq was built without CUDA");
}
Tensor training(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float, float, bool,
                Tensor*, Tensor*) {
  no_cuda();
}
Tensor inference(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float, bool) {
  no_cuda();
}
void backward_training(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float,
                       const Tensor&, Tensor&, Tensor&, Tensor&) {
  no_cuda();
}
void backward_inference(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, float,
                        bool, const Tensor&, Tensor&, Tensor&, Tensor&) {
  no_cuda();
}
}  // namespace no_gpu

const GpuBatchNorm* gpu_batch_norm() {
  static constexpr GpuBatchNorm kNone{no_gpu::training, no_gpu::inference, no_gpu::backward_training,
                                      no_gpu::backward_inference};
  return &kNone;
}
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
  const GpuBatchNorm* gpu = on_gpu ? gpu_batch_norm() : nullptr;
  if (on_gpu) {
    // In training (and eval without running stats) mean / var receive the saved batch mean and inverse
    // standard deviation, which is what the GPU backward takes; the running stats are updated on the
    // device, with the convention below.
    out = use_global_stats
              ? gpu->inference(x, weight, bias, mean, var, options.eps, options.fuse_relu)
              : gpu->training(x, weight, bias, running_mean, running_var, options.momentum, options.eps,
                              options.fuse_relu, recording ? &mean : nullptr, recording ? &var : nullptr);
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
      gpu->backward_inference(g.to_format(format), saved_x, saved_w, mean, var, eps, with_weight_grads,
                              workspace, gx, gw, gb);
    else
      gpu->backward_training(g.to_format(format), saved_x, saved_w, mean, var, eps, workspace, gx, gw, gb);
    if (needs[0]) grads[0] = gx;
    if (needs[1]) grads[1] = gw;
    if (needs[2]) grads[2] = gb;
    return grads;
  });
}

}  // namespace zsq::ops
