// zsq's depthwise convolution kernels (ops/cuda/depthwise_conv.h) against cuDNN's grouped convolution
// (groups = channels, FMA math: no TF32, the fastest algorithm by cudnnFind*) on the same device buffers,
// for the large-kernel-attention shapes (5x5, then 7x7 with dilation 3, "same" padding) at the
// resolutions and widths of a CIFAR network, and MobileNet's 3x3 (stride 1 and 2) for reference.
//   <impl>/<pass>/<layout>/<shape>   impl: zsq | cudnn; pass: fwd (with bias for zsq; cuDNN without),
//                                    bwd_data, bwd_weights (filter gradient only on both sides);
//                                    layout: nchw | nhwc; shape: N x C x H x W, kernel, dilation, stride
// Reported as time per call and bytes_per_second over the tensors a pass must read and write once.
// Each timed iteration runs the pass kRepeat times, then synchronizes. Every case skips with a message
// without a GPU (or in a build without CUDA).
// Run: ./build/bench/bench_cuda_depthwise --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/rng.h"
#include "engine/tensor.h"
#include "ops/cuda/cuda_runtime_api.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/depthwise_conv.h"
#include "ops/cuda/descriptors.h"
#endif

using namespace zsq;

namespace {

constexpr int kRepeat = 20;

struct ConvCase {
  std::int64_t N, C, H, W, K, dilation, stride;
};

const std::vector<ConvCase> kCases = {
    {128, 16, 32, 32, 5, 1, 1}, {128, 16, 32, 32, 7, 3, 1},   // LKA at 32x32, 16 channels
    {128, 32, 16, 16, 5, 1, 1}, {128, 32, 16, 16, 7, 3, 1},   // 16x16, 32 channels
    {128, 64, 8, 8, 5, 1, 1},   {128, 64, 8, 8, 7, 3, 1},     // 8x8, 64 channels
    {128, 64, 32, 32, 5, 1, 1}, {128, 64, 32, 32, 7, 3, 1},   // a wide stage at full resolution
    {128, 96, 16, 16, 3, 1, 1}, {128, 144, 16, 16, 3, 1, 2},  // MobileNetV2
};

enum class Pass { fwd, bwd_data, bwd_weights };
const char* pass_name(Pass p) {
  return p == Pass::fwd ? "fwd" : p == Pass::bwd_data ? "bwd_data" : "bwd_weights";
}

std::string case_name(const ConvCase& c) {
  return std::to_string(c.N) + "x" + std::to_string(c.C) + "x" + std::to_string(c.H) + "x" +
         std::to_string(c.W) + "_k" + std::to_string(c.K) + "d" + std::to_string(c.dilation) + "s" +
         std::to_string(c.stride);
}

#if ZSQ_WITH_CUDA
const Device kGpu = Device::cuda(0);

Tensor gpu_randn(const Shape& shape, std::uint64_t seed, MemoryFormat format) {
  Rng rng(seed);
  Tensor t = randn(shape, rng).to_format(format);
  if (t.format() != format) t = t.clone();
  return t.to(kGpu);
}

struct Buffers {
  cuda::DepthwiseConvShape shape;
  Tensor x, w, b, y, gy, gx, gw;
};

Buffers make_buffers(const ConvCase& c, cuda::DepthwiseLayout layout) {
  Buffers buf;
  auto& s = buf.shape;
  s.N = c.N, s.C = c.C, s.H = c.H, s.W = c.W, s.KH = s.KW = c.K;
  s.stride_h = s.stride_w = c.stride;
  s.pad_h = s.pad_w = c.dilation * (c.K - 1) / 2;
  s.dilation_h = s.dilation_w = c.dilation;
  const auto format =
      layout == cuda::DepthwiseLayout::nhwc ? MemoryFormat::channels_last : MemoryFormat::contiguous;
  const Shape out{c.N, c.C, s.out_h(), s.out_w()};
  buf.x = gpu_randn({c.N, c.C, c.H, c.W}, 1, format);
  buf.w = gpu_randn({c.C, 1, c.K, c.K}, 2, MemoryFormat::contiguous);
  buf.b = gpu_randn({c.C}, 3, MemoryFormat::contiguous);
  buf.gy = gpu_randn(out, 4, format);
  buf.y = Tensor::empty(out, DType::f32, format, kGpu);
  buf.gx = Tensor::empty(buf.x.shape(), DType::f32, format, kGpu);
  buf.gw = Tensor::empty(buf.w.shape(), DType::f32, MemoryFormat::contiguous, kGpu);
  return buf;
}

// Bytes a pass has to move at least once: its inputs and its output.
double pass_bytes(const Buffers& b, Pass pass) {
  const auto f = [](const Tensor& t) { return static_cast<double>(t.nbytes()); };
  switch (pass) {
    case Pass::fwd:
      return f(b.x) + f(b.w) + f(b.y);
    case Pass::bwd_data:
      return f(b.gy) + f(b.w) + f(b.gx);
    default:
      return f(b.gy) + f(b.x) + f(b.gw);
  }
}

std::function<void()> zsq_pass(Buffers& b, Pass pass, cuda::DepthwiseLayout layout) {
  switch (pass) {
    case Pass::fwd:
      return [&b, layout] {
        cuda::depthwise_conv2d_forward(b.shape, layout, b.x.cuda_f32(), b.w.cuda_f32(), b.b.cuda_f32(),
                                       b.y.cuda_f32());
      };
    case Pass::bwd_data:
      return [&b, layout] {
        cuda::depthwise_conv2d_backward_data(b.shape, layout, b.gy.cuda_f32(), b.w.cuda_f32(),
                                             b.gx.cuda_f32());
      };
    default:
      return [&b, layout] {
        cuda::depthwise_conv2d_backward_weights(b.shape, layout, b.gy.cuda_f32(), b.x.cuda_f32(),
                                                b.gw.cuda_f32(), nullptr);
      };
  }
}

// cuDNN descriptors and the algorithm cudnnFind* timed fastest for one pass.
struct CudnnPass {
  cuda::TensorDescriptor x, y;
  cuda::FilterDescriptor w;
  cuda::ConvolutionDescriptor conv;
  int algo = 0;
  std::size_t workspace = 0;
};

void describe(CudnnPass& p, const Buffers& b, cuda::DepthwiseLayout layout) {
  const auto& s = b.shape;
  const cudnnTensorFormat_t format =
      layout == cuda::DepthwiseLayout::nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  auto i = [](std::int64_t v) { return static_cast<int>(v); };
  ZSQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, format, CUDNN_DATA_FLOAT, i(s.N), i(s.C), i(s.H), i(s.W)));
  ZSQ_CUDNN_CHECK(
      cudnnSetTensor4dDescriptor(p.y, format, CUDNN_DATA_FLOAT, i(s.N), i(s.C), i(s.out_h()), i(s.out_w())));
  // [C, 1, K, K]: the same bytes in OIHW and in NHWC ("KRSC") filter order, since C / groups = 1.
  ZSQ_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, format, i(s.C), 1, i(s.KH), i(s.KW)));
  ZSQ_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p.conv, i(s.pad_h), i(s.pad_w), i(s.stride_h),
                                                  i(s.stride_w), i(s.dilation_h), i(s.dilation_w),
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  ZSQ_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p.conv, i(s.C)));
  ZSQ_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, CUDNN_FMA_MATH));
}

