#include "models/model_file.h"

namespace zsq::models {

void save_model(const std::string& path, const ModelSpec& spec, const Classifier& model,
                std::map<std::string, std::string> metadata) {
  metadata["zsq.arch"] = spec.name;
  metadata["zsq.config"] = spec.config.dump();
  save_checkpoint(path, Checkpoint(model.named_state(), std::move(metadata)));
}

LoadedModel model_from_checkpoint(const Checkpoint& checkpoint) {
  const std::string& file = checkpoint.path;
  auto arch = checkpoint.metadata.find("zsq.arch");
  auto config = checkpoint.metadata.find("zsq.config");
  ZSQ_CHECK(arch != checkpoint.metadata.end() && config != checkpoint.metadata.end(),
            "{}: not a zsq model file (no zsq.arch / zsq.config in __metadata__)", file);
  nlohmann::json overrides;
  try {
    overrides = nlohmann::json::parse(config->second);
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: zsq.config is not valid JSON: {}", file, e.what()));
  }
  LoadedModel out;
  try {
    out.spec = resolve_model_spec(arch->second, overrides);
  } catch (const Error& e) {
    fail(fmt::format("{}: {}", file, e.what()));
  }
  Rng rng(0);
  out.model = build_model(out.spec, rng);
  // Only the model's own tensors: a training-state file also carries optimizer state.
  std::vector<std::pair<std::string, Tensor>> state;
  for (auto& [name, t] : out.model->named_state()) {
    const Tensor* found = checkpoint.find(name);
    ZSQ_CHECK(found != nullptr, "{}: missing tensor '{}' for {} (expects {})", file, name, arch->second,
              t.str());
    state.emplace_back(name, *found);
  }
  out.model->load_state(state, file);
  out.metadata = checkpoint.metadata;
  return out;
}

LoadedModel load_model(const std::string& path) {
  return model_from_checkpoint(load_checkpoint(path));
}

}  // namespace zsq::models
