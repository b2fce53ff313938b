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

// Names accepted by the methods' `augment` option: "none", "flip_shift", "mixup" or
// "flip_shift+mixup" (mirror and shift first, then blend).
void check_augment_name(const char* method, const std::string& name);
// The name and the `mixup_fraction` option (in [0, 1]) together, as a method's constructor checks them.
void check_augment_options(const char* method, const std::string& name, float mixup_fraction);
bool augment_flips_and_shifts(const std::string& name);
bool augment_mixes(const std::string& name);

// Each image of `images` [N, C, H, W] is mirrored left-right with probability 1/2 and shifted by
// (dy, dx) drawn uniformly from [-max_shift, max_shift]; pixels shifted in from outside repeat the
// nearest edge pixel (the generators' images have no known background value). Returns a new tensor on
// the input's device (the work is done on the host; no autograd history). max_shift 0 with no flip
// returns a copy. Draws 3 numbers from `rng` per image.
Tensor flip_shift(const Tensor& images, std::int64_t max_shift, Rng& rng);

// Mixup between synthetic images (MixMix, Li et al. 2021; Qimera's boundary samples, Choi et al. 2021, do
// the same in the generator's label space): with probability `fraction` an image becomes
// lambda * itself + (1 - lambda) * another image of the batch (uniform partner != itself, lambda uniform
// in [0, 1)); the others are copied. The teacher labels the blends, so the student sees the region between
// the generator's class-typical images, where the decision boundaries lie, with exact targets. Draws 3
// numbers from `rng` per image whatever is decided; a batch of one image is copied.
Tensor mix_pairs(const Tensor& images, float fraction, Rng& rng);

}  // namespace zsq::quant
