#include "quant/integer_runner.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "ops/conv2d_int8.h"
#include "ops/cpu/conv2d_int4.h"

namespace zsq::quant {

namespace {

ops::Int8ConvShape conv_shape(const IntLayer& l, std::int64_t height, std::int64_t width) {
  return {l.in_channels, l.out_channels, l.kernel, l.stride, l.padding, height, width};
}

// output_scale[o] = in_scale * weight_scale[o] / out_scale: accumulator units -> output grid steps.
std::vector<float> requant_scales(const IntLayer& l, float in_scale, float out_scale) {
  std::vector<float> s(l.weight_scale.size());
  for (std::size_t o = 0; o < s.size(); ++o)
    s[o] = static_cast<float>(static_cast<double>(in_scale) * l.weight_scale[o] / out_scale);
  return s;
}

ops::Int8ConvEpilogue clipped_u8(const ActGrid& out) {
  ops::Int8ConvEpilogue e;
  e.clip_lo = static_cast<float>(out.qmin);
  e.clip_hi = static_cast<float>(out.qmax);
  return e;
}

}  // namespace

// A 1x1 shortcut with packed 4-bit weights: zsq's int4 GEMM over the strided rows of the input, f32 out
// in the block output's units (col_scale = requantization scale, col_bias = bias * that scale).
struct Int4Shortcut {
  ops::cpu::Int4PackedWeights weights;
  ops::cpu::Im2colShape shape;
  std::vector<float> scale, bias;

