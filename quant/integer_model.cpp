// IntegerModel <-> safetensors, with every field validated on load (a corrupt or hand-edited file is an
// error naming the file and the field, never a model that computes garbage).
#include "quant/integer_model.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/check.h"
#include "ops/cpu/gemm_int4.h"

namespace zsq::quant {

namespace {

constexpr const char* kFormat = "zsq-int-v1";

nlohmann::ordered_json grid_json(const ActGrid& g) {
  return {{"scale", g.scale}, {"zero_point", g.zero_point}, {"qmin", g.qmin}, {"qmax", g.qmax}};
}

nlohmann::ordered_json layer_json(const IntLayer& l) {
  return {{"name", l.name},
          {"in_channels", l.in_channels},
          {"out_channels", l.out_channels},
          {"kernel", l.kernel},
          {"stride", l.stride},
          {"padding", l.padding},
          {"weight_bits", l.weight_bits},
          {"output", grid_json(l.output)}};
}

void add_layer_tensors(Checkpoint& ckpt, const IntLayer& l) {
  if (l.weight_bits <= 4) {
    const auto packed = ops::cpu::pack_nibbles(l.weight);
    Tensor t = Tensor::empty({static_cast<std::int64_t>(packed.size())}, DType::u8);
    std::copy(packed.begin(), packed.end(), t.data<std::uint8_t>());
    ckpt.add(l.name + ".weight", t);
  } else {
    Tensor t = Tensor::empty({l.out_channels, l.in_channels, l.kernel, l.kernel}, DType::s8);
    std::copy(l.weight.begin(), l.weight.end(), t.data<std::int8_t>());
    ckpt.add(l.name + ".weight", t);
  }
  ckpt.add(l.name + ".weight_scale", Tensor::from_vector({l.out_channels}, l.weight_scale));
  Tensor bias = Tensor::empty({l.out_channels}, DType::s32);
  std::copy(l.bias.begin(), l.bias.end(), bias.data<std::int32_t>());
  ckpt.add(l.name + ".bias", bias);
}

// Reading context: the file name and the JSON path, for messages.
struct Reader {
  const Checkpoint& ckpt;
  std::set<std::string> used;

  [[noreturn]] void bad(const std::string& field, const std::string& what) const {
    fail(fmt::format("{}: integer model field '{}': {}", ckpt.path, field, what));
  }

  template <typename T>
  T get(const nlohmann::json& j, const std::string& key, const std::string& where) const {
    if (!j.is_object() || !j.contains(key)) bad(where + "." + key, "missing");
    try {
      return j.at(key).get<T>();
    } catch (const nlohmann::json::exception& e) {
      bad(where + "." + key, e.what());
    }
  }

  ActGrid grid(const nlohmann::json& j, const std::string& where) const {
    ActGrid g{get<float>(j, "scale", where), get<std::int32_t>(j, "zero_point", where),
              get<std::int32_t>(j, "qmin", where), get<std::int32_t>(j, "qmax", where)};
    if (!(std::isfinite(g.scale) && g.scale > 0.0f))
      bad(where + ".scale", fmt::format("{} is not > 0", g.scale));
    if (g.zero_point < 0 || g.zero_point > 255) bad(where + ".zero_point", "must lie in [0, 255]");
    if (g.qmin < 0 || g.qmin > g.qmax || g.qmax > 255) bad(where, "needs 0 <= qmin <= qmax <= 255");
    return g;
  }

  const Tensor& tensor(const std::string& name, DType dtype, const Shape& shape) {
    const Tensor* t = ckpt.find(name);
    if (t == nullptr) bad(name, "tensor missing");
    if (t->dtype() != dtype || t->shape() != shape)
      bad(name, fmt::format("is {}, expected {}{}", t->str(), dtype_name(dtype), shape_str(shape)));
    used.insert(name);
    return *t;
  }

