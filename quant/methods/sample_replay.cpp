#include "quant/methods/sample_replay.h"

#include <algorithm>

#include "engine/check.h"

namespace zsq::quant {

namespace {
std::int64_t numel_of(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}
Shape with_rows(std::int64_t rows, const Shape& image_shape) {
  Shape s{rows};
  s.insert(s.end(), image_shape.begin(), image_shape.end());
  return s;
}
}  // namespace

SampleReplay::SampleReplay(std::int64_t capacity, const Shape& image_shape)
    : capacity_(capacity), image_numel_(numel_of(image_shape)), image_shape_(image_shape) {
  ZSQ_CHECK(capacity > 0, "replay: capacity must be positive, got {}", capacity);
  ZSQ_CHECK(image_shape.size() == 3 && image_numel_ > 0, "replay: an image shape is [C, H, W], got {} dims",
            image_shape.size());
  images_ = Tensor::zeros(with_rows(capacity, image_shape));
}

void SampleReplay::add(const Tensor& batch, Rng& rng) {
  ZSQ_CHECK(batch.dim() == 4 && batch.numel() == batch.size(0) * image_numel_,
            "replay: a batch must be [N, {}, {}, {}], got {}", image_shape_[0], image_shape_[1],
            image_shape_[2], batch.str());
  // The memory stays on the host (it can hold far more images than a batch); a GPU batch is copied over.
  const Tensor source = batch.to_format(MemoryFormat::contiguous).to(Device::cpu());
  const float* src = source.f32();
  float* dst = images_.f32();
  for (std::int64_t i = 0; i < batch.size(0); ++i) {
    ++seen_;
    std::int64_t slot = size_;
    if (size_ < capacity_) {
      ++size_;
    } else {
      slot = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(seen_)));
      if (slot >= capacity_) continue;  // this image is not kept
    }
    std::copy_n(src + i * image_numel_, image_numel_, dst + slot * image_numel_);
  }
}

Tensor SampleReplay::sample(std::int64_t n, Rng& rng) const {
  ZSQ_CHECK(size_ > 0, "replay: sample from an empty memory");
  ZSQ_CHECK(n > 0, "replay: sample size must be positive, got {}", n);
  Tensor out = Tensor::empty(with_rows(n, image_shape_));
  const float* src = images_.f32();
  float* dst = out.f32();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto slot = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(size_)));
    std::copy_n(src + slot * image_numel_, image_numel_, dst + i * image_numel_);
  }
  return out;
}

void SampleReplay::save(Checkpoint& checkpoint) const {
  checkpoint.metadata["zsq.replay.size"] = std::to_string(size_);
  checkpoint.metadata["zsq.replay.seen"] = std::to_string(seen_);
  checkpoint.add("replay.images", images_);
}

void SampleReplay::load(const Checkpoint& checkpoint) {
  auto size = checkpoint.metadata.find("zsq.replay.size");
  auto seen = checkpoint.metadata.find("zsq.replay.seen");
  ZSQ_CHECK(size != checkpoint.metadata.end() && seen != checkpoint.metadata.end(),
            "{}: no replay memory in this state (the run was started without replay)", checkpoint.path);
  const Tensor* images = checkpoint.find("replay.images");
  ZSQ_CHECK(images != nullptr && images->shape() == images_.shape(),
            "{}: missing or misshapen replay.images (expected {} images of [{}, {}, {}]: was the run started "
            "with another replay capacity?)",
            checkpoint.path, capacity_, image_shape_[0], image_shape_[1], image_shape_[2]);
  const auto held = checkpoint.metadata_int(size->first), offered = checkpoint.metadata_int(seen->first);
  ZSQ_CHECK(held >= 0 && held <= capacity_ && offered >= held,
            "{}: replay counts {} held / {} seen are corrupt", checkpoint.path, held, offered);
  images_.copy_from(*images);
  size_ = held, seen_ = offered;
}

Tensor concat_batches(const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.dim() >= 1 && a.dim() == b.dim(), "concat_batches: {} and {} differ in rank", a.str(), b.str());
  for (std::int64_t d = 1; d < a.dim(); ++d)
    ZSQ_CHECK(a.size(d) == b.size(d), "concat_batches: {} and {} differ after the batch dimension", a.str(),
              b.str());
  Shape shape = a.shape();
  shape[0] = a.size(0) + b.size(0);
  ZSQ_CHECK(a.device() == b.device(), "concat_batches: {} is on {}, {} on {}", a.str(), a.device().str(),
            b.str(), b.device().str());
  Tensor out = Tensor::empty(shape, DType::f32, MemoryFormat::contiguous, a.device());
  const Tensor ca = a.to_format(MemoryFormat::contiguous), cb = b.to_format(MemoryFormat::contiguous);
  device_copy(out.raw_data(), out.device(), ca.raw_data(), ca.device(), ca.nbytes());
  device_copy(static_cast<char*>(out.raw_data()) + ca.nbytes(), out.device(), cb.raw_data(), cb.device(),
              cb.nbytes());
  return out;
}

Tensor first_rows(const Tensor& a, std::int64_t rows) {
  ZSQ_CHECK(a.dim() >= 1 && rows > 0 && rows <= a.size(0), "first_rows: {} rows of {}", rows, a.str());
  Shape shape = a.shape();
  shape[0] = rows;
  Tensor out = Tensor::empty(shape, DType::f32, MemoryFormat::contiguous, a.device());
  const Tensor ca = a.to_format(MemoryFormat::contiguous);
  device_copy(out.raw_data(), out.device(), ca.raw_data(), ca.device(), out.nbytes());
  return out;
}

}  // namespace zsq::quant
