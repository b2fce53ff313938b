// Generator files: a generator's state in a safetensors checkpoint whose __metadata__ says it is one
// ("zsq.kind" = "generator") and holds its config ("zsq.generator.config", JSON), so `zsq synth` can
// rebuild it from the file alone, without the run that trained it. Written atomically (engine/checkpoint.h).
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/checkpoint.h"
#include "models/generator.h"

namespace zsq::models {

nlohmann::json generator_config_to_json(const GeneratorConfig& config);
// Unknown or missing fields are errors naming `source`.
GeneratorConfig generator_config_from_json(const nlohmann::json& j, const std::string& source);

void save_generator(const std::string& path, const Generator& generator,
                    std::map<std::string, std::string> metadata = {});

struct LoadedGenerator {
  std::unique_ptr<Generator> generator;
  std::map<std::string, std::string> metadata;  // everything the file recorded
};
// Errors name the file: unreadable or corrupt, not a generator file, bad config, missing/mismatched tensors.
LoadedGenerator load_generator(const std::string& path);
bool is_generator_checkpoint(const Checkpoint& checkpoint);

}  // namespace zsq::models
