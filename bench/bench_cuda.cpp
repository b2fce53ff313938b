// The CUDA backend's throughput (run on a GPU machine; every benchmark skips with a message without one).
// Each figure comes with the ceiling it is compared against, measured in the same run:
//   BM_CudaCopy/<MiB>            device-to-device copy: the bandwidth ceiling (bytes read + written)
//   BM_CudaRelu, BM_CudaFakeQuant  own memory-bound kernels on the same bytes, in bytes/s (read + written)
//   BM_CudaChannelMean/Variance  per-channel reductions of a channels_last activation (the BN-statistics
//                                loss), bytes/s of input read
//   BM_CudaMatmul/<n>            fp32 matmul through ops::matmul (cuBLAS, TF32 off), FLOP/s: n = 8192 is
//                                the library ceiling for fp32
//   BM_CudaConv/<shape>/<batch>  each ResNet-20 convolution through ops::conv2d (cuDNN), forward +
//                                backward data + backward weights, FLOP/s
//   BM_CudaTrainStep/<batch>     ResNet-20 training step (forward, cross-entropy, backward, SGD), img/s
//   BM_CudaInference/<batch>     ResNet-20 eval forward under NoGrad, img/s
//   BM_CudaGdfqIteration, BM_CudaZaqIteration  one iteration of each generative method, W4A4 student
//   BM_CudaBatchNorm/cudnn:<0|1> batch norm training forward + backward on [512, 16, 32, 32] NCHW through
//                                ops::batch_norm, zsq's own kernels (0) or cuDNN (1), bytes/s
// Each timed iteration ends with a device synchronize; kernels of a few microseconds are repeated
// kRepeat times per iteration so the synchronize does not dominate.
// Run: ./build/bench/bench_cuda --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "models/model_file.h"
#include "models/zoo.h"
#include "ops/batch_norm.h"
#include "ops/conv2d.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/elementwise.h"
#include "ops/fake_quant.h"
#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/reduce.h"
#include "quant/methods/gdfq.h"
#include "quant/methods/zaq.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/batch_norm_cudnn.h"
#endif

using namespace zsq;

namespace {
constexpr int kRepeat = 20;
const Device kGpu = Device::cuda(0);

bool skip_without_gpu(benchmark::State& state) {
  if (cuda_available()) return false;
  state.SkipWithError((std::string("no GPU: ") + cuda::unavailable_reason()).c_str());
  return true;
}

Tensor gpu_randn(const Shape& shape, std::uint64_t seed, MemoryFormat format = MemoryFormat::contiguous) {
  Rng rng(seed);
  Tensor t = randn(shape, rng).to_format(format);
  if (t.format() != format) t = t.clone();
  return t.to(kGpu);
}

// Printed as bytes_per_second (e.g. "2.9T/s"; the JSON holds the exact figure).
void set_bandwidth(benchmark::State& state, double bytes_per_call) {
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_call * kRepeat) * state.iterations());
}

// 64 MiB of floats by default: far beyond the 50 MB L2, so the figures are DRAM bandwidth.
std::int64_t floats_of(std::int64_t mib) {
  return mib * (1 << 20) / 4;
}

void BM_CudaCopy(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const auto n = floats_of(state.range(0));
  Tensor src = gpu_randn({n}, 1), dst = Tensor::empty({n}, DType::f32, MemoryFormat::contiguous, kGpu);
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r) device_copy(dst.raw_data(), kGpu, src.raw_data(), kGpu, src.nbytes());
    cuda::synchronize();
  }
  set_bandwidth(state, 2.0 * static_cast<double>(src.nbytes()));
}
BENCHMARK(BM_CudaCopy)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaRelu(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Tensor x = gpu_randn({floats_of(state.range(0))}, 2);
  NoGrad no_grad;
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r) benchmark::DoNotOptimize(ops::relu(x).raw_data());
    cuda::synchronize();
  }
  set_bandwidth(state, 2.0 * static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_CudaRelu)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaFakeQuant(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Tensor x = gpu_randn({floats_of(state.range(0))}, 3);
  NoGrad no_grad;
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r)
      benchmark::DoNotOptimize(ops::fake_quant_per_tensor(x, -2.0f, 2.0f, {.bits = 4}).raw_data());
    cuda::synchronize();
  }
  set_bandwidth(state, 2.0 * static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_CudaFakeQuant)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

