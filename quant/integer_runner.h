// Runs an IntegerModel on the CPU with integer kernels: u8 activations end to end (NHWC), each
// convolution one oneDNN int8 primitive with its requantization, ReLU (as the clip of the next grid) and
// residual add fused; the classifier as an exact integer sum-pool and int32 dot products.
//
// Kernels per layer: 3x3 convolutions and 8-bit 1x1 shortcuts run on oneDNN's u8 x s8 convolution (4-bit
// weights are held as s8 values there: oneDNN has no int4 type); 1x1 shortcuts with weights of 4 bits
// or fewer run on zsq's own AVX-512 VNNI int4-weight GEMM with the weights packed two per byte.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "quant/integer_model.h"

namespace zsq::quant {

class IntegerRunner {
 public:
  explicit IntegerRunner(IntegerModel model);
  ~IntegerRunner();

  // images: f32 [N, in_channels, height, width] in the float model's normalized units (any memory
  // format). Returns f32 logits [N, num_classes].
  Tensor forward(const Tensor& images);
  // (layer name, kernel implementation) for a batch size, in execution order.
  std::vector<std::pair<std::string, std::string>> implementations(std::int64_t batch) const;
  const IntegerModel& model() const { return model_; }

 private:
  struct Kernels;
  IntegerModel model_;
  std::unique_ptr<Kernels> kernels_;
};

}  // namespace zsq::quant
