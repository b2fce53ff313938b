// Tensor: a shape, a dtype, a memory format and shared storage on one device, plus autograd state.
//
// Shapes are always logical (N, C, H, W for images). A 4-D tensor is stored either row-major
// ("contiguous", NCHW) or channels-last (NHWC in memory). Convolutions and the layers around them run
// channels-last because oneDNN's AVX-512 kernels are fastest there and per-channel ops vectorize along
// C; everything else is contiguous. When C == 1 or H*W == 1 the two formats are the same bytes, so a
// 1-channel image enters a network and a pooled (N, C, 1, 1) map leaves it without a copy.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/device.h"
#include "engine/dtype.h"

namespace zsq {

using Shape = std::vector<std::int64_t>;

enum class MemoryFormat : unsigned char { contiguous, channels_last };

std::string shape_str(const Shape& shape);
std::int64_t shape_numel(const Shape& shape);

class Storage {
 public:
  Storage(std::size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Device device_;
};

struct Node;
struct TensorImpl;

// Element strides of a 4-D tensor in its memory format, indexed as logical (n, c, h, w).
struct Strides4 {
  std::int64_t n, c, h, w;
  std::int64_t at(std::int64_t in, std::int64_t ic, std::int64_t ih, std::int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialized storage.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32,
                      MemoryFormat format = MemoryFormat::contiguous, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32,
                      MemoryFormat format = MemoryFormat::contiguous, Device device = Device::cpu());
  static Tensor full(const Shape& shape, float value, MemoryFormat format = MemoryFormat::contiguous,
                     Device device = Device::cpu());
  // Values in logical row-major order, stored in `format`.
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values,
                            MemoryFormat format = MemoryFormat::contiguous);
  static Tensor scalar(float value) { return from_vector({}, {value}); }

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  std::int64_t dim() const { return static_cast<std::int64_t>(shape().size()); }
  // Size of dimension d; negative d counts from the end.
  std::int64_t size(std::int64_t d) const;
  std::int64_t numel() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype()); }
  DType dtype() const;
  MemoryFormat format() const;
  Device device() const;
  std::string str() const;  // "f32[128, 16, 32, 32] channels_last"

  void* raw_data() const;
  // Host pointer to the elements. A tensor on a GPU is refused with a message that names it: CPU code
  // reached with a CUDA tensor (an op without a CUDA path) must fail clearly, not dereference a device
  // address.
  template <typename T>
  T* data() const {
    ZSQ_CHECK(dtype() == dtype_of<T>(), "tensor {} accessed as {}", str(), dtype_name(dtype_of<T>()));
    if (!device().is_cpu()) [[unlikely]]
      fail(fmt::format("tensor {} is on {}: this code path reads it on the CPU (no CUDA implementation)",
                       str(), device().str()));
    return static_cast<T*>(raw_data());
  }
  float* f32() const { return data<float>(); }
  // Device pointer for CUDA kernels (any device; no host access allowed through it).
  template <typename T>
  T* device_data() const {
    ZSQ_CHECK(dtype() == dtype_of<T>(), "tensor {} accessed as {}", str(), dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }
  float* cuda_f32() const { return device_data<float>(); }
  bool is_cuda() const { return device().is_cuda(); }

  // 4-D strides in elements; requires dim() == 4.
  Strides4 strides4() const;
  // True when this tensor's bytes read the same as the same tensor in `format` (always for non-4-D).
  bool is_layout_equivalent(MemoryFormat format) const;

  // Autograd.
  bool requires_grad() const;
  Tensor& set_requires_grad(bool on);
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops the gradient
  // Runs reverse-mode differentiation from this tensor. A scalar needs no seed.
  void backward(const Tensor& seed = {}, bool retain_graph = false) const;

  // Same storage, no autograd history.
  Tensor detach() const;
  // Deep copy in the same format, no autograd history.
  Tensor clone() const;
  // Copy (no autograd) in the given format, or this tensor when already equivalent.
  Tensor to_format(MemoryFormat format) const;
  // Copy (no autograd) on `device`, same shape and format, or this tensor when already there.
  Tensor to(Device device) const;
  // Logical values in row-major (NCHW) order; converts dtypes to float.
  std::vector<float> to_vector() const;
  float item() const;
  // Copies values (shapes must match; formats may differ).
  void copy_from(const Tensor& src) const;
  void fill(float value) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  std::size_t offset_bytes = 0;
  Shape shape;
  DType dtype = DType::f32;
  MemoryFormat format = MemoryFormat::contiguous;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  Tensor grad;
};

// A view of `t` with the same storage but a new shape of equal numel (row-major tensors only).
Tensor view_as_shape(const Tensor& t, const Shape& shape);
// Same storage read as the other format; only valid when t.is_layout_equivalent(format).
Tensor view_as_format(const Tensor& t, MemoryFormat format);
// Moves t's storage to `device` in place: every handle to this TensorImpl (a module's weight member,
// an optimizer's parameter list) sees the new device. Used by Module::to; gradients are dropped.
void move_storage(const Tensor& t, Device device);

}  // namespace zsq
