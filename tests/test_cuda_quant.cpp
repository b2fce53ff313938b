// The quantization layer on a GPU against the CPU: range observers (min/max, EMA, the MSE histogram)
// reduce device tensors and read back only their results, the MSE weight clip search, the divergence
// check, and a fake-quantized student (tiny ResNet) whose logits match the CPU student's.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "models/zoo.h"
#include "ops/elementwise.h"
#include "ops/fake_quant.h"
#include "ops/reduce.h"
#include "quant/distill.h"
#include "quant/observer.h"
#include "quant/student.h"
#include "quant/weight_ranges.h"
#include "tests/cuda_testing.h"
#include "tests/tiny_teacher.h"

using namespace zsq;
using namespace zsq::testing;

namespace {

bool near_rel(double got, double want, double rtol) {
  return std::abs(got - want) <= rtol * std::max(1.0, std::abs(want));
}

// One activation site's quantizer input and output in one forward.
struct SiteRecord {
  std::string name;
  Tensor in, out;
};

// Runs the student's model (eval mode, no gradients) on x and records every activation site it passes.
std::vector<SiteRecord> traced_forward(quant::Student& student, const Tensor& x, Tensor& logits) {
  std::vector<SiteRecord> records;
  std::vector<models::TensorTransform> saved;
  for (auto& site : student.activation_sites()) {
    saved.push_back(site.unit->output_quantizer);
    auto inner = site.unit->output_quantizer;
    site.unit->output_quantizer = [&records, inner, name = site.name](const Tensor& a) {
      Tensor y = inner(a);
      records.push_back({name, a.detach().clone(), y.detach().clone()});
      return y;
    };
  }
  {
    NoGrad no_grad;
    student.model().eval();
    logits = student.model().forward(x);
  }
  for (std::size_t i = 0; i < saved.size(); ++i)
    student.activation_sites()[i].unit->output_quantizer = saved[i];
  return records;
}

const quant::ActivationSite& site_named(quant::Student& student, const std::string& name) {
  for (const auto& s : student.activation_sites())
    if (s.name == name) return s;
  FAIL("no activation site " << name);
  return student.activation_sites().front();
}

// The GPU and CPU students' quantized forwards agree: every site's quantized output is the CPU's bit for
// bit and the logits are within 1e-4. The one legitimate exception: an activation whose pre-quantization
// value lies within float rounding of a rounding boundary (the convolutions round differently on the
// two devices) may land on the neighbouring grid level; everything after such a site differs
// legitimately, so the check stops there after verifying that each differing element is such a case.
void check_quantized_forward(quant::Student& gpu, quant::Student& cpu, const Tensor& x,
                             const std::string& what) {
  Tensor gpu_logits, cpu_logits;
  const auto g = traced_forward(gpu, x.to(kGpu), gpu_logits);
  const auto c = traced_forward(cpu, x, cpu_logits);
  REQUIRE_MESSAGE(g.size() == c.size(),
                  what << ": " << g.size() << " sites on the GPU, " << c.size() << " on the CPU");
  for (std::size_t k = 0; k < g.size(); ++k) {
    REQUIRE(g[k].name == c[k].name);
    CHECK_MESSAGE(g[k].out.device().is_cuda(), what << ": site " << g[k].name << " left the GPU");
    check_matches(g[k].in, c[k].in, 1e-4, what + ": input of site " + g[k].name);
    const auto go = g[k].out.to_vector(), co = c[k].out.to_vector(), ci = c[k].in.to_vector();
    std::vector<std::size_t> differing;
    for (std::size_t i = 0; i < go.size(); ++i)
      if (go[i] != co[i]) differing.push_back(i);
    if (differing.empty()) continue;
    const auto& site = site_named(cpu, c[k].name);
    const auto [lo, hi] = cpu.activation_range(site);
    const auto grid = ops::fake_quant_grid(lo, hi, {site.bits, cpu.config().act_symmetric, false});
    for (std::size_t i : differing) {
      const double v = static_cast<double>(ci[i]) / grid.delta;
      const double to_boundary = std::abs(v - std::floor(v) - 0.5);
      CHECK_MESSAGE(to_boundary <= 1e-4 * std::max(1.0, std::abs(v)),
                    what << ": site " << c[k].name << " element " << i << " differs (GPU " << go[i]
                         << ", CPU " << co[i] << ") but its input " << ci[i]
                         << " is not at a rounding boundary");
      CHECK_MESSAGE(std::abs(go[i] - co[i]) <= 1.001 * grid.delta,
                    what << ": site " << c[k].name << " element " << i << " moved more than one grid step");
    }
    CHECK_MESSAGE(differing.size() <= 4,
                  what << ": " << differing.size() << " boundary flips at " << c[k].name);
    MESSAGE(what << ": " << differing.size() << " activation(s) at a rounding boundary landed on the other "
                 << "grid level at site " << c[k].name << "; logits not compared");
    return;
  }
  check_matches(gpu_logits, cpu_logits, 1e-4, what + ": logits");
}

}  // namespace

