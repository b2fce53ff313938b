// Generators that synthesize images from noise for zero-shot quantization (ALGORITHMS.md §1, §5).
//   gdfq: label-conditional. h = Embedding(y) * z -> Linear(latent -> 128*s*s) -> BN(128) ->
//         up x2, conv3x3(128->128), BN(eps), LeakyReLU(0.2) -> up x2, conv3x3(128->64), BN(eps),
//         LeakyReLU(0.2) -> conv3x3(64->C), tanh -> BN(C) without affine parameters. s = image/4.
//         eps is 0.8 by default: GDFQ's PyTorch positional-argument quirk, kept for parity
//         (gdfq_bn_eps_quirk = false gives the intended 1e-5).
//   zaq:  unconditional, latent 256, the same body with BN eps 1e-5.
// Convolutions have biases; the generator runs in train mode (batch statistics).
#pragma once
#include <memory>

#include "engine/rng.h"
#include "models/layers.h"

namespace zsq::models {

struct GeneratorConfig {
  bool conditional = true;
  std::int64_t latent = 100;
  std::int64_t num_classes = 10;
  std::int64_t channels = 1;
  std::int64_t image_size = 32;
  bool gdfq_bn_eps_quirk = true;
  // torch_default: PyTorch's nn.Conv2d init (the references'). kaiming_fan_out (the ResNet teachers'
  // init) starts the 64 -> C output conv ~20x larger, so most output pixels sit in the saturated tanh.
  ConvInit conv_init = ConvInit::torch_default;

  static GeneratorConfig gdfq(std::int64_t num_classes = 10, std::int64_t channels = 1);
  static GeneratorConfig zaq(std::int64_t channels = 1);
};

class Generator : public Module {
 public:
  Generator(const GeneratorConfig& config, Rng& rng);
  // Unconditional generators only.
  Tensor forward(const Tensor& z) override;
  // z: f32 [N, latent]; labels: s32 [N] (conditional generators only). Returns [N, C, S, S].
  Tensor generate(const Tensor& z, const Tensor& labels);
  // Images as training sees them (train-mode BN: batch statistics) for looking at, with no gradient
  // and without moving any BN running statistics, so sampling mid-run leaves the training state (and
  // an exact resume) untouched. Contiguous [N, C, S, S]; `labels` is ignored when unconditional.
  Tensor sample(const Tensor& z, const Tensor& labels);
  const GeneratorConfig& config() const { return config_; }

 private:
  Tensor body(const Tensor& h);
  GeneratorConfig config_;
  Tensor embedding_;
  std::shared_ptr<Linear> project_;
  std::shared_ptr<BatchNorm2d> bn0_, bn1_, bn2_, bn_out_;
  std::shared_ptr<Conv2d> conv1_, conv2_, conv_out_;
};

}  // namespace zsq::models
