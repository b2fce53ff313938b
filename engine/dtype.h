// Element types a zsq tensor can hold. Packed 4-bit values live in u8 storage (two per byte,
// low nibble first); the integer-inference code owns that packing, so it is not a dtype here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace zsq {

enum class DType : std::uint8_t { f32, s32, s8, u8 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
    case DType::s32:
      return 4;
    case DType::s8:
    case DType::u8:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::s32:
      return "s32";
    case DType::s8:
      return "s8";
    case DType::u8:
      return "u8";
  }
  return "?";
}

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::s32;
}
template <>
constexpr DType dtype_of<std::int8_t>() {
  return DType::s8;
}
template <>
constexpr DType dtype_of<std::uint8_t>() {
  return DType::u8;
}

}  // namespace zsq
