#include "tools/datasets/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/check.h"

namespace zsq {

namespace {

// A corrupt header could announce terabytes; nothing this reader is meant for exceeds 1 GiB.
constexpr std::uint64_t kMaxBytes = std::uint64_t{1} << 30;
// gzread takes an unsigned count, so large bodies are read in pieces.
constexpr std::size_t kChunk = std::size_t{1} << 24;

// gzopen/gzread read gzip and (transparently) raw files alike. Every read checks gzerror, because a
// truncated gzip stream makes gzread return a short count that otherwise looks like a clean EOF.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    errno = 0;
    file_ = gzopen(path.c_str(), "rb");
    if (file_ == nullptr) {
      fail(fmt::format("{}: cannot open: {}", path, errno != 0 ? std::strerror(errno) : "out of memory"));
    }
    gzbuffer(file_, 1u << 17);
  }
  ~GzReader() { gzclose_r(file_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes and returns how many arrived; fewer than n means end of file.
  std::size_t read(std::uint8_t* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const auto want = static_cast<unsigned>(std::min(n - got, kChunk));
      const int r = gzread(file_, dst + got, want);
      if (r > 0) got += static_cast<std::size_t>(r);
      check_stream(total_ + got);
      if (r <= 0 || static_cast<unsigned>(r) < want) break;
    }
    total_ += got;
    return got;
  }

 private:
  void check_stream(std::size_t position) {
    int code = Z_OK;
    const char* message = gzerror(file_, &code);
    if (code == Z_OK) return;
    if (code == Z_ERRNO) {
      fail(fmt::format("{}: read error after {} bytes: {}", path_, position, std::strerror(errno)));
    }
    // zlib prefixes its message with the path; drop that so the path appears once.
    std::string what = message != nullptr ? message : "unknown zlib error";
    if (what.starts_with(path_ + ": ")) what.erase(0, path_.size() + 2);
    // Z_BUF_ERROR ("unexpected end of file") is how zlib reports a stream cut short. zlib reads
    // ahead, so the position where the error surfaces says little; it is not reported.
    fail(fmt::format("{}: corrupt or truncated gzip stream: {}", path_, what));
  }

  std::string path_;
  gzFile file_ = nullptr;
  std::size_t total_ = 0;
};

std::uint32_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

}  // namespace

std::int64_t IdxArray::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : dims) n *= d;
  return n;
}

std::string idx_dims_str(const std::vector<std::int64_t>& dims) {
  return fmt::format("{}", fmt::join(dims, "x"));
}

IdxArray read_idx(const std::string& path, int ndim) {
  ZSQ_CHECK(ndim >= 1 && ndim <= 255, "read_idx({}): dimension count {} out of range", path, ndim);
  GzReader reader(path);

  std::uint8_t magic_bytes[4];
  const std::size_t magic_got = reader.read(magic_bytes, 4);
  if (magic_got < 4) {
    fail(fmt::format("{}: truncated header: file has {} bytes, an IDX header needs {}", path, magic_got,
                     4 + 4 * ndim));
  }
  const std::uint32_t magic = big_endian_u32(magic_bytes);
  const std::uint32_t expected_magic = 0x00000800u | static_cast<std::uint32_t>(ndim);
  if (magic != expected_magic) {
    fail(fmt::format("{}: bad magic 0x{:08x}, expected 0x{:08x} (u8 IDX with {} dimensions)", path, magic,
                     expected_magic, ndim));
  }

  std::vector<std::uint8_t> dim_bytes(4 * static_cast<std::size_t>(ndim));
  const std::size_t dims_got = reader.read(dim_bytes.data(), dim_bytes.size());
  if (dims_got < dim_bytes.size()) {
    fail(fmt::format("{}: truncated header: {} dimensions need {} bytes, file has {}", path, ndim,
                     4 + dim_bytes.size(), 4 + dims_got));
  }

  IdxArray out;
  std::uint64_t expected = 1;
  for (int d = 0; d < ndim; ++d) {
    const std::uint32_t size = big_endian_u32(dim_bytes.data() + 4 * d);
    out.dims.push_back(size);
    // Checked per factor so the product cannot overflow before the comparison.
    expected *= size;
    if (expected > kMaxBytes) {
      fail(fmt::format(
          "{}: header announces {} elements (dims so far {}), more than the {} this reader accepts", path,
          expected, idx_dims_str(out.dims), kMaxBytes));
    }
  }

  // Grown chunk by chunk so a corrupt header cannot make us allocate far more than the file holds.
  std::size_t got = 0;
  out.data.reserve(std::min<std::size_t>(expected, kChunk * 4));
  while (got < expected) {
    const std::size_t want = std::min<std::size_t>(expected - got, kChunk);
    out.data.resize(got + want);
    const std::size_t r = reader.read(out.data.data() + got, want);
    got += r;
    if (r < want) break;
  }
  if (got < expected) {
    fail(fmt::format("{}: truncated: header says {} = {} bytes, file has {}", path, idx_dims_str(out.dims),
                     expected, got));
  }

  std::size_t trailing = 0;
  std::uint8_t scratch[4096];
  for (std::size_t r; (r = reader.read(scratch, sizeof scratch)) > 0;) trailing += r;
  if (trailing > 0) {
    fail(fmt::format("{}: {} bytes of trailing data after the {} = {} bytes the header announces", path,
                     trailing, idx_dims_str(out.dims), expected));
  }
  return out;
}

}  // namespace zsq
