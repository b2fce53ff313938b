#include "models/generator_file.h"

namespace zsq::models {

namespace {
constexpr const char* kKind = "zsq.kind";
constexpr const char* kConfig = "zsq.generator.config";
}  // namespace

nlohmann::json generator_config_to_json(const GeneratorConfig& c) {
  return {{"conditional", c.conditional}, {"latent", c.latent},
          {"num_classes", c.num_classes}, {"channels", c.channels},
          {"image_size", c.image_size},   {"gdfq_bn_eps_quirk", c.gdfq_bn_eps_quirk}};
}

GeneratorConfig generator_config_from_json(const nlohmann::json& j, const std::string& source) {
  ZSQ_CHECK(j.is_object(), "{}: generator config must be a JSON object, got {}", source, j.dump());
  const nlohmann::json known = generator_config_to_json(GeneratorConfig{});
  for (const auto& [key, value] : j.items())
    ZSQ_CHECK(known.contains(key), "{}: unknown generator config field '{}'", source, key);
  for (const auto& [key, value] : known.items())
    ZSQ_CHECK(j.contains(key), "{}: generator config lacks field '{}'", source, key);
  GeneratorConfig c;
  try {
    c.conditional = j.at("conditional").get<bool>();
    c.latent = j.at("latent").get<std::int64_t>();
    c.num_classes = j.at("num_classes").get<std::int64_t>();
    c.channels = j.at("channels").get<std::int64_t>();
    c.image_size = j.at("image_size").get<std::int64_t>();
    c.gdfq_bn_eps_quirk = j.at("gdfq_bn_eps_quirk").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: bad generator config {}: {}", source, j.dump(), e.what()));
  }
  return c;
}

void save_generator(const std::string& path, const Generator& generator,
                    std::map<std::string, std::string> metadata) {
  metadata[kKind] = "generator";
  metadata[kConfig] = generator_config_to_json(generator.config()).dump();
  save_checkpoint(path, Checkpoint(generator.named_state(), std::move(metadata)));
}

bool is_generator_checkpoint(const Checkpoint& checkpoint) {
  auto kind = checkpoint.metadata.find(kKind);
  return kind != checkpoint.metadata.end() && kind->second == "generator" &&
         checkpoint.metadata.count(kConfig) > 0;
}

LoadedGenerator load_generator(const std::string& path) {
  const Checkpoint checkpoint = load_checkpoint(path);
  ZSQ_CHECK(is_generator_checkpoint(checkpoint),
            "{}: not a zsq generator file (no zsq.kind = generator / {} in __metadata__; a quantize run "
            "writes one as OUT/generator.safetensors)",
            path, kConfig);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(checkpoint.metadata.at(kConfig));
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: {} is not valid JSON: {}", path, kConfig, e.what()));
  }
  const GeneratorConfig config = generator_config_from_json(j, path);
  LoadedGenerator out;
  Rng rng(0);
  try {
    out.generator = std::make_unique<Generator>(config, rng);
  } catch (const Error& e) {
    fail(fmt::format("{}: {}", path, e.what()));
  }
  std::vector<std::pair<std::string, Tensor>> state;
  for (const auto& [name, t] : out.generator->named_state()) {
    const Tensor* found = checkpoint.find(name);
    ZSQ_CHECK(found != nullptr, "{}: missing generator tensor '{}' (expects {})", path, name, t.str());
    state.emplace_back(name, *found);
  }
  out.generator->load_state(state, path);
  out.metadata = checkpoint.metadata;
  return out;
}

}  // namespace zsq::models
