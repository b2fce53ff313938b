#include "engine/rng.h"

#include <cmath>

namespace zsq {

namespace {
std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
std::uint64_t rotl(std::uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}
}  // namespace

void Rng::reseed(std::uint64_t seed) {
  std::uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

std::uint64_t Rng::next_u64() {
  const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

float Rng::uniform() {
  return static_cast<float>(next_u64() >> 40) * 0x1.0p-24f;
}

std::uint64_t Rng::below(std::uint64_t n) {
  ZSQ_CHECK(n > 0, "Rng::below(0)");
  // Rejection sampling keeps the draw exactly uniform.
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  std::uint64_t r = next_u64();
  while (r >= limit) r = next_u64();
  return r % n;
}

float Rng::normal() {
  double u1 = (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53;
  double u2 = static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

Rng Rng::fork(std::uint64_t stream_id) {
  std::uint64_t x = next_u64() ^ (stream_id * 0xd1b54a32d192ed03ULL);
  return Rng(splitmix64(x));
}

Rng& global_rng() {
  static Rng rng(0);
  return rng;
}

Tensor randn(const Shape& shape, Rng& rng, float mean, float stddev) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = mean + stddev * rng.normal();
  return t;
}

Tensor rand_uniform(const Shape& shape, Rng& rng, float low, float high) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = low + (high - low) * rng.uniform();
  return t;
}

}  // namespace zsq
