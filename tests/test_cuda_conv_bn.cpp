// The cuDNN convolution and batch normalization against the CPU path on the same random inputs:
// outputs and the gradients of input, weight and bias, in both activation formats, on ResNet-20's layer
// shapes, grouped and depthwise (LKA-style dilated) convolutions, odd sizes and batch 1; batch norm in
// training (running statistics updated as on the CPU) and eval mode, with and without the fused ReLU,
// through both GPU implementations (zsq's own kernels, the default, and cuDNN), which are also compared
// with each other on ResNet-20's batch-512 sizes.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/batch_norm.h"
#include "ops/conv2d.h"
#include "tests/cuda_testing.h"
#include "tests/testing.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/batch_norm_cudnn.h"
#include "ops/cuda/conv2d_cudnn.h"
#endif

using namespace zsq;
using namespace zsq::testing;

namespace {
using i64 = std::int64_t;
constexpr MemoryFormat kFormats[] = {MemoryFormat::contiguous, MemoryFormat::channels_last};
// TF32 is off (FMA math), so a convolution differs from oneDNN's by f32 summation order only.
constexpr double kConvTol = 1e-4;
// Batch norm: per-channel reductions.
constexpr double kNormTol = 1e-5;

const char* format_name(MemoryFormat f) {
  return f == MemoryFormat::channels_last ? "channels_last" : "contiguous";
}

struct ConvCase {
  const char* name;
  Shape x, w;
  ops::Conv2dParams p;
  bool bias;
};

ops::Conv2dParams params(i64 stride_h, i64 stride_w, i64 pad_h, i64 pad_w, i64 dil_h, i64 dil_w, i64 groups) {
  return {stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups};
}

const std::vector<ConvCase> kResnetCases = {
    {"stem 3->16 3x3", {3, 3, 16, 16}, {16, 3, 3, 3}, ops::Conv2dParams::same(3), false},
    {"16->16 3x3 odd size", {2, 16, 15, 15}, {16, 16, 3, 3}, ops::Conv2dParams::same(3), false},
    {"16->32 3x3 stride 2", {2, 16, 16, 16}, {32, 16, 3, 3}, ops::Conv2dParams::same(3, 2), false},
    {"32->64 3x3 stride 2 odd size", {2, 32, 9, 9}, {64, 32, 3, 3}, ops::Conv2dParams::same(3, 2), false},
    {"64->64 3x3 (CPU Winograd)", {2, 64, 8, 8}, {64, 64, 3, 3}, ops::Conv2dParams::same(3), false},
    {"1x1 shortcut 16->32 stride 2", {2, 16, 16, 16}, {32, 16, 1, 1}, params(2, 2, 0, 0, 1, 1, 1), false},
    {"batch 1 32->32 with bias", {1, 32, 7, 5}, {32, 32, 3, 3}, ops::Conv2dParams::same(3), true},
};

const std::vector<ConvCase> kOtherCases = {
    {"grouped 8->12 groups 4 with bias",
     {2, 8, 11, 13},
     {12, 2, 3, 3},
     ops::Conv2dParams::same(3, 1, 4),
     true},
    {"depthwise 5x5 dilation 3 (LKA)",
     {2, 16, 17, 19},
     {16, 1, 5, 5},
     ops::Conv2dParams::same(5, 1, 16, 3),
     true},
    {"depthwise 3x3 stride 2", {2, 24, 15, 15}, {24, 1, 3, 3}, ops::Conv2dParams::same(3, 2, 24), false},
    {"asymmetric stride, padding, dilation, 3x2 kernel",
     {3, 5, 10, 9},
     {7, 5, 3, 2},
     params(2, 1, 0, 2, 1, 2, 1),
     true},
    {"single output channel", {2, 16, 9, 7}, {1, 16, 3, 3}, ops::Conv2dParams::same(3), true},
};

Tensor conv_of(const std::vector<Tensor>& in, const ops::Conv2dParams& p) {
  return ops::conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), p);
}

// Not inlined: GCC 12 at -O3 reports a false array-bounds error in the inlined copy.
[[gnu::noinline]] void check_conv(const ConvCase& c, MemoryFormat format, bool x_grad = true,
                                  std::uint64_t seed = 5) {
  Rng rng(seed);
  std::vector<Tensor> inputs{random_cpu(c.x, rng, format, x_grad),
                             random_cpu(c.w, rng, MemoryFormat::contiguous)};
  if (c.bias) inputs.push_back(random_cpu({c.w[0]}, rng));
  compare_with_cpu([&](const std::vector<Tensor>& in) { return conv_of(in, c.p); }, inputs, kConvTol,
                   std::string("conv2d ") + c.name + " " + format_name(format));
}