// First successful entry of a cudnnFind* result (sorted fastest first), or a zsq::Error.
template <typename Perf>
const Perf& fastest(const Perf* perf, int count, const char* what) {
  for (int k = 0; k < count; ++k)
    if (perf[k].status == CUDNN_STATUS_SUCCESS) return perf[k];
  fail(std::string("cuDNN has no algorithm for this depthwise ") + what);
}

std::function<void()> cudnn_pass(Buffers& b, Pass pass, cuda::DepthwiseLayout layout, CudnnPass& p) {
  describe(p, b, layout);
  constexpr int kAlgos = 16;
  int count = 0;
  cudnnHandle_t h = cuda::cudnn();
  switch (pass) {
    case Pass::fwd: {
      cudnnConvolutionFwdAlgoPerf_t perf[kAlgos];
      ZSQ_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, p.w, p.conv, p.y, kAlgos, &count, perf));
      const auto& best = fastest(perf, count, "forward");
      p.algo = best.algo, p.workspace = best.memory;
      return [&b, &p] {
        const float one = 1.0f, zero = 0.0f;
        ZSQ_CUDNN_CHECK(cudnnConvolutionForward(cuda::cudnn(), &one, p.x, b.x.cuda_f32(), p.w, b.w.cuda_f32(),
                                                p.conv, static_cast<cudnnConvolutionFwdAlgo_t>(p.algo),
                                                cuda::workspace(p.workspace), p.workspace, &zero, p.y,
                                                b.y.cuda_f32()));
      };
    }
    case Pass::bwd_data: {
      cudnnConvolutionBwdDataAlgoPerf_t perf[kAlgos];
      ZSQ_CUDNN_CHECK(
          cudnnFindConvolutionBackwardDataAlgorithm(h, p.w, p.y, p.conv, p.x, kAlgos, &count, perf));
      const auto& best = fastest(perf, count, "backward data");
      p.algo = best.algo, p.workspace = best.memory;
      return [&b, &p] {
        const float one = 1.0f, zero = 0.0f;
        ZSQ_CUDNN_CHECK(cudnnConvolutionBackwardData(
            cuda::cudnn(), &one, p.w, b.w.cuda_f32(), p.y, b.gy.cuda_f32(), p.conv,
            static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo), cuda::workspace(p.workspace), p.workspace,
            &zero, p.x, b.gx.cuda_f32()));
      };
    }
    default: {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[kAlgos];
      ZSQ_CUDNN_CHECK(
          cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, p.conv, p.w, kAlgos, &count, perf));
      const auto& best = fastest(perf, count, "backward filter");
      p.algo = best.algo, p.workspace = best.memory;
      return [&b, &p] {
        const float one = 1.0f, zero = 0.0f;
        ZSQ_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
            cuda::cudnn(), &one, p.x, b.x.cuda_f32(), p.y, b.gy.cuda_f32(), p.conv,
            static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.algo), cuda::workspace(p.workspace), p.workspace,
            &zero, p.w, b.gw.cuda_f32()));
      };
    }
  }
}
#endif

