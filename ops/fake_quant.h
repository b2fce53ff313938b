// Fake quantization (ALGORITHMS.md §0 "Quantizer"): round to a uniform k-bit grid and return floats.
//
// Asymmetric grid (the ZeroQ/GDFQ/ZAQ quantizer), k bits on range [lo, hi]:
//   L = 2^k - 1, delta = max(hi - lo, 1e-8) / L, zero = round(lo / delta)
//   q = clamp(round(x / delta), zero, zero + L),  out = q * delta
// The grid points are integer multiples of delta, so the endpoints zero*delta and (zero+L)*delta are
// within delta/2 of lo and hi but in general not equal to them. An unsigned post-ReLU quantizer is
// this grid with lo = 0 (zero = 0, q in [0, L]).
// Symmetric grid (signed weights of the "deploy" convention), k bits on [lo, hi]:
//   Lh = 2^(k-1) - 1, delta = max(|lo|, |hi|, 1e-8) / Lh, q = clamp(round(x / delta), -Lh, Lh).
//
// Rounding: round() is round-half-to-even (std::nearbyint in the default rounding mode; AVX-512
// _mm512_roundscale_ps with _MM_FROUND_TO_NEAREST_INT), so 1.5 -> 2 and 2.5 -> 2. PyTorch's
// torch.round, which the reference code uses, rounds half to even as well.
// Exactness: the grid (delta, q range) is computed once per range by fake_quant_grid() (double math
// for hi - lo and the division by L, then rounded to f32). The per-element math is f32 and identical in
// the reference and the AVX-512 path: an IEEE division x / delta (not a multiply by 1/delta), rounding,
// clamp, one multiply. The two paths therefore agree bit for bit (NaN inputs stay NaN in both).
//
// Layout: x may be any f32 tensor (CPU or CUDA); a 4-D x may be contiguous or channels-last. Per-channel
// quantization is along dim 0 (a conv weight's output channel, a linear weight's row). In both 4-D
// formats dim 0 is outermost, so each channel is one contiguous block of memory. Outputs take x's format.
//
// Backward: straight-through. The default passes the upstream gradient unchanged (§0). With
// clipped_ste, the gradient is zeroed where x lies outside the representable range
// [qmin*delta, qmax*delta] (the grid endpoints, not [lo, hi]). No gradient flows to lo or hi.
//
// CUDA: every op here runs on a CUDA x (range tensors on the same device; inputs on different devices are
// refused), with outputs bit-identical to the CPU's and no host synchronization: ranges held in tensors
// are turned into grids on the device (ops/cuda/fake_quant.h). A range the CPU path refuses with an
// exception therefore gives NaN outputs on the GPU instead (see ops/cuda/fake_quant.h).
#pragma once
#include <cstdint>
#include <utility>

#include "engine/tensor.h"