#if ZSQ_WITH_CUDA
// Sets the cuDNN convolution settings for a scope with a fresh plan cache, and restores both after.
class ScopedConvSettings {
 public:
  explicit ScopedConvSettings(const ops::cudnn_impl::CudnnConvSettings& s)
      : saved_(ops::cudnn_impl::cudnn_conv_settings()) {
    ops::cudnn_impl::set_cudnn_conv_settings(s);
    ops::cudnn_impl::clear_cudnn_conv_cache();
  }
  ~ScopedConvSettings() {
    ops::cudnn_impl::set_cudnn_conv_settings(saved_);
    ops::cudnn_impl::clear_cudnn_conv_cache();
  }
  ScopedConvSettings(const ScopedConvSettings&) = delete;
  ScopedConvSettings& operator=(const ScopedConvSettings&) = delete;

 private:
  ops::cudnn_impl::CudnnConvSettings saved_;
};

// Sets the GPU batch-norm implementation (own kernels or cuDNN, and cuDNN's mode) for a scope.
class ScopedBatchNormSettings {
 public:
  explicit ScopedBatchNormSettings(const ops::cudnn_impl::CudnnBatchNormSettings& s)
      : saved_(ops::cudnn_impl::cudnn_batch_norm_settings()) {
    ops::cudnn_impl::set_cudnn_batch_norm_settings(s);
  }
  ~ScopedBatchNormSettings() { ops::cudnn_impl::set_cudnn_batch_norm_settings(saved_); }
  ScopedBatchNormSettings(const ScopedBatchNormSettings&) = delete;
  ScopedBatchNormSettings& operator=(const ScopedBatchNormSettings&) = delete;

 private:
  ops::cudnn_impl::CudnnBatchNormSettings saved_;
};
#endif

// The GPU batch-norm implementations every batch-norm test runs through: false = zsq's own kernels,
// true = cuDNN.
constexpr bool kBatchNormImpls[] = {false, true};

const char* impl_name(bool use_cudnn) {
  return use_cudnn ? "cuDNN" : "own";
}

// Runs body() with the GPU batch norm set to cuDNN or to zsq's own kernels.
template <class Body>
void with_batch_norm_impl(bool use_cudnn, Body body) {
#if ZSQ_WITH_CUDA
  ScopedBatchNormSettings scope({.use_cudnn = use_cudnn, .persistent = false});
  body();
#else
  if (!use_cudnn) body();
#endif
}

// Random values with a channel-dependent offset, so that batch means are far from zero.
Tensor offset_input(const Shape& shape, Rng& rng, MemoryFormat format, bool requires_grad = true) {
  auto v = randn(shape, rng).to_vector();
  const i64 C = shape[1];
  const i64 inner = shape.size() == 4 ? shape[2] * shape[3] : 1;
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = v[i] * 1.5f + static_cast<float>((static_cast<i64>(i) / inner) % C) * 0.5f - 1.0f;
  Tensor t = Tensor::from_vector(shape, v, shape.size() == 4 ? format : MemoryFormat::contiguous);
  t.set_requires_grad(requires_grad);
  return t;
}

struct NormCase {
  bool training, fuse_relu, affine, running;
};

std::string describe(const Shape& shape, MemoryFormat format, const NormCase& c) {
#if ZSQ_WITH_CUDA
  const char* impl = impl_name(ops::cudnn_impl::cudnn_batch_norm_settings().use_cudnn);
#else
  const char* impl = impl_name(false);
#endif
  return std::string("batch_norm (") + impl + ") " + shape_str(shape) + " " + format_name(format) +
         (c.training ? " train" : " eval") + (c.fuse_relu ? " +relu" : "") +
         (c.affine ? " affine" : " no-affine") + (c.running ? " running-stats" : " batch-stats");
}

