#include "tools/png_writer.h"

#include <png.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/check.h"

namespace zsq::cli {

void write_png_gray(const std::string& path, const std::vector<std::uint8_t>& pixels, std::int64_t width,
                    std::int64_t height) {
  ZSQ_CHECK((width > 0 && height > 0 && width <= 1 << 20 && height <= 1 << 20), "{}: bad PNG size {}x{}",
            path, width, height);
  ZSQ_CHECK(pixels.size() == static_cast<std::size_t>(width * height), "{}: {} pixels for a {}x{} image",
            path, pixels.size(), width, height);
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  std::FILE* file = std::fopen(tmp.c_str(), "wb");
  ZSQ_CHECK(file != nullptr, "{}: cannot create '{}': {}", path, tmp, std::strerror(errno));
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_GRAY;
  const bool written =
      png_image_write_to_stdio(&image, file, 0, pixels.data(), static_cast<png_int_32>(width), nullptr) != 0;
  const std::string message = image.message;
  png_image_free(&image);
  const bool flushed = written && std::fflush(file) == 0 && ::fsync(::fileno(file)) == 0;
  const bool closed = std::fclose(file) == 0;
  if (!written || !flushed || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = !written ? "libpng: " + message : std::string(std::strerror(errno));
    std::remove(tmp.c_str());
    fail(fmt::format("{}: cannot write PNG: {}", path, why));
  }
}

}  // namespace zsq::cli
