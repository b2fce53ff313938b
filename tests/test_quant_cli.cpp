// `zsq quantize` end to end, and the zero-shot promise: quantization never opens a data set.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/autograd.h"
#include "models/model_file.h"
#include "quant/report.h"
#include "quant/student.h"
#include "tests/cli_testing.h"
#include "tests/testing.h"

namespace fs = std::filesystem;
using namespace zsq;

namespace {
using clitest::Result;
const std::string& kBinaryDir = clitest::binary_dir();
const std::string& kSourceDir = clitest::source_dir();

fs::path work_dir() {
  return clitest::work_dir("quant");
}
std::string slurp(const fs::path& p) {
  return clitest::slurp(p);
}
Result run(const std::string& env, const std::string& args) {
  return clitest::run_zsq(work_dir(), env, args);
}
std::string small_teacher() {
  return clitest::small_teacher(work_dir());
}

// Preloads the shim and forbids the data set's directories (the default one and $ZSQ_DATA's).
std::string no_data_env() {
  const auto fake_data = work_dir() / "fashion-data";
  fs::create_directories(fake_data);
  return "ZSQ_DATA=" + fake_data.string() + " ZSQ_FORBIDDEN_PATHS=/usr/share/datasets:" + fake_data.string() +
         " LD_PRELOAD=" + kBinaryDir + "/tests/libzsq_no_data_shim.so";
}
}  // namespace

TEST_CASE("the zero-shot promise: quantize never opens the data set; eval does (shim control)") {
  const auto teacher = small_teacher();
  // Every method, the generator-based ones with the tiny budget (2 epochs: checkpoints, generator file
  // and sample grids are written under the shim too). One thread: fast on a busy 2-core machine.
  for (const char* method : {"gaussian", "zeroq", "gznq", "gdfq", "zaq"}) {
    CAPTURE(method);
    const auto out = (work_dir() / (std::string("run_") + method)).string();
    auto r = run(no_data_env(), fmt::format("quantize --teacher {} --method {} --wbits 4 --abits 4 --out {} "
                                            "--calib-images 32 --zeroq-iters 3 --budget tiny --threads 1",
                                            teacher, method, out));
    CHECK_MESSAGE(r.code == 0, r.err);
    CHECK(r.err.find("zero-shot violation") == std::string::npos);
    CHECK(fs::exists(out + "/student.safetensors"));
    CHECK(fs::exists(out + "/report.md"));
    CHECK(fs::exists(out + "/report.json"));
    const auto report = quant::read_report(out);
    CHECK_FALSE(report.contains("research_mode"));
    CHECK(slurp(out + "/report.md").find("Research mode") == std::string::npos);
    if (std::string(method) == "gdfq" || std::string(method) == "zaq") {
      CHECK(fs::exists(out + "/state.safetensors"));
      CHECK(fs::exists(out + "/generator.safetensors"));
      CHECK(fs::exists(out + "/samples/epoch_002.png"));
    }
    // Every non-paper budget clips ranges by MSE (gdfq too: W4A4 standard 93.79% vs 93.10% with EMA).
    CHECK(report["config"]["act_observer"] == "mse");
  }
  // Positive control: the same shim stops a verb that does read data.
  auto control = run(no_data_env(), "eval " + teacher);
  CHECK(control.code == 97);
  CHECK(control.err.find("zero-shot violation") != std::string::npos);
}

TEST_CASE("quant/ neither includes nor links the dataset library") {
  for (auto& entry : fs::recursive_directory_iterator(fs::path(kSourceDir) / "quant")) {
    if (!entry.is_regular_file()) continue;
    const std::string text = slurp(entry.path());
    CAPTURE(entry.path().string());
    CHECK(text.find("tools/datasets") == std::string::npos);
    CHECK(text.find("fashion_mnist") == std::string::npos);
  }
  const auto lib = fs::path(kBinaryDir) / "libzsq_quant.a";
  REQUIRE(fs::exists(lib));
  const auto symbols = work_dir() / "symbols.txt";
  REQUIRE(std::system(("nm -C " + lib.string() + " > " + symbols.string()).c_str()) == 0);
  const std::string names = slurp(symbols);
  CHECK(names.find("load_fashion_mnist") == std::string::npos);
  CHECK(names.find("read_idx") == std::string::npos);
  CHECK(names.find("BatchLoader") == std::string::npos);
}

