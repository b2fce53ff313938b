// Label-preserving augmentation of synthetic student batches ([I] option, not in the GDFQ or ZAQ
// references). The teachers were trained with random 2-pixel shifts and horizontal flips, so they are
// (nearly) invariant to them; applying the same transforms to the generator's images before the student
// step shows the student each image's neighbourhood, where the teacher's answer is known, instead of one
// point of it. The teacher's logits are taken on the augmented images, so the KD target stays exact.
#pragma once
#include <cstdint>
#include <string>

#include "engine/rng.h"
#include "engine/tensor.h"

namespace zsq::quant {

// Names accepted by the methods' `augment` option: "none" or "flip_shift".
void check_augment_name(const char* method, const std::string& name);

// Each image of `images` [N, C, H, W] is mirrored left-right with probability 1/2 and shifted by
// (dy, dx) drawn uniformly from [-max_shift, max_shift]; pixels shifted in from outside repeat the
// nearest edge pixel (the generators' images have no known background value). Returns a new tensor on
// the input's device (the work is done on the host; no autograd history). max_shift 0 with no flip
// returns a copy. Draws 3 numbers from `rng` per image.
Tensor flip_shift(const Tensor& images, std::int64_t max_shift, Rng& rng);

}  // namespace zsq::quant
