// The small teacher the method tests share: a width-4 ResNet-20 in eval mode whose BN running statistics
// have moved off their initial values (two training-mode forwards on noise), so BN-statistics losses and
// calibrations have something non-trivial to match. Draws from `rng` in a fixed order, so a test that
// seeds it gets the same teacher every run.
#pragma once
#include <memory>

#include "engine/rng.h"
#include "models/zoo.h"

namespace zsq::testing {

inline models::ModelSpec tiny_resnet_spec() {
  return models::resolve_model_spec("resnet20", {{"width", 4}});
}

inline std::shared_ptr<models::Classifier> tiny_resnet_teacher(Rng& rng) {
  auto teacher = models::build_model(tiny_resnet_spec(), rng);
  for (int i = 0; i < 2; ++i) teacher->forward(randn({8, 1, 32, 32}, rng));
  teacher->eval();
  return teacher;
}

}  // namespace zsq::testing
