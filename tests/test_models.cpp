#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>

#include "engine/optim.h"
#include "models/model_file.h"
#include "models/resnet.h"
#include "ops/loss.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

TEST_CASE("ResNet-20 has the CIFAR layout: 272,186 parameters for 1 input channel, logits [N, 10]") {
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("resnet20"), rng);
  CHECK(model->parameter_count() == 272186);
  CHECK(model->batch_norms().size() == 21);  // stem + 18 block convs + 2 shortcuts
  NoGrad ng;
  model->eval();
  Tensor y = model->forward(randn({3, 1, 32, 32}, rng));
  CHECK(y.shape() == Shape{3, 10});
}

TEST_CASE("MobileNetV2 builds with depthwise convolutions and gives [N, 10] logits") {
  Rng rng(0);
  auto model = models::build_model(models::resolve_model_spec("mobilenetv2", {{"width_mult", 0.5}}), rng);
  bool depthwise = false;
  for (auto& [name, t] : model->named_parameters())
    depthwise |= name.find("depthwise.conv.weight") != std::string::npos && t.size(1) == 1;
  CHECK(depthwise);
  NoGrad ng;
  model->eval();
  const Tensor x = randn({2, 1, 32, 32}, rng);
  const Tensor y = model->forward(x);
  CHECK(y.shape() == Shape{2, 10});
  // Feature stages: one per spatial resolution, then the head; the logits are forward()'s.
  Tensor logits;
  const auto stages = model->forward_features(x, logits);
  REQUIRE(stages.size() == 5);
  const std::int64_t sizes[] = {32, 16, 8, 4, 4};
  for (std::size_t i = 0; i < stages.size(); ++i) CHECK(stages[i].size(2) == sizes[i]);
  CHECK(stages.back().size(1) == 1280);
  CHECK(logits.to_vector() == y.to_vector());
}

TEST_CASE("the zoo rejects unknown models and fields by name") {
  CHECK_THROWS_WITH_AS(models::resolve_model_spec("resnet21"), doctest::Contains("resnet21"), Error);
  CHECK_THROWS_WITH_AS(models::resolve_model_spec("resnet20", {{"depth", 3}}), doctest::Contains("depth"),
                       Error);
}

TEST_CASE("a saved model reloads to identical outputs; mismatched files are rejected") {
  Rng rng(1);
  auto spec = models::resolve_model_spec("resnet20", {{"width", 4}});
  auto model = models::build_model(spec, rng);
  // Train-mode forwards move the BN running statistics away from their defaults first.
  for (int i = 0; i < 2; ++i) model->forward(randn({4, 1, 16, 16}, rng));
  const auto dir = std::filesystem::temp_directory_path() / "zsq_test_models";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "m.safetensors").string();
  models::save_model(path, spec, *model, {{"note", "x"}});
  auto loaded = models::load_model(path);
  CHECK(loaded.metadata.at("note") == "x");
  NoGrad ng;
  model->eval();
  loaded.model->eval();
  Tensor x = randn({2, 1, 16, 16}, rng);
  check_close(loaded.model->forward(x), model->forward(x), 0, 0, "reloaded logits");

  // Same tensors, but the metadata claims a wider model: the shape error names the tensor and file.
  auto other = models::resolve_model_spec("resnet20", {{"width", 8}});
  auto wide = models::build_model(other, rng);
  Checkpoint ckpt = load_checkpoint(path);
  ckpt.metadata["zsq.config"] = other.config.dump();
  save_checkpoint(path, ckpt);
  CHECK_THROWS_WITH_AS(models::load_model(path), doctest::Contains("m.safetensors"), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("gradients through a whole (tiny) ResNet match finite differences") {
  Rng rng(2);
  auto model =
      models::build_model(models::resolve_model_spec("resnet20", {{"width", 2}, {"num_classes", 3}}), rng);
  // Eval mode: with batch statistics every input couples to every output through BN, so one ReLU
  // crossing its kink under the finite-difference step spoils every estimate; the per-op tests cover
  // training-mode BN.
  model->eval();
  Tensor x = random_input({2, 1, 6, 6}, rng);
  // The input and a sample of parameters (all of them would be slow).
  std::vector<Tensor> inputs{x};
  for (auto& [name, t] : model->named_parameters())
    if (name == "stem.conv.weight" || name == "stage2.0.shortcut.bn.weight" || name == "fc.weight")
      inputs.push_back(t);
  REQUIRE(inputs.size() == 4);
  check_gradients([&](const std::vector<Tensor>& in) { return model->forward(in[0]); }, inputs, 1e-3, 5e-2,
                  5e-3);
}

TEST_CASE("end to end: SGD on a small learnable task drives the loss down") {
  Rng rng(3);
  auto model =
      models::build_model(models::resolve_model_spec("resnet20", {{"width", 8}, {"num_classes", 4}}), rng);
  // Class k = a bright 4x4 patch in quadrant k, plus noise.
  const std::int64_t n = 64;
  Tensor x = randn({n, 1, 16, 16}, rng, 0.0f, 0.3f);
  Tensor y = Tensor::empty({n}, DType::s32);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = i % 4;
    y.data<std::int32_t>()[i] = static_cast<std::int32_t>(k);
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 4; ++c) x.f32()[i * 256 + (2 + (k / 2) * 8 + r) * 16 + 2 + (k % 2) * 8 + c] += 2.0f;
  }
  Sgd sgd(model->parameters(), {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  float first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    Tensor loss = ops::cross_entropy(model->forward(x), y);
    if (step == 0) first = loss.item();
    last = loss.item();
    sgd.zero_grad();
    loss.backward();
    sgd.step();
  }
  MESSAGE("loss " << first << " -> " << last);
  CHECK(last < 0.3f * first);
}

TEST_CASE("eval-mode BN folding and fused epilogues give the unfused network's logits") {
  Rng rng(4);
  for (const char* name : {"resnet20", "mobilenetv2"}) {
    CAPTURE(name);
    auto spec = models::resolve_model_spec(name, name == std::string("mobilenetv2")
                                                     ? nlohmann::json{{"width_mult", 0.25}}
                                                     : nlohmann::json::object());
    auto model = models::build_model(spec, rng);
    for (int i = 0; i < 2; ++i) model->forward(randn({8, 1, 32, 32}, rng));  // non-trivial running stats
    model->eval();
    Tensor x = randn({4, 1, 32, 32}, rng);
    Tensor fused;
    {
      NoGrad ng;
      fused = model->forward(x);
    }
    Tensor x_grad = x.clone();
    x_grad.set_requires_grad(true);  // an input needing a gradient forces the unfused path
    Tensor unfused = model->forward(x_grad);
    check_close(fused, unfused.detach(), 1e-4, 1e-4, "folded vs unfolded");
  }
}
