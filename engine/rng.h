// One seeded random source. Every random draw in zsq (initialization, augmentation, noise, labels)
// comes from an Rng derived from the run's --seed, so runs with the same seed and thread count are
// bit-identical. Draws happen on the calling thread only.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace zsq {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) { reseed(seed); }
  void reseed(std::uint64_t seed);
  std::uint64_t next_u64();  // xoshiro256**
  // Uniform in [0, 1).
  float uniform();
  // Uniform integer in [0, n).
  std::uint64_t below(std::uint64_t n);
  // Standard normal (Box-Muller, no cached second value so the stream is simple to reason about).
  float normal();
  // An independent generator for a named purpose ("augment", "init", ...), reproducible from the seed.
  Rng fork(std::uint64_t stream_id);

 private:
  std::uint64_t s_[4];
};

// The process-wide generator, seeded by the CLI's --seed (default 0).
Rng& global_rng();

Tensor randn(const Shape& shape, Rng& rng, float mean = 0.0f, float stddev = 1.0f);
Tensor rand_uniform(const Shape& shape, Rng& rng, float low = 0.0f, float high = 1.0f);

}  // namespace zsq
