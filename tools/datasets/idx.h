// IDX files (the MNIST / Fashion-MNIST container): a big-endian magic 0x0000TTDD (TT = element type,
// DD = dimension count), DD big-endian u32 sizes, then the elements row-major. Only u8 (TT = 0x08)
// is needed here. Every malformed input throws zsq::Error naming the file and the problem, because a
// silently short dataset would show up much later as a baffling accuracy number.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zsq {

struct IdxArray {
  std::vector<std::int64_t> dims;  // e.g. {60000, 28, 28}
  std::vector<std::uint8_t> data;  // product(dims) bytes, row-major
  std::int64_t numel() const;
};

// Reads a u8 IDX file with `ndim` dimensions (magic 0x00000800 | ndim: 0x801 labels, 0x803 images).
// Gzip-compressed files are decompressed transparently (zlib), raw files are read as they are.
// Throws zsq::Error on a missing/unreadable file, bad magic, a truncated header or body, a corrupt or
// truncated gzip stream, and trailing bytes beyond what the header announces.
IdxArray read_idx(const std::string& path, int ndim);

// "60000x28x28"
std::string idx_dims_str(const std::vector<std::int64_t>& dims);

}  // namespace zsq
