#include "quant/methods/sample_augment.h"

#include <algorithm>

#include "engine/check.h"

namespace zsq::quant {

void check_augment_name(const char* method, const std::string& name) {
  ZSQ_CHECK(name == "none" || name == "flip_shift" || name == "mixup" || name == "flip_shift+mixup",
            "{}: augment must be none, flip_shift, mixup or flip_shift+mixup, got '{}'", method, name);
}

void check_augment_options(const char* method, const std::string& name, float mixup_fraction) {
  check_augment_name(method, name);
  ZSQ_CHECK(mixup_fraction >= 0.0f && mixup_fraction <= 1.0f, "{}: mixup_fraction must be in [0, 1], got {}",
            method, mixup_fraction);
}

bool augment_flips_and_shifts(const std::string& name) {
  return name == "flip_shift" || name == "flip_shift+mixup";
}

bool augment_mixes(const std::string& name) {
  return name == "mixup" || name == "flip_shift+mixup";
}

Tensor flip_shift(const Tensor& images, std::int64_t max_shift, Rng& rng) {
  ZSQ_CHECK(images.dim() == 4, "flip_shift: images must be [N, C, H, W], got {}", images.str());
  ZSQ_CHECK(max_shift >= 0 && max_shift < images.size(2) && max_shift < images.size(3),
            "flip_shift: max_shift must be in [0, image size), got {} for {}", max_shift, images.str());
  const Tensor source = images.to_format(MemoryFormat::contiguous).to(Device::cpu());
  const auto N = source.size(0), C = source.size(1), H = source.size(2), W = source.size(3);
  Tensor out = Tensor::empty(source.shape());
  const float* src = source.f32();
  float* dst = out.f32();
  const auto span = static_cast<std::uint64_t>(2 * max_shift + 1);
  for (std::int64_t n = 0; n < N; ++n) {
    const bool flip = rng.below(2) == 1;
    const auto dy = static_cast<std::int64_t>(rng.below(span)) - max_shift;
    const auto dx = static_cast<std::int64_t>(rng.below(span)) - max_shift;
    for (std::int64_t c = 0; c < C; ++c) {
      const float* plane = src + (n * C + c) * H * W;
      float* out_plane = dst + (n * C + c) * H * W;
      for (std::int64_t y = 0; y < H; ++y) {
        const auto sy = std::clamp<std::int64_t>(y - dy, 0, H - 1);
        for (std::int64_t x = 0; x < W; ++x) {
          const auto mirrored = flip ? W - 1 - x : x;
          const auto sx = std::clamp<std::int64_t>(mirrored - dx, 0, W - 1);
          out_plane[y * W + x] = plane[sy * W + sx];
        }
      }
    }
  }
  return out.to(images.device());
}

Tensor mix_pairs(const Tensor& images, float fraction, Rng& rng) {
  ZSQ_CHECK(images.dim() >= 2, "mix_pairs: images must be batched [N, ...], got {}", images.str());
  ZSQ_CHECK(fraction >= 0.0f && fraction <= 1.0f, "mix_pairs: fraction must be in [0, 1], got {}", fraction);
  const Tensor source = images.to_format(MemoryFormat::contiguous).to(Device::cpu());
  const auto N = source.size(0);
  const auto per_image = source.numel() / N;
  Tensor out = Tensor::empty(source.shape());
  const float* src = source.f32();
  float* dst = out.f32();
  for (std::int64_t n = 0; n < N; ++n) {
    const bool blend = rng.uniform() < fraction;
    // A partner among the other N - 1 images: draw in [0, N - 1) and skip n.
    auto partner =
        static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(std::max<std::int64_t>(N - 1, 1))));
    if (partner >= n) ++partner;
    const float lambda = rng.uniform();
    const float* own = src + n * per_image;
    float* mixed = dst + n * per_image;
    if (!blend || N == 1) {
      std::copy(own, own + per_image, mixed);
      continue;
    }
    const float* other = src + partner * per_image;
    for (std::int64_t i = 0; i < per_image; ++i) mixed[i] = lambda * own[i] + (1.0f - lambda) * other[i];
  }
  return out.to(images.device());
}

}  // namespace zsq::quant