  IntLayer layer(const nlohmann::json& j, const std::string& where, bool conv) {
    IntLayer l;
    l.name = get<std::string>(j, "name", where);
    l.in_channels = get<std::int64_t>(j, "in_channels", where);
    l.out_channels = get<std::int64_t>(j, "out_channels", where);
    l.kernel = get<std::int64_t>(j, "kernel", where);
    l.stride = get<std::int64_t>(j, "stride", where);
    l.padding = get<std::int64_t>(j, "padding", where);
    l.weight_bits = get<int>(j, "weight_bits", where);
    if (l.in_channels <= 0 || l.out_channels <= 0 || l.kernel <= 0 || l.stride <= 0 || l.padding < 0 ||
        l.in_channels > (1 << 20) || l.out_channels > (1 << 20) || l.kernel > 15)
      bad(where, "geometry out of range");
    if (!conv && (l.kernel != 1 || l.stride != 1 || l.padding != 0))
      bad(where, "a linear layer has kernel 1");
    if (l.weight_bits < 2 || l.weight_bits > 8) bad(where + ".weight_bits", "must lie in [2, 8]");
    l.output =
        conv ? grid(get<nlohmann::json>(j, "output", where), where + ".output") : ActGrid{1.0f, 0, 0, 0};
    const auto n = l.weight_numel();
    if (l.weight_bits <= 4) {
      const Tensor& t = tensor(l.name + ".weight", DType::u8, {(n + 1) / 2});
      l.weight = ops::cpu::unpack_nibbles({t.data<std::uint8_t>(), static_cast<std::size_t>((n + 1) / 2)}, n);
    } else {
      const Tensor& t =
          tensor(l.name + ".weight", DType::s8, {l.out_channels, l.in_channels, l.kernel, l.kernel});
      l.weight.assign(t.data<std::int8_t>(), t.data<std::int8_t>() + n);
    }
    const int limit = (1 << (l.weight_bits - 1)) - 1;
    for (auto v : l.weight)
      if (v < -limit || v > limit)
        bad(l.name + ".weight",
            fmt::format("value {} outside the {}-bit range [-{}, {}]", v, l.weight_bits, limit, limit));
    const Tensor& scale = tensor(l.name + ".weight_scale", DType::f32, {l.out_channels});
    l.weight_scale = scale.to_vector();
    for (float s : l.weight_scale)
      if (!(std::isfinite(s) && s > 0.0f)) bad(l.name + ".weight_scale", fmt::format("{} is not > 0", s));
    const Tensor& bias = tensor(l.name + ".bias", DType::s32, {l.out_channels});
    l.bias.assign(bias.data<std::int32_t>(), bias.data<std::int32_t>() + l.out_channels);
    return l;
  }
};

}  // namespace

int IntegerModel::max_weight_bits() const {
  int b = 0;
  for (const auto* l : layers()) b = std::max(b, l->weight_bits);
  return b;
}

int IntegerModel::min_weight_bits() const {
  int b = 8;
  for (const auto* l : layers()) b = std::min(b, l->weight_bits);
  return b;
}

std::vector<const IntLayer*> IntegerModel::layers() const {
  std::vector<const IntLayer*> out{&stem};
  for (const auto& b : blocks) {
    out.push_back(&b.conv1);
    if (b.shortcut) out.push_back(&*b.shortcut);
    out.push_back(&b.conv2);
  }
  out.push_back(&fc);
  return out;
}

std::int64_t IntegerModel::final_positions() const {
  auto out_size = [](std::int64_t in, const IntLayer& l) {
    return (in + 2 * l.padding - l.kernel) / l.stride + 1;
  };
  std::int64_t h = out_size(height, stem), w = out_size(width, stem);
  for (const auto& b : blocks) {
    h = out_size(out_size(h, b.conv1), b.conv2);
    w = out_size(out_size(w, b.conv1), b.conv2);
  }
  return h * w;
}

Checkpoint integer_model_to_checkpoint(const IntegerModel& m) {
  nlohmann::ordered_json j;
  j["arch"] = m.arch;
  j["in_channels"] = m.in_channels;
  j["height"] = m.height;
  j["width"] = m.width;
  j["num_classes"] = m.num_classes;
  j["input"] = grid_json(m.input);
  j["stem"] = layer_json(m.stem);
  j["blocks"] = nlohmann::ordered_json::array();
  for (const auto& b : m.blocks)
    j["blocks"].push_back({{"conv1", layer_json(b.conv1)},
                           {"conv2", layer_json(b.conv2)},
                           {"shortcut", b.shortcut ? layer_json(*b.shortcut) : nlohmann::ordered_json()}});
  j["fc"] = layer_json(m.fc);
  Checkpoint ckpt({}, {{"zsq.format", kFormat},
                       {"zsq.arch", m.arch},
                       {"zsq.config", m.arch_config.dump()},
                       {"zsq.quant.source_config", m.quant_config.dump()},
                       {"zsq.int.model", j.dump()}});
  for (const auto* l : m.layers()) add_layer_tensors(ckpt, *l);
  return ckpt;
}

bool is_integer_model_checkpoint(const Checkpoint& checkpoint) {
  const auto it = checkpoint.metadata.find("zsq.format");
  return it != checkpoint.metadata.end() && it->second == kFormat;
}

IntegerModel integer_model_from_checkpoint(const Checkpoint& ckpt) {
  ZSQ_CHECK(is_integer_model_checkpoint(ckpt),
            "{}: not a zsq integer model (zsq.format is not '{}'; make one "
            "with `zsq export --int STUDENT --out FILE`)",
            ckpt.path, kFormat);
  Reader r{ckpt, {}};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ckpt.metadata.at("zsq.int.model"));
    IntegerModel m;
    m.arch = r.get<std::string>(j, "arch", "model");
    m.arch_config = nlohmann::json::parse(ckpt.metadata.at("zsq.config"));
    if (ckpt.metadata.count("zsq.quant.source_config"))
      m.quant_config = nlohmann::json::parse(ckpt.metadata.at("zsq.quant.source_config"));
    m.in_channels = r.get<std::int64_t>(j, "in_channels", "model");
    m.height = r.get<std::int64_t>(j, "height", "model");
    m.width = r.get<std::int64_t>(j, "width", "model");
    m.num_classes = r.get<std::int64_t>(j, "num_classes", "model");
    if (m.in_channels <= 0 || m.height <= 0 || m.width <= 0 || m.num_classes <= 0 || m.height > 4096 ||
        m.width > 4096)
      r.bad("model", "sizes out of range");
    m.input = r.grid(r.get<nlohmann::json>(j, "input", "model"), "input");
    m.stem = r.layer(r.get<nlohmann::json>(j, "stem", "model"), "stem", true);
    if (m.stem.in_channels != m.in_channels)
      r.bad("stem.in_channels", "differs from the model's in_channels");
    std::int64_t channels = m.stem.out_channels;
    const auto blocks = r.get<nlohmann::json>(j, "blocks", "model");
    if (!blocks.is_array()) r.bad("blocks", "not an array");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto where = fmt::format("blocks[{}]", i);
      IntBlock b;
      b.conv1 = r.layer(r.get<nlohmann::json>(blocks[i], "conv1", where), where + ".conv1", true);
      b.conv2 = r.layer(r.get<nlohmann::json>(blocks[i], "conv2", where), where + ".conv2", true);
      if (b.conv1.in_channels != channels || b.conv2.in_channels != b.conv1.out_channels ||
          b.conv2.stride != 1)
        r.bad(where, "channels do not chain");
      const auto sc = r.get<nlohmann::json>(blocks[i], "shortcut", where);
      if (!sc.is_null()) {
        b.shortcut = r.layer(sc, where + ".shortcut", true);
        if (b.shortcut->in_channels != channels || b.shortcut->out_channels != b.conv2.out_channels ||
            b.shortcut->stride != b.conv1.stride)
          r.bad(where + ".shortcut", "does not match the block");
      } else if (b.conv1.stride != 1 || b.conv2.out_channels != channels) {
        r.bad(where, "an identity shortcut needs stride 1 and equal channels");
      }
      channels = b.conv2.out_channels;
      m.blocks.push_back(std::move(b));
    }
    m.fc = r.layer(r.get<nlohmann::json>(j, "fc", "model"), "fc", false);
    if (m.fc.in_channels != channels || m.fc.out_channels != m.num_classes)
      r.bad("fc", "does not match the last block / num_classes");
    if (m.final_positions() <= 0) r.bad("model", "the input is too small for the network's strides");
    for (const auto& [name, t] : ckpt.tensors)
      if (!r.used.count(name)) r.bad(name, "tensor belongs to no layer");
    return m;
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: integer model metadata is not valid JSON: {}", ckpt.path, e.what()));
  } catch (const std::out_of_range&) {
    fail(fmt::format("{}: integer model metadata incomplete (zsq.int.model / zsq.config)", ckpt.path));
  }
}

void save_integer_model(const std::string& path, const IntegerModel& model) {
  save_checkpoint(path, integer_model_to_checkpoint(model));
}

IntegerModel load_integer_model(const std::string& path) {
  return integer_model_from_checkpoint(load_checkpoint(path));
}

}  // namespace zsq::quant