void run_case(benchmark::State& state, const ConvCase& c, Pass pass, bool nhwc, bool use_cudnn) {
#if ZSQ_WITH_CUDA
  if (!cuda_available()) {
    state.SkipWithError((std::string("no GPU: ") + cuda::unavailable_reason()).c_str());
    return;
  }
  const auto layout = nhwc ? cuda::DepthwiseLayout::nhwc : cuda::DepthwiseLayout::nchw;
  try {
    Buffers b = make_buffers(c, layout);
    CudnnPass p;
    std::function<void()> call = use_cudnn ? cudnn_pass(b, pass, layout, p) : zsq_pass(b, pass, layout);
    if (use_cudnn)
      state.SetLabel("algo " + std::to_string(p.algo) + ", workspace " + std::to_string(p.workspace) + " B");
    else
      state.SetLabel(cuda::depthwise_conv2d_is_register_blocked(b.shape) ? "register-blocked" : "general");
    call();  // warm-up: workspace growth, lazy module loading
    cuda::synchronize();
    for (auto _ : state) {
      for (int r = 0; r < kRepeat; ++r) call();
      cuda::synchronize();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(pass_bytes(b, pass) * kRepeat) * state.iterations());
    // Inverted rate: seconds / (iterations * kRepeat * 1e-6) = microseconds per call.
    state.counters["us/call"] = benchmark::Counter(
        kRepeat * 1e-6, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
#else
  (void)c, (void)pass, (void)nhwc, (void)use_cudnn;  // used only with CUDA
  state.SkipWithError("built without CUDA");
#endif
}

[[maybe_unused]] const int kRegistered = [] {
  for (const auto& c : kCases)
    for (Pass pass : {Pass::fwd, Pass::bwd_data, Pass::bwd_weights})
      for (bool nhwc : {false, true})
        for (bool use_cudnn : {false, true}) {
          const std::string name = std::string(use_cudnn ? "cudnn/" : "zsq/") + pass_name(pass) +
                                   (nhwc ? "/nhwc/" : "/nchw/") + case_name(c);
          benchmark::RegisterBenchmark(
              name.c_str(), [=](benchmark::State& state) { run_case(state, c, pass, nhwc, use_cudnn); })
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