// inputs: x, running_mean, running_var, then weight and bias when affine (so every input that requires
// grad is one the op uses).
void check_norm(const Shape& shape, MemoryFormat format, const NormCase& c, bool param_grads = true,
                double tolerance = kNormTol, std::uint64_t seed = 3) {
  Rng rng(seed);
  const i64 C = shape[1];
  std::vector<Tensor> inputs{offset_input(shape, rng, format), randn({C}, rng, 0.0f, 0.5f),
                             rand_uniform({C}, rng, 0.5f, 2.0f)};
  if (c.affine) {
    Tensor w = rand_uniform({C}, rng, 0.5f, 1.5f), b = randn({C}, rng);
    w.set_requires_grad(param_grads);
    b.set_requires_grad(param_grads);
    inputs.push_back(w);
    inputs.push_back(b);
  }
  ops::BatchNormOptions o;
  o.training = c.training;
  o.fuse_relu = c.fuse_relu;
  o.momentum = 0.3f;
  compare_with_cpu(
      [&](const std::vector<Tensor>& in) {
        return ops::batch_norm(in[0], in.size() > 3 ? in[3] : Tensor(), in.size() > 3 ? in[4] : Tensor(),
                               c.running ? in[1] : Tensor(), c.running ? in[2] : Tensor(), o);
      },
      inputs, tolerance, describe(shape, format, c));
}

// The smallest batch is 5 values per channel: with 2, x_hat is exactly +-1 and the training-mode input
// gradient is 0 up to rounding on both devices, so a relative error measures only noise.
const std::vector<Shape> kNormShapes = {{4, 16, 15, 15}, {1, 32, 7, 9}, {6, 64, 4, 4},
                                        {3, 5, 7, 9},    {2, 1, 5, 3},  {5, 3, 1, 1}};

std::vector<NormCase> all_norm_cases() {
  std::vector<NormCase> cases;
  for (bool training : {true, false})
    for (bool fuse_relu : {false, true})
      for (bool affine : {true, false})
        for (bool running : {true, false}) cases.push_back({training, fuse_relu, affine, running});
  return cases;
}

// Several training steps with different momenta, then an eval step: outputs and running statistics
// follow the CPU's.
void check_running_stats(const std::string& impl) {
  for (const Shape& shape : std::vector<Shape>{{4, 16, 15, 15}, {1, 32, 7, 9}, {10, 24}})
    for (auto format : kFormats) {
      if (shape.size() == 2 && format == MemoryFormat::channels_last) continue;
      Rng rng(17);
      const i64 C = shape[1];
      Tensor rm_cpu = randn({C}, rng, 0.0f, 0.5f), rv_cpu = rand_uniform({C}, rng, 0.5f, 2.0f);
      Tensor rm_gpu = rm_cpu.to(kGpu), rv_gpu = rv_cpu.to(kGpu);
      Tensor w = rand_uniform({C}, rng, 0.5f, 1.5f), b = randn({C}, rng);
      for (float momentum : {0.1f, 0.3f, 1.0f, 0.0f}) {
        ops::BatchNormOptions o;
        o.momentum = momentum;
        Tensor x = offset_input(shape, rng, format, false);
        Tensor y_cpu = ops::batch_norm(x, w, b, rm_cpu, rv_cpu, o);
        Tensor y_gpu = ops::batch_norm(x.to(kGpu), w.to(kGpu), b.to(kGpu), rm_gpu, rv_gpu, o);
        const std::string what = "running stats (" + impl + ") " + shape_str(shape) + " " +
                                 format_name(format) + " momentum " + std::to_string(momentum);
        check_matches(y_gpu, y_cpu, kNormTol, what + " output");
        check_matches(rm_gpu, rm_cpu, kNormTol, what + " running_mean");
        check_matches(rv_gpu, rv_cpu, kNormTol, what + " running_var");
      }
      // Eval mode reads them and leaves them alone.
      ops::BatchNormOptions eval;
      eval.training = false;
      Tensor x = offset_input(shape, rng, format, false);
      check_matches(ops::batch_norm(x.to(kGpu), w.to(kGpu), b.to(kGpu), rm_gpu, rv_gpu, eval),
                    ops::batch_norm(x, w, b, rm_cpu, rv_cpu, eval), kNormTol,
                    "eval after training (" + impl + ")");
      check_matches(rm_gpu, rm_cpu, kNormTol, "running_mean unchanged by eval (" + impl + ")");
    }
}

// Inputs for comparing implementations on large tensors with the fused ReLU: x on a grid of 1/8 and, per
// channel, a bias that puts the ReLU's threshold (the x where the output crosses 0, from the batch
// statistics in training or the running ones in eval) half-way between two grid values. No output
// then lies within rounding of 0, so every implementation masks the same elements; with random floats
// a batch of 8M values has an even chance of one element whose sign differs between two of them.
struct NormInputs {
  Tensor x, weight, bias, running_mean, running_var, upstream;
};

