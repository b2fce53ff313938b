// Softmax attention (ops/attention.h) at ZAQ's spatial-relation shapes, blockwise against materializing
// versions, in one run.
//   BM_AttnBlockwise/fwd, /fwd_bwd   attention_forward (+ attention_backward for q, k, v): never forms N x N
//   BM_AttnMaterialized/fwd, /fwd_bwd  per sample: S = q k^T (oneDNN gemm), zsq's ops::softmax, P v;
//                                   backward with four more gemms and the softmax gradient. The N x N
//                                   matrix is formed, as the PyTorch reference code does.
//   BM_AttnReference/fwd            ops::ref::attention_forward (naive double loops), one sample
// GFLOP/s counts the nominal matrix-product work: forward 4 B N^2 D (S = q k^T and P v), forward +
// backward 14 B N^2 D (the backward's five products, as flash-attention papers count it; the blockwise
// backward does one more for the recomputed S, which is not counted). D = Dv, q = k = v = X^T with
// unit rows and scale 1, as in ZAQ.
// Shapes: B x N x D = 16 x 1024 x 16 and 256 x 1024 x 16 (ZAQ stage 1, 32x32 maps), 16 x 256 x 32 (stage 2).
// Run: ./build/bench/bench_attention --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/rng.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "ops/loss.h"

using namespace zsq;

namespace {

struct Size {
  std::int64_t B, N, D;
};

Tensor unit_rows(const Size& s, std::uint64_t seed) {
  Rng rng(seed);
  Tensor x = randn({s.B, s.N, s.D}, rng);
  float* p = x.f32();
  for (std::int64_t r = 0; r < s.B * s.N; ++r) {
    double n = 0.0;
    for (std::int64_t t = 0; t < s.D; ++t) n += static_cast<double>(p[r * s.D + t]) * p[r * s.D + t];
    for (std::int64_t t = 0; t < s.D; ++t) p[r * s.D + t] = static_cast<float>(p[r * s.D + t] / std::sqrt(n));
  }
  return x;
}

// Sample b of a [B, N, D] tensor as an [N, D] matrix sharing its storage.
Tensor sample(const Tensor& t, std::int64_t b) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->offset_bytes =
      t.impl()->offset_bytes + static_cast<std::size_t>(b * t.size(1) * t.size(2)) * sizeof(float);
  impl->shape = {t.size(1), t.size(2)};
  return Tensor(impl);
}

void set_rate(benchmark::State& state, const Size& s, double flops_per_n2d) {
  const double flops = flops_per_n2d * static_cast<double>(s.B) * static_cast<double>(s.N * s.N * s.D);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["time/sample"] = benchmark::Counter(
      static_cast<double>(s.B), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void BM_Blockwise(benchmark::State& state, Size s, bool with_backward) {
  NoGrad no_grad;
  Tensor x = unit_rows(s, 1);
  Rng rng(2);
  Tensor g = randn({s.B, s.N, s.D}, rng);
  for (auto _ : state) {
    Tensor lse;
    Tensor out = ops::attention_forward(x, x, x, 1.0f, &lse);
    if (with_backward) {
      auto grads = ops::attention_backward(g, x, x, x, out, lse, 1.0f);
      benchmark::DoNotOptimize(grads.dq.raw_data());
    }
    benchmark::DoNotOptimize(out.raw_data());
  }
  set_rate(state, s, with_backward ? 14.0 : 4.0);
}

void BM_Materialized(benchmark::State& state, Size s, bool with_backward) {
  NoGrad no_grad;
  using ops::dnnl_impl::gemm;
  Tensor x = unit_rows(s, 1);
  Rng rng(2);
  Tensor g = randn({s.B, s.N, s.D}, rng);
  for (auto _ : state) {
    for (std::int64_t b = 0; b < s.B; ++b) {
      Tensor xb = sample(x, b);
      Tensor p = ops::softmax(gemm(xb, false, xb, true));  // [N, N]
      Tensor out = gemm(p, false, xb, false);
      benchmark::DoNotOptimize(out.raw_data());
      if (!with_backward) continue;
      Tensor gb = sample(g, b);
      Tensor dv = gemm(p, true, gb, false);
      Tensor ds = gemm(gb, false, xb, true);  // dP, turned into dS in place
      const float* pp = p.f32();
      float* pd = ds.f32();
      const std::int64_t N = s.N;
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < N; ++i) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (std::int64_t j = 0; j < N; ++j) dot += pd[i * N + j] * pp[i * N + j];
#pragma omp simd
        for (std::int64_t j = 0; j < N; ++j) pd[i * N + j] = pp[i * N + j] * (pd[i * N + j] - dot);
      }
      Tensor dq = gemm(ds, false, xb, false);
      Tensor dk = gemm(ds, true, xb, false);
      benchmark::DoNotOptimize(dv.raw_data());
      benchmark::DoNotOptimize(dq.raw_data());
      benchmark::DoNotOptimize(dk.raw_data());
    }
  }
  set_rate(state, s, with_backward ? 14.0 : 4.0);
}

void BM_Reference(benchmark::State& state, Size s) {
  Tensor x = unit_rows(s, 1);
  for (auto _ : state) {
    Tensor out = ops::ref::attention_forward(x, x, x, 1.0f);
    benchmark::DoNotOptimize(out.raw_data());
  }
  set_rate(state, s, 4.0);
}

std::string label(const Size& s) {
  return fmt::format("B{}_N{}_D{}", s.B, s.N, s.D);
}

[[maybe_unused]] const bool registered = [] {
  auto reg = [](const std::string& name, const Size& s, auto fn, auto... args) {
    benchmark::RegisterBenchmark(fmt::format("{}/{}", name, label(s)).c_str(), fn, s, args...)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  };
  for (const Size& s : {Size{16, 1024, 16}, Size{256, 1024, 16}, Size{16, 256, 32}, Size{256, 256, 32}}) {
    reg("BM_AttnBlockwise/fwd", s, BM_Blockwise, false);
    reg("BM_AttnBlockwise/fwd_bwd", s, BM_Blockwise, true);
  }
  for (const Size& s : {Size{16, 1024, 16}, Size{16, 256, 32}}) {
    reg("BM_AttnMaterialized/fwd", s, BM_Materialized, false);
    reg("BM_AttnMaterialized/fwd_bwd", s, BM_Materialized, true);
  }
  for (const Size& s : {Size{1, 1024, 16}, Size{1, 256, 32}}) reg("BM_AttnReference/fwd", s, BM_Reference);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
