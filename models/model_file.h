// Model files: a safetensors checkpoint whose __metadata__ names the architecture ("zsq.arch") and
// its resolved config ("zsq.config", JSON), so any file rebuilds its own model.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "engine/checkpoint.h"
#include "models/zoo.h"

namespace zsq::models {

struct LoadedModel {
  ModelSpec spec;
  std::shared_ptr<Classifier> model;
  std::map<std::string, std::string> metadata;  // everything else the file recorded
};

void save_model(const std::string& path, const ModelSpec& spec, const Classifier& model,
                std::map<std::string, std::string> metadata = {});
// Errors name the file: not a zsq model, unknown architecture, bad config, missing/mismatched tensors.
LoadedModel load_model(const std::string& path);
// The same from an already loaded checkpoint (e.g. a training-state file).
LoadedModel model_from_checkpoint(const Checkpoint& checkpoint);

}  // namespace zsq::models
