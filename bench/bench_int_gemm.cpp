// Integer GEMM throughput: the own int4-weight kernel against oneDNN's u8s8s32 matmul, same shapes.
//   BM_Int4/M/K/N      gemm_u8s4s32 (weights 4-bit in memory: K * N / 2 bytes)
//   BM_Int8/M/K/N      oneDNN matmul u8 x s8 -> s32 (weights K * N bytes, reordered once)
// Shapes: M in {1, 4, 16} with K = N = 8192 (weights of 32 / 64 MiB, larger than L3: memory-bound, where
// int4 should win by reading half the bytes), and 1024^3 (compute-bound).
// Counters: GOP/s (2 ops per multiply-add) and weight GB/s (weight bytes read per call over time).
// Run: ./build/bench/bench_int_gemm --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <vector>

#include "engine/rng.h"
#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/matmul_int8_dnnl.h"

using namespace zsq;

namespace {

struct Problem {
  std::int64_t m, k, n;
  std::vector<std::uint8_t> a;
  std::vector<std::int8_t> w;
  std::vector<std::int32_t> c;
  Problem(std::int64_t m_, std::int64_t k_, std::int64_t n_) : m(m_), k(k_), n(n_) {
    Rng rng(0);
    a.resize(static_cast<std::size_t>(m * k));
    w.resize(static_cast<std::size_t>(n * k));
    c.resize(static_cast<std::size_t>(m * n));
    for (auto& x : a) x = static_cast<std::uint8_t>(rng.below(256));
    for (auto& x : w) x = static_cast<std::int8_t>(static_cast<int>(rng.below(16)) - 8);
  }
};

void set_counters(benchmark::State& state, const Problem& p, double weight_bytes) {
  state.counters["GOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(p.m * p.k * p.n),
                         benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["wGB/s"] = benchmark::Counter(weight_bytes, benchmark::Counter::kIsIterationInvariantRate,
                                               benchmark::Counter::kIs1000);
}

void BM_Int4(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const auto packed = ops::cpu::pack_int4_weights(p.w.data(), p.n, p.k, p.k);
  for (auto _ : state) {
    ops::cpu::gemm_u8s4s32(p.a.data(), p.m, p.k, packed, p.c.data(), p.n);
    benchmark::ClobberMemory();
  }
  set_counters(state, p, static_cast<double>(packed.bytes()));
  state.SetLabel(ops::cpu::kInt4KernelName);
}

void BM_Int8(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const auto packed = ops::cpu::pack_int8_matmul_weights(p.w.data(), p.n, p.k, p.k);
  for (auto _ : state) {
    ops::cpu::matmul_u8s8s32(p.a.data(), p.m, p.k, packed, p.c.data(), p.n);
    benchmark::ClobberMemory();
  }
  set_counters(state, p, static_cast<double>(p.k * p.n));
  state.SetLabel(ops::cpu::matmul_int8_impl_info(p.m, p.k, packed, false));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t m : {1, 4, 16}) b->Args({m, 8192, 8192});
  b->Args({1024, 1024, 1024});
}

}  // namespace

BENCHMARK(BM_Int4)->Apply(shapes)->ArgNames({"M", "K", "N"})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Int8)->Apply(shapes)->ArgNames({"M", "K", "N"})->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
