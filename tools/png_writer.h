// 8-bit greyscale PNG files through libpng's simplified API (no setjmp in our code). Writes are atomic
// (temp file, fsync, rename), so a run killed mid-write leaves the previous file or the new one, never
// half of one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zsq::cli {

// `pixels` holds height rows of width bytes, top row first. Errors name the file.
void write_png_gray(const std::string& path, const std::vector<std::uint8_t>& pixels, std::int64_t width,
                    std::int64_t height);

}  // namespace zsq::cli