NormInputs relu_safe_inputs(const Shape& shape, MemoryFormat format, bool training, float eps, Rng& rng) {
  const i64 C = shape[1];
  const i64 inner = shape.size() == 4 ? shape[2] * shape[3] : 1;
  const MemoryFormat f = shape.size() == 4 ? format : MemoryFormat::contiguous;
  auto v = offset_input(shape, rng, MemoryFormat::contiguous, false).to_vector();
  for (auto& e : v) e = std::round(e * 8.0f) / 8.0f;
  NormInputs in;
  in.weight = rand_uniform({C}, rng, 0.5f, 1.5f);
  in.running_mean = randn({C}, rng, 0.0f, 0.5f);
  in.running_var = rand_uniform({C}, rng, 0.5f, 2.0f);
  std::vector<double> sum(static_cast<std::size_t>(C)), sum_sq(static_cast<std::size_t>(C));
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto c = static_cast<std::size_t>((static_cast<i64>(i) / inner) % C);
    sum[c] += v[i];
    sum_sq[c] += static_cast<double>(v[i]) * v[i];
  }
  const double count = static_cast<double>(v.size()) / static_cast<double>(C);
  std::vector<float> bias(static_cast<std::size_t>(C));
  for (std::size_t c = 0; c < bias.size(); ++c) {
    const auto k = static_cast<i64>(c);
    const double mean = training ? sum[c] / count : in.running_mean.f32()[k];
    const double var = training ? sum_sq[c] / count - mean * mean : in.running_var.f32()[k];
    const double threshold = (std::round(mean * 8.0) + 0.5) / 8.0;
    bias[c] = static_cast<float>(in.weight.f32()[k] * (mean - threshold) / std::sqrt(var + eps));
  }
  in.bias = Tensor::from_vector({C}, bias);
  in.x = Tensor::from_vector(shape, v, f);
  in.upstream = random_cpu(shape, rng, f, false);
  return in;
}

struct NormRun {
  Tensor y, grad_x, grad_weight, grad_bias, running_mean, running_var;
};

// One step of ops::batch_norm on `device` (copies of the inputs; x, weight and bias require grad).
NormRun run_norm(const NormInputs& in, const ops::BatchNormOptions& o, Device device) {
  auto copy = [&](const Tensor& t, bool requires_grad) {
    Tensor c = device.is_cpu() ? t.clone() : t.to(device);
    c.set_requires_grad(requires_grad);
    return c;
  };
  Tensor x = copy(in.x, true), w = copy(in.weight, true), b = copy(in.bias, true);
  Tensor rm = copy(in.running_mean, false), rv = copy(in.running_var, false);
  Tensor y = ops::batch_norm(x, w, b, rm, rv, o);
  y.backward(copy(in.upstream, false));
  return {y.detach(), x.grad(), w.grad(), b.grad(), rm, rv};
}

void compare_runs(const NormRun& got, const NormRun& want, const std::string& what) {
  check_matches(got.y, want.y, kNormTol, what + " output");
  check_matches(got.grad_x, want.grad_x, kNormTol, what + " grad x");
  check_matches(got.grad_weight, want.grad_weight, kNormTol, what + " grad weight");
  check_matches(got.grad_bias, want.grad_bias, kNormTol, what + " grad bias");
  check_matches(got.running_mean, want.running_mean, kNormTol, what + " running_mean");
  check_matches(got.running_var, want.running_var, kNormTol, what + " running_var");
}
}  // namespace

TEST_CASE("cuda conv2d: ResNet-20 layer shapes match the CPU forward and backward in both formats") {
  ZSQ_REQUIRE_GPU();
  for (const auto& c : kResnetCases)
    for (auto format : kFormats) check_conv(c, format);
}

TEST_CASE("cuda conv2d: grouped, depthwise (dilated 5x5), asymmetric and single-output convolutions") {
  ZSQ_REQUIRE_GPU();
  for (const auto& c : kOtherCases)
    for (auto format : kFormats) check_conv(c, format);
}

