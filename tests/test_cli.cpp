// End-to-end tests of the zsq binary: help, train + resume, eval, inspect, bench, and the promise that
// bad files end in one clear message and a non-zero exit, never a crash.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "engine/checkpoint.h"
#include "engine/device.h"
#include "models/model_file.h"

namespace fs = std::filesystem;

namespace {
struct Result {
  int code;
  std::string out, err;
};

std::string zsq_binary() {
  const char* dir = std::getenv("ZSQ_BINARY_DIR");
  return (fs::path(dir != nullptr ? dir : "build") / "zsq").string();
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

fs::path work_dir() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("zsq_test_cli_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

Result run(const std::string& args) {
  const auto out = work_dir() / "stdout.txt", err = work_dir() / "stderr.txt";
  const std::string cmd = zsq_binary() + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out), slurp(err)};
}

bool have_data() {
  return fs::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
}

// Copies the Fashion-MNIST files into `dir`, truncating `victim` to `keep` bytes.
void copy_data_with_truncation(const fs::path& dir, const std::string& victim, std::uintmax_t keep) {
  fs::create_directories(dir);
  for (auto& e : fs::directory_iterator("/usr/share/datasets/fashion-mnist")) {
    fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
    if (e.path().filename() == victim) fs::resize_file(dir / victim, keep);
  }
}

bool same_tensors(const std::string& a, const std::string& b) {
  auto ca = zsq::load_checkpoint(a), cb = zsq::load_checkpoint(b);
  if (ca.tensors.size() != cb.tensors.size()) return false;
  for (std::size_t i = 0; i < ca.tensors.size(); ++i)
    if (ca.tensors[i].first != cb.tensors[i].first ||
        ca.tensors[i].second.to_vector() != cb.tensors[i].second.to_vector())
      return false;
  return true;
}
}  // namespace

TEST_CASE("every verb has --help") {
  for (const char* verb : {"", "train", "eval", "inspect", "bench", "quantize", "export", "synth"}) {
    CAPTURE(verb);
    auto r = run(std::string(verb) + " --help");
    CHECK(r.code == 0);
    CHECK(r.out.find("--") != std::string::npos);
  }
}

TEST_CASE("bad flags and missing files are refused with a message") {
  CHECK(run("train --epochs -1 --out x").code != 0);
  CHECK(run("frobnicate").code != 0);
  auto r = run("eval /nonexistent/model.safetensors");
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent/model.safetensors") != std::string::npos);
}

TEST_CASE("--device: a bad name, and a GPU this machine lacks, each give one clear error") {
  for (const char* verb :
       {"train --out x.safetensors", "eval models/pretrained/resnet20.safetensors",
        "quantize --teacher models/pretrained/resnet20.safetensors --method gaussian --out q",
        "bench train --steps 1"}) {
    CAPTURE(verb);
    auto r = run(std::string(verb) + " --device tpu");
    CHECK(r.code == 1);
    CHECK(r.err.find("unknown device 'tpu'") != std::string::npos);
    if (zsq::cuda_available()) continue;  // a GPU machine: --device cuda is valid there
    r = run(std::string(verb) + " --device cuda");
    CHECK(r.code == 1);
    CHECK(r.err.find("--device cuda: no usable GPU") != std::string::npos);
    CHECK(r.err.find('\n') == r.err.size() - 1);  // one line
  }
}

