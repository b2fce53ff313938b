// Fashion-MNIST (DESIGN §5): loading Debian's dataset-fashion-mnist files, the fixed preprocessing
// (x/255, normalize by mean 0.2860 / std 0.3530, pad 28x28 -> 32x32 with the normalized black value)
// and a deterministic batch loader with the train-time augmentation (random crop 32 with padding 2,
// horizontal flip p = 0.5). Only tools link this; quantization must never see real data.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "engine/tensor.h"

namespace zsq {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
inline constexpr int kFashionClasses = 10;
inline constexpr int kFashionRawSize = 28;  // stored images are 28x28
inline constexpr int kFashionSize = 32;     // network input is 32x32
inline constexpr int kFashionPad = 2;       // (32 - 28) / 2 on each side
inline constexpr int kFashionCropPad = 2;   // augmentation pads 2 more, then crops 32
inline constexpr float kFashionMean = 0.2860f;
inline constexpr float kFashionStd = 0.3530f;

// The exact float every consumer (loader, tests, exporters) must agree on.
constexpr float fashion_normalize(std::uint8_t pixel) {
  return (static_cast<float>(pixel) / 255.0f - kFashionMean) / kFashionStd;
}
// Padding value: a black pixel after normalization, (0 - 0.2860) / 0.3530.
inline constexpr float kFashionBlack = fashion_normalize(0);

enum class Split : unsigned char { train, test };
const char* split_name(Split split);  // "train" / "test"

struct FashionMnist {
  Split split = Split::train;
  std::vector<std::uint8_t> images;  // size() x 28 x 28 raw pixels, row-major
  std::vector<std::uint8_t> labels;  // size() values in [0, 10)
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
  const std::uint8_t* image(std::int64_t i) const {
    return images.data() + i * kFashionRawSize * kFashionRawSize;
  }
};

// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (or the same names without .gz) from dir and
// checks that counts match and labels are < 10; errors name the offending file.
FashionMnist load_fashion_mnist(const std::string& dir = kFashionMnistDir, Split split = Split::train);

// Writes one preprocessed 32x32 image to dst. (dy, dx) in [0, 4] is the crop offset inside the image
// padded to 36x36; (2, 2) is the plain centred image. flip mirrors the crop horizontally. Hence
// dst(y, x) = normalize(src(y + dy - 4, x' + dx - 4)) with x' = flip ? 31 - x : x, black outside.
void fashion_preprocess(const std::uint8_t* src28, float* dst32, int dy = kFashionCropPad,
                        int dx = kFashionCropPad, bool flip = false);

// Iterates a dataset in batches of f32 images [B, 1, 32, 32] (contiguous, CPU) and s32 labels [B].
// All random draws (shuffle, crop offsets, flips) come from a generator derived from the constructor's
// Rng and the epoch number only, so start_epoch(k) gives the same batches whether or not epochs
// 0..k-1 ran before (resume reproduces the order). The dataset must outlive the loader.
class BatchLoader {
 public:
  BatchLoader(const FashionMnist& data, std::int64_t batch_size, bool shuffle, bool augment, Rng rng,
              bool drop_last = false);
  BatchLoader(FashionMnist&& data, std::int64_t batch_size, bool shuffle, bool augment, Rng rng,
              bool drop_last = false) = delete;  // would dangle

  // Resets to the start of `epoch` with that epoch's order. The constructor starts epoch 0.
  void start_epoch(std::int64_t epoch);
  // Fills the next batch (fresh tensors each call); false when the epoch is exhausted.
  bool next(Tensor& images, Tensor& labels);

  std::int64_t epoch() const { return epoch_; }
  std::int64_t batch_size() const { return batch_size_; }
  std::int64_t batches_per_epoch() const;
  // Dataset indices in this epoch's order.
  const std::vector<std::int64_t>& order() const { return order_; }

 private:
  struct Draw {
    std::int8_t dy, dx;
    bool flip;
  };
  const FashionMnist* data_;
  std::int64_t batch_size_;
  bool shuffle_, augment_, drop_last_;
  Rng base_;  // never advanced: each epoch forks a copy, so epochs are independent of history
  Rng epoch_rng_;
  std::int64_t epoch_ = 0;
  std::int64_t pos_ = 0;
  std::vector<std::int64_t> order_;
  std::vector<Draw> draws_;
};

}  // namespace zsq
