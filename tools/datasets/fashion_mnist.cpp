#include "tools/datasets/fashion_mnist.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <numeric>

#include "engine/check.h"
#include "tools/datasets/idx.h"

namespace zsq {

namespace {

constexpr int kRaw = kFashionRawSize;
constexpr int kOut = kFashionSize;
constexpr int kMaxShift = 2 * kFashionCropPad;        // crop offsets are 0..4
constexpr int kEdge = kFashionPad + kFashionCropPad;  // 4: source pixel 0 sits at 36x36 index 4

// All 256 normalized values, built once; the batch assembly is then a table lookup per pixel.
constexpr std::array<float, 256> kLut = [] {
  std::array<float, 256> lut{};
  for (int v = 0; v < 256; ++v) lut[v] = fashion_normalize(static_cast<std::uint8_t>(v));
  return lut;
}();

// Uses "<name>.gz" if present, else the uncompressed "<name>", else reports the .gz path as missing.
std::string data_file(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path gz = fs::path(dir) / (name + ".gz");
  const fs::path raw = fs::path(dir) / name;
  std::error_code ec;
  if (!fs::exists(gz, ec) && fs::exists(raw, ec)) return raw.string();
  return gz.string();
}

}  // namespace

const char* split_name(Split split) {
  return split == Split::train ? "train" : "test";
}

FashionMnist load_fashion_mnist(const std::string& dir, Split split) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    fail(fmt::format(
        "{}: Fashion-MNIST directory not found; install it with `apt-get install dataset-fashion-mnist` "
        "or pass the directory holding {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz",
        dir));
  }
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string images_path = data_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = data_file(dir, prefix + "-labels-idx1-ubyte");

  IdxArray images = read_idx(images_path, 3);
  if (images.dims[1] != kRaw || images.dims[2] != kRaw) {
    fail(fmt::format("{}: images are {}x{}, Fashion-MNIST needs {}x{}", images_path, images.dims[1],
                     images.dims[2], kRaw, kRaw));
  }
  IdxArray labels = read_idx(labels_path, 1);
  if (labels.dims[0] != images.dims[0]) {
    fail(fmt::format("{} holds {} images but {} holds {} labels", images_path, images.dims[0], labels_path,
                     labels.dims[0]));
  }
  for (std::size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= kFashionClasses) {
      fail(fmt::format("{}: label {} at index {} is out of range [0, {})", labels_path, labels.data[i], i,
                       kFashionClasses));
    }
  }
  FashionMnist out;
  out.split = split;
  out.images = std::move(images.data);
  out.labels = std::move(labels.data);
  return out;
}

namespace {

// No checks: it runs inside the OpenMP loop, where an exception would terminate the process.
void preprocess_unchecked(const std::uint8_t* src28, float* dst32, int dy, int dx, bool flip) {
  // With offsets in [0, 4] the whole 28x28 source always lands inside the 32x32 output: rows
  // [4 - dy, 32 - dy), columns [4 - dx, 32 - dx), or [dx, dx + 28) mirrored. So each output row is a
  // black border plus one contiguous run of 28 looked-up pixels, with no per-pixel bounds tests.
  const int row0 = kEdge - dy;
  const int col0 = flip ? dx : kEdge - dx;
  for (int y = 0; y < kOut; ++y) {
    float* out = dst32 + y * kOut;
    const int sy = y - row0;
    if (sy < 0 || sy >= kRaw) {
      std::fill(out, out + kOut, kFashionBlack);
      continue;
    }
    std::fill(out, out + col0, kFashionBlack);
    std::fill(out + col0 + kRaw, out + kOut, kFashionBlack);
    const std::uint8_t* src = src28 + sy * kRaw;
    float* run = out + col0;
    if (flip) {
      for (int x = 0; x < kRaw; ++x) run[x] = kLut[src[kRaw - 1 - x]];
    } else {
      for (int x = 0; x < kRaw; ++x) run[x] = kLut[src[x]];
    }
  }
}

}  // namespace

void fashion_preprocess(const std::uint8_t* src28, float* dst32, int dy, int dx, bool flip) {
  ZSQ_CHECK(dy >= 0 && dy <= kMaxShift && dx >= 0 && dx <= kMaxShift,
            "fashion_preprocess: crop offset ({}, {}) outside [0, {}]", dy, dx, kMaxShift);
  preprocess_unchecked(src28, dst32, dy, dx, flip);
}

BatchLoader::BatchLoader(const FashionMnist& data, std::int64_t batch_size, bool shuffle, bool augment,
                         Rng rng, bool drop_last)
    : data_(&data),
      batch_size_(batch_size),
      shuffle_(shuffle),
      augment_(augment),
      drop_last_(drop_last),
      base_(rng) {
  ZSQ_CHECK(batch_size > 0, "BatchLoader: batch size must be positive, got {}", batch_size);
  ZSQ_CHECK(static_cast<std::int64_t>(data.images.size()) == data.size() * kRaw * kRaw,
            "BatchLoader: dataset has {} labels but {} image bytes (expected {})", data.size(),
            data.images.size(), data.size() * kRaw * kRaw);
  start_epoch(0);
}

std::int64_t BatchLoader::batches_per_epoch() const {
  const std::int64_t n = data_->size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

void BatchLoader::start_epoch(std::int64_t epoch) {
  ZSQ_CHECK(epoch >= 0, "BatchLoader: epoch must be non-negative, got {}", epoch);
  epoch_ = epoch;
  pos_ = 0;
  Rng base = base_;  // forking advances its source; a copy keeps base_ fixed
  epoch_rng_ = base.fork(static_cast<std::uint64_t>(epoch));
  order_.resize(static_cast<std::size_t>(data_->size()));
  std::iota(order_.begin(), order_.end(), std::int64_t{0});
  if (shuffle_) {
    // Fisher-Yates with our own generator: std::shuffle's draws differ between standard libraries.
    for (std::size_t i = order_.size(); i > 1; --i) {
      std::swap(order_[i - 1], order_[epoch_rng_.below(i)]);
    }
  }
}

bool BatchLoader::next(Tensor& images, Tensor& labels) {
  const std::int64_t n = data_->size();
  const std::int64_t b = std::min(batch_size_, n - pos_);
  if (b <= 0 || (drop_last_ && b < batch_size_)) return false;

  // Draw everything on the calling thread first so the stream does not depend on the thread count.
  draws_.resize(static_cast<std::size_t>(b));
  for (auto& d : draws_) {
    if (augment_) {
      d.dy = static_cast<std::int8_t>(epoch_rng_.below(kMaxShift + 1));
      d.dx = static_cast<std::int8_t>(epoch_rng_.below(kMaxShift + 1));
      d.flip = epoch_rng_.below(2) != 0;
    } else {
      d = {kFashionCropPad, kFashionCropPad, false};
    }
  }

  images = Tensor::empty({b, 1, kOut, kOut});
  labels = Tensor::empty({b}, DType::s32);
  float* img = images.f32();
  std::int32_t* lab = labels.data<std::int32_t>();
  const std::int64_t* idx = order_.data() + pos_;
  const Draw* draws = draws_.data();
  const FashionMnist& data = *data_;
#pragma omp parallel for schedule(static) if (b >= 32)
  for (std::int64_t i = 0; i < b; ++i) {
    preprocess_unchecked(data.image(idx[i]), img + i * kOut * kOut, draws[i].dy, draws[i].dx, draws[i].flip);
    lab[i] = data.labels[static_cast<std::size_t>(idx[i])];
  }
  pos_ += b;
  return true;
}

}  // namespace zsq
