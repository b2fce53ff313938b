// Checkpoints: named tensors plus string metadata in a safetensors file
// (https://huggingface.co/docs/safetensors), so files open in other tools and theirs open here.
//
// Layout: u64 little-endian header length N, N bytes of JSON header (space-padded so the data starts
// 8-byte aligned), then the tensors' bytes back to back in row-major logical order. zsq adds
// "zsq.crc32" to __metadata__ (CRC-32 of the data section, 8 hex digits) and verifies it on load when
// present, so a flipped bit in a weight is an error rather than a silently wrong model.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace zsq {

struct Checkpoint {
  // String -> string, as safetensors requires. "zsq.crc32" is managed by save/load and never shown here.
  std::map<std::string, std::string> metadata;
  // Kept in insertion order (file order after a load) so `inspect` lists layers as the model has them.
  std::vector<std::pair<std::string, Tensor>> tensors;
  // The file this came from; only used to make error messages say which file is meant.
  std::string path;

  Checkpoint() = default;
  explicit Checkpoint(std::vector<std::pair<std::string, Tensor>> named,
                      std::map<std::string, std::string> meta = {});

  // Appends a tensor; throws on a duplicate or reserved name or an undefined tensor.
  void add(const std::string& name, const Tensor& tensor);
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // nullptr when absent.
  const Tensor* find(const std::string& name) const;
  // Throws zsq::Error naming the missing tensor and the file.
  const Tensor& at(const std::string& name) const;
  // The metadata entry `key` as a whole decimal integer; zsq::Error naming the file and the key when it
  // is absent or anything else (a corrupt state must not reach std::stoll's own exceptions).
  std::int64_t metadata_int(const std::string& key) const;
};

// Writes atomically: a temp file next to `path` is written, fsynced and renamed over `path`, then the
// directory is fsynced. On failure the temp file is removed, `path` is untouched, and zsq::Error is thrown.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);

// Reads and validates the whole file; every problem (truncation, bad header, CRC mismatch, ...) throws
// zsq::Error naming the file. Tensors come back as contiguous CPU tensors.
Checkpoint load_checkpoint(const std::string& path);

// Throws "file: tensor 'name' has shape [..], model expects [..]" when the shapes differ.
void check_tensor_matches(const std::string& file, const std::string& name, const Tensor& loaded,
                          const Shape& expected);

}  // namespace zsq
