// `zsq train --student`: the real-data upper bound fine-tunes a quantized student from its teacher on
// training images and writes a student that says what it is; misuse ends in one clear message.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "quant/student.h"
#include "tests/cli_testing.h"

namespace fs = std::filesystem;
using namespace zsq;

namespace {
fs::path work_dir() {
  return clitest::work_dir("train_student");
}
clitest::Result run(const std::string& args) {
  return clitest::run_zsq(work_dir(), "", args);
}
bool have_data() {
  return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
}
}  // namespace

TEST_CASE("train --student: KD on real images changes the student, keeps it a student, records how") {
  if (!have_data()) {
    MESSAGE("skipped: Fashion-MNIST not installed");
    return;
  }
  const auto teacher = clitest::small_teacher(work_dir());
  const auto run_dir = (work_dir() / "gaussian").string();
  auto r = run(
      fmt::format("quantize --teacher {} --method gaussian --wbits 4 --abits 4 --out {} --calib-images 32",
                  teacher, run_dir));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto student = run_dir + "/student.safetensors";
  const auto tuned = (work_dir() / "tuned.safetensors").string();
  r =
      run(fmt::format("train --student {} --teacher {} --steps 3 --batch 16 --limit 64 --no-test --set "
                      "act_range=learned --set weight_range=learned --out {} --threads 2",
                      student, teacher, tuned));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.err.find("kd loss") != std::string::npos);
  CHECK(r.out.find("saved " + tuned) != std::string::npos);
  const Checkpoint before = load_checkpoint(student), after = load_checkpoint(tuned);
  REQUIRE(quant::Student::is_student_checkpoint(after));
  CHECK(after.metadata.at("zsq.quant.method").find("real-data") != std::string::npos);
  CHECK(nlohmann::json::parse(after.metadata.at("zsq.quant.config")).at("act_range") == "learned");
  CHECK(after.at("stage1.0.conv1.conv.weight").to_vector() !=
        before.at("stage1.0.conv1.conv.weight").to_vector());
  CHECK(after.at("quant.act.stem").to_vector() != before.at("quant.act.stem").to_vector());  // re-observed
  auto reloaded = quant::Student::from_checkpoint(after);
  CHECK(reloaded->config().act_range == quant::ActRange::learned);
  CHECK(after.find("quant.weight_ratio.stem.conv") != nullptr);  // started at 1 (min/max), then trained
}

TEST_CASE("train --student: misuse is refused with a message") {
  const auto teacher = clitest::small_teacher(work_dir());
  auto r =
      run(fmt::format("train --student {} --teacher {} --out x.safetensors --no-test", teacher, teacher));
  CHECK(r.code == 1);
  CHECK(r.err.find("not a quantized student") != std::string::npos);
  r = run(fmt::format("train --teacher {} --out x.safetensors", teacher));
  CHECK(r.code == 1);
  CHECK(r.err.find("--student") != std::string::npos);
  r = run("train --student /nonexistent/student.safetensors --teacher x --out y --no-test");
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent/student.safetensors") != std::string::npos);
  if (!have_data()) return;
  const auto run_dir = (work_dir() / "gaussian_w8").string();
  r = run(
      fmt::format("quantize --teacher {} --method gaussian --wbits 8 --abits 8 --out {} --calib-images 16",
                  teacher, run_dir));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = run(fmt::format("train --student {}/student.safetensors --out x.safetensors --no-test", run_dir));
  CHECK(r.code == 1);
  CHECK(r.err.find("--teacher") != std::string::npos);
  // A teacher of another architecture.
  const auto other = (work_dir() / "other.safetensors").string();
  {
    Rng rng(1);
    auto spec = models::resolve_model_spec("resnet20", {{"width", 4}});
    auto model = models::build_model(spec, rng);
    models::save_model(other, spec, *model);
  }
  r = run(fmt::format("train --student {}/student.safetensors --teacher {} --out x.safetensors --no-test",
                      run_dir, other));
  CHECK(r.code == 1);
  CHECK(r.err.find(other) != std::string::npos);
}
