// Launchers for the fake-quantization kernels (ops/cuda/fake_quant.cu), called by the fronts in
// ops/fake_quant.cpp and ops/fake_quant_learned.cpp. Plain C++ (no CUDA types); every pointer is a device
// pointer and every launch is queued on zsq's stream without a host synchronization.
//
// Memory is seen as `channels` contiguous blocks of `inner` floats, as in the AVX-512 kernels: dim 0 is
// outermost in both 4-D formats, so a per-channel call splits dim 0 and a per-tensor call is one block.
//
// Grids live on the device as a table of 3 * channels floats (delta[0..C), qmin[C..2C), qmax[2C..3C)),
// computed there from ranges that are themselves on the device (a channel's min/max, a learned range),
// so no range is read back to the host. The per-element and per-grid arithmetic is the CPU's
// (ops/fake_quant.cpp: fake_quant_grid; ops/cpu/fake_quant_avx512.cpp), with explicitly rounded
// intrinsics so nvcc contracts nothing into an FMA: the outputs are bit-identical to the CPU path.
//
// One difference from the CPU: a range the CPU refuses with an exception (lo > hi, a non-finite bound, a
// ratio <= 0, a learned hi <= 0, a grid that does not fit f32) cannot throw here without reading the
// range back (a synchronization every step). Such a channel gets a NaN grid instead, so its outputs are
// NaN and its clipped-STE gradient is 0: the failure stays visible in the loss.
#pragma once
#include <cstdint>

namespace zsq::cuda {

// A grid for the element kernels: the device table (per channel) or, when table is null, one grid
// given by value (per tensor, computed on the host by ops::fake_quant_grid).
struct FakeQuantGridArg {
  const float* table = nullptr;
  float delta = 1.0f, qmin = 0.0f, qmax = 0.0f;
};

// table <- the grids of [lo[c], hi[c]] (lo may be null: every lo is 0, the learned range's grid).
// `levels` is 2^bits - 1 (asymmetric) or 2^(bits-1) - 1 (symmetric), computed by the caller in double.
void fake_quant_grids(const float* lo, const float* hi, std::int64_t channels, double levels, bool symmetric,
                      float* table);
// lo[c] = mn[c] * ratio[c], hi[c] = mx[c] * ratio[c] (f32 products); NaN for a ratio that is not > 0.
void ratio_ranges(const float* mn, const float* mx, const float* ratio, std::int64_t channels, float* lo,
                  float* hi);
// Per-channel min and max (-0.0 reported as +0.0; 0 for an empty channel).
void channel_min_max(const float* w, std::int64_t channels, std::int64_t inner, float* mn, float* mx);
// out = clamp(round_half_even(x / delta), qmin, qmax) * delta.
void fake_quant_apply(const float* x, float* out, std::int64_t channels, std::int64_t inner,
                      FakeQuantGridArg grid);
// dx = (qmin * delta <= x <= qmax * delta) ? g : 0.
void fake_quant_clipped_ste_backward(const float* g, const float* x, float* dx, std::int64_t channels,
                                     std::int64_t inner, FakeQuantGridArg grid);
// The backward of the learned-range ops (ops/fake_quant.h), v = x / delta per channel:
//   dx = g where qmin <= v <= qmax, else 0 (dx may be null)
//   s_c = sum over the channel of g * k, k = round(v) - v inside, qmin below, qmax above (double sums)
// Learned range (ratio == null, channels == 1): range_grad[0] = s / qmax.
// Per-channel ratio: range_grad[c] = s_c * delta_c / ratio[c]. range_grad may be null (dx only).
void fake_quant_range_backward(const float* g, const float* x, float* dx, std::int64_t channels,
                               std::int64_t inner, const float* table, const float* ratio, float* range_grad);

// quant/weight_ranges.cpp's MSE clip search (mse_channel_ranges) over a row-major w (channel c is
// w[c * inner .. (c + 1) * inner)), given each channel's min mn and max mx: lo/hi of the chosen candidate
// [r * mn, r * mx], r from `candidates` ratios in [min_ratio, 1]. NaN for a channel the CPU refuses (a
// non-finite value, a range without a grid). Sums in double in another order than the CPU's, so a
// near-tie (within ~1e-15 relative) may pick the neighbouring ratio.
void mse_channel_ranges(const float* w, std::int64_t channels, std::int64_t inner, const float* mn,
                        const float* mx, double levels, bool symmetric, int candidates, float min_ratio,
                        float* lo, float* hi);

}  // namespace zsq::cuda
