#include "engine/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

namespace zsq {

// The format is little-endian; tensors are written straight from memory.
static_assert(std::endian::native == std::endian::little, "checkpoint I/O assumes a little-endian host");

namespace {

using json = nlohmann::ordered_json;  // ordered so tensors keep their insertion order in the file

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kCrcKey = "zsq.crc32";
// Real headers are kilobytes; a bigger length means a corrupt or foreign file, not a header to allocate.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;
// Safetensors headers nest three deep; deep nesting only comes from garbage or hostile files.
constexpr int kMaxJsonDepth = 16;

std::string errno_text() {
  return std::strerror(errno);
}

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::s32:
      return "I32";
    case DType::s8:
      return "I8";
    case DType::u8:
      return "U8";
  }
  return "?";
}

std::optional<DType> parse_dtype(const std::string& s) {
  for (DType t : {DType::f32, DType::s32, DType::s8, DType::u8})
    if (s == safetensors_dtype(t)) return t;
  return std::nullopt;
}

// zlib's crc32 takes a 32-bit length, so large tensors go in chunks.
std::uint32_t crc_update(std::uint32_t crc, const void* data, std::size_t n) {
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, std::size_t{1} << 30));
    crc = static_cast<std::uint32_t>(crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  // close() can report a deferred write error, so the writer checks it instead of leaving it to ~Fd.
  int release_close() {
    const int rc = ::close(fd);
    fd = -1;
    return rc;
  }
};

void write_all(int fd, const void* data, std::size_t n, const std::string& file) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    ZSQ_CHECK(w > 0, "{}: write failed: {}", file, errno_text());
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void read_all(int fd, std::uint64_t offset, void* data, std::size_t n, const std::string& file) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r =
        ::pread(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30), static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    ZSQ_CHECK(r >= 0, "{}: read failed: {}", file, errno_text());
    ZSQ_CHECK(r > 0, "{}: truncated: file ended while reading (was it modified while loading?)", file);
    p += r;
    offset += static_cast<std::uint64_t>(r);
    n -= static_cast<std::size_t>(r);
  }
}

// Host, row-major bytes of `t`: the file stores logical order whatever the device and memory format.
Tensor host_row_major(const Tensor& t) {
  Tensor host = t;
  if (!t.device().is_cpu()) {
    host = Tensor::empty(t.shape(), t.dtype(), t.format(), Device::cpu());
    host.copy_from(t);
  }
  return host.to_format(MemoryFormat::contiguous);
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// A JSON value that must be a non-negative integer fitting int64 (dims and offsets alike).
std::uint64_t get_count(const json& v, const std::string& file, const std::string& name, const char* what) {
  ZSQ_CHECK(v.is_number_integer(), "{}: tensor '{}': {} must be an integer, got {}", file, name, what,
            v.dump());
  ZSQ_CHECK(v.is_number_unsigned() || v.get<std::int64_t>() >= 0, "{}: tensor '{}': negative {} {}", file,
            name, what, v.dump());
  const auto n = v.get<std::uint64_t>();
  ZSQ_CHECK(n <= static_cast<std::uint64_t>(INT64_MAX), "{}: tensor '{}': {} {} is too large", file, name,
            what, n);
  return n;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t begin, end;
};

Entry parse_entry(const std::string& file, const std::string& name, const json& v) {
  ZSQ_CHECK(v.is_object(), "{}: tensor '{}': entry must be a JSON object, got {}", file, name, v.type_name());
  for (const char* key : {"dtype", "shape", "data_offsets"})
    ZSQ_CHECK(v.contains(key), "{}: tensor '{}': entry has no \"{}\"", file, name, key);
  Entry e{name, DType::f32, {}, 0, 0};

  const json& dt = v["dtype"];
  ZSQ_CHECK(dt.is_string(), "{}: tensor '{}': dtype must be a string, got {}", file, name, dt.dump());
  const auto dtype = parse_dtype(dt.get<std::string>());
  ZSQ_CHECK(dtype.has_value(), "{}: tensor '{}': unsupported dtype {} (zsq reads F32, I32, I8, U8)", file,
            name, dt.dump());
  e.dtype = *dtype;

  const json& shape = v["shape"];
  ZSQ_CHECK(shape.is_array(), "{}: tensor '{}': shape must be an array, got {}", file, name, shape.dump());
  // Product of the dims (zeros counted as 1) times the element size must fit int64, so no later
  // shape arithmetic overflows even for an empty tensor; a zero dim then makes it 0 bytes.
  std::uint64_t bytes = dtype_size(e.dtype);
  bool overflow = false, empty = false;
  for (const json& d : shape) {
    const std::uint64_t n = get_count(d, file, name, "dimension");
    e.shape.push_back(static_cast<std::int64_t>(n));
    empty = empty || n == 0;
    overflow = overflow || __builtin_mul_overflow(bytes, std::max<std::uint64_t>(n, 1), &bytes);
  }
  ZSQ_CHECK(!overflow && bytes <= static_cast<std::uint64_t>(INT64_MAX),
            "{}: tensor '{}': shape {} is too large", file, name, shape_str(e.shape));
  if (empty) bytes = 0;

  const json& off = v["data_offsets"];
  ZSQ_CHECK(off.is_array() && off.size() == 2, "{}: tensor '{}': data_offsets must be [begin, end], got {}",
            file, name, off.dump());
  e.begin = get_count(off[0], file, name, "data offset");
  e.end = get_count(off[1], file, name, "data offset");
  ZSQ_CHECK(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}] are out of order", file, name, e.begin,
            e.end);
  ZSQ_CHECK(bytes == e.end - e.begin,
            "{}: tensor '{}' is {}{} ({} bytes) but data_offsets [{}, {}] span {} bytes", file, name,
            dtype_name(e.dtype), shape_str(e.shape), bytes, e.begin, e.end, e.end - e.begin);
  return e;
}

