// Integer ResNet-20 inference on the CPU, batch 128 (DESIGN.md §7 protocol: medians of repetitions,
// ratios against a ceiling measured in the same run):
//   BM_IntegerResNet20/8   the whole integer model (W8A8 deploy form): input quantization, 21 int8
//                          convolutions with fused requantization/residual/ReLU, integer pool + classifier
//   BM_IntegerResNet20/4   the same at W4A4 (4-bit weights: packed int4 kernel on the 1x1 shortcuts)
//   BM_Int8ConvsOnly       only the 21 convolutions as plain u8 -> u8 oneDNN int8 primitives (no
//                          residual, no pool, no classifier): the ceiling the full model can approach
// The model has random weights calibrated on Gaussian images: speed does not depend on the values.
// Run: ./build/bench/bench_int8_resnet --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include "engine/autograd.h"
#include "models/zoo.h"
#include "ops/conv2d_int8.h"
#include "quant/distill.h"
#include "quant/integer_runner.h"
#include "quant/student.h"

using namespace zsq;

namespace {
constexpr std::int64_t kBatch = 128;

quant::IntegerModel make_model(int bits) {
  Rng rng(0);
  const auto spec = models::resolve_model_spec("resnet20");
  auto teacher = models::build_model(spec, rng);
  for (int i = 0; i < 2; ++i) teacher->forward(randn({32, 1, 32, 32}, rng));  // BN statistics
  teacher->eval();
  quant::Student student(spec, *teacher, quant::QConfig::deploy(bits, bits));
  NoGrad no_grad;  // the integer conversion below reads the weights without a graph
  student.calibrate(1, [&](std::int64_t) { return quant::gaussian_inputs(64, 1, 32, rng); });
  return quant::convert_to_integer(student, {-0.8102f, 2.0227f, 32, 32});
}

void BM_IntegerResNet20(benchmark::State& state) {
  quant::IntegerRunner runner(make_model(static_cast<int>(state.range(0))));
  Rng rng(1);
  const Tensor x = randn({kBatch, 1, 32, 32}, rng);
  for (int i = 0; i < 3; ++i) runner.forward(x);
  for (auto _ : state) benchmark::DoNotOptimize(runner.forward(x));
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_IntegerResNet20)->Arg(8)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Int8ConvsOnly(benchmark::State& state) {
  const auto model = make_model(8);
  struct Layer {
    std::unique_ptr<ops::Int8Conv2d> conv;
    std::int64_t in_bytes, out_bytes;
  };
  std::vector<Layer> layers;
  std::int64_t h = 32, w = 32;
  auto add = [&](const quant::IntLayer& l, std::int64_t in_h, std::int64_t in_w) {
    const ops::Int8ConvShape s{l.in_channels, l.out_channels, l.kernel, l.stride, l.padding, in_h, in_w};
    layers.push_back(
        {std::make_unique<ops::Int8Conv2d>(
             s, l.weight, l.bias, std::vector<float>(l.weight_scale.size(), 0.01f), ops::Int8ConvEpilogue{}),
         in_h * in_w * l.in_channels, s.out_height() * s.out_width() * l.out_channels});
    return s;
  };
  auto s = add(model.stem, h, w);
  h = s.out_height();
  w = s.out_width();
  for (const auto& b : model.blocks) {
    const auto s1 = add(b.conv1, h, w);
    if (b.shortcut) add(*b.shortcut, h, w);
    const auto s2 = add(b.conv2, s1.out_height(), s1.out_width());
    h = s2.out_height();
    w = s2.out_width();
  }
  std::vector<std::uint8_t> src(static_cast<std::size_t>(kBatch * 32 * 32 * 16), 3),
      dst(static_cast<std::size_t>(kBatch * 32 * 32 * 16));
  auto run = [&] {
    for (auto& l : layers) l.conv->forward(kBatch, src.data(), dst.data());
  };
  run();
  for (auto _ : state) run();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["img/s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Int8ConvsOnly)->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace

BENCHMARK_MAIN();