  Int4Shortcut(const IntLayer& l, std::int64_t h, std::int64_t w, std::vector<float> requant)
      : weights(ops::cpu::pack_int4_weights(l.weight.data(), l.out_channels, l.in_channels, l.in_channels)),
        scale(std::move(requant)) {
    shape.h = h;
    shape.w = w;
    shape.c = l.in_channels;
    shape.p.stride_h = shape.p.stride_w = l.stride;
    bias.resize(scale.size());
    for (std::size_t o = 0; o < scale.size(); ++o) bias[o] = static_cast<float>(l.bias[o]) * scale[o];
  }
  void forward(std::int64_t batch, const std::uint8_t* src, float* dst) {
    shape.n = batch;
    ops::cpu::conv2d_u8s4f32(src, shape, 0, weights, {scale.data(), bias.data(), false}, dst);
  }
};

struct IntegerRunner::Kernels {
  struct Block {
    ops::Int8Conv2d conv1, conv2;
    std::unique_ptr<ops::Int8Conv2d> shortcut;
    std::unique_ptr<Int4Shortcut> shortcut_int4;
    std::int64_t in_h, in_w, out_h, out_w;
  };
  std::unique_ptr<ops::Int8Conv2d> stem;
  std::vector<Block> blocks;
  std::int64_t max_activation = 0;  // bytes per image of the largest u8 activation
  std::int64_t max_shortcut = 0;    // floats per image of the largest shortcut output
  std::vector<std::uint8_t> buffers[3];
  std::vector<float> shortcut_out;
};

IntegerRunner::IntegerRunner(IntegerModel model)
    : model_(std::move(model)), kernels_(std::make_unique<Kernels>()) {
  auto& k = *kernels_;
  const auto& m = model_;
  const auto stem_shape = conv_shape(m.stem, m.height, m.width);
  ops::Int8ConvEpilogue stem_epilogue = clipped_u8(m.stem.output);
  stem_epilogue.src_zero_point = m.input.zero_point != 0;
  k.stem = std::make_unique<ops::Int8Conv2d>(stem_shape, m.stem.weight, m.stem.bias,
                                             requant_scales(m.stem, m.input.scale, m.stem.output.scale),
                                             stem_epilogue);
  std::int64_t h = stem_shape.out_height(), w = stem_shape.out_width();
  k.max_activation = std::max(m.height * m.width * m.in_channels, h * w * m.stem.out_channels);
  float x_scale = m.stem.output.scale;
  for (const auto& b : m.blocks) {
    const auto s1 = conv_shape(b.conv1, h, w);
    const auto s2 = conv_shape(b.conv2, s1.out_height(), s1.out_width());
    const float h_scale = b.conv1.output.scale, out_scale = b.conv2.output.scale;
    auto e2 = clipped_u8(b.conv2.output);
    std::unique_ptr<ops::Int8Conv2d> shortcut;
    std::unique_ptr<Int4Shortcut> shortcut_int4;
    if (b.shortcut) {
      auto scales = requant_scales(*b.shortcut, x_scale, out_scale);
      if (b.shortcut->weight_bits <= 4 && b.shortcut->kernel == 1 && b.shortcut->padding == 0 &&
          ops::cpu::has_avx512_vnni()) {
        shortcut_int4 = std::make_unique<Int4Shortcut>(*b.shortcut, h, w, std::move(scales));
      } else {
        ops::Int8ConvEpilogue f32_out;
        f32_out.u8_output = false;
        shortcut = std::make_unique<ops::Int8Conv2d>(conv_shape(*b.shortcut, h, w), b.shortcut->weight,
                                                     b.shortcut->bias, std::move(scales), f32_out);
      }
      e2.residual = ops::Int8Residual::add_f32;
      k.max_shortcut = std::max(k.max_shortcut, s2.out_height() * s2.out_width() * b.conv2.out_channels);
    } else {
      e2.residual = ops::Int8Residual::sum_u8;  // in place into the block input's buffer
      e2.residual_scale = x_scale / out_scale;
    }
    Kernels::Block kb{
        ops::Int8Conv2d(s1, b.conv1.weight, b.conv1.bias, requant_scales(b.conv1, x_scale, h_scale),
                        clipped_u8(b.conv1.output)),
        ops::Int8Conv2d(s2, b.conv2.weight, b.conv2.bias, requant_scales(b.conv2, h_scale, out_scale), e2),
        std::move(shortcut),
        std::move(shortcut_int4),
        h,
        w,
        s2.out_height(),
        s2.out_width()};
    k.max_activation = std::max({k.max_activation, s1.out_height() * s1.out_width() * b.conv1.out_channels,
                                 kb.out_h * kb.out_w * b.conv2.out_channels});
    k.blocks.push_back(std::move(kb));
    h = s2.out_height();
    w = s2.out_width();
    x_scale = out_scale;
  }
  ZSQ_CHECK(h * w == m.final_positions(),
            "integer model: feature map {}x{} disagrees with the stored geometry", h, w);
}

IntegerRunner::~IntegerRunner() = default;

Tensor IntegerRunner::forward(const Tensor& images) {
  const auto& m = model_;
  auto& k = *kernels_;
  ZSQ_CHECK(images.dtype() == DType::f32 && images.dim() == 4 && images.size(1) == m.in_channels &&
                images.size(2) == m.height && images.size(3) == m.width,
            "integer model {}: input must be f32 [N, {}, {}, {}], got {}", m.arch, m.in_channels, m.height,
            m.width, images.str());
  const auto n = images.size(0);
  for (auto& b : k.buffers) b.resize(static_cast<std::size_t>(n * k.max_activation));
  k.shortcut_out.resize(static_cast<std::size_t>(n * k.max_shortcut));

  // Quantize the images into NHWC u8 on the 8-bit input grid.
  const Tensor x = images.to_format(MemoryFormat::channels_last);
  const float* xs = x.f32();
  std::uint8_t* q = k.buffers[0].data();
  const auto count = x.numel();
  const float scale = m.input.scale;
  const float zp = static_cast<float>(m.input.zero_point);
#pragma omp parallel for schedule(static) if (count > (1 << 15))
  for (std::int64_t i = 0; i < count; ++i) {
    const float v = std::nearbyint(xs[i] / scale) + zp;
    q[i] = static_cast<std::uint8_t>(std::clamp(v, 0.0f, 255.0f));
  }

  std::uint8_t* cur = k.buffers[1].data();
  k.stem->forward(n, q, cur, nullptr, m.input.zero_point);
  std::uint8_t* spare[2] = {k.buffers[0].data(), k.buffers[2].data()};
  for (auto& b : k.blocks) {
    std::uint8_t* mid = spare[0];
    b.conv1.forward(n, cur, mid);
    if (b.shortcut || b.shortcut_int4) {
      if (b.shortcut_int4)
        b.shortcut_int4->forward(n, cur, k.shortcut_out.data());
      else
        b.shortcut->forward(n, cur, k.shortcut_out.data());
      std::uint8_t* out = spare[1];
      b.conv2.forward(n, mid, out, k.shortcut_out.data());
      spare[1] = cur;
      cur = out;
    } else {
      b.conv2.forward(n, mid, cur);  // adds the block input already in `cur`
    }
  }

  // Classifier: exact integer channel sums over positions, int32 dot products, one float scale.
  const auto positions = m.final_positions();
  const auto channels = m.fc.in_channels, classes = m.fc.out_channels;
  const float step = m.blocks.empty() ? m.stem.output.scale : m.blocks.back().conv2.output.scale;
  Tensor logits = Tensor::empty({n, classes});
  float* out = logits.f32();
#pragma omp parallel if (n > 8)
  {
    std::vector<std::int32_t> sums(static_cast<std::size_t>(channels));  // per thread, reused per image
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      std::fill(sums.begin(), sums.end(), 0);
      const std::uint8_t* feature = cur + i * positions * channels;
      for (std::int64_t p = 0; p < positions; ++p)
        for (std::int64_t c = 0; c < channels; ++c)
          sums[static_cast<std::size_t>(c)] += feature[p * channels + c];
      for (std::int64_t o = 0; o < classes; ++o) {
        std::int64_t acc = m.fc.bias[static_cast<std::size_t>(o)];
        for (std::int64_t c = 0; c < channels; ++c)
          acc += static_cast<std::int64_t>(m.fc.weight[static_cast<std::size_t>(o * channels + c)]) *
                 sums[static_cast<std::size_t>(c)];
        out[i * classes + o] =
            static_cast<float>(static_cast<double>(acc) * (step / static_cast<double>(positions)) *
                               m.fc.weight_scale[static_cast<std::size_t>(o)]);
      }
    }
  }
  return logits;
}

std::vector<std::pair<std::string, std::string>> IntegerRunner::implementations(std::int64_t batch) const {
  const auto& k = *kernels_;
  std::vector<std::pair<std::string, std::string>> out{{model_.stem.name, k.stem->implementation(batch)}};
  for (std::size_t i = 0; i < k.blocks.size(); ++i) {
    const auto& b = k.blocks[i];
    const auto& mb = model_.blocks[i];
    out.emplace_back(mb.conv1.name, b.conv1.implementation(batch));
    if (b.shortcut) out.emplace_back(mb.shortcut->name, b.shortcut->implementation(batch));
    if (b.shortcut_int4) out.emplace_back(mb.shortcut->name, ops::cpu::kInt4ConvName);
    out.emplace_back(mb.conv2.name, b.conv2.implementation(batch));
  }
  out.emplace_back(model_.fc.name, "zsq int32 sum-pool + dot (scalar)");
  return out;
}

}  // namespace zsq::quant