TEST_CASE("cuda conv2d: weight gradient only (input without grad) and output format") {
  ZSQ_REQUIRE_GPU();
  for (auto format : kFormats) check_conv(kResnetCases[2], format, /*x_grad=*/false);
  Rng rng(9);
  Tensor x = random_cpu({2, 16, 8, 8}, rng, MemoryFormat::contiguous, false).to(kGpu);
  Tensor w = random_cpu({8, 16, 3, 3}, rng, MemoryFormat::contiguous, false).to(kGpu);
  Tensor y = ops::conv2d(x, w, Tensor(), ops::Conv2dParams::same(3));
  CHECK(y.device() == kGpu);
#if ZSQ_WITH_CUDA
  CHECK(y.format() == ops::cudnn_impl::cudnn_conv_settings().activation_format);
#endif
}

TEST_CASE(
    "cuda conv2d: every cuDNN setting (heuristic order, NHWC filters, activation layout) gives the CPU "
    "result") {
  ZSQ_REQUIRE_GPU();
#if ZSQ_WITH_CUDA
  for (bool find : {true, false})
    for (bool nhwc_filters : {true, false})
      for (auto layout : kFormats) {
        ScopedConvSettings scope({find, nhwc_filters, layout});
        for (const auto* c : {&kResnetCases[1], &kResnetCases[5], &kResnetCases[6], &kOtherCases[0],
                              &kOtherCases[1], &kOtherCases[3]})
          for (auto format : kFormats) check_conv(*c, format);
        // Outputs and input gradients come in the configured layout.
        Rng rng(13);
        Tensor x = random_cpu({2, 16, 8, 8}, rng, MemoryFormat::contiguous, false).to(kGpu);
        Tensor w = random_cpu({8, 16, 3, 3}, rng, MemoryFormat::contiguous, false).to(kGpu);
        Tensor y = ops::conv2d(x, w, Tensor(), ops::Conv2dParams::same(3));
        CHECK(y.format() == layout);
        CHECK(ops::conv2d_backward_data(y, w, x.shape(), ops::Conv2dParams::same(3)).format() == layout);
      }
#endif
}

TEST_CASE("cuda conv2d: the named pieces (forward, backward data, backward weights) match the CPU") {
  ZSQ_REQUIRE_GPU();
  for (const auto* c : {&kResnetCases[3], &kOtherCases[0], &kOtherCases[3]})
    for (auto x_format : kFormats)
      for (auto g_format : kFormats) {
        Rng rng(21);
        const std::string what =
            std::string(c->name) + " x " + format_name(x_format) + " grad " + format_name(g_format);
        Tensor x = random_cpu(c->x, rng, x_format, false);
        Tensor w = random_cpu(c->w, rng, MemoryFormat::contiguous, false);
        Tensor b = random_cpu({c->w[0]}, rng, MemoryFormat::contiguous, false);
        const Shape out_shape = ops::conv2d_output_shape(x, w, b, c->p);
        Tensor g = random_cpu(out_shape, rng, g_format, false);
        check_matches(ops::conv2d_forward(x.to(kGpu), w.to(kGpu), b.to(kGpu), c->p),
                      ops::conv2d_forward(x, w, b, c->p), kConvTol, what + " forward");
        Tensor gx_gpu = ops::conv2d_backward_data(g.to(kGpu), w.to(kGpu), x.shape(), c->p);
        check_matches(gx_gpu, ops::conv2d_backward_data(g, w, x.shape(), c->p), kConvTol,
                      what + " backward data");
#if ZSQ_WITH_CUDA
        CHECK(gx_gpu.format() == ops::cudnn_impl::cudnn_conv_settings().activation_format);
#endif
        Tensor gw_cpu, gb_cpu, gw_gpu, gb_gpu;
        ops::conv2d_backward_weights(g, x, w.shape(), true, c->p, gw_cpu, gb_cpu);
        ops::conv2d_backward_weights(g.to(kGpu), x.to(kGpu), w.shape(), true, c->p, gw_gpu, gb_gpu);
        check_matches(gw_gpu, gw_cpu, kConvTol, what + " backward weights");
        check_matches(gb_gpu, gb_cpu, kConvTol, what + " backward bias");
        CHECK(gw_gpu.format() == MemoryFormat::contiguous);
      }
}