TEST_CASE(
    "cuda observers: min/max, EMA and the MSE histogram follow the CPU; non-finite values are refused") {
  ZSQ_REQUIRE_GPU();
  Rng rng(21);
  // Post-ReLU batches (half zeros: one hot histogram bin), odd sizes, both formats.
  std::vector<Tensor> batches;
  for (const auto& shape : {Shape{8, 16, 32, 32}, Shape{3, 5, 7, 9}, Shape{1, 4, 6, 6}}) {
    NoGrad no_grad;
    batches.push_back(ops::relu(random_cpu(shape, rng, MemoryFormat::channels_last, false, 1.3f)));
  }
  batches.push_back(random_cpu({4, 7, 9, 11}, rng, MemoryFormat::contiguous, false, 0.8f));  // signed values

  for (const auto& b : batches) {
    const auto [lo, hi] = quant::tensor_min_max(b);
    const auto [glo, ghi] = quant::tensor_min_max(b.to(kGpu));
    CHECK(glo == lo);
    CHECK(ghi == hi);
  }
  auto bad = batches[1].to_vector();
  bad[17] = NAN;
  bad[40] = INFINITY;
  CHECK_THROWS_WITH_AS(quant::tensor_min_max(Tensor::from_vector(batches[1].shape(), bad).to(kGpu)),
                       doctest::Contains("2 non-finite"), Error);

  quant::QConfig config = quant::QConfig::paper(4, 4);
  for (auto kind : {quant::ObserverKind::minmax, quant::ObserverKind::ema, quant::ObserverKind::gdfq_ema,
                    quant::ObserverKind::mse}) {
    config.act_observer = kind;
    auto cpu = quant::make_observer(config, 4);
    auto gpu = quant::make_observer(config, 4);
    for (const auto& b : batches) {
      cpu->observe(b);
      gpu->observe(b.to(kGpu));
    }
    const auto cs = cpu->state(), gs = gpu->state();
    REQUIRE(cs.size() == gs.size());
    const std::string name = quant::to_string(kind);
    // min/max-based states are exact; the MSE histogram's sums are added in another order (counts exact).
    const double rtol = kind == quant::ObserverKind::mse ? 1e-6 : 0.0;
    for (std::size_t i = 0; i < cs.size(); ++i)
      CHECK_MESSAGE(near_rel(gs[i], cs[i], rtol),
                    name << " state[" << i << "]: GPU " << gs[i] << " CPU " << cs[i]);
    CHECK_MESSAGE(gpu->lo() == cpu->lo(), name);
    CHECK_MESSAGE(gpu->hi() == cpu->hi(), name);
  }
}

