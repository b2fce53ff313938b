#include "models/generator.h"

#include "engine/autograd.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/pool.h"
#include "ops/reduce.h"

namespace zsq::models {

GeneratorConfig GeneratorConfig::gdfq(std::int64_t num_classes, std::int64_t channels) {
  GeneratorConfig c;
  c.num_classes = num_classes;
  c.channels = channels;
  return c;
}

GeneratorConfig GeneratorConfig::zaq(std::int64_t channels) {
  GeneratorConfig c;
  c.conditional = false;
  c.latent = 256;
  c.channels = channels;
  c.gdfq_bn_eps_quirk = false;
  return c;
}

Generator::Generator(const GeneratorConfig& config, Rng& rng) : config_(config) {
  ZSQ_CHECK(config.latent > 0 && config.channels > 0 && config.num_classes > 0,
            "generator: latent, channels and num_classes must be positive");
  ZSQ_CHECK(config.image_size % 4 == 0 && config.image_size >= 4,
            "generator: image size must be a multiple of 4, got {}", config.image_size);
  const auto s = config.image_size / 4;
  const float eps = config.gdfq_bn_eps_quirk ? 0.8f : 1e-5f;
  if (config.conditional)
    embedding_ = register_parameter("embedding", randn({config.num_classes, config.latent}, rng));
  project_ = register_module("project", std::make_shared<Linear>(config.latent, 128 * s * s, true, rng));
  bn0_ = register_module("bn0", std::make_shared<BatchNorm2d>(128));
  conv1_ = register_module("conv1", std::make_shared<Conv2d>(128, 128, 3, ops::Conv2dParams::same(3), true,
                                                             rng, config.conv_init));
  bn1_ = register_module("bn1", std::make_shared<BatchNorm2d>(128, 0.1f, eps));
  conv2_ = register_module(
      "conv2", std::make_shared<Conv2d>(128, 64, 3, ops::Conv2dParams::same(3), true, rng, config.conv_init));
  bn2_ = register_module("bn2", std::make_shared<BatchNorm2d>(64, 0.1f, eps));
  conv_out_ =
      register_module("conv_out", std::make_shared<Conv2d>(64, config.channels, 3, ops::Conv2dParams::same(3),
                                                           true, rng, config.conv_init));
  bn_out_ = register_module("bn_out",
                            std::make_shared<BatchNorm2d>(config.channels, 0.1f, 1e-5f, /*affine=*/false));
}

Tensor Generator::body(const Tensor& h) {
  const auto s = config_.image_size / 4;
  Tensor x = ops::reshape(project_->forward(h), {h.size(0), 128, s, s});
  x = bn0_->forward(x);
  x = ops::leaky_relu(bn1_->forward(conv1_->forward(ops::upsample_nearest2x(x))), 0.2f);
  x = ops::leaky_relu(bn2_->forward(conv2_->forward(ops::upsample_nearest2x(x))), 0.2f);
  return bn_out_->forward(ops::tanh(conv_out_->forward(x)));
}

Tensor Generator::forward(const Tensor& z) {
  ZSQ_CHECK(!config_.conditional,
            "generator: a conditional generator needs labels (use generate(z, labels))");
  ZSQ_CHECK(z.dim() == 2 && z.size(1) == config_.latent, "generator: z must be [N, {}], got {}",
            config_.latent, z.str());
  return body(z);
}

Tensor Generator::generate(const Tensor& z, const Tensor& labels) {
  if (!config_.conditional) return forward(z);
  ZSQ_CHECK(z.dim() == 2 && z.size(1) == config_.latent, "generator: z must be [N, {}], got {}",
            config_.latent, z.str());
  ZSQ_CHECK(labels.dim() == 1 && labels.size(0) == z.size(0) && labels.dtype() == DType::s32,
            "generator: labels must be s32 [{}], got {}", z.size(0), labels.str());
  return body(ops::mul(ops::embedding(embedding_, labels), z));
}

Tensor Generator::sample(const Tensor& z, const Tensor& labels) {
  NoGrad no_grad;
  std::vector<Tensor> saved;
  for (const auto& [name, buffer] : named_buffers()) saved.push_back(buffer.clone());
  const bool was_training = is_training();
  train();
  Tensor images = generate(z, labels).to_format(MemoryFormat::contiguous);
  train(was_training);
  std::size_t i = 0;
  for (const auto& [name, buffer] : named_buffers()) buffer.copy_from(saved[i++]);
  return images;
}

}  // namespace zsq::models
