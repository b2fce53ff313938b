// One iteration of each generator-based method, exactly as its trainer's run() performs it
// (begin_epoch, then iterate), on the shipped ResNet-20 teacher at W4A4 (paper convention, EMA range
// observer as `zsq quantize` uses for the quick budgets), after the warm-up so the student trains too:
//   BM_GdfqIteration/128, /200  one generator step (CE + BN statistics through the teacher) and one
//                               student step (KD + CE); 200 is the paper's CIFAR batch
//   .../conv:direct             the same with every convolution direct (ZSQ_CONV_ALGO=direct), the
//                               baseline for the default's Winograd layers, timed in the same run
//   BM_ZaqIteration/256         q_steps (5) student steps + one generator step (output + channel/spatial
//                               relation discrepancy, activation regularizer); the paper's batch
// items_per_second is iterations/s; img/s counts generated images (batch per generator forward).
// The teacher is models/pretrained/resnet20.safetensors in the source tree; $ZSQ_TEACHER overrides it.
// Run: ./build/bench/bench_generative --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "models/model_file.h"
#include "ops/conv2d.h"
#include "quant/methods/gdfq.h"
#include "quant/methods/zaq.h"

using namespace zsq;

namespace {

std::string teacher_path() {
  const char* env = std::getenv("ZSQ_TEACHER");
  return env != nullptr ? env : std::string(ZSQ_SOURCE_DIR) + "/models/pretrained/resnet20.safetensors";
}

struct Setup {
  models::LoadedModel teacher = models::load_model(teacher_path());
  std::unique_ptr<quant::Student> student;
  Setup() {
    teacher.model->eval();
    auto config = quant::QConfig::paper(4, 4);
    config.act_observer = quant::ObserverKind::ema;
    student = std::make_unique<quant::Student>(teacher.spec, *teacher.model, config);
  }
};

// Runs one warm-up-epoch iteration (ranges observe real generator output before they freeze), moves
// to the first epoch after warm-up and range freezing, then times iterations there.
template <typename Trainer>
void time_iterations(benchmark::State& state, Trainer& trainer, std::int64_t first_trained_epoch,
                     std::int64_t images_per_iteration) {
  Rng rng(1);
  trainer.begin_epoch(0);
  trainer.iterate(0, 0, rng);
  trainer.begin_epoch(first_trained_epoch);
  std::int64_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(trainer.iterate(first_trained_epoch, i++, rng));
  state.SetItemsProcessed(state.iterations());
  state.counters["img/s"] = benchmark::Counter(static_cast<double>(images_per_iteration),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// Second benchmark argument: 0 = the default convolution algorithm (auto), 1 = direct everywhere.
ops::ConvAlgorithm algorithm_of(std::int64_t direct) {
  return direct != 0 ? ops::ConvAlgorithm::direct : ops::ConvAlgorithm::auto_select;
}

void BM_GdfqIteration(benchmark::State& state) {
  ops::ScopedConvAlgorithm algorithm(algorithm_of(state.range(1)));
  Setup s;
  auto options = quant::GdfqOptions::budget("quick");
  options.batch = state.range(0);
  quant::GdfqTrainer trainer(*s.teacher.model, *s.student, options);
  time_iterations(state, trainer, std::max(options.warmup_epochs, options.freeze_epochs), options.batch);
}
BENCHMARK(BM_GdfqIteration)
    ->ArgNames({"batch", "conv:direct"})
    ->Args({128, 0})
    ->Args({128, 1})
    ->Args({200, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_ZaqIteration(benchmark::State& state) {
  ops::ScopedConvAlgorithm algorithm(algorithm_of(state.range(1)));
  Setup s;
  auto options = quant::ZaqOptions::budget("quick");
  options.batch = state.range(0);
  quant::ZaqTrainer trainer(*s.teacher.model, *s.student, options);
  time_iterations(state, trainer, std::max<std::int64_t>(options.freeze_epochs, 1),
                  options.batch * (options.q_steps + 1));
}
BENCHMARK(BM_ZaqIteration)
    ->ArgNames({"batch", "conv:direct"})
    ->Args({256, 0})
    ->Args({256, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
