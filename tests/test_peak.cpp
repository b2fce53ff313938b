// The peak micro-benchmarks return finite positive rates (never asserting a speed).
#include <doctest/doctest.h>

#include <cmath>

#include "engine/check.h"
#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/peak.h"

using namespace zsq;

TEST_CASE("FMA and VNNI peaks are finite and positive") {
  const double fma = ops::cpu::measure_fma_peak_gflops(0.02, 3);
  CHECK(std::isfinite(fma));
  CHECK(fma > 0.0);
  if (ops::cpu::has_avx512_vnni()) {
    const double vnni = ops::cpu::measure_vnni_peak_gops(0.02, 1);
    CHECK(std::isfinite(vnni));
    CHECK(vnni > 0.0);
    MESSAGE("FMA " << fma << " GFLOP/s, VNNI " << vnni << " GOP/s");
  } else {
    CHECK_THROWS_AS(ops::cpu::measure_vnni_peak_gops(0.02, 1), Error);
  }
  CHECK_THROWS_AS(ops::cpu::measure_fma_peak_gflops(0.0, 1), Error);
  CHECK_THROWS_AS(ops::cpu::measure_fma_peak_gflops(0.1, 0), Error);
}
