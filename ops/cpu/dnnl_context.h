// The one oneDNN CPU engine and stream, and a cache of primitives keyed by a string that spells out
// every shape and attribute. Primitive descriptors are created once per shape and reused (oneDNN's own
// cache only saves the JIT; descriptor creation still costs tens of microseconds per call).
#pragma once
#include <oneapi/dnnl/dnnl.hpp>

#include <any>
#include <functional>
#include <string>
#include <unordered_map>

#include "engine/tensor.h"

namespace zsq::ops::cpu {

dnnl::engine& dnnl_engine();
dnnl::stream& dnnl_stream();

// Returns the cached value for `key`, building it with `make` on first use. T is copyable (primitive
// descriptors and primitives are reference-counted handles).
template <typename T>
T& dnnl_cached(const std::string& key, const std::function<T()>& make) {
  static std::unordered_map<std::string, T> cache;
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;
}

// Memory descriptor of a 4-D f32 activation in its zsq format (nchw or nhwc).
dnnl::memory::desc activation_desc(const Tensor& t);
dnnl::memory::desc activation_desc(const Shape& shape, MemoryFormat format);
dnnl::memory::dims to_dims(const Shape& shape);

// Wraps `data` when `have` equals `want`; otherwise reorders into (or, with to_user, out of) a
// scratch buffer. Reorders are cached by descriptor pair.
class ReorderedMemory {
 public:
  // For inputs: user memory -> primitive memory (reorders at construction when formats differ).
  static ReorderedMemory input(const dnnl::memory::desc& want, const dnnl::memory::desc& have, void* data);
  // For outputs: primitive memory; call finish() to reorder back into the user buffer if needed.
  static ReorderedMemory output(const dnnl::memory::desc& want, const dnnl::memory::desc& have, void* data);
  dnnl::memory& memory() { return primitive_; }
  void finish();
  // The reordered copy's storage (undefined when no reorder was needed), for a caller that reuses it.
  Tensor take_scratch() { return std::move(scratch_holder_); }

 private:
  // Scratch for the primitive's layout from zsq's caching allocator: fresh multi-megabyte buffers from
  // oneDNN's own allocator cost page faults on every call (measured: Winograd lost its 2x that way).
  static dnnl::memory scratch(const dnnl::memory::desc& want, Tensor& holder);
  dnnl::memory primitive_;
  dnnl::memory user_;
  Tensor scratch_holder_;
  bool reordered_ = false;
};

}  // namespace zsq::ops::cpu