TEST_CASE("a quantized student saves, reloads and evaluates to identical logits") {
  auto loaded = models::load_model(small_teacher());
  loaded.model->eval();
  auto config = quant::QConfig::paper(4, 4);
  quant::Student student(loaded.spec, *loaded.model, config);
  Rng rng(1);
  Tensor calib = randn({32, 1, 32, 32}, rng);
  student.set_phase(quant::Phase::calibrate);
  student.model().eval();
  {
    NoGrad ng;
    student.model().forward(calib);
  }
  student.freeze_ranges();
  student.set_phase(quant::Phase::quantized);
  CHECK(student.used_activation_sites().size() == 19);  // stem + 9 blocks x 2 post-ReLU units
  const auto path = (work_dir() / "student.safetensors").string();
  save_checkpoint(path, student.to_checkpoint());
  auto reloaded = quant::Student::from_checkpoint(load_checkpoint(path));
  Tensor x = randn({4, 1, 32, 32}, rng);
  NoGrad ng;
  Tensor a = student.model().forward(x), b = reloaded->model().forward(x);
  testing::check_close(b, a, 0, 0, "reloaded student");
  // Quantization really happened: the student differs from the teacher, and activations sit on the grid.
  CHECK(quant::sqnr_db(loaded.model->forward(x), a) < 60.0);
}

TEST_CASE("the student puts BN in the mode the config asks for fine-tuning") {
  auto loaded = models::load_model(small_teacher());
  for (auto mode : {quant::BnMode::train, quant::BnMode::eval, quant::BnMode::frozen}) {
    auto config = quant::QConfig::paper(4, 4);
    config.bn_mode = mode;
    quant::Student student(loaded.spec, *loaded.model, config);
    student.prepare_for_training();
    auto* bn = student.model().batch_norms().front();
    CHECK(student.model().is_training());
    CHECK(bn->is_training() == (mode == quant::BnMode::train));
    CHECK(bn->weight.requires_grad() == (mode != quant::BnMode::frozen));
    CHECK(student.weight_sites().front().weight.requires_grad());
  }
}

TEST_CASE("quantized checkpoints evaluate through zsq eval, and eval --report adds accuracy rows") {
  const char* data = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
  if (!fs::exists(data)) {
    MESSAGE("skipped: Fashion-MNIST not installed");
    return;
  }
  const auto out = (work_dir() / "run_eval").string();
  auto r = run(
      "",
      fmt::format("quantize --teacher {} --method gaussian --wbits 8 --abits 8 --out {} --calib-images 64",
                  small_teacher(), out));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = run("", fmt::format("eval {}/student.safetensors --report {} --json", out, out));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("quantized") == true);
  CHECK(j.at("n") == 10000);
  auto report = quant::read_report(out);
  REQUIRE(report.contains("accuracy"));
  CHECK(report["accuracy"].size() == 2);
  CHECK(report.contains("layers_test"));
  const std::string md = slurp(out + "/report.md");
  CHECK(md.find("FP teacher") != std::string::npos);
  CHECK(md.find("stage3.2.conv2.conv") != std::string::npos);
}

TEST_CASE("research mode: --eval-data evaluates after every epoch, and the report says so") {
  const char* data = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
  if (!fs::exists(data)) {
    MESSAGE("skipped: Fashion-MNIST not installed");
    return;
  }
  const auto out = (work_dir() / "run_research").string();
  auto r = run(
      "",
      fmt::format("quantize --teacher {} --method gdfq --budget tiny --out {} --threads 1 --calib-images 32 "
                  "--eval-data /usr/share/datasets/fashion-mnist",
                  small_teacher(), out));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.err.find("research mode") != std::string::npos);
  // metrics.csv: test_acc on each epoch's last row only.
  std::istringstream csv(slurp(out + "/metrics.csv"));
  std::string line;
  std::getline(csv, line);
  CHECK(line.substr(line.rfind(',') + 1) == "test_acc");
  std::vector<std::string> acc;
  while (std::getline(csv, line)) acc.push_back(line.substr(line.rfind(',') + 1));
  REQUIRE(acc.size() == 4);  // 2 epochs x 2 iterations
  CHECK(acc[0].empty());
  CHECK(acc[2].empty());
  CHECK_FALSE(acc[1].empty());
  CHECK_FALSE(acc[3].empty());
  const auto report = quant::read_report(out);
  REQUIRE(report.contains("research_mode"));
  const auto& m = report["research_mode"];
  CHECK(m["epochs"].size() == 2);
  CHECK(m["last_epoch"] == 2);
  CHECK(m["last_accuracy"].get<double>() == doctest::Approx(std::stod(acc[3])).epsilon(1e-5));
  CHECK(m["best_accuracy"].get<double>() >= m["last_accuracy"].get<double>());
  const std::string md = slurp(out + "/report.md");
  CHECK(md.find("Research mode: test set evaluated every epoch (--eval-data") != std::string::npos);
  CHECK(md.find(fmt::format("best epoch {}", m["best_epoch"].get<int>())) != std::string::npos);
  CHECK(md.find("last epoch acc") != std::string::npos);
}