TEST_CASE("cuda weight ranges: the MSE clip search picks the CPU's ranges") {
  ZSQ_REQUIRE_GPU();
  Rng rng(22);
  for (const auto& shape : {Shape{16, 8, 3, 3}, Shape{4, 3000}, Shape{1, 7}})
    for (int bits : {2, 3, 4, 8})
      for (bool symmetric : {false, true}) {
        Tensor w = random_cpu(shape, rng, MemoryFormat::contiguous, false, 0.4f);
        auto v = w.to_vector();
        v[3] = 2.5f;  // an outlier worth clipping
        w = Tensor::from_vector(shape, v);
        const ops::FakeQuantSpec spec{bits, symmetric, false};
        const auto [lo, hi] = quant::mse_channel_ranges(w, spec, {});
        const auto [glo, ghi] = quant::mse_channel_ranges(w.to(kGpu), spec, {});
        const std::string name =
            shape_str(shape) + " " + std::to_string(bits) + (symmetric ? " sym" : " asym");
        CHECK_MESSAGE(glo.device().is_cuda(), name);
        CHECK_MESSAGE(glo.to_vector() == lo.to_vector(), name << ": lo");
        CHECK_MESSAGE(ghi.to_vector() == hi.to_vector(), name << ": hi");
      }
}

TEST_CASE("cuda student: fake-quantized logits match the CPU student's") {
  ZSQ_REQUIRE_GPU();
  Rng rng(23);
  const auto spec = tiny_resnet_spec();
  auto cpu_teacher = tiny_resnet_teacher(rng);
  Rng init(0);
  auto gpu_teacher = models::build_model(spec, init);
  gpu_teacher->load_state(cpu_teacher->named_state(), "teacher");
  gpu_teacher->eval();
  gpu_teacher->to(kGpu);
  const Tensor calibration = quant::gaussian_inputs(8, 1, 32, rng);
  const Tensor x = quant::gaussian_inputs(2, 1, 32, rng);

  struct Case {
    std::string what;
    quant::QConfig config;
    std::vector<std::string> sets;
  };
  const Case cases[] = {
      {"paper W4A4", quant::QConfig::paper(4, 4), {}},
      {"paper W3A3 clipped STE, EMA", quant::QConfig::paper(3, 3), {"ste=clipped", "act_observer=ema"}},
      {"paper W4A4 per-tensor weights", quant::QConfig::paper(4, 4), {"weight_granularity=per_tensor"}},
      {"paper W4A4 MSE weights and activations",
       quant::QConfig::paper(4, 4),
       {"weight_observer=mse", "act_observer=mse"}},
      {"paper W3A3 learned ranges",
       quant::QConfig::paper(3, 3),
       {"act_range=learned", "weight_range=learned", "act_observer=mse"}},
      {"deploy W4A4", quant::QConfig::deploy(4, 4), {}},
  };
  for (const auto& [what, preset, sets] : cases) {
    quant::QConfig config = preset;
    for (const auto& kv : sets) config.set(kv);
    quant::Student cpu(spec, *cpu_teacher, config);
    quant::Student gpu(spec, *gpu_teacher, config);
    REQUIRE(gpu.model().device() == kGpu);
    for (const auto& t : gpu.learned_ranges()) CHECK_MESSAGE(t.device() == kGpu, what << ": a learned range");
    cpu.calibrate(1, [&](std::int64_t) { return calibration; });
    gpu.calibrate(1, [&](std::int64_t) { return calibration.to(kGpu); });

    // Calibrated on the device: the observers saw activations that differ only by convolution rounding.
    REQUIRE(gpu.used_activation_sites().size() == cpu.used_activation_sites().size());
    if (config.act_observer != quant::ObserverKind::mse)
      for (std::size_t i = 0; i < cpu.activation_sites().size(); ++i) {
        const auto [clo, chi] = cpu.activation_range(cpu.activation_sites()[i]);
        const auto [glo, ghi] = gpu.activation_range(gpu.activation_sites()[i]);
        CHECK_MESSAGE(near_rel(glo, clo, 1e-4), what << ": site " << i << " lo " << glo << " vs " << clo);
        CHECK_MESSAGE(near_rel(ghi, chi, 1e-4), what << ": site " << i << " hi " << ghi << " vs " << chi);
      }

    // Weights fake-quantized, activations in full precision: only rounding differs.
    {
      Tensor gl, cl;
      gpu.set_phase(quant::Phase::calibrate);
      cpu.set_phase(quant::Phase::calibrate);
      traced_forward(gpu, x.to(kGpu), gl);
      traced_forward(cpu, x, cl);
      check_matches(gl, cl, 1e-4, what + ": weights quantized, activations in float");
      gpu.set_phase(quant::Phase::quantized);
      cpu.set_phase(quant::Phase::quantized);
    }

    // Fully quantized with the CPU's ranges on both.
    for (std::size_t i = 0; i < cpu.activation_sites().size(); ++i) {
      auto& gs = gpu.activation_sites()[i];
      const auto& cs = cpu.activation_sites()[i];
      gs.observer->load_state(cs.observer->state());
      gs.observations = cs.observations;
    }
    gpu.reset_learned_ranges_to_observed();
    check_quantized_forward(gpu, cpu, x, what);
  }
}

