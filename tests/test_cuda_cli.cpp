// `--device cuda` through the zsq binary (run on a GPU machine by tools/gpu-check.sh; skipped without
// one): every quantize method on a small teacher on both devices with the same seed, the two students
// compared on the same inputs, and `bench train|infer --device cuda`. The accuracy comparison on real
// data is tools/gpu-cli-check.sh (it needs Fashion-MNIST).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "quant/student.h"
#include "tests/cli_testing.h"
#include "tests/cuda_testing.h"

using namespace zsq;
using namespace zsq::clitest;
using zsq::testing::kGpu;

namespace {
fs::path scratch() {
  return work_dir("cuda_cli");
}

// Logits of a saved student on `x`, computed on `device`.
Tensor student_logits(const std::string& path, const Tensor& x, Device device) {
  auto student = quant::Student::from_checkpoint(load_checkpoint(path));
  student->to(device);
  student->model().eval();
  NoGrad no_grad;
  return student->model().forward(x.to(device)).to(Device::cpu());
}

// Share of rows whose argmax agrees.
double argmax_agreement(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  const auto rows = a.size(0), k = a.size(1);
  std::int64_t same = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int64_t ia = 0, ib = 0;
    for (std::int64_t j = 1; j < k; ++j) {
      if (va[r * k + j] > va[r * k + ia]) ia = j;
      if (vb[r * k + j] > vb[r * k + ib]) ib = j;
    }
    same += ia == ib;
  }
  return static_cast<double>(same) / static_cast<double>(rows);
}
}  // namespace

TEST_CASE("cuda cli: every quantize method runs with --device cuda and matches the CPU run's student") {
  ZSQ_REQUIRE_GPU();
  const auto teacher = small_teacher(scratch());
  Rng rng(3);
  const Tensor x = randn({64, 1, 32, 32}, rng);
  struct Method {
    const char* name;
    const char* args;
    double max_relative_error;  // of the two students' logits on x
  };
  // Calibration-only methods see the same images on both devices: the students differ by rounding at
  // a few grid boundaries. The trained ones (a few tiny-budget steps) drift further apart.
  const Method methods[] = {{"gaussian", "--calib-images 32", 0.05},
                            {"zeroq", "--calib-images 32 --zeroq-iters 3", 0.05},
                            {"gznq", "--calib-images 32 --budget tiny", 0.2},
                            {"gdfq", "--calib-images 32 --budget tiny", 0.2},
                            {"zaq", "--calib-images 32 --budget tiny", 0.2}};
  for (const auto& m : methods) {
    CAPTURE(m.name);
    std::string students[2];
    for (int d = 0; d < 2; ++d) {
      const char* device = d == 0 ? "cpu" : "cuda";
      const auto out = scratch() / fmt::format("{}_{}", m.name, device);
      const auto r = run_zsq(scratch(), "",
                             fmt::format("quantize --teacher {} --method {} --wbits 4 --abits 4 {} "
                                         "--seed 0 --device {} --out {}",
                                         teacher, m.name, m.args, device, out.string()));
      REQUIRE_MESSAGE(r.code == 0, r.err);
      students[d] = (out / "student.safetensors").string();
      REQUIRE(fs::exists(students[d]));
    }
    const Tensor on_cpu = student_logits(students[0], x, Device::cpu());
    const Tensor on_gpu = student_logits(students[1], x, kGpu);
    // The GPU-made student evaluated on either device gives the same logits (the file is device-free).
    CHECK(zsq::testing::relative_error(student_logits(students[1], x, Device::cpu()), on_gpu) < 1e-4);
    const double err = zsq::testing::relative_error(on_gpu, on_cpu);
    CHECK_MESSAGE(err < m.max_relative_error, m.name << ": CPU and GPU students' logits differ by " << err);
    CHECK(argmax_agreement(on_gpu, on_cpu) >= 0.75);
  }
}

TEST_CASE("cuda cli: bench train and infer --device cuda report the device and a rate") {
  ZSQ_REQUIRE_GPU();
  for (const char* mode : {"train", "infer"}) {
    CAPTURE(mode);
    const auto r = run_zsq(
        scratch(), "", fmt::format("bench {} --batch 32 --warmup 1 --steps 3 --device cuda --json", mode));
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("device").get<std::string>() == "cuda:0");
    CHECK(j.at("img_per_s").get<double>() > 0.0);
  }
  // Integer models stay on the CPU kernels: refused with the reason.
  const auto teacher = small_teacher(scratch());
  const auto r = run_zsq(scratch(), "", fmt::format("bench infer --model {} --int8 --device cuda", teacher));
  CHECK(r.code == 1);
  CHECK(r.err.find("integer models run on the CPU kernels only") != std::string::npos);
}
