// Fake-quantization forward throughput against a plain memory copy of the same size, in one run.
//   BM_Memcpy / BM_OmpCopy        std::memcpy and an OpenMP-parallel copy loop (the bandwidth ceiling)
//   BM_FakeQuantKernel/<mode>     the AVX-512 kernel into a preallocated output (per_tensor, per_channel)
//   BM_FakeQuant/<mode>           the front function: validation, grid, output allocation (host cache),
//   kernel BM_FakeQuant/minmax           per-channel min/max of w, then quantization: reads w twice
//   BM_ChannelMinMax              the min/max pass alone (reads only)
// GB/s counts bytes read + bytes written once per element (2 x tensor bytes; 1 x for the min/max pass),
// so fake_quant / copy is how close the kernel comes to the memory bandwidth.
// Sizes: 128x16x32x32 f32 (8 MiB, a ResNet-20 stage-1 activation at batch 128) and 128x128x32x32 (64 MiB).
// Run: ./build/bench/bench_fake_quant --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "engine/autograd.h"
#include "engine/rng.h"
#include "ops/fake_quant.h"

using namespace zsq;

namespace {

const Shape kShapes[] = {{128, 16, 32, 32}, {128, 128, 32, 32}};

std::string size_label(const Shape& s) {
  return fmt::format("{}MiB", shape_numel(s) * static_cast<std::int64_t>(sizeof(float)) >> 20);
}

void set_rate(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] =
      benchmark::Counter(bytes_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

struct Data {
  Tensor x, out, lo, hi;
  explicit Data(const Shape& s) {
    Rng rng(0);
    x = randn(s, rng);
    out = Tensor::empty(s);
    out.fill(0.0f);  // touch the pages once, outside the timing
    std::tie(lo, hi) = ops::channel_min_max(x);
  }
};

void BM_Memcpy(benchmark::State& state, Shape s) {
  Data d(s);
  for (auto _ : state) {
    std::memcpy(d.out.raw_data(), d.x.raw_data(), d.x.nbytes());
    benchmark::ClobberMemory();
  }
  set_rate(state, 2.0 * static_cast<double>(d.x.nbytes()));
}

void BM_OmpCopy(benchmark::State& state, Shape s) {
  Data d(s);
  const float* __restrict src = d.x.f32();
  float* __restrict dst = d.out.f32();
  const std::int64_t n = d.x.numel();
  for (auto _ : state) {
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
    benchmark::ClobberMemory();
  }
  set_rate(state, 2.0 * static_cast<double>(d.x.nbytes()));
}

void BM_FakeQuantKernel(benchmark::State& state, Shape s, bool per_channel) {
  Data d(s);
  const auto channels = per_channel ? s[0] : 1;
  std::vector<float> delta, qmin, qmax;
  const auto lo = d.lo.to_vector(), hi = d.hi.to_vector();
  for (std::int64_t c = 0; c < channels; ++c) {
    const auto g = per_channel ? ops::fake_quant_grid(lo[static_cast<std::size_t>(c)],
                                                      hi[static_cast<std::size_t>(c)], {.bits = 4})
                               : ops::fake_quant_grid(-2.0f, 2.0f, {.bits = 4});
    delta.push_back(g.delta);
    qmin.push_back(g.qmin);
    qmax.push_back(g.qmax);
  }
  for (auto _ : state) {
    ops::avx512::fake_quant(d.x.f32(), d.out.f32(), channels, d.x.numel() / channels, delta.data(),
                            qmin.data(), qmax.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, 2.0 * static_cast<double>(d.x.nbytes()));
}

// mode 0: per tensor, 1: per channel with given ranges, 2: per channel min/max of x itself.
void BM_FakeQuant(benchmark::State& state, Shape s, int mode) {
  Data d(s);
  NoGrad no_grad;
  const ops::FakeQuantSpec spec{.bits = 4};
  for (auto _ : state) {
    Tensor y = mode == 0   ? ops::fake_quant_per_tensor(d.x, -2.0f, 2.0f, spec)
               : mode == 1 ? ops::fake_quant_per_channel(d.x, d.lo, d.hi, spec)
                           : ops::fake_quant_per_channel_minmax(d.x, spec);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_rate(state, 2.0 * static_cast<double>(d.x.nbytes()));
}

void BM_ChannelMinMax(benchmark::State& state, Shape s) {
  Data d(s);
  for (auto _ : state) {
    auto mm = ops::channel_min_max(d.x);
    benchmark::DoNotOptimize(mm.first.raw_data());
  }
  set_rate(state, static_cast<double>(d.x.nbytes()));
}

[[maybe_unused]] const bool registered = [] {
  for (const auto& s : kShapes) {
    const auto size = size_label(s);
    auto reg = [&](const std::string& name, auto fn, auto... args) {
      benchmark::RegisterBenchmark(fmt::format("{}/{}", name, size).c_str(), fn, s, args...)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    };
    reg("BM_Memcpy", BM_Memcpy);
    reg("BM_OmpCopy", BM_OmpCopy);
    reg("BM_FakeQuantKernel/per_tensor", BM_FakeQuantKernel, false);
    reg("BM_FakeQuantKernel/per_channel", BM_FakeQuantKernel, true);
    reg("BM_FakeQuant/per_tensor", BM_FakeQuant, 0);
    reg("BM_FakeQuant/per_channel", BM_FakeQuant, 1);
    reg("BM_FakeQuant/minmax", BM_FakeQuant, 2);
    reg("BM_ChannelMinMax", BM_ChannelMinMax);
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
