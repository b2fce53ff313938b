// ResNet-20 throughput on the CPU (batch 128 by default):
//   BM_TrainStep      full step: forward, cross-entropy, backward, SGD (Nesterov) update
//   BM_Inference      eval-mode forward under NoGrad
//   BM_ConvsOnly*     only the network's convolutions (forward, backward data, backward weights), the
//                     oneDNN ceiling a full step can approach; ratios against it come from one run
//   BM_Conv/<shape>   each distinct ResNet-20 conv shape, forward and backward, in GFLOP/s
//   BM_FmaPeak        AVX-512 FMA peak of this machine (GFLOP/s), to put the GFLOP/s figures in scale
// Run: ./build/bench/bench_resnet --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include "engine/autograd.h"
#include "engine/optim.h"
#include "models/zoo.h"
#include "ops/conv2d.h"
#include "ops/loss.h"

using namespace zsq;

namespace {
constexpr std::int64_t kBatch = 128;

struct ConvShape {
  std::int64_t cin, cout, hw, kernel, stride;
  int count;  // how many times it occurs in ResNet-20
};
// The CIFAR ResNet-20 layers on a 1x32x32 input.
const ConvShape kShapes[] = {{1, 16, 32, 3, 1, 1},  {16, 16, 32, 3, 1, 6}, {16, 32, 32, 3, 2, 1},
                             {32, 32, 16, 3, 1, 5}, {16, 32, 32, 1, 2, 1}, {32, 64, 16, 3, 2, 1},
                             {64, 64, 8, 3, 1, 5},  {32, 64, 16, 1, 2, 1}};

double conv_flops(const ConvShape& s, std::int64_t batch) {
  const auto out_hw = s.hw / s.stride;
  return 2.0 * batch * s.cout * out_hw * out_hw * s.cin * s.kernel * s.kernel;
}

Tensor labels_for(std::int64_t n) {
  Tensor y = Tensor::empty({n}, DType::s32);
  for (std::int64_t i = 0; i < n; ++i) y.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % 10);
  return y;
}

void BM_TrainStep(benchmark::State& state) {
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("resnet20"), rng);
  Sgd sgd(model->parameters(), {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  Tensor x = randn({kBatch, 1, 32, 32}, rng);
  Tensor y = labels_for(kBatch);
  model->train();
  for (auto _ : state) {
    Tensor loss = ops::cross_entropy(model->forward(x), y);
    sgd.zero_grad();
    loss.backward();
    sgd.step();
  }
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Inference(benchmark::State& state) {
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("resnet20"), rng);
  Tensor x = randn({kBatch, 1, 32, 32}, rng);
  model->eval();
  NoGrad no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(x).raw_data());
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}

struct ConvData {
  Tensor x, w, g;
  ops::Conv2dParams p;
};
ConvData make_conv(const ConvShape& s, Rng& rng) {
  ConvData d;
  d.x = randn({kBatch, s.cin, s.hw, s.hw}, rng).to_format(MemoryFormat::channels_last);
  if (d.x.format() != MemoryFormat::channels_last) d.x = d.x.clone();
  d.w = randn({s.cout, s.cin, s.kernel, s.kernel}, rng);
  d.p = ops::Conv2dParams::same(s.kernel, s.stride);
  d.g = randn({kBatch, s.cout, s.hw / s.stride, s.hw / s.stride}, rng).to_format(MemoryFormat::channels_last);
  return d;
}

// All convolutions of one ResNet-20 training step (or inference pass), each shape repeated as in the net.
void BM_ConvsOnly(benchmark::State& state, bool train) {
  Rng rng(1);
  std::vector<ConvData> layers;
  std::vector<int> counts;
  for (const auto& s : kShapes) {
    layers.push_back(make_conv(s, rng));
    counts.push_back(s.count);
  }
  for (auto _ : state)
    for (std::size_t i = 0; i < layers.size(); ++i)
      for (int r = 0; r < counts[i]; ++r) {
        auto& l = layers[i];
        if (!train) {
          NoGrad ng;
          benchmark::DoNotOptimize(ops::conv2d_forward(l.x, l.w, Tensor(), l.p).raw_data());
          continue;
        }
        Tensor gw, gb;
        l.w.set_requires_grad(true);  // forward_training descriptors, as in a real step
        benchmark::DoNotOptimize(ops::conv2d_forward(l.x, l.w, Tensor(), l.p).raw_data());
        if (i != 0)
          benchmark::DoNotOptimize(ops::conv2d_backward_data(l.g, l.w, l.x.shape(), l.p).raw_data());
        ops::conv2d_backward_weights(l.g, l.x, l.w.shape(), false, l.p, gw, gb);
      }
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Conv(benchmark::State& state, ConvShape s, int pass) {
  Rng rng(2);
  ConvData l = make_conv(s, rng);
  l.w.set_requires_grad(pass != 0);
  for (auto _ : state) {
    if (pass == 0) {
      NoGrad ng;
      benchmark::DoNotOptimize(ops::conv2d_forward(l.x, l.w, Tensor(), l.p).raw_data());
    } else if (pass == 1) {
      benchmark::DoNotOptimize(ops::conv2d_backward_data(l.g, l.w, l.x.shape(), l.p).raw_data());
    } else {
      Tensor gw, gb;
      ops::conv2d_backward_weights(l.g, l.x, l.w.shape(), false, l.p, gw, gb);
    }
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      conv_flops(s, kBatch), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// 12 independent FMA chains per thread hide the FMA latency; flops = 2 * 16 lanes per FMA.
void BM_FmaPeak(benchmark::State& state) {
  constexpr int kIters = 1 << 20;
  for (auto _ : state) {
#pragma omp parallel
    {
      __m512 acc[12];
      for (auto& a : acc) a = _mm512_set1_ps(0.0f);
      const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
      for (int i = 0; i < kIters; ++i)
        for (auto& a : acc) a = _mm512_fmadd_ps(a, m, c);
      for (auto& a : acc) benchmark::DoNotOptimize(a);
    }
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * 16 * 12 * kIters * omp_get_max_threads(),
                         benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
}  // namespace

BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ConvsOnly, train, true)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Inference)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ConvsOnly, infer, false)->Unit(benchmark::kMillisecond)->UseRealTime();

namespace {
[[maybe_unused]] const bool registered = [] {
  const char* pass_names[] = {"fwd", "bwd_data", "bwd_weights"};
  for (const auto& s : kShapes)
    for (int pass = 0; pass < 3; ++pass) {
      if (pass == 1 && s.cin == 1) continue;  // the stem never needs an input gradient
      const auto name = fmt::format("BM_Conv/{}x{}x{}x{}_k{}s{}/{}", kBatch, s.cin, s.hw, s.hw, s.kernel,
                                    s.stride, pass_names[pass]);
      benchmark::RegisterBenchmark(name.c_str(), BM_Conv, s, pass)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  return true;
}();
}  // namespace

BENCHMARK_MAIN();