TEST_CASE("cuda conv2d_fused_inference: bias, residual (either format) and ReLU match the CPU") {
  ZSQ_REQUIRE_GPU();
  for (const auto* c : {&kResnetCases[1], &kResnetCases[3], &kOtherCases[0], &kOtherCases[3]})
    for (auto x_format : kFormats)
      for (int residual_kind : {0, 1, 2})  // none, contiguous, channels-last
        for (bool relu : {false, true}) {
          Rng rng(31);
          Tensor x = random_cpu(c->x, rng, x_format, false);
          Tensor w = random_cpu(c->w, rng, MemoryFormat::contiguous, false);
          Tensor b = random_cpu({c->w[0]}, rng, MemoryFormat::contiguous, false);
          const Shape out_shape = ops::conv2d_output_shape(x, w, b, c->p);
          Tensor residual;
          if (residual_kind > 0)
            residual = random_cpu(out_shape, rng,
                                  residual_kind == 1 ? MemoryFormat::contiguous : MemoryFormat::channels_last,
                                  false);
          Tensor cpu = ops::conv2d_fused_inference(x, w, b, c->p, {residual, relu});
          Tensor gpu = ops::conv2d_fused_inference(x.to(kGpu), w.to(kGpu), b.to(kGpu), c->p,
                                                   {residual.defined() ? residual.to(kGpu) : Tensor(), relu});
          check_matches(gpu, cpu, kConvTol,
                        std::string("conv2d_fused_inference ") + c->name + " " + format_name(x_format) +
                            " residual " + std::to_string(residual_kind) + (relu ? " relu" : ""));
        }
}