// A generator batch's activation as the BN-statistics loss sees it: [256, 64, 32, 32] channels_last
// (64 MiB), reduced per channel over N, H, W.
void BM_CudaChannelMean(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Tensor x = gpu_randn({256, 64, 32, 32}, 4, MemoryFormat::channels_last);
  NoGrad no_grad;
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r) benchmark::DoNotOptimize(ops::mean(x, {0, 2, 3}).raw_data());
    cuda::synchronize();
  }
  set_bandwidth(state, static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_CudaChannelMean)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaChannelVariance(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  Tensor x = gpu_randn({256, 64, 32, 32}, 5, MemoryFormat::channels_last);
  NoGrad no_grad;
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r) benchmark::DoNotOptimize(ops::variance(x, {0, 2, 3}).raw_data());
    cuda::synchronize();
  }
  set_bandwidth(state, static_cast<double>(x.nbytes()));
}
BENCHMARK(BM_CudaChannelVariance)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaMatmul(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const auto n = state.range(0);
  Tensor a = gpu_randn({n, n}, 6), b = gpu_randn({n, n}, 7);
  NoGrad no_grad;
  benchmark::DoNotOptimize(ops::matmul(a, b).raw_data());
  cuda::synchronize();
  for (auto _ : state) {
    benchmark::DoNotOptimize(ops::matmul(a, b).raw_data());
    cuda::synchronize();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(n) * n * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaMatmul)->Arg(1024)->Arg(4096)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();

struct ConvShape {
  std::int64_t cin, cout, hw, kernel, stride;
};
// The distinct CIFAR ResNet-20 convolutions on a 1x32x32 input.
const ConvShape kShapes[] = {{1, 16, 32, 3, 1},  {16, 16, 32, 3, 1}, {16, 32, 32, 3, 2}, {32, 32, 16, 3, 1},
                             {16, 32, 32, 1, 2}, {32, 64, 16, 3, 2}, {64, 64, 8, 3, 1},  {32, 64, 16, 1, 2}};

void BM_CudaConv(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const ConvShape& s = kShapes[state.range(0)];
  const auto batch = state.range(1);
  Tensor x = gpu_randn({batch, s.cin, s.hw, s.hw}, 8, MemoryFormat::channels_last);
  Tensor w = gpu_randn({s.cout, s.cin, s.kernel, s.kernel}, 9);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  const auto params = ops::Conv2dParams::same(s.kernel, s.stride);
  Tensor y = ops::conv2d(x, w, Tensor(), params);
  Tensor g = gpu_randn(y.shape(), 10, y.format());
  auto step = [&] {
    Tensor out = ops::conv2d(x, w, Tensor(), params);
    x.zero_grad();
    w.zero_grad();
    out.backward(g);
  };
  step();
  cuda::synchronize();
  for (auto _ : state) {
    step();
    cuda::synchronize();
  }
  const auto out_hw = s.hw / s.stride;
  const double flops = 3.0 * 2.0 * batch * s.cout * out_hw * out_hw * s.cin * s.kernel * s.kernel;
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(fmt::format("{}->{} {}x{} k{} s{}", s.cin, s.cout, s.hw, s.hw, s.kernel, s.stride));
}
BENCHMARK(BM_CudaConv)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {512}})
    ->ArgNames({"shape", "batch"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

Tensor labels_for(std::int64_t n) {
  Tensor y = Tensor::empty({n}, DType::s32);
  for (std::int64_t i = 0; i < n; ++i) y.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % 10);
  return y.to(kGpu);
}

void BM_CudaTrainStep(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const auto batch = state.range(0);
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("resnet20"), rng);
  model->to(kGpu);
  Sgd sgd(model->parameters(), {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  Tensor x = gpu_randn({batch, 1, 32, 32}, 11);
  Tensor y = labels_for(batch);
  model->train();
  auto step = [&] {
    Tensor loss = ops::cross_entropy(model->forward(x), y);
    sgd.zero_grad();
    loss.backward();
    sgd.step();
  };
  for (int i = 0; i < 3; ++i) step();  // algorithm search and allocator warm-up
  cuda::synchronize();
  for (auto _ : state) {
    step();
    cuda::synchronize();
  }
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaTrainStep)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaInference(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
  const auto batch = state.range(0);
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("resnet20"), rng);
  model->to(kGpu);
  model->eval();
  Tensor x = gpu_randn({batch, 1, 32, 32}, 12);
  NoGrad no_grad;
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(model->forward(x).raw_data());
  cuda::synchronize();
  for (auto _ : state) {
    benchmark::DoNotOptimize(model->forward(x).raw_data());
    cuda::synchronize();
  }
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaInference)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

std::string teacher_path() {
  const char* env = std::getenv("ZSQ_TEACHER");
  return env != nullptr ? env : std::string(ZSQ_SOURCE_DIR) + "/models/pretrained/resnet20.safetensors";
}

// As bench_generative.cpp on the CPU: the shipped teacher, a W4A4 student, one warm-up iteration, then
// iterations of the first trained epoch.
template <typename Trainer, typename Options>
void time_generative(benchmark::State& state, Options options, std::int64_t first_trained_epoch,
                     std::int64_t images_per_iteration) {
  if (skip_without_gpu(state)) return;
  auto teacher = models::load_model(teacher_path());
  teacher.model->eval();
  teacher.model->to(kGpu);
  auto config = quant::QConfig::paper(4, 4);
  config.act_observer = quant::ObserverKind::ema;
  quant::Student student(teacher.spec, *teacher.model, config);
  Trainer trainer(*teacher.model, student, options);
  Rng rng(1);
  trainer.begin_epoch(0);
  trainer.iterate(0, 0, rng);
  trainer.begin_epoch(first_trained_epoch);
  std::int64_t i = 0;
  cuda::synchronize();
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.iterate(first_trained_epoch, i++, rng));
    cuda::synchronize();
  }
  state.counters["img/s"] = benchmark::Counter(static_cast<double>(images_per_iteration),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void BM_CudaGdfqIteration(benchmark::State& state) {
  auto options = quant::GdfqOptions::budget("quick");
  options.batch = state.range(0);
  time_generative<quant::GdfqTrainer>(state, options, std::max(options.warmup_epochs, options.freeze_epochs),
                                      options.batch);
}
BENCHMARK(BM_CudaGdfqIteration)->Arg(128)->Arg(200)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaZaqIteration(benchmark::State& state) {
  auto options = quant::ZaqOptions::budget("quick");
  options.batch = state.range(0);
  time_generative<quant::ZaqTrainer>(state, options, std::max<std::int64_t>(options.freeze_epochs, 1),
                                     options.batch * (options.q_steps + 1));
}
BENCHMARK(BM_CudaZaqIteration)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

// ResNet-20's first-stage batch norm at batch 512 ([512, 16, 32, 32] NCHW, 32 MiB): a training step's
// forward (batch statistics, running-stat update, normalization) and backward (x, weight and bias
// gradients), through zsq's own kernels (cudnn:0) or cuDNN's legacy batch-norm API (cudnn:1). Bytes:
// the minimal traffic of the two-sweep scheme, 8 x 32 MiB per step: forward reads x twice and writes y,
// backward reads dy and x twice and writes dx.
void BM_CudaBatchNorm(benchmark::State& state) {
  if (skip_without_gpu(state)) return;
#if ZSQ_WITH_CUDA
  const bool use_cudnn = state.range(0) == 1;
  const auto saved = ops::cudnn_impl::cudnn_batch_norm_settings();
  auto settings = saved;
  settings.use_cudnn = use_cudnn;
  ops::cudnn_impl::set_cudnn_batch_norm_settings(settings);
  const std::int64_t C = 16;
  Tensor x = gpu_randn({512, C, 32, 32}, 13);
  Tensor g = gpu_randn(x.shape(), 14);
  Tensor w = Tensor::full({C}, 1.0f, MemoryFormat::contiguous, kGpu);
  Tensor b = Tensor::zeros({C}, DType::f32, MemoryFormat::contiguous, kGpu);
  Tensor running_mean = Tensor::zeros({C}, DType::f32, MemoryFormat::contiguous, kGpu);
  Tensor running_var = Tensor::full({C}, 1.0f, MemoryFormat::contiguous, kGpu);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  const ops::BatchNormOptions options;
  auto step = [&] {
    Tensor y = ops::batch_norm(x, w, b, running_mean, running_var, options);
    x.zero_grad();
    w.zero_grad();
    b.zero_grad();
    y.backward(g);
  };
  step();  // allocator warm-up
  cuda::synchronize();
  for (auto _ : state) {
    for (int r = 0; r < kRepeat; ++r) step();
    cuda::synchronize();
  }
  set_bandwidth(state, 8.0 * static_cast<double>(x.nbytes()));
  state.SetLabel(use_cudnn ? "cuDNN" : "own kernels");
  ops::cudnn_impl::set_cudnn_batch_norm_settings(saved);
#else
  state.SkipWithError("built without CUDA");
#endif
}
BENCHMARK(BM_CudaBatchNorm)->Arg(0)->Arg(1)->ArgName("cudnn")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
