// A replay memory of generated images for the adversarial methods ([I] option, not in the ZAQ
// reference). ZAQ's generator keeps moving to where teacher and student disagree most; the student fits
// the new region and forgets the old one: at W3A3 a student lost ~10 points of test accuracy within one
// epoch, whole classes at a time, while its loss on the current samples stayed low (docs/results.md).
// Mixing images the generator produced earlier into every student batch keeps those regions in the
// student's loss. The memory is a reservoir sample (Vitter's algorithm R): every image ever offered has
// the same chance to be held, so it stays a picture of the whole run, not of its last few steps.
#pragma once
#include <cstdint>

#include "engine/checkpoint.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace zsq::quant {

class SampleReplay {
 public:
  // capacity: images held; image_shape: [C, H, W] of one image.
  SampleReplay(std::int64_t capacity, const Shape& image_shape);
  // Offers every image of `batch` [N, C, H, W] to the reservoir (copies; no autograd history kept).
  void add(const Tensor& batch, Rng& rng);
  // n images drawn uniformly with replacement from those held; requires size() > 0.
  Tensor sample(std::int64_t n, Rng& rng) const;
  std::int64_t size() const { return size_; }
  std::int64_t seen() const { return seen_; }
  void save(Checkpoint& checkpoint) const;  // "replay.images" + counts in the metadata
  void load(const Checkpoint& checkpoint);  // errors name the file and what is missing or misshapen

 private:
  std::int64_t capacity_, image_numel_;
  Shape image_shape_;
  Tensor images_;  // [capacity, C, H, W]; the first size_ rows are held images
  std::int64_t size_ = 0, seen_ = 0;
};

// Rows 0..a.size(0) from `a`, then the rows of `b` (both [N, ...] with equal trailing shapes; no grad).
Tensor concat_batches(const Tensor& a, const Tensor& b);
// A copy of rows 0..rows of `a` [N, ...] (contiguous, no grad).
Tensor first_rows(const Tensor& a, std::int64_t rows);

}  // namespace zsq::quant
