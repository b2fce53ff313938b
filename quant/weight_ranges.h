// Per-channel weight ranges for fake quantization (QConfig::weight_observer).
//
//   minmax  each output channel's own [min, max] (ALGORITHMS.md §0: what GDFQ/ZAQ do).
//   mse     the channel's [r * min, r * max] (symmetric grids: r * max|w|) with the clip ratio r that
//           minimizes that channel's squared quantization error, r from `candidates` evenly spaced
//           ratios in [min_ratio, 1] (the activation mse observer's grid). At 3-4 bits one outlier
//           per channel otherwise spends most of the 7-15 levels on values that are almost never there.
//
// Both are recomputed from the weights on every call (no state), so fine-tuning moves the ranges
// with the weights, a saved student re-quantizes to the same values, and export uses the same ranges.
// The error of every candidate is computed with the exact per-element math of fake_quant (f32 division,
// round half to even, clamp, multiply); ties go to the larger ratio, as in the activation observer.
#pragma once
#include <utility>

#include "engine/tensor.h"
#include "ops/fake_quant.h"
#include "quant/qconfig.h"

namespace zsq::quant {

struct WeightClipSearch {
  int candidates = 100;
  float min_ratio = 0.3f;
};

// lo, hi: f32 [w.size(0)] on w's device, no autograd; channel i is w[i, ...] (any 2-D or 4-D layout).
// On a GPU, a channel the CPU path refuses with an error (a non-finite weight) gets NaN ranges instead
// (no per-forward read-back), and a near-tie between two ratios may resolve the other way.
std::pair<Tensor, Tensor> mse_channel_ranges(const Tensor& w, const ops::FakeQuantSpec& spec,
                                             const WeightClipSearch& search);

// The ranges `config` asks for (minmax or mse) for a per-channel quantized weight.
std::pair<Tensor, Tensor> weight_channel_ranges(const Tensor& w, const ops::FakeQuantSpec& spec,
                                                const QConfig& config);

}  // namespace zsq::quant
