#include "quant/qconfig.h"

#include <array>
#include <fstream>
#include <sstream>
#include <utility>

#include "engine/check.h"

namespace zsq::quant {

using json = nlohmann::json;

namespace {

template <typename E, std::size_t N>
E parse_enum(const std::string& name, const std::string& field,
             const std::array<std::pair<const char*, E>, N>& table) {
  for (const auto& [text, value] : table)
    if (name == text) return value;
  std::string allowed;
  for (const auto& [text, value] : table) allowed += (allowed.empty() ? "" : " | ") + std::string(text);
  fail(fmt::format("qconfig: {} must be one of {}, got '{}'", field, allowed, name));
}

constexpr std::array<std::pair<const char*, Granularity>, 2> kGranularities{
    {{"per_channel", Granularity::per_channel}, {"per_tensor", Granularity::per_tensor}}};
constexpr std::array<std::pair<const char*, ObserverKind>, 4> kObservers{
    {{"minmax", ObserverKind::minmax},
     {"ema", ObserverKind::ema},
     {"gdfq_ema", ObserverKind::gdfq_ema},
     {"mse", ObserverKind::mse}}};
constexpr std::array<std::pair<const char*, SteKind>, 2> kSteKinds{
    {{"plain", SteKind::plain}, {"clipped", SteKind::clipped}}};
constexpr std::array<std::pair<const char*, BnMode>, 3> kBnModes{
    {{"train", BnMode::train}, {"eval", BnMode::eval}, {"frozen", BnMode::frozen}}};
constexpr std::array<std::pair<const char*, ActRange>, 2> kActRanges{
    {{"observed", ActRange::observed}, {"learned", ActRange::learned}}};

template <typename E, std::size_t N>
const char* enum_name(E value, const std::array<std::pair<const char*, E>, N>& table) {
  for (const auto& [text, v] : table)
    if (v == value) return text;
  return "?";
}

std::string where(const std::string& source) {
  return source.empty() ? "" : " (in " + source + ")";
}

void check_bits(int bits, const std::string& field, const std::string& source, bool allow_zero) {
  if (allow_zero && bits == 0) return;
  ZSQ_CHECK(bits >= kMinBits && bits <= kMaxBits, "qconfig: {} must be {}{}..{}, got {}{}", field,
            allow_zero ? "0 (inherit) or " : "", kMinBits, kMaxBits, bits, where(source));
}

// Typed readers of one JSON value; errors name the key and the source.
int read_int(const json& v, const std::string& key, const std::string& source) {
  ZSQ_CHECK(v.is_number_integer(), "qconfig: {} must be an integer, got {}{}", key, v.dump(), where(source));
  const auto i = v.get<std::int64_t>();
  ZSQ_CHECK(i >= -(1LL << 31) && i < (1LL << 31), "qconfig: {} is out of range: {}{}", key, i, where(source));
  return static_cast<int>(i);
}

float read_float(const json& v, const std::string& key, const std::string& source) {
  ZSQ_CHECK(v.is_number(), "qconfig: {} must be a number, got {}{}", key, v.dump(), where(source));
  return v.get<float>();
}

bool read_bool(const json& v, const std::string& key, const std::string& source) {
  ZSQ_CHECK(v.is_boolean(), "qconfig: {} must be true or false, got {}{}", key, v.dump(), where(source));
  return v.get<bool>();
}

std::string read_string(const json& v, const std::string& key, const std::string& source) {
  ZSQ_CHECK(v.is_string(), "qconfig: {} must be a string, got {}{}", key, v.dump(), where(source));
  return v.get<std::string>();
}

// Runs a parse_* function, adding the source to its message.
template <typename F>
auto with_source(F&& parse, const std::string& source) {
  try {
    return parse();
  } catch (const Error& e) {
    throw Error(e.what() + where(source));
  }
}

void apply_convention(QConfig& cfg, const std::string& name, const std::string& source) {
  if (name == "custom") {
    cfg.convention = name;
    return;
  }
  ZSQ_CHECK(name == "paper" || name == "deploy",
            "qconfig: convention must be one of paper | deploy | custom, got '{}'{}", name, where(source));
  cfg = QConfig::preset(name, cfg.weight_bits, cfg.act_bits);
}

void apply_layer_field(LayerBits& bits, const std::string& layer, const std::string& field, const json& v,
                       const std::string& source) {
  const std::string key = "layers." + layer + "." + field;
  if (field == "weight_bits") {
    bits.weight_bits = read_int(v, key, source);
    check_bits(bits.weight_bits, key, source, true);
  } else if (field == "act_bits") {
    bits.act_bits = read_int(v, key, source);
    check_bits(bits.act_bits, key, source, true);
  } else {
    fail(fmt::format("qconfig: unknown key '{}' (a layer takes weight_bits and act_bits){}", key,
                     where(source)));
  }
}

// One top-level key (convention excluded: the callers order it).
void apply_key(QConfig& cfg, const std::string& key, const json& v, const std::string& source) {
  if (key == "convention") {
    apply_convention(cfg, read_string(v, key, source), source);
  } else if (key == "weight_bits") {
    cfg.weight_bits = read_int(v, key, source);
    check_bits(cfg.weight_bits, key, source, false);
  } else if (key == "act_bits") {
    cfg.act_bits = read_int(v, key, source);
    check_bits(cfg.act_bits, key, source, false);
  } else if (key == "weight_granularity") {
    const auto s = read_string(v, key, source);
    cfg.weight_granularity = with_source([&] { return parse_granularity(s, key); }, source);
  } else if (key == "weight_symmetric") {
    cfg.weight_symmetric = read_bool(v, key, source);
  } else if (key == "act_symmetric") {
    cfg.act_symmetric = read_bool(v, key, source);
  } else if (key == "weight_observer") {
    const auto s = read_string(v, key, source);
    cfg.weight_observer = with_source([&] { return parse_observer_kind(s, key); }, source);
  } else if (key == "act_observer") {
    const auto s = read_string(v, key, source);
    cfg.act_observer = with_source([&] { return parse_observer_kind(s, key); }, source);
  } else if (key == "weight_range") {
    const auto s = read_string(v, key, source);
    cfg.weight_range = with_source([&] { return parse_act_range(s, key); }, source);
  } else if (key == "act_range") {
    const auto s = read_string(v, key, source);
    cfg.act_range = with_source([&] { return parse_act_range(s, key); }, source);
  } else if (key == "ema_momentum") {
    cfg.ema_momentum = read_float(v, key, source);
  } else if (key == "freeze_after") {
    if (v.is_null() || (v.is_string() && v.get<std::string>() == "none")) {
      cfg.freeze_after.reset();
    } else {
      ZSQ_CHECK(v.is_number_integer(), "qconfig: freeze_after must be null/none or an integer, got {}{}",
                v.dump(), where(source));
      cfg.freeze_after = v.get<std::int64_t>();
    }
  } else if (key == "mse_candidates") {
    cfg.mse_candidates = read_int(v, key, source);
  } else if (key == "mse_min_ratio") {
    cfg.mse_min_ratio = read_float(v, key, source);
  } else if (key == "ste") {
    const auto s = read_string(v, key, source);
    cfg.ste = with_source([&] { return parse_ste_kind(s, key); }, source);
  } else if (key == "bn_mode") {
    const auto s = read_string(v, key, source);
    cfg.bn_mode = with_source([&] { return parse_bn_mode(s, key); }, source);
  } else if (key == "fold_bn") {
    cfg.fold_bn = read_bool(v, key, source);
  } else if (key == "quantize_input") {
    cfg.quantize_input = read_bool(v, key, source);
  } else if (key == "first_last_bits") {
    cfg.first_last_bits = read_int(v, key, source);
    check_bits(cfg.first_last_bits, key, source, true);
  } else if (key == "layers") {
    ZSQ_CHECK(v.is_object(), "qconfig: layers must be an object of layer name -> bits, got {}{}", v.dump(),
              where(source));
    for (const auto& [layer, fields] : v.items()) {
      ZSQ_CHECK(!layer.empty(), "qconfig: layers has an empty layer name{}", where(source));
      ZSQ_CHECK(fields.is_object(),
                "qconfig: layers.{} must be an object with weight_bits/act_bits, got {}{}", layer,
                fields.dump(), where(source));
      LayerBits& bits = cfg.layers[layer];
      for (const auto& [field, value] : fields.items()) apply_layer_field(bits, layer, field, value, source);
    }
  } else {
    fail(fmt::format("qconfig: unknown key '{}'{}", key, where(source)));
  }
}

}  // namespace

const char* to_string(Granularity g) {
  return enum_name(g, kGranularities);
}
const char* to_string(ObserverKind k) {
  return enum_name(k, kObservers);
}
const char* to_string(SteKind s) {
  return enum_name(s, kSteKinds);
}
const char* to_string(BnMode m) {
  return enum_name(m, kBnModes);
}
const char* to_string(ActRange r) {
  return enum_name(r, kActRanges);
}

Granularity parse_granularity(const std::string& name, const std::string& field) {
  return parse_enum(name, field, kGranularities);
}
ObserverKind parse_observer_kind(const std::string& name, const std::string& field) {
  return parse_enum(name, field, kObservers);
}
SteKind parse_ste_kind(const std::string& name, const std::string& field) {
  return parse_enum(name, field, kSteKinds);
}
BnMode parse_bn_mode(const std::string& name, const std::string& field) {
  return parse_enum(name, field, kBnModes);
}
ActRange parse_act_range(const std::string& name, const std::string& field) {
  return parse_enum(name, field, kActRanges);
}

QConfig QConfig::paper(int weight_bits, int act_bits) {
  QConfig cfg;  // the member defaults are the paper convention
  cfg.weight_bits = weight_bits;
  cfg.act_bits = act_bits;
  cfg.validate();
  return cfg;
}

QConfig QConfig::deploy(int weight_bits, int act_bits) {
  QConfig cfg;
  cfg.convention = "deploy";
  cfg.weight_bits = weight_bits;
  cfg.act_bits = act_bits;
  cfg.weight_granularity = Granularity::per_channel;
  cfg.weight_symmetric = true;
  cfg.act_symmetric = false;  // u8 after ReLU: the observed lo is 0, so the zero point is 0
  cfg.first_last_bits = 8;
  cfg.quantize_input =
      false;  // the fake-quant student keeps the image in float; the integer runner owns input quantization
  cfg.fold_bn = true;
  cfg.bn_mode = BnMode::frozen;  // folded into the weights: nothing to update
  cfg.validate();
  return cfg;
}

QConfig QConfig::preset(const std::string& name, int weight_bits, int act_bits) {
  if (name == "paper") return paper(weight_bits, act_bits);
  if (name == "deploy") return deploy(weight_bits, act_bits);
  fail(fmt::format("qconfig: unknown preset '{}' (paper | deploy)", name));
}

void QConfig::set(const std::string& key_value, const std::string& source) {
  const auto eq = key_value.find('=');
  ZSQ_CHECK(eq != std::string::npos && eq > 0, "qconfig: expected key=value, got '{}'{}", key_value,
            where(source));
  const std::string key = key_value.substr(0, eq);
  const std::string text = key_value.substr(eq + 1);
  ZSQ_CHECK(!text.empty(), "qconfig: {} has an empty value{}", key, where(source));
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;

  QConfig next = *this;
  if (key.starts_with("layers.")) {
    const auto dot = key.rfind('.');
    const std::string layer = key.substr(7, dot > 7 ? dot - 7 : 0);
    ZSQ_CHECK(dot > 7 && !layer.empty(),
              "qconfig: expected layers.<name>.weight_bits or .act_bits, got '{}'{}", key, where(source));
    apply_layer_field(next.layers[layer], layer, key.substr(dot + 1), value, source);
  } else {
    apply_key(next, key, value, source);
  }
  next.validate(source);
  *this = std::move(next);
}

void QConfig::apply_json(const json& object, const std::string& source) {
  ZSQ_CHECK(object.is_object(), "qconfig: {} must hold a JSON object, got {}", source, object.type_name());
  QConfig next = *this;
  if (object.contains("convention")) apply_key(next, "convention", object.at("convention"), source);
  for (const auto& [key, value] : object.items())
    if (key != "convention") apply_key(next, key, value, source);
  next.validate(source);
  *this = std::move(next);
}

void QConfig::validate(const std::string& source) const {
  ZSQ_CHECK(convention == "paper" || convention == "deploy" || convention == "custom",
            "qconfig: convention must be one of paper | deploy | custom, got '{}'{}", convention,
            where(source));
  check_bits(weight_bits, "weight_bits", source, false);
  check_bits(act_bits, "act_bits", source, false);
  check_bits(first_last_bits, "first_last_bits", source, true);
  ZSQ_CHECK(ema_momentum > 0.0f && ema_momentum < 1.0f, "qconfig: ema_momentum must be in (0, 1), got {}{}",
            ema_momentum, where(source));
  ZSQ_CHECK(!freeze_after || *freeze_after >= 1, "qconfig: freeze_after must be none or >= 1, got {}{}",
            freeze_after.value_or(0), where(source));
  ZSQ_CHECK(weight_observer == ObserverKind::minmax || weight_observer == ObserverKind::mse,
            "qconfig: weight_observer must be minmax or mse, got '{}'{}", to_string(weight_observer),
            where(source));
  ZSQ_CHECK(weight_observer == ObserverKind::minmax || weight_granularity == Granularity::per_channel,
            "qconfig: weight_observer mse needs weight_granularity per_channel{}", where(source));
  ZSQ_CHECK(weight_range == ActRange::observed || weight_granularity == Granularity::per_channel,
            "qconfig: weight_range learned needs weight_granularity per_channel{}", where(source));
  ZSQ_CHECK(act_range == ActRange::observed || !act_symmetric,
            "qconfig: act_range learned needs unsigned activations (act_symmetric false){}", where(source));
  ZSQ_CHECK(mse_candidates >= 2 && mse_candidates <= 100000,
            "qconfig: mse_candidates must be in 2..100000, got {}{}", mse_candidates, where(source));
  ZSQ_CHECK(mse_min_ratio > 0.0f && mse_min_ratio <= 1.0f,
            "qconfig: mse_min_ratio must be in (0, 1], got {}{}", mse_min_ratio, where(source));
  for (const auto& [layer, bits] : layers) {
    ZSQ_CHECK(!layer.empty(), "qconfig: layers has an empty layer name{}", where(source));
    check_bits(bits.weight_bits, "layers." + layer + ".weight_bits", source, true);
    check_bits(bits.act_bits, "layers." + layer + ".act_bits", source, true);
  }
}

LayerBits QConfig::bits_for(const std::string& layer, LayerRole role) const {
  LayerBits out{weight_bits, act_bits};
  if (role != LayerRole::middle && first_last_bits != 0) out = {first_last_bits, first_last_bits};
  if (const auto it = layers.find(layer); it != layers.end()) {
    if (it->second.weight_bits != 0) out.weight_bits = it->second.weight_bits;
    if (it->second.act_bits != 0) out.act_bits = it->second.act_bits;
  }
  return out;
}

nlohmann::ordered_json QConfig::to_json() const {
  nlohmann::ordered_json j;
  j["convention"] = convention;
  j["weight_bits"] = weight_bits;
  j["act_bits"] = act_bits;
  j["weight_granularity"] = to_string(weight_granularity);
  j["weight_symmetric"] = weight_symmetric;
  j["act_symmetric"] = act_symmetric;
  j["weight_observer"] = to_string(weight_observer);
  j["weight_range"] = to_string(weight_range);
  j["act_observer"] = to_string(act_observer);
  j["act_range"] = to_string(act_range);
  j["ema_momentum"] = ema_momentum;
  j["freeze_after"] = freeze_after ? nlohmann::ordered_json(*freeze_after) : nlohmann::ordered_json(nullptr);
  j["mse_candidates"] = mse_candidates;
  j["mse_min_ratio"] = mse_min_ratio;
  j["ste"] = to_string(ste);
  j["bn_mode"] = to_string(bn_mode);
  j["fold_bn"] = fold_bn;
  j["quantize_input"] = quantize_input;
  j["first_last_bits"] = first_last_bits;
  auto& l = j["layers"] = nlohmann::ordered_json::object();
  for (const auto& [layer, bits] : layers)
    l[layer] = {{"weight_bits", bits.weight_bits}, {"act_bits", bits.act_bits}};
  return j;
}

QConfig load_qconfig(const std::string& path) {
  std::ifstream in(path);
  ZSQ_CHECK(in.good(), "qconfig: cannot open {}", path);
  std::stringstream text;
  text << in.rdbuf();
  json object;
  try {
    object = json::parse(text.str());
  } catch (const json::exception& e) {
    fail(fmt::format("qconfig: {} is not valid JSON: {}", path, e.what()));
  }
  QConfig cfg = QConfig::paper();
  cfg.apply_json(object, path);
  return cfg;
}

}  // namespace zsq::quant