TEST_CASE("bad quantize flags are refused") {
  CHECK(run("", "quantize --teacher x --method nonsense --out y").code != 0);
  CHECK(run("", "quantize --teacher x --method gaussian --wbits 1 --out y").code != 0);
  auto r = run("", "quantize --teacher /nonexistent.safetensors --method gaussian --out " +
                       (work_dir() / "z").string());
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent.safetensors") != std::string::npos);
  r = run("", "quantize --teacher x --method gaussian --eval-data /tmp --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("--eval-data is for gdfq and zaq") != std::string::npos);
  CHECK(run("", "quantize --teacher x --method zeroq --epochs 3 --out y").code == 1);
  CHECK(run("", "quantize --teacher x --method gdfq --budget huge --out y").code != 0);
  CHECK(run("", "quantize --teacher x --method gdfq").code == 1);  // no --out, no --resume DIR
}

TEST_CASE("the report records the convolution algorithm; a bad $ZSQ_CONV_ALGO is refused by name") {
  const auto out = (work_dir() / "run_conv_algo").string();
  const auto args = fmt::format(
      "quantize --teacher {} --method gaussian --calib-images 16 --threads 1 --out {}", small_teacher(), out);
  auto r = run("ZSQ_CONV_ALGO=direct", args);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(quant::read_report(out)["conv_algorithm"] == "direct");
  CHECK(slurp(out + "/report.md").find("| conv_algorithm | direct |") != std::string::npos);
  r = run("ZSQ_CONV_ALGO=auto", args);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(quant::read_report(out)["conv_algorithm"] == "auto");
  r = run("ZSQ_CONV_ALGO=fast", args);
  CHECK(r.code == 1);
  CHECK(r.err.find("$ZSQ_CONV_ALGO: unknown convolution algorithm 'fast'") != std::string::npos);
}

TEST_CASE("export --int: a deploy student becomes an integer model that eval and bench run") {
  const auto out = (work_dir() / "run_deploy").string();
  auto r =
      run("", fmt::format("quantize --teacher {} --method gaussian --wbits 4 --abits 4 --convention deploy "
                          "--out {} --calib-images 32",
                          small_teacher(), out));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto int_model = out + "/int.safetensors";
  // Export reads no data either.
  r = run(no_data_env(), fmt::format("export --int {}/student.safetensors --out {} --json", out, int_model));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("input_zero_point") == 73);
  bool packed = false;
  for (const auto& layer : j.at("layers")) packed = packed || layer.at("storage") == "packed int4";
  CHECK(packed);
  CHECK(Checkpoint(load_checkpoint(int_model)).metadata.at("zsq.format") == "zsq-int-v1");

  r = run("", fmt::format("bench infer --model {} --batch 4 --warmup 1 --steps 2 --json", int_model));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  j = nlohmann::json::parse(r.out);
  CHECK(j.at("integer") == true);
  CHECK(j.at("rows").size() == 2);
  CHECK(j.at("rows")[1].at("p99_ms").get<double>() >= j.at("rows")[1].at("p50_ms").get<double>());
  CHECK(j.at("implementations").at("stem").get<std::string>().find("avx512") != std::string::npos);
  r = run("", fmt::format("bench infer --model {} --int8 --batch 4 --warmup 1 --steps 2 --json",
                          small_teacher()));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(nlohmann::json::parse(r.out).at("integer") == true);

  if (fs::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")) {
    r = run("", fmt::format("eval {} --json", int_model));
    REQUIRE_MESSAGE(r.code == 0, r.err);
    j = nlohmann::json::parse(r.out);
    CHECK(j.at("integer") == true);
    CHECK(j.at("n") == 10000);
  }

  // Refusals, each one line naming what is wrong.
  r = run("", fmt::format("export --int {} --out {}/x.safetensors", small_teacher(), out));
  CHECK(r.code == 1);
  CHECK(r.err.find("not a quantized student") != std::string::npos);
  const auto paper = (work_dir() / "run_paper").string();
  REQUIRE(
      run("", fmt::format(
                  "quantize --teacher {} --method gaussian --wbits 8 --abits 8 --out {} --calib-images 16",
                  small_teacher(), paper))
          .code == 0);
  r = run("", fmt::format("export --int {}/student.safetensors --out {}/x.safetensors", paper, out));
  CHECK(r.code == 1);
  CHECK(r.err.find("--convention deploy") != std::string::npos);
  r = run("", fmt::format("bench infer --model {} --device cuda", int_model));
  CHECK(r.code == 1);
  CHECK(r.err.find("CUDA") != std::string::npos);
  r = run("", fmt::format("bench infer --model {} --int8", int_model));
  CHECK(r.code == 1);
  CHECK(r.err.find("--int4") != std::string::npos);
  fs::resize_file(int_model, fs::file_size(int_model) - 100);
  r = run("", fmt::format("eval {}", int_model));
  CHECK(r.code == 1);
  CHECK(r.err.find(int_model) != std::string::npos);
}

