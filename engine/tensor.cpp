#include "engine/tensor.h"

#include <cstring>

#include "engine/autograd.h"
#include "ops/cuda/cuda_runtime_api.h"

namespace zsq {

std::string shape_str(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

Storage::Storage(std::size_t bytes, Device device) : bytes_(bytes), device_(device) {
  data_ = device_alloc(bytes, device);
}

Storage::~Storage() {
  device_free(data_, device_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, MemoryFormat format, Device device) {
  for (auto s : shape) ZSQ_CHECK(s >= 0, "negative dimension in shape {}", shape_str(shape));
  if (format == MemoryFormat::channels_last)
    ZSQ_CHECK(shape.size() == 4, "channels_last needs a 4-D shape, got {}", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  impl->format = format;
  impl->storage =
      std::make_shared<Storage>(static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, MemoryFormat format, Device device) {
  Tensor t = empty(shape, dtype, format, device);
  if (device.is_cuda())
    cuda::fill_bytes(t.raw_data(), t.nbytes(), 0);
  else
    std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, MemoryFormat format, Device device) {
  Tensor t = empty(shape, DType::f32, format, device);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values, MemoryFormat format) {
  ZSQ_CHECK(static_cast<std::int64_t>(values.size()) == shape_numel(shape),
            "from_vector: {} values for shape {}", values.size(), shape_str(shape));
  Tensor row = empty(shape);
  std::memcpy(row.raw_data(), values.data(), values.size() * sizeof(float));
  return row.to_format(format);
}

const Shape& Tensor::shape() const {
  ZSQ_CHECK(defined(), "use of an undefined tensor");
  return impl_->shape;
}

std::int64_t Tensor::size(std::int64_t d) const {
  const auto n = dim();
  if (d < 0) d += n;
  ZSQ_CHECK(d >= 0 && d < n, "dimension {} out of range for shape {}", d, shape_str(shape()));
  return shape()[static_cast<std::size_t>(d)];
}

std::int64_t Tensor::numel() const {
  return shape_numel(shape());
}
DType Tensor::dtype() const {
  return impl_->dtype;
}
MemoryFormat Tensor::format() const {
  return impl_->format;
}
Device Tensor::device() const {
  return impl_->storage->device();
}

std::string Tensor::str() const {
  if (!defined()) return "<undefined>";
  return fmt::format("{}{}{}", dtype_name(dtype()), shape_str(shape()),
                     format() == MemoryFormat::channels_last ? " channels_last" : "");
}

void* Tensor::raw_data() const {
  ZSQ_CHECK(defined(), "use of an undefined tensor");
  return static_cast<char*>(impl_->storage->data()) + impl_->offset_bytes;
}

Strides4 Tensor::strides4() const {
  ZSQ_CHECK(dim() == 4, "strides4 needs a 4-D tensor, got {}", str());
  const auto& s = shape();
  if (format() == MemoryFormat::channels_last) return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
  return {s[1] * s[2] * s[3], s[2] * s[3], s[3], 1};
}

bool Tensor::is_layout_equivalent(MemoryFormat f) const {
  if (f == format() || dim() != 4) return f == format() || f == MemoryFormat::contiguous;
  const auto& s = shape();
  return s[1] == 1 || s[2] * s[3] == 1;
}

bool Tensor::requires_grad() const {
  return defined() && impl_->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool on) {
  ZSQ_CHECK(defined(), "set_requires_grad on an undefined tensor");
  ZSQ_CHECK(!on || dtype() == DType::f32, "only f32 tensors can require gradients, got {}", str());
  impl_->requires_grad = on;
  return *this;
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  return impl_->grad_fn;
}
Tensor Tensor::grad() const {
  return impl_->grad;
}
void Tensor::set_grad(const Tensor& g) const {
  impl_->grad = g;
}
void Tensor::zero_grad() const {
  impl_->grad = Tensor();
}

void Tensor::backward(const Tensor& seed, bool retain_graph) const {
  run_backward(*this, seed, retain_graph);
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset_bytes = impl_->offset_bytes;
  impl->shape = impl_->shape;
  impl->dtype = impl_->dtype;
  impl->format = impl_->format;
  return Tensor(std::move(impl));
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), format(), device());
  device_copy(out.raw_data(), device(), raw_data(), device(), nbytes());
  return out;
}

namespace {
// Element-wise permutation between NCHW and NHWC for any element size.
template <typename T>
void permute4(const T* src, Strides4 s_src, T* dst, Strides4 s_dst, const Shape& shape) {
  const auto N = shape[0], C = shape[1], H = shape[2], W = shape[3];
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = 0; w < W; ++w) dst[s_dst.at(n, c, h, w)] = src[s_src.at(n, c, h, w)];
}
}  // namespace

void Tensor::copy_from(const Tensor& src) const {
  ZSQ_CHECK(src.shape() == shape() && src.dtype() == dtype(), "copy_from: {} into {}", src.str(), str());
  if (src.is_layout_equivalent(format()) || dim() != 4) {
    device_copy(raw_data(), device(), src.raw_data(), src.device(), nbytes());
    return;
  }
  if (!device().is_cpu() || !src.device().is_cpu()) {
    // Convert on the GPU: bring the source over first when only the destination is there (and the
    // other way round), then permute device to device.
    if (device() != src.device()) {
      Tensor staged = src.to(device().is_cuda() ? device() : src.device());
      if (device().is_cuda()) return copy_from(staged);
      Tensor converted = staged.to_format(format());
      device_copy(raw_data(), device(), converted.raw_data(), converted.device(), nbytes());
      return;
    }
    const Strides4 ss = src.strides4(), sd = strides4();
    const std::int64_t src_strides[4] = {ss.n, ss.c, ss.h, ss.w}, dst_strides[4] = {sd.n, sd.c, sd.h, sd.w};
    cuda::permute4(src.raw_data(), src_strides, raw_data(), dst_strides, shape().data(),
                   static_cast<int>(dtype_size(dtype())));
    return;
  }
  if (dtype_size(dtype()) == 4)
    permute4(static_cast<const std::uint32_t*>(src.raw_data()), src.strides4(),
             static_cast<std::uint32_t*>(raw_data()), strides4(), shape());
  else
    permute4(static_cast<const std::uint8_t*>(src.raw_data()), src.strides4(),
             static_cast<std::uint8_t*>(raw_data()), strides4(), shape());
}

Tensor Tensor::to_format(MemoryFormat f) const {
  if (format() == f) return *this;
  if (is_layout_equivalent(f)) return view_as_format(detach(), f);
  Tensor out = empty(shape(), dtype(), f, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (device() == target) return *this;
  Tensor out = empty(shape(), dtype(), format(), target);
  device_copy(out.raw_data(), target, raw_data(), device(), nbytes());
  return out;
}

std::vector<float> Tensor::to_vector() const {
  Tensor row = to_format(MemoryFormat::contiguous);
  if (!device().is_cpu()) {
    Tensor host = empty(shape(), dtype());
    host.copy_from(row);
    row = host;
  }
  std::vector<float> out(static_cast<std::size_t>(numel()));
  switch (dtype()) {
    case DType::f32:
      if (!out.empty()) std::memcpy(out.data(), row.raw_data(), out.size() * 4);
      break;
    case DType::s32:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(row.data<std::int32_t>()[i]);
      break;
    case DType::s8:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = row.data<std::int8_t>()[i];
      break;
    case DType::u8:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = row.data<std::uint8_t>()[i];
      break;
  }
  return out;
}

float Tensor::item() const {
  ZSQ_CHECK(numel() == 1, "item() needs a single-element tensor, got {}", str());
  return to_vector()[0];
}

void Tensor::fill(float value) const {
  ZSQ_CHECK(dtype() == DType::f32, "fill supports f32 tensors, got {}", str());
  if (device().is_cuda()) {
    cuda::fill_f32(cuda_f32(), numel(), value);
    return;
  }
  float* p = f32();
  const auto n = numel();
  for (std::int64_t i = 0; i < n; ++i) p[i] = value;
}

Tensor view_as_shape(const Tensor& t, const Shape& shape) {
  ZSQ_CHECK(shape_numel(shape) == t.numel(), "cannot view {} as {}", t.str(), shape_str(shape));
  ZSQ_CHECK(t.is_layout_equivalent(MemoryFormat::contiguous), "cannot view {} as {} without a copy", t.str(),
            shape_str(shape));
  Tensor v = t.detach();
  v.impl()->shape = shape;
  v.impl()->format = MemoryFormat::contiguous;
  return v;
}

Tensor view_as_format(const Tensor& t, MemoryFormat format) {
  ZSQ_CHECK(t.is_layout_equivalent(format), "{} cannot be viewed in another format", t.str());
  Tensor v = t.detach();
  v.impl()->format = format;
  return v;
}

void move_storage(const Tensor& t, Device device) {
  if (t.device() == device) return;
  Tensor moved = t.to(device);
  t.impl()->storage = moved.impl()->storage;
  t.impl()->offset_bytes = moved.impl()->offset_bytes;
  t.impl()->grad = Tensor();
}

}  // namespace zsq
