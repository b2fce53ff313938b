// Packing of signed 4-bit weights: the interchange form (two values per byte, low nibble first) and the
// kernel form (Int4PackedWeights, see gemm_int4.h for the byte order of one Int4Block).
#include <algorithm>

#include "engine/check.h"
#include "ops/cpu/gemm_int4.h"

namespace zsq::ops::cpu {

namespace {
bool in_int4_range(std::int8_t v) {
  return v >= -8 && v <= 7;
}

std::uint8_t nibble(std::int8_t v) {
  return static_cast<std::uint8_t>(v) & 0x0Fu;
}

// Sign-extends the 4-bit two's complement value in the low bits of x.
std::int8_t from_nibble(unsigned x) {
  const auto v = static_cast<int>(x & 0x0Fu);
  return static_cast<std::int8_t>(v >= 8 ? v - 16 : v);
}

std::int64_t round_up(std::int64_t x, std::int64_t step) {
  return (x + step - 1) / step * step;
}
}  // namespace

std::vector<std::uint8_t> pack_nibbles(std::span<const std::int8_t> values) {
  const auto n = values.size();
  for (std::size_t i = 0; i < n; ++i)
    ZSQ_CHECK(in_int4_range(values[i]),
              "pack_nibbles: value {} at index {} is outside the int4 range [-8, 7]",
              static_cast<int>(values[i]), i);
  std::vector<std::uint8_t> packed((n + 1) / 2, 0);
  for (std::size_t i = 0; i < n; ++i)
    packed[i / 2] |= static_cast<std::uint8_t>(nibble(values[i]) << (i % 2 == 0 ? 0 : 4));
  return packed;
}

std::vector<std::int8_t> unpack_nibbles(std::span<const std::uint8_t> packed, std::int64_t count) {
  ZSQ_CHECK(count >= 0, "unpack_nibbles: negative count {}", count);
  const auto need = static_cast<std::size_t>((count + 1) / 2);
  ZSQ_CHECK(packed.size() >= need, "unpack_nibbles: {} values need {} bytes, got {}", count, need,
            packed.size());
  std::vector<std::int8_t> values(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = from_nibble(i % 2 == 0 ? packed[i / 2] : packed[i / 2] >> 4);
  return values;
}

Int4PackedWeights pack_int4_weights(const std::int8_t* w, std::int64_t n, std::int64_t k, std::int64_t ldw) {
  ZSQ_CHECK(n >= 1 && k >= 1, "pack_int4_weights: need n >= 1 and k >= 1, got n={} k={}", n, k);
  ZSQ_CHECK(ldw >= k, "pack_int4_weights: row stride {} is smaller than k={}", ldw, k);
  // Validate first: the packing loop below runs in an OpenMP region, which must not throw.
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t t = 0; t < k; ++t) {
      const std::int8_t v = w[r * ldw + t];
      ZSQ_CHECK(in_int4_range(v), "pack_int4_weights: W[{}, {}] = {} is outside the int4 range [-8, 7]", r, t,
                static_cast<int>(v));
    }
  Int4PackedWeights p;
  p.n = n;
  p.k = k;
  p.n_pad = round_up(n, kInt4ColBlock);
  p.k_pad = round_up(k, kInt4KStep);
  p.storage = Tensor::zeros({p.bytes()}, DType::u8);  // zero padding: padded weights add nothing
  auto* blocks = reinterpret_cast<Int4Block*>(p.storage.raw_data());
  const std::int64_t steps = p.k_steps(), col_blocks = p.col_blocks();
  auto at = [&](std::int64_t row, std::int64_t col) -> std::uint8_t {
    return row < n && col < k ? nibble(w[row * ldw + col]) : 0;
  };
#pragma omp parallel for schedule(static)
  for (std::int64_t cb = 0; cb < col_blocks; ++cb)
    for (std::int64_t s = 0; s < steps; ++s) {
      Int4Block& b = blocks[cb * steps + s];
      for (std::int64_t i = 0; i < kInt4ColBlock; ++i)
        for (std::int64_t t = 0; t < 4; ++t) {
          const std::int64_t row = cb * kInt4ColBlock + i, col = s * kInt4KStep + t;
          b.bytes[4 * i + t] = static_cast<std::uint8_t>(at(row, col) | (at(row, col + 4) << 4));
        }
    }
  return p;
}

Int4PackedWeights pack_int4_weights_from_nibbles(std::span<const std::uint8_t> nibbles, std::int64_t n,
                                                 std::int64_t k) {
  ZSQ_CHECK(n >= 1 && k >= 1, "pack_int4_weights_from_nibbles: need n >= 1 and k >= 1, got n={} k={}", n, k);
  const auto values = unpack_nibbles(nibbles, n * k);
  return pack_int4_weights(values.data(), n, k, k);
}

std::vector<std::int8_t> unpack_int4_weights(const Int4PackedWeights& w) {
  std::vector<std::int8_t> out(static_cast<std::size_t>(w.n * w.k));
  for (std::int64_t row = 0; row < w.n; ++row) {
    const Int4Block* panel = w.panel(row / kInt4ColBlock);
    const std::int64_t i = row % kInt4ColBlock;
    for (std::int64_t col = 0; col < w.k; ++col) {
      const std::int64_t t = col % kInt4KStep;
      const std::uint8_t byte = panel[col / kInt4KStep].bytes[4 * i + t % 4];
      out[static_cast<std::size_t>(row * w.k + col)] = from_nibble(t < 4 ? byte : byte >> 4);
    }
  }
  return out;
}

}  // namespace zsq::ops::cpu
