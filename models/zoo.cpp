#include "models/zoo.h"

#include "models/mobilenetv2.h"
#include "models/resnet.h"

namespace zsq::models {

std::vector<std::string> model_names() {
  return {"resnet20", "resnet32", "resnet56", "mobilenetv2"};
}

namespace {
nlohmann::json defaults_for(const std::string& name) {
  if (name == "resnet20" || name == "resnet32" || name == "resnet56")
    return {{"width", 16}, {"in_channels", 1}, {"num_classes", 10}};
  if (name == "mobilenetv2") return {{"width_mult", 1.0}, {"in_channels", 1}, {"num_classes", 10}};
  fail(fmt::format("unknown model '{}' (known: {})", name, fmt::join(model_names(), ", ")));
}
}  // namespace

ModelSpec resolve_model_spec(const std::string& name, const nlohmann::json& overrides) {
  ModelSpec spec{name, defaults_for(name)};
  ZSQ_CHECK(overrides.is_object(), "model config for '{}' must be a JSON object", name);
  for (const auto& [key, value] : overrides.items()) {
    ZSQ_CHECK(spec.config.contains(key), "model '{}' has no config field '{}' (fields: {})", name, key,
              spec.config.dump());
    ZSQ_CHECK(value.is_number(), "model '{}' config field '{}' must be a number, got {}", name, key,
              value.dump());
    spec.config[key] = value;
  }
  return spec;
}

std::shared_ptr<Classifier> build_model(const ModelSpec& spec, Rng& rng) {
  const auto& c = spec.config;
  try {
    if (spec.name.rfind("resnet", 0) == 0) {
      ResNetConfig rc;
      rc.depth = std::stoi(spec.name.substr(6));
      rc.width = c.at("width").get<std::int64_t>();
      rc.in_channels = c.at("in_channels").get<std::int64_t>();
      rc.num_classes = c.at("num_classes").get<std::int64_t>();
      return std::make_shared<CifarResNet>(rc, rng);
    }
    if (spec.name == "mobilenetv2") {
      MobileNetV2Config mc;
      mc.width_mult = c.at("width_mult").get<float>();
      mc.in_channels = c.at("in_channels").get<std::int64_t>();
      mc.num_classes = c.at("num_classes").get<std::int64_t>();
      return std::make_shared<MobileNetV2>(mc, rng);
    }
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("model '{}': bad config {}: {}", spec.name, c.dump(), e.what()));
  }
  fail(fmt::format("unknown model '{}' (known: {})", spec.name, fmt::join(model_names(), ", ")));
}

}  // namespace zsq::models
