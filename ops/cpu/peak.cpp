// Peak micro-benchmarks: kChains independent accumulator chains per thread, all in registers, so the
// rate is bound by the FMA / VNNI pipes and not by latency (4-5 cycles x 2 pipes needs >= 10 chains).
// A short calibration run sizes the loop to the requested duration; the median of the repeats is
// returned so one preempted repeat on a busy machine does not set the figure.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 intrinsics headers, see fake_quant_avx512.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "ops/cpu/peak.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "engine/check.h"

#include "ops/cpu/gemm_int4.h"

// x86-64-v4 has no VNNI; the VNNI loop is compiled for it and only run where the CPU has it.
#pragma GCC push_options
#pragma GCC target("avx512vnni")

namespace zsq::ops::cpu {
namespace {

constexpr int kChains = 16;
constexpr std::int64_t kBlock = 1 << 14;  // loop iterations between clock checks (kChains ops each)

// The timed loops are inline assembly: with intrinsics on an array of accumulators GCC keeps the array
// on the stack and the loop measures store forwarding instead of the arithmetic. zmm0-15 are the chains;
// the compiler places the two inputs elsewhere.
#define ZSQ_X16(insn)                                                                      \
  insn " %2, %1, %%zmm0\n\t" insn " %2, %1, %%zmm1\n\t" insn " %2, %1, %%zmm2\n\t" insn    \
       " %2, %1, %%zmm3\n\t" insn " %2, %1, %%zmm4\n\t" insn " %2, %1, %%zmm5\n\t" insn    \
       " %2, %1, %%zmm6\n\t" insn " %2, %1, %%zmm7\n\t" insn " %2, %1, %%zmm8\n\t" insn    \
       " %2, %1, %%zmm9\n\t" insn " %2, %1, %%zmm10\n\t" insn " %2, %1, %%zmm11\n\t" insn  \
       " %2, %1, %%zmm12\n\t" insn " %2, %1, %%zmm13\n\t" insn " %2, %1, %%zmm14\n\t" insn \
       " %2, %1, %%zmm15\n\t"
#define ZSQ_CHAINS_CLOBBER                                                                                   \
  "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", \
      "zmm13", "zmm14", "zmm15", "cc"

// zmm_i += x * y, 16 lanes, kChains chains: 32 flops per instruction. Small inputs keep the sums normal.
std::int64_t fma_block(std::int64_t iters) {
  const __m512 x = _mm512_set1_ps(1e-3f), y = _mm512_set1_ps(1e-3f);
  std::int64_t n = iters;
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovaps %%zmm0, %%zmm1\n\tvmovaps %%zmm0, %%zmm2\n\tvmovaps %%zmm0, %%zmm3\n\t"
      "vmovaps %%zmm0, %%zmm4\n\tvmovaps %%zmm0, %%zmm5\n\tvmovaps %%zmm0, %%zmm6\n\t"
      "vmovaps %%zmm0, %%zmm7\n\tvmovaps %%zmm0, %%zmm8\n\tvmovaps %%zmm0, %%zmm9\n\t"
      "vmovaps %%zmm0, %%zmm10\n\tvmovaps %%zmm0, %%zmm11\n\tvmovaps %%zmm0, %%zmm12\n\t"
      "vmovaps %%zmm0, %%zmm13\n\tvmovaps %%zmm0, %%zmm14\n\tvmovaps %%zmm0, %%zmm15\n\t"
      "1:\n\t" ZSQ_X16("vfmadd231ps") "dec %0\n\tjnz 1b\n\t"
      : "+r"(n)
      : "v"(x), "v"(y)
      : ZSQ_CHAINS_CLOBBER);
  return iters * kChains * 2 * 16;  // flops
}

// zmm_i += u8(x) . s8(y) in groups of 4: 64 multiply-adds = 128 ops per instruction.
std::int64_t vnni_block(std::int64_t iters) {
  const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-5);
  std::int64_t n = iters;
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\tvmovdqa64 %%zmm0, %%zmm2\n\tvmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\tvmovdqa64 %%zmm0, %%zmm5\n\tvmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\tvmovdqa64 %%zmm0, %%zmm8\n\tvmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\tvmovdqa64 %%zmm0, %%zmm11\n\tvmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\tvmovdqa64 %%zmm0, %%zmm14\n\tvmovdqa64 %%zmm0, %%zmm15\n\t"
      "1:\n\t" ZSQ_X16("vpdpbusd") "dec %0\n\tjnz 1b\n\t"
      : "+r"(n)
      : "v"(x), "v"(y)
      : ZSQ_CHAINS_CLOBBER);
  return iters * kChains * 64 * 2;  // ops
}

#undef ZSQ_X16
#undef ZSQ_CHAINS_CLOBBER

// Ops per second of `block` run by every thread for `blocks` blocks of kBlock iterations: the sum of
// the threads' own rates, each timed by itself, so a thread that another process delays (a busy
// machine) lowers only its own share instead of stretching everyone's time to the slowest thread.
double rate(std::int64_t (*block)(std::int64_t), std::int64_t blocks) {
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  {
    std::int64_t ops = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::int64_t b = 0; b < blocks; ++b) ops += block(kBlock);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    total += static_cast<double>(ops) / s;
  }
  return total;
}

// ops_per_iter: what one loop iteration of `block` counts (all chains).
double measure(std::int64_t (*block)(std::int64_t), double ops_per_iter, double seconds, int repeats) {
  ZSQ_CHECK(seconds > 0 && repeats >= 1, "peak: need seconds > 0 and repeats >= 1, got {} and {}", seconds,
            repeats);
  rate(block, 4);  // wake the threads and the wide units
  // Calibrate: ops per block per thread over the measured rate gives seconds per block.
  const double threads = omp_get_max_threads();
  const double per_block = ops_per_iter * static_cast<double>(kBlock);
  const double probe = rate(block, 16);
  const auto blocks =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(seconds * probe / (per_block * threads)));
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) rates.push_back(rate(block, blocks));
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2] * 1e-9;
}

}  // namespace

double measure_fma_peak_gflops(double seconds, int repeats) {
  return measure(fma_block, kChains * 32.0, seconds, repeats);
}

double measure_vnni_peak_gops(double seconds, int repeats) {
  ZSQ_CHECK(has_avx512_vnni(), "VNNI peak: this CPU has no AVX-512 VNNI (vpdpbusd)");
  return measure(vnni_block, kChains * 128.0, seconds, repeats);
}

}  // namespace zsq::ops::cpu

#pragma GCC pop_options
