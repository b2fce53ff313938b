// The interchange form of 4-bit weights: two signed values per byte, low nibble first (element 2i in
// bits 0-3, element 2i+1 in bits 4-7, two's complement), an odd count padded with a zero nibble.
#pragma once
#include <cstdint>
#include <vector>

namespace zsq::quant {

// Throws zsq::Error when a value lies outside [-8, 7].
std::vector<std::uint8_t> pack_nibbles(const std::vector<std::int8_t>& values);
std::vector<std::int8_t> unpack_nibbles(const std::uint8_t* packed, std::int64_t count);

}  // namespace zsq::quant