TEST_CASE("cuda conv2d: tensors on two devices are refused with a message naming both") {
  ZSQ_REQUIRE_GPU();
  Rng rng(1);
  Tensor x = random_cpu({1, 4, 5, 5}, rng, MemoryFormat::channels_last, false);
  Tensor w = random_cpu({4, 4, 3, 3}, rng, MemoryFormat::contiguous, false);
  Tensor b = random_cpu({4}, rng, MemoryFormat::contiguous, false);
  const auto p = ops::Conv2dParams::same(3);
  CHECK_THROWS_WITH_AS(ops::conv2d(x.to(kGpu), w, b.to(kGpu), p), doctest::Contains("different devices"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::conv2d(x.to(kGpu), w, b.to(kGpu), p), doctest::Contains("cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::conv2d(x, w.to(kGpu), b, p), doctest::Contains("cpu"), Error);
  CHECK_THROWS_AS(ops::conv2d(x.to(kGpu), w.to(kGpu), b, p), Error);
  CHECK_THROWS_AS(
      ops::conv2d_fused_inference(x.to(kGpu), w.to(kGpu), b.to(kGpu), p, {Tensor::zeros({1, 4, 5, 5}), true}),
      Error);
  Tensor g = Tensor::zeros({1, 4, 5, 5}, DType::f32, MemoryFormat::channels_last, kGpu);
  CHECK_THROWS_AS(ops::conv2d_backward_data(g, w, x.shape(), p), Error);
  Tensor gw, gb;
  CHECK_THROWS_AS(ops::conv2d_backward_weights(g, x, w.shape(), true, p, gw, gb), Error);
}

TEST_CASE("cuda batch_norm: train and eval, fused ReLU, affine or not, match the CPU in both formats") {
  ZSQ_REQUIRE_GPU();
  const auto cases = all_norm_cases();
  for (bool use_cudnn : kBatchNormImpls)
    with_batch_norm_impl(use_cudnn, [&] {
      for (const auto& shape : kNormShapes)
        for (auto format : kFormats)
          for (const auto& c : cases) {
            if (c.training && shape_numel(shape) / shape[1] < 2) continue;
            check_norm(shape, format, c);
          }
      // [N, C] inputs (BatchNorm1d), contiguous only.
      for (const auto& c : cases) check_norm({10, 24}, MemoryFormat::contiguous, c);
    });
}

TEST_CASE("cuda batch_norm: eval-mode gradients of the input only, and a large split reduction") {
  ZSQ_REQUIRE_GPU();
  for (bool use_cudnn : kBatchNormImpls)
    with_batch_norm_impl(use_cudnn, [&] {
      for (auto format : kFormats) {
        for (bool fuse_relu : {false, true}) {
          // Frozen affine parameters: only dx (the generator-through-frozen-teacher case).
          check_norm({4, 16, 15, 15}, format, {false, fuse_relu, true, true}, /*param_grads=*/false);
          // Many partial blocks per channel in the parameter-gradient reduction.
          check_norm({8, 64, 32, 32}, format, {false, fuse_relu, true, true});
          check_norm({8, 64, 32, 32}, format, {true, fuse_relu, true, true});
        }
      }
    });
}

TEST_CASE("cuda batch_norm: running statistics follow the CPU over several training steps") {
  ZSQ_REQUIRE_GPU();
  for (bool use_cudnn : kBatchNormImpls)
    with_batch_norm_impl(use_cudnn, [&] { check_running_stats(impl_name(use_cudnn)); });
}

TEST_CASE(
    "cuda batch_norm: own kernels and cuDNN agree with each other and the CPU, batch-512 sizes included") {
  ZSQ_REQUIRE_GPU();
  struct Case {
    Shape shape;
    MemoryFormat format;
  };
  const std::vector<Case> cases = {
      {{512, 16, 32, 32}, MemoryFormat::contiguous},  // ResNet-20's stage-1 activation at batch 512
      {{64, 64, 8, 8}, MemoryFormat::channels_last},
      {{64, 64, 8, 8}, MemoryFormat::contiguous},
      {{128, 32, 16, 16}, MemoryFormat::channels_last},
      {{2, 4, 40, 40}, MemoryFormat::contiguous},   // planes longer than a block's stride
      {{2, 3, 17, 19}, MemoryFormat::contiguous},   // odd planes: scalar loads
      {{3, 5, 7, 9}, MemoryFormat::channels_last},  // odd channels: scalar loads
      {{10, 24}, MemoryFormat::contiguous},
  };
  for (const auto& c : cases)
    for (bool training : {true, false})
      for (bool fuse_relu : {false, true}) {
        ops::BatchNormOptions o;
        o.training = training;
        o.fuse_relu = fuse_relu;
        o.momentum = 0.3f;
        Rng rng(29);
        const NormInputs in = relu_safe_inputs(c.shape, c.format, training, o.eps, rng);
        const std::string what = "batch_norm " + shape_str(c.shape) + " " + format_name(c.format) +
                                 (training ? " train" : " eval") + (fuse_relu ? " +relu" : "");
        const NormRun cpu = run_norm(in, o, Device::cpu());
        NormRun gpu[2];
        for (bool use_cudnn : kBatchNormImpls)
          with_batch_norm_impl(use_cudnn, [&] { gpu[use_cudnn ? 1 : 0] = run_norm(in, o, kGpu); });
        compare_runs(gpu[0], cpu, what + ": own vs CPU");
        compare_runs(gpu[1], cpu, what + ": cuDNN vs CPU");
        compare_runs(gpu[0], gpu[1], what + ": own vs cuDNN");
      }
}

TEST_CASE("cuda batch_norm: the persistent NHWC training mode matches the CPU") {
  ZSQ_REQUIRE_GPU();
#if ZSQ_WITH_CUDA
  ScopedBatchNormSettings scope({.use_cudnn = true, .persistent = true});
  // cuDNN documents a fixed-point-style reduction for this mode: allow 1e-4 rather than 1e-5.
  for (const auto& shape : kNormShapes)
    for (bool fuse_relu : {false, true})
      for (bool affine : {true, false})
        if (shape_numel(shape) / shape[1] >= 2)
          check_norm(shape, MemoryFormat::channels_last, {true, fuse_relu, affine, true}, true, 1e-4);
#endif
}

TEST_CASE("cuda batch_norm: parameters on another device than the input are refused, naming both") {
  ZSQ_REQUIRE_GPU();
  Rng rng(2);
  Tensor x = offset_input({2, 4, 3, 3}, rng, MemoryFormat::channels_last, false).to(kGpu);
  Tensor w = Tensor::full({4}, 1.0f), b = Tensor::zeros({4});
  Tensor rm = Tensor::zeros({4}), rv = Tensor::full({4}, 1.0f);
  ops::BatchNormOptions o;
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, w, b.to(kGpu), rm.to(kGpu), rv.to(kGpu), o),
                       doctest::Contains("different devices"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, w.to(kGpu), b.to(kGpu), rm, rv.to(kGpu), o),
                       doctest::Contains("cpu"), Error);
  CHECK_THROWS_WITH_AS(ops::batch_norm(x, w.to(kGpu), b.to(kGpu), rm.to(kGpu), rv, o),
                       doctest::Contains("cuda:0"), Error);
  CHECK_THROWS_AS(ops::batch_norm(x.to(Device::cpu()), w.to(kGpu), b, rm, rv, o), Error);
}
