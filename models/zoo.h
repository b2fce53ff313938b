// Build a classifier by name from a JSON config; unknown names and fields get a precise error.
//   resnet20 / resnet32 / resnet56:  {"width": 16, "in_channels": 1, "num_classes": 10}
//   mobilenetv2:                      {"width_mult": 1.0, "in_channels": 1, "num_classes": 10}
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "models/layers.h"

namespace zsq::models {

struct ModelSpec {
  std::string name;
  nlohmann::json config;  // complete: every field with its resolved value
};

std::vector<std::string> model_names();
// Fills defaults and validates fields; the returned spec is what checkpoints record.
ModelSpec resolve_model_spec(const std::string& name,
                             const nlohmann::json& overrides = nlohmann::json::object());
std::shared_ptr<Classifier> build_model(const ModelSpec& spec, Rng& rng);

}  // namespace zsq::models