TEST_CASE("train, interrupt, resume: the same model as an uninterrupted run; eval, inspect") {
  if (!have_data()) {
    MESSAGE("skipped: Fashion-MNIST not installed");
    return;
  }
  const auto full = (work_dir() / "full.safetensors").string();
  const auto resumed = (work_dir() / "resumed.safetensors").string();
  const std::string common =
      " --model resnet20 --epochs 2 --batch 64 --limit 256 --no-test --seed 3 --threads 2";
  auto r = run("train" + common + " --out " + full);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.err.find("epoch 2/2") != std::string::npos);
  CHECK(r.err.find("ETA") != std::string::npos);

  r = run("train" + common + " --out " + resumed + " --stop-after-epoch 1");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(fs::exists(resumed + ".state"));
  CHECK_FALSE(fs::exists(resumed));
  r = run("train" + common + " --out " + resumed + " --resume");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.err.find("resuming") != std::string::npos);
  CHECK(same_tensors(full, resumed));

  r = run("eval " + full + " --json");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("n") == 10000);
  CHECK(j.at("accuracy").get<double>() >= 0.0);
  CHECK(j.at("accuracy").get<double>() <= 1.0);
  // Per-class accuracies: ten, and the test set has 1000 images per class, so their mean is the accuracy.
  const auto per_class = j.at("class_accuracy").get<std::vector<double>>();
  REQUIRE(per_class.size() == 10);
  double class_mean = 0.0;
  for (double a : per_class) class_mean += a / 10.0;
  CHECK(class_mean == doctest::Approx(j.at("accuracy").get<double>()).epsilon(1e-9));
  r = run("eval " + full);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("per class: T-shirt/top ") != std::string::npos);
  CHECK(r.out.find("Ankle boot ") != std::string::npos);

  r = run("inspect " + full);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("resnet20") != std::string::npos);
  CHECK(r.out.find("stage3.2.conv2.conv.weight") != std::string::npos);
  CHECK(r.out.find("[64, 64, 3, 3]") != std::string::npos);
}

TEST_CASE("train --width-mult: a narrower MobileNetV2 whose file records the multiplier") {
  auto r = run("train --model resnet20 --width-mult 0.5 --epochs 1 --out " +
               (work_dir() / "w.safetensors").string());
  CHECK(r.code != 0);
  CHECK(r.err.find("--width-mult is for mobilenetv2") != std::string::npos);
  if (!have_data()) {
    MESSAGE("skipped: Fashion-MNIST not installed");
    return;
  }
  const auto out = (work_dir() / "mbv2_half.safetensors").string();
  r =
      run("train --model mobilenetv2 --width-mult 0.5 --epochs 1 --batch 32 --limit 64 --no-test --threads 2 "
          "--out " +
          out);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = run("inspect " + out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("0.5") != std::string::npos);
  // Half width: the stem has 16 output channels instead of 32.
  CHECK(r.out.find("[16, 1, 3, 3]") != std::string::npos);
}

TEST_CASE("a truncated checkpoint: non-zero exit, one clear line") {
  const auto path = (work_dir() / "untrained.safetensors").string();
  zsq::Rng rng(0);
  auto spec = zsq::models::resolve_model_spec("resnet20");
  zsq::models::save_model(path, spec, *zsq::models::build_model(spec, rng));
  REQUIRE(run("inspect " + path).code == 0);
  const auto cut = (work_dir() / "cut.safetensors").string();
  fs::copy_file(path, cut, fs::copy_options::overwrite_existing);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  auto e = run("eval " + cut);
  CHECK(e.code == 1);
  CHECK(e.err.find("cut.safetensors") != std::string::npos);
  CHECK(e.err.find("truncated") != std::string::npos);
  CHECK(std::count(e.err.begin(), e.err.end(), '\n') == 1);
}

TEST_CASE("a truncated IDX file in the data directory: non-zero exit naming the file") {
  const auto path = (work_dir() / "full.safetensors").string();
  if (!have_data() || !fs::exists(path)) {
    MESSAGE("skipped: needs Fashion-MNIST and the model from the train test");
    return;
  }
  const auto dir = work_dir() / "data";
  copy_data_with_truncation(dir, "t10k-labels-idx1-ubyte.gz", 3000);
  auto e = run("eval " + path + " --data " + dir.string());
  CHECK(e.code == 1);
  CHECK(e.err.find("t10k-labels-idx1-ubyte.gz") != std::string::npos);
  CHECK(std::count(e.err.begin(), e.err.end(), '\n') == 1);
}

TEST_CASE("bench prints a JSON median") {
  auto r = run("bench train --model resnet20 --batch 8 --warmup 1 --steps 3 --json");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("img_per_s").get<double>() > 0.0);
  r = run("bench infer --batch 8 --warmup 1 --steps 3 --json");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(nlohmann::json::parse(r.out).at("mode") == "infer");
}