TEST_CASE("cuda student: learned ranges follow a moved model; divergence is found on the device") {
  ZSQ_REQUIRE_GPU();
  Rng rng(24);
  const auto spec = tiny_resnet_spec();
  auto teacher = tiny_resnet_teacher(rng);
  auto config = quant::QConfig::paper(3, 3);
  config.set("act_range=learned");
  config.set("weight_range=learned");
  quant::Student cpu(spec, *teacher, config);
  const Tensor calibration = quant::gaussian_inputs(4, 1, 32, rng);
  cpu.calibrate(1, [&](std::int64_t) { return calibration; });
  // A saved student is loaded on the CPU and only its model moved (zsq eval --device cuda).
  auto moved = quant::Student::from_checkpoint(cpu.to_checkpoint());
  moved->model().to(kGpu);
  check_quantized_forward(*moved, cpu, calibration, "moved student");
  for (const auto& t : moved->learned_ranges()) CHECK(t.device() == kGpu);
  // Student::to moves everything at once, and back.
  moved->to(Device::cpu());
  for (const auto& t : moved->learned_ranges()) CHECK(t.device().is_cpu());
  moved->to(kGpu);

  // Learned-range gradients reach the device tensors of every range the forward uses: each used
  // activation site's hi and every weight site's ratios. learned_ranges() also lists the hi of the two
  // shortcut units, which are never post-ReLU: no forward quantizes with them, so they get no gradient
  // on either device (the CPU test in test_learned_ranges.cpp counts used sites only, too).
  moved->model().eval();
  Tensor logits = moved->model().forward(calibration.to(kGpu));
  ops::sum(logits).backward();
  const auto used = moved->used_activation_sites();
  REQUIRE(used.size() + 2 == moved->activation_sites().size());
  for (const auto* site : used) {
    REQUIRE_MESSAGE(site->learned_hi.grad().defined(), site->name);
    CHECK(site->learned_hi.grad().device() == kGpu);
  }
  for (const auto& site : moved->weight_sites()) {
    REQUIRE_MESSAGE(site.learned_ratio.grad().defined(), site.name);
    CHECK(site.learned_ratio.grad().device() == kGpu);
  }

  CHECK_FALSE(moved->first_diverged_parameter().has_value());
  // The same first bad parameter and value as the CPU check reports.
  const auto params = moved->model().named_parameters();
  const auto cpu_params = cpu.model().named_parameters();
  REQUIRE(params.size() == cpu_params.size());
  for (auto [index, value] : {std::pair{std::size_t{7}, 3e15f}, std::pair{std::size_t{2}, NAN}}) {
    for (auto* list : {&params, &cpu_params}) {
      const Tensor& p = (*list)[index].second;
      auto v = p.to_vector();
      v[v.size() / 2] = value;
      p.copy_from(Tensor::from_vector(p.shape(), v).to_format(p.format()));
    }
    const auto got = moved->first_diverged_parameter();
    const auto want = cpu.first_diverged_parameter();
    REQUIRE(got.has_value());
    REQUIRE(want.has_value());
    CHECK(got->first == want->first);
    CHECK(got->first == params[index].first);
    CHECK((got->second == want->second || (std::isnan(got->second) && std::isnan(want->second))));
  }
}