namespace zsq::ops {

struct FakeQuantSpec {
  int bits = 8;            // 2..16
  bool symmetric = false;  // signed grid [-(2^(k-1)-1), 2^(k-1)-1]; otherwise the asymmetric §0 grid
  bool clipped_ste = false;
};

constexpr int kFakeQuantMinBits = 2;
constexpr int kFakeQuantMaxBits = 16;

// One range's grid: out = clamp(round(x / delta), qmin, qmax) * delta, with qmin, qmax integers in f32.
struct FakeQuantGrid {
  float delta = 1.0f;
  float qmin = 0.0f;
  float qmax = 0.0f;
  float lo_edge() const { return qmin * delta; }  // the smallest output (clipped-STE lower bound)
  float hi_edge() const { return qmax * delta; }  // the largest output
};

// The number of grid steps: 2^bits - 1 (asymmetric) or 2^(bits-1) - 1 (symmetric), after checking bits.
double fake_quant_levels(const FakeQuantSpec& spec);

// The single definition of the grid both paths use. Validates bits and lo <= hi (finite); throws when
// the grid is not representable in f32 (|lo| / delta overflows, e.g. a degenerate range far from 0).
FakeQuantGrid fake_quant_grid(float lo, float hi, const FakeQuantSpec& spec);

// Differentiable front functions (validation, AVX-512 fast path, autograd node).
Tensor fake_quant_per_tensor(const Tensor& x, float lo, float hi, const FakeQuantSpec& spec);
// lo, hi: f32 [x.size(0)]; channel i is x[i, ...].
Tensor fake_quant_per_channel(const Tensor& x, const Tensor& lo, const Tensor& hi, const FakeQuantSpec& spec);
// Ranges are the per-channel min and max of w itself, recomputed on every call (the §0 weight
// convention). Gradient: straight-through to w only.
Tensor fake_quant_per_channel_minmax(const Tensor& w, const FakeQuantSpec& spec);
// Learned range (LSQ, Esser et al. 2020, with the step tied to the range): the unsigned grid on [0, hi]
// where hi is an f32 [1] tensor that may require a gradient. Forward: bit for bit
// fake_quant_per_tensor(x, 0, hi, {bits}), so a learned range exports like an observed one.
// Backward, with delta = hi / L (L = 2^bits - 1) and v = x / delta:
//   dx  = g where 0 <= v <= L, else 0 (clipped straight-through: what falls outside is hi's business)
//   dhi = sum(g * c) / L, c = round(v) - v inside, L above the grid, 0 below
// (no LSQ gradient scale: the range's optimizer is Adam, which does not see the scale).
Tensor fake_quant_learned_range(const Tensor& x, const Tensor& hi, int bits);
// Learned per-channel clip ratios (LSQ on weights): channel c is quantized on [r_c * min_c, r_c * max_c]
// (min/max of w's channel, recomputed on every call like fake_quant_per_channel_minmax; symmetric grids:
// r_c * max|w_c|), ratio f32 [w.size(0)], every r_c > 0. Forward: fake_quant_per_channel(w, lo, hi,
// spec) with lo, hi = ratio_channel_ranges(w, ratio). Backward (the grid's zero point does not depend
// on r, so it is held fixed), with delta_c the channel's grid step and v = w / delta_c:
//   dw   = g where qmin <= v <= qmax, else 0 (clipped: a clipped weight is the ratio's business)
//   dr_c = sum over the channel of g * c * delta_c / r_c, c = round(v) - v inside, qmin below, qmax above.
Tensor fake_quant_per_channel_ratio(const Tensor& w, const Tensor& ratio, const FakeQuantSpec& spec);
// The ranges fake_quant_per_channel_ratio uses: lo_c = r_c * min_c, hi_c = r_c * max_c (f32 products),
// f32 [w.size(0)] each, no autograd. Export calls this to quantize to the student's grid exactly.
std::pair<Tensor, Tensor> ratio_channel_ranges(const Tensor& w, const Tensor& ratio);
// Per-dim-0 min and max of w (f32 [w.size(0)] each, no autograd). -0.0 is reported as +0.0.
std::pair<Tensor, Tensor> channel_min_max(const Tensor& w);

// Naive loops over logical values (the test oracle), in ops/cpu/ref_fake_quant.cpp. No autograd.
namespace ref {
Tensor fake_quant_per_tensor(const Tensor& x, float lo, float hi, const FakeQuantSpec& spec);
Tensor fake_quant_per_channel(const Tensor& x, const Tensor& lo, const Tensor& hi, const FakeQuantSpec& spec);
Tensor fake_quant_per_channel_minmax(const Tensor& w, const FakeQuantSpec& spec);
std::pair<Tensor, Tensor> channel_min_max(const Tensor& w);
// Gradient of the clipped STE: g where lo_edge <= x <= hi_edge of x's channel, else 0. lo/hi as above
// (per-tensor: pass 1-element tensors; they are broadcast).
Tensor fake_quant_clipped_ste_backward(const Tensor& grad_out, const Tensor& x, const Tensor& lo,
                                       const Tensor& hi, const FakeQuantSpec& spec);
}  // namespace ref

// Raw AVX-512 kernels (ops/cpu/fake_quant_avx512.cpp) over `channels` contiguous blocks of `inner`
// floats; parameter arrays have one entry per channel. OpenMP-parallel above kParallelThreshold.
namespace avx512 {
void fake_quant(const float* x, float* out, std::int64_t channels, std::int64_t inner, const float* delta,
                const float* qmin, const float* qmax);
// out = (lo_edge[c] <= x <= hi_edge[c]) ? g : 0.
void clipped_ste_backward(const float* g, const float* x, float* out, std::int64_t channels,
                          std::int64_t inner, const float* lo_edge, const float* hi_edge);
void channel_min_max(const float* w, std::int64_t channels, std::int64_t inner, float* mn, float* mx);
}  // namespace avx512

}  // namespace zsq::ops