json parse_header(const std::string& file, const std::string& text) {
  std::set<std::string> top_keys;
  // Rejects duplicate tensor names (JSON parsers silently keep the last) and absurd nesting.
  const json::parser_callback_t guard = [&](int depth, nlohmann::json::parse_event_t event, json& parsed) {
    ZSQ_CHECK(depth <= kMaxJsonDepth, "{}: header JSON is nested deeper than {} levels", file, kMaxJsonDepth);
    if (event == nlohmann::json::parse_event_t::key && depth == 1) {
      const auto key = parsed.get<std::string>();
      ZSQ_CHECK(top_keys.insert(key).second, "{}: header names '{}' twice", file, key);
    }
    return true;
  };
  try {
    json h = json::parse(text, guard);
    ZSQ_CHECK(h.is_object(), "{}: header is not a JSON object (got {})", file, h.type_name());
    return h;
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: header is not valid JSON: {}", file, e.what()));
  }
}

}  // namespace

Checkpoint::Checkpoint(std::vector<std::pair<std::string, Tensor>> named,
                       std::map<std::string, std::string> meta)
    : metadata(std::move(meta)) {
  for (const auto& [name, t] : named) add(name, t);
}

void Checkpoint::add(const std::string& name, const Tensor& tensor) {
  ZSQ_CHECK(name != kMetadataKey, "checkpoint: '{}' is reserved and cannot name a tensor", name);
  ZSQ_CHECK(tensor.defined(), "checkpoint: tensor '{}' is undefined", name);
  ZSQ_CHECK(!contains(name), "checkpoint: tensor '{}' added twice", name);
  tensors.emplace_back(name, tensor);
}

const Tensor* Checkpoint::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

std::int64_t Checkpoint::metadata_int(const std::string& key) const {
  const std::string file = path.empty() ? std::string("<in-memory checkpoint>") : path;
  auto it = metadata.find(key);
  ZSQ_CHECK(it != metadata.end(), "{}: no metadata entry '{}'", file, key);
  const std::string& text = it->second;
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  ZSQ_CHECK(error == std::errc() && end == text.data() + text.size() && !text.empty(),
            "{}: metadata '{}' is '{}', not an integer", file, key, text);
  return value;
}

const Tensor& Checkpoint::at(const std::string& name) const {
  const Tensor* t = find(name);
  ZSQ_CHECK(t != nullptr, "{}: no tensor named '{}' ({} tensors in the checkpoint)",
            path.empty() ? std::string("<in-memory checkpoint>") : path, name, tensors.size());
  return *t;
}

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  // Build everything in memory first so a bad tensor fails before any file is touched.
  json header = json::object();
  header[kMetadataKey] = json::object();  // placeholder keeps __metadata__ first, as other writers do
  std::vector<Tensor> rows;
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  std::uint32_t crc = 0;
  for (const auto& [name, t] : checkpoint.tensors) {
    ZSQ_CHECK(name != kMetadataKey, "{}: '{}' is reserved and cannot name a tensor", path, name);
    ZSQ_CHECK(t.defined(), "{}: tensor '{}' is undefined", path, name);
    ZSQ_CHECK(seen.insert(name).second, "{}: tensor '{}' appears twice", path, name);
    Tensor row = host_row_major(t);
    crc = crc_update(crc, row.raw_data(), row.nbytes());
    header[name] = {{"dtype", safetensors_dtype(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + row.nbytes()}}};
    offset += row.nbytes();
    rows.push_back(std::move(row));
  }
  json meta = json::object();
  for (const auto& [k, v] : checkpoint.metadata) meta[k] = v;
  meta[kCrcKey] = fmt::format("{:08x}", crc);
  header[kMetadataKey] = std::move(meta);

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: cannot encode checkpoint header (names and metadata must be UTF-8): {}", path,
                     e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the spec allows trailing spaces; keeps data 8-aligned
  const auto header_len = static_cast<std::uint64_t>(text.size());

  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ZSQ_CHECK(out.fd >= 0, "{}: cannot create temporary file '{}': {}", path, tmp, errno_text());
  try {
    write_all(out.fd, &header_len, sizeof header_len, tmp);
    write_all(out.fd, text.data(), text.size(), tmp);
    for (const Tensor& row : rows)
      if (row.nbytes() > 0) write_all(out.fd, row.raw_data(), row.nbytes(), tmp);
    ZSQ_CHECK(::fsync(out.fd) == 0, "{}: fsync of '{}' failed: {}", path, tmp, errno_text());
    ZSQ_CHECK(out.release_close() == 0, "{}: closing '{}' failed: {}", path, tmp, errno_text());
    ZSQ_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot replace with '{}': {}", path, tmp,
              errno_text());
  } catch (...) {
    if (out.fd >= 0) out.release_close();
    ::unlink(tmp.c_str());
    throw;
  }
  // Makes the rename itself durable; some filesystems cannot fsync a directory (EINVAL), which is fine.
  Fd dir(::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.fd >= 0 && ::fsync(dir.fd) != 0 && errno != EINVAL)
    fail(fmt::format("{}: fsync of directory '{}' failed: {}", path, parent_dir(path), errno_text()));
}

