#include "quant/nibbles.h"

#include "engine/check.h"

namespace zsq::quant {

namespace {
// One byte as the file stores it: two's-complement nibbles, low first.
struct NibblePair {
  std::uint8_t bits;
};
static_assert(sizeof(NibblePair) == 1, "a packed pair is one byte");
}  // namespace

std::vector<std::uint8_t> pack_nibbles(const std::vector<std::int8_t>& values) {
  std::vector<std::uint8_t> out((values.size() + 1) / 2, 0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const int v = values[i];
    ZSQ_CHECK(v >= -8 && v <= 7, "4-bit packing: value {} at index {} is outside [-8, 7]", v, i);
    NibblePair pair{out[i / 2]};
    pair.bits = static_cast<std::uint8_t>(pair.bits | ((v & 0x0F) << (4 * (i % 2))));
    out[i / 2] = pair.bits;
  }
  return out;
}

std::vector<std::int8_t> unpack_nibbles(const std::uint8_t* packed, std::int64_t count) {
  std::vector<std::int8_t> out(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const int nibble = (packed[i / 2] >> (4 * (i % 2))) & 0x0F;
    out[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(nibble >= 8 ? nibble - 16 : nibble);
  }
  return out;
}

}  // namespace zsq::quant
