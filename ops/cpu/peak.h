// Measured compute peaks of this machine, to put kernel throughputs in scale: the AVX-512 f32 FMA rate
// and the VNNI int8 (vpdpbusd) rate, both on all OpenMP threads (omp_get_max_threads()).
#pragma once

namespace zsq::ops::cpu {

// f32 GFLOP/s of vfmadd231ps zmm (2 flops x 16 lanes per instruction) on independent register chains.
// Each repeat runs for about `seconds`; the median of `repeats` rates is returned.
double measure_fma_peak_gflops(double seconds = 0.2, int repeats = 3);

// int8 GOP/s of vpdpbusd zmm (64 multiply-adds = 128 ops per instruction), same method.
double measure_vnni_peak_gops(double seconds = 0.2, int repeats = 3);

}  // namespace zsq::ops::cpu