Checkpoint load_checkpoint(const std::string& path) {
  Fd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ZSQ_CHECK(in.fd >= 0, "{}: cannot open checkpoint: {}", path, errno_text());
  struct stat st {};
  ZSQ_CHECK(::fstat(in.fd, &st) == 0, "{}: cannot stat checkpoint: {}", path, errno_text());
  ZSQ_CHECK(S_ISREG(st.st_mode), "{}: not a regular file", path);
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  ZSQ_CHECK(file_size >= 8, "{}: not a safetensors file: {} bytes is shorter than the 8-byte header length",
            path, file_size);

  std::uint64_t header_len = 0;
  read_all(in.fd, 0, &header_len, sizeof header_len, path);
  ZSQ_CHECK(header_len <= kMaxHeaderBytes,
            "{}: header length {} bytes is absurdly large (limit {}); corrupt or not a safetensors file",
            path, header_len, kMaxHeaderBytes);
  ZSQ_CHECK(header_len <= file_size - 8,
            "{}: truncated: header length {} bytes is larger than the {} bytes that follow it", path,
            header_len, file_size - 8);
  std::string text(header_len, '\0');
  read_all(in.fd, 8, text.data(), text.size(), path);
  const json header = parse_header(path, text);

  Checkpoint ck;
  ck.path = path;
  std::optional<std::string> stored_crc;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key != kMetadataKey) {
      entries.push_back(parse_entry(path, key, value));
      continue;
    }
    ZSQ_CHECK(value.is_object(), "{}: __metadata__ must be a JSON object, got {}", path, value.type_name());
    for (const auto& [mk, mv] : value.items()) {
      ZSQ_CHECK(mv.is_string(), "{}: __metadata__ value for '{}' must be a string, got {}", path, mk,
                mv.dump());
      if (mk == kCrcKey)
        stored_crc = mv.get<std::string>();
      else
        ck.metadata[mk] = mv.get<std::string>();
    }
  }

  // Spans sorted by start; each must begin at or after the previous one's end.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t data_len = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : by_offset) {
    ZSQ_CHECK(prev == nullptr || e->begin >= prev->end,
              "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", path, prev->name,
              prev->begin, prev->end, e->name, e->begin, e->end);
    data_len = std::max(data_len, e->end);
    prev = e;
  }
  const std::uint64_t file_data = file_size - 8 - header_len;
  ZSQ_CHECK(data_len <= file_data, "{}: truncated: header says {} bytes of tensor data, file has {}", path,
            data_len, file_data);
  ZSQ_CHECK(data_len == file_data, "{}: {} unexpected bytes after the {} bytes of tensor data", path,
            file_data - data_len, data_len);

  // One read of the whole section: the CRC covers it all, and checkpoints here are tens of MB.
  std::unique_ptr<unsigned char[]> data(new unsigned char[std::max<std::uint64_t>(data_len, 1)]);
  read_all(in.fd, 8 + header_len, data.get(), data_len, path);
  if (stored_crc) {
    std::uint32_t want = 0;
    const char* first = stored_crc->data();
    const char* last = first + stored_crc->size();
    const auto [end, ec] = std::from_chars(first, last, want, 16);
    ZSQ_CHECK(stored_crc->size() == 8 && ec == std::errc() && end == last,
              "{}: corrupt: metadata {} is '{}', expected 8 hex digits", path, kCrcKey, *stored_crc);
    const std::uint32_t got = crc_update(0, data.get(), data_len);
    ZSQ_CHECK(got == want, "{}: corrupt: CRC mismatch (header says {:08x}, data has {:08x})", path, want,
              got);
  }

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), data.get() + e.begin, e.end - e.begin);
    ck.tensors.emplace_back(e.name, std::move(t));
  }
  return ck;
}

void check_tensor_matches(const std::string& file, const std::string& name, const Tensor& loaded,
                          const Shape& expected) {
  ZSQ_CHECK(loaded.defined(), "{}: tensor '{}' is missing", file, name);
  ZSQ_CHECK(loaded.shape() == expected, "{}: tensor '{}' has shape {}, model expects {}", file, name,
            shape_str(loaded.shape()), shape_str(expected));
}

}  // namespace zsq