TEST_CASE("--opt sets named method options; they reach the report and a resume must repeat them") {
  auto r = run("", "quantize --method zaq --budget standard --list-options");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.find("q_lr") != std::string::npos);
  CHECK(r.out.find("lr_schedule") != std::string::npos);
  CHECK(r.out.find("(default 0.0001)") != std::string::npos);  // the standard budget's student lr
  r = run("", "quantize --method gdfq --list-options");
  REQUIRE(r.code == 0);
  CHECK(r.out.find("bns_weight") != std::string::npos);

  // Bad keys and values are refused before any file is read, naming the key.
  r = run("", "quantize --teacher /nonexistent --method zaq --opt q_lrr=1 --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("no option 'q_lrr'") != std::string::npos);
  r = run("", "quantize --teacher /nonexistent --method zaq --opt q_lr=fast --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("--opt q_lr") != std::string::npos);
  r = run("", "quantize --teacher /nonexistent --method gdfq --opt lr_schedule=linear --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("step, cosine") != std::string::npos);
  r = run("", "quantize --teacher /nonexistent --method zaq --opt lr_milestones=5,3 --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("increasing") != std::string::npos);
  r = run("", "quantize --teacher /nonexistent --method gaussian --opt q_lr=1 --out y");
  CHECK(r.code == 1);
  CHECK(r.err.find("--opt is for gdfq, zaq and gznq") != std::string::npos);

  const auto out = (work_dir() / "run_opts").string();
  const std::string base = fmt::format(
      "quantize --teacher {} --method zaq --budget tiny --threads 1 "
      "--calib-images 16 --out {}",
      small_teacher(), out);
  r = run("", base + " --opt q_lr=0.002 --opt lr_schedule=cosine --opt alpha=0.5");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto report = quant::read_report(out);
  REQUIRE(report.contains("method_options"));
  CHECK(report["method_options"]["q_lr"].get<double>() == doctest::Approx(0.002));
  CHECK(report["method_options"]["alpha"].get<double>() == doctest::Approx(0.5));
  CHECK(report["method_options"]["lr_schedule"] == "cosine");
  CHECK(slurp(out + "/report.md").find("| method options |") != std::string::npos);
  // The state records the options: resuming with others would silently change the run.
  r = run("", base + " --opt q_lr=0.003 --opt lr_schedule=cosine --opt alpha=0.5 --resume");
  CHECK(r.code == 1);
  CHECK(r.err.find("resume with the same settings") != std::string::npos);

  // A student step that overflows a weight ends the run with what diverged and what to change.
  r = run("", fmt::format("quantize --teacher {} --method zaq --budget tiny --threads 1 --calib-images 16 "
                          "--out {} --opt q_lr=3e38",
                          small_teacher(), (work_dir() / "run_diverged").string()));
  CHECK(r.code == 1);
  CHECK(r.err.find("the student diverged at epoch 1 iteration 1") != std::string::npos);
  CHECK(r.err.find("--opt q_lr=") != std::string::npos);
}
