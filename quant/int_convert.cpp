// Fake-quant student -> integer model: the same weight grids the student's fake quantizer uses
// (per-channel symmetric on the ranges weight_observer picks, ops::fake_quant_grid, IEEE division and
// round-half-even), BN folded into per-channel scales and an int32 bias, activation grids taken from
// the frozen observers.
//
// Why folding after quantization is exact: the student computes BN(conv(x, q(w))) with q(w) = d[o] * w_q
// (integers w_q), which equals conv(x, w_q) * d[o] * k[o] + (beta - mean * k) with k = gamma / sqrt(var +
// eps). So the integer weights are the student's, the scale absorbs k (a negative k flips the row's sign;
// the symmetric grid is sign-symmetric) and only the bias is rounded, to accumulator units (< 0.5 LSB
// of the accumulator, far below one step of the output grid).
#include <cmath>
#include <limits>
#include <map>

#include "models/resnet.h"
#include "ops/fake_quant.h"
#include "quant/integer_model.h"
#include "quant/student.h"
#include "quant/weight_ranges.h"

namespace zsq::quant {

namespace {

struct Folded {
  std::vector<std::int8_t> weight;
  std::vector<float> weight_scale;  // d[o] * |k[o]|
  std::vector<float> bias;          // beta + (conv_bias - mean) * k, real units
};

// Integer weights of `w` (dim 0 = output channel) on the student's grid, and their scales.
// ratio: the site's learned clip ratios (weight_range=learned), else null.
void quantize_weights(const Tensor& w_in, int bits, const std::string& layer, const QConfig& config,
                      const Tensor* ratio, Folded& out) {
  const Tensor w = w_in.detach().to_format(MemoryFormat::contiguous);
  const auto channels = w.size(0), per = w.numel() / channels;
  const ops::FakeQuantSpec spec{bits, true, false};
  const auto [lo, hi] = ratio != nullptr ? ops::ratio_channel_ranges(w, *ratio)
                                         : weight_channel_ranges(w, spec, config);  // the student's ranges
  out.weight.resize(static_cast<std::size_t>(w.numel()));
  out.weight_scale.resize(static_cast<std::size_t>(channels));
  for (std::int64_t o = 0; o < channels; ++o) {
    const auto grid = ops::fake_quant_grid(lo.f32()[o], hi.f32()[o], spec);
    for (std::int64_t i = 0; i < per; ++i) {
      const float q =
          std::fmin(std::fmax(std::nearbyint(w.f32()[o * per + i] / grid.delta), grid.qmin), grid.qmax);
      out.weight[static_cast<std::size_t>(o * per + i)] = static_cast<std::int8_t>(q);
    }
    out.weight_scale[static_cast<std::size_t>(o)] = grid.delta;
  }
  ZSQ_CHECK(bits <= 8, "{}: {}-bit weights do not fit in int8", layer, bits);
}

Folded fold(const models::ConvBnAct& unit, int bits, const std::string& layer, const QConfig& config,
            const Tensor* ratio) {
  Folded f;
  quantize_weights(unit.conv->weight, bits, layer, config, ratio, f);
  const auto& bn = *unit.bn;
  const auto out = unit.conv->weight.size(0), per = unit.conv->weight.numel() / out;
  f.bias.resize(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    // The same float expression ConvBnAct's eval-mode folding uses.
    const float k = bn.weight.f32()[o] / std::sqrt(bn.running_var.f32()[o] + bn.eps());
    const float conv_bias = unit.conv->bias.defined() ? unit.conv->bias.f32()[o] : 0.0f;
    f.bias[static_cast<std::size_t>(o)] = bn.bias.f32()[o] + (conv_bias - bn.running_mean.f32()[o]) * k;
    if (k < 0.0f)
      for (std::int64_t i = 0; i < per; ++i) {
        auto& v = f.weight[static_cast<std::size_t>(o * per + i)];
        v = static_cast<std::int8_t>(-v);
      }
    f.weight_scale[static_cast<std::size_t>(o)] *= std::fabs(k);
  }
  return f;
}

// Fills weight/scale/bias of `layer` from folded values; `in_scale` is the real value of one input step.
void finish_layer(IntLayer& layer, Folded&& f, float in_scale) {
  layer.weight = std::move(f.weight);
  layer.weight_scale = std::move(f.weight_scale);
  layer.bias.resize(layer.weight_scale.size());
  const auto per = static_cast<std::size_t>(layer.weight_numel() / layer.out_channels);
  for (std::size_t o = 0; o < layer.weight_scale.size(); ++o) {
    float& ws = layer.weight_scale[o];
    const float b = f.bias[o];
    ZSQ_CHECK(std::isfinite(ws) && std::isfinite(b), "{}: channel {} has a non-finite scale or bias",
              layer.name, o);
    if (!(ws > 0.0f)) {
      // A channel whose weights are all zero (or whose BN gamma is 0) outputs its bias alone; pick a
      // scale that represents that bias exactly enough.
      for (std::size_t i = 0; i < per; ++i) layer.weight[o * per + i] = 0;
      ws = b != 0.0f ? std::fabs(b) / (in_scale * 65536.0f) : 1.0f;
    }
    const double acc_units = static_cast<double>(b) / (static_cast<double>(in_scale) * ws);
    ZSQ_CHECK(std::fabs(acc_units) < 2147483647.0,
              "{}: bias of channel {} ({}) overflows int32 at this scale", layer.name, o, b);
    layer.bias[o] = static_cast<std::int32_t>(std::nearbyint(acc_units));
  }
}

ActGrid output_grid(const Student& student, const ActivationSite& site, const QConfig& config) {
  ZSQ_CHECK(site.observations > 0 || site.observer->frozen(),
            "activation site {} has no range: calibrate or fine-tune the student first", site.name);
  ZSQ_CHECK(!config.act_symmetric,
            "activation site {}: symmetric activations cannot be stored as u8; use the "
            "deploy convention",
            site.name);
  const auto [lo, hi] = student.activation_range(site);  // a learned range when act_range=learned
  const auto grid = ops::fake_quant_grid(lo, hi, {site.bits, false, false});
  ZSQ_CHECK(
      grid.qmin >= 0.0f && grid.qmax <= 255.0f,
      "activation site {}: range [{}, {}] gives the grid q in [{}, {}], which u8 cannot hold (a post-ReLU "
      "range must not go below 0)",
      site.name, lo, hi, grid.qmin, grid.qmax);
  return {grid.delta, 0, static_cast<std::int32_t>(grid.qmin), static_cast<std::int32_t>(grid.qmax)};
}

IntLayer conv_geometry(const std::string& name, const models::ConvBnAct& unit) {
  IntLayer l;
  l.name = name;
  const auto& w = unit.conv->weight;
  const auto& p = unit.conv->params();
  ZSQ_CHECK(p.groups == 1 && p.dilation_h == 1 && p.dilation_w == 1 && w.size(2) == w.size(3) &&
                p.stride_h == p.stride_w && p.pad_h == p.pad_w,
            "{}: only square, ungrouped, undilated convolutions convert", name);
  l.in_channels = w.size(1);
  l.out_channels = w.size(0);
  l.kernel = w.size(2);
  l.stride = p.stride_h;
  l.padding = p.pad_h;
  return l;
}

}  // namespace

IntegerModel convert_to_integer(Student& student, const InputSpec& input) {
  const QConfig& config = student.config();
  ZSQ_CHECK(config.weight_symmetric && config.weight_granularity == Granularity::per_channel,
            "integer export needs symmetric per-channel weights (quantize with --convention deploy); this "
            "student uses the '{}' convention",
            config.convention);
  ZSQ_CHECK(student.model().device().is_cpu(),
            "integer export reads the student's weights on the CPU; it is on {} (move it with "
            "Student::to(Device::cpu()))",
            student.model().device().str());
  auto* resnet = dynamic_cast<models::CifarResNet*>(&student.model());
  ZSQ_CHECK(resnet != nullptr, "integer export supports the CIFAR ResNets; '{}' is not one yet",
            student.spec().name);
  ZSQ_CHECK(std::isfinite(input.lo) && std::isfinite(input.hi) && input.lo < input.hi,
            "input range [{}, {}] is not a valid interval", input.lo, input.hi);

  std::map<const models::ConvBnAct*, const ActivationSite*> site_of;
  for (const auto& s : student.activation_sites()) site_of[s.unit] = &s;
  std::map<std::string, int> bits_of;
  std::map<std::string, const Tensor*> ratio_of;
  for (const auto& s : student.weight_sites()) {
    bits_of[s.name] = s.bits;
    ratio_of[s.name] = s.learned_ratio.defined() ? &s.learned_ratio : nullptr;
  }
  auto act = [&](const models::ConvBnAct& unit) { return output_grid(student, *site_of.at(&unit), config); };

  IntegerModel m;
  m.arch = student.spec().name;
  m.arch_config = student.spec().config;
  m.quant_config = config.to_json();
  m.in_channels = m.arch_config.at("in_channels").get<std::int64_t>();
  m.num_classes = m.arch_config.at("num_classes").get<std::int64_t>();
  ZSQ_CHECK(input.height > 0 && input.width > 0, "input size {}x{} is not valid", input.height, input.width);
  m.height = input.height;
  m.width = input.width;
  const auto in_grid = ops::fake_quant_grid(input.lo, input.hi, {8, false, false});
  m.input = {in_grid.delta, static_cast<std::int32_t>(-in_grid.qmin), 0, 255};

  std::vector<std::pair<std::string, Module*>> top;
  for (const auto& [name, child] : resnet->children()) top.emplace_back(name, child.get());
  ZSQ_CHECK(top.size() >= 3 && top.front().first == "stem" && top.back().first == "fc",
            "{}: unexpected module layout", m.arch);

  auto& stem = dynamic_cast<models::ConvBnAct&>(*top.front().second);
  m.stem = conv_geometry("stem", stem);
  m.stem.weight_bits = bits_of.at("stem.conv");
  m.stem.output = act(stem);
  finish_layer(m.stem, fold(stem, m.stem.weight_bits, "stem", config, ratio_of.at("stem.conv")),
               m.input.scale);

  ActGrid current = m.stem.output;
  for (std::size_t i = 1; i + 1 < top.size(); ++i) {
    const auto& name = top[i].first;
    auto& block = dynamic_cast<models::BasicBlock&>(*top[i].second);
    IntBlock b;
    b.conv1 = conv_geometry(name + ".conv1", *block.body1);
    b.conv1.weight_bits = bits_of.at(name + ".conv1.conv");
    b.conv1.output = act(*block.body1);
    finish_layer(
        b.conv1,
        fold(*block.body1, b.conv1.weight_bits, b.conv1.name, config, ratio_of.at(name + ".conv1.conv")),
        current.scale);
    b.conv2 = conv_geometry(name + ".conv2", *block.body2);
    b.conv2.weight_bits = bits_of.at(name + ".conv2.conv");
    b.conv2.output = act(*block.body2);  // the block output, after the residual add and ReLU
    finish_layer(
        b.conv2,
        fold(*block.body2, b.conv2.weight_bits, b.conv2.name, config, ratio_of.at(name + ".conv2.conv")),
        b.conv1.output.scale);
    if (block.shortcut) {
      IntLayer sc = conv_geometry(name + ".shortcut", *block.shortcut);
      sc.weight_bits = bits_of.at(name + ".shortcut.conv");
      sc.output = b.conv2.output;  // its f32 output is in the block output's units
      finish_layer(
          sc, fold(*block.shortcut, sc.weight_bits, sc.name, config, ratio_of.at(name + ".shortcut.conv")),
          current.scale);
      b.shortcut = std::move(sc);
    }
    current = b.conv2.output;
    m.blocks.push_back(std::move(b));
  }

  auto& fc = dynamic_cast<models::Linear&>(*top.back().second);
  m.fc.name = "fc";
  m.fc.in_channels = fc.weight.size(1);
  m.fc.out_channels = fc.weight.size(0);
  m.fc.weight_bits = bits_of.at("fc");
  Folded f;
  quantize_weights(fc.weight, m.fc.weight_bits, "fc", config, ratio_of.at("fc"), f);
  f.bias.assign(static_cast<std::size_t>(m.fc.out_channels), 0.0f);
  if (fc.bias.defined())
    for (std::int64_t o = 0; o < m.fc.out_channels; ++o)
      f.bias[static_cast<std::size_t>(o)] = fc.bias.f32()[o];
  // The classifier sees the average of the last activation: one step of the integer channel sum is
  // scale / (H * W) of the final feature map.
  finish_layer(m.fc, std::move(f), current.scale / static_cast<float>(m.final_positions()));
  m.fc.output = {1.0f, 0, 0, 0};
  return m;
}

}  // namespace zsq::quant
