// zsq bench kernels, the measuring part (see kernel_bench.h). Every case builds its operands and
// primitives once, outside the timing; weights are reordered (oneDNN) or packed (int4) once, as an
// inference engine would. A timed sample repeats the call until it lasts min_sample_s, so that short
// kernels are not dominated by clock resolution; the row reports the median sample.
#include "tools/kernel_bench.h"

#include <omp.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>

#include "engine/rng.h"
#include "ops/cpu/conv2d_int4.h"
#include "ops/cpu/dnnl_context.h"
#include "ops/cpu/gemm_int4.h"
#include "ops/cpu/matmul_int8_dnnl.h"
#include "ops/cpu/peak.h"

namespace zsq::cli {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
namespace cpu = ops::cpu;

struct Timing {
  int warmup = 2, repeats = 7;
  double min_sample_s = 0.02;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median seconds per call of fn.
double seconds_per_call(const std::function<void()>& fn, const Timing& t) {
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  for (int i = 0; i < t.warmup; ++i) fn();
  auto t0 = Clock::now();
  fn();
  const double one = std::max(since(t0), 1e-7);
  const int calls = static_cast<int>(std::clamp(std::ceil(t.min_sample_s / one), 1.0, 10000.0));
  std::vector<double> samples;
  for (int r = 0; r < t.repeats; ++r) {
    t0 = Clock::now();
    for (int i = 0; i < calls; ++i) fn();
    samples.push_back(since(t0) / calls);
  }
  return median(samples);
}

template <typename T>
std::vector<T> random_values(std::int64_t count, int lo, int hi, Rng& rng) {
  std::vector<T> v(static_cast<std::size_t>(count));
  for (auto& x : v)
    x = static_cast<T>(lo + static_cast<int>(rng.below(static_cast<std::uint64_t>(hi - lo + 1))));
  return v;
}

std::vector<float> random_f32(std::int64_t count, Rng& rng) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (auto& x : v) x = rng.normal();
  return v;
}

// oneDNN f32 matmul C[M, N] = A[M, K] * W[N, K]^T with W reordered once into the layout it picks.
class F32Matmul {
 public:
  F32Matmul(std::int64_t m, std::int64_t n, std::int64_t k, const float* w) {
    auto& eng = cpu::dnnl_engine();
    const memory::desc a_md({m, k}, dt::f32, tag::ab), w_md({k, n}, dt::f32, tag::any),
        c_md({m, n}, dt::f32, tag::ab);
    pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, w_md, c_md), eng);
    prim_ = dnnl::matmul(pd_);
    memory user({{k, n}, dt::f32, memory::dims{1, k}}, eng, const_cast<float*>(w));
    weights_ = memory(pd_.weights_desc(), eng);
    dnnl::reorder(user, weights_).execute(cpu::dnnl_stream(), user, weights_);
    cpu::dnnl_stream().wait();
  }
  void run(const float* a, float* c) {
    auto& eng = cpu::dnnl_engine();
    prim_.execute(cpu::dnnl_stream(), {{DNNL_ARG_SRC, memory(pd_.src_desc(), eng, const_cast<float*>(a))},
                                       {DNNL_ARG_WEIGHTS, weights_},
                                       {DNNL_ARG_DST, memory(pd_.dst_desc(), eng, c)}});
    cpu::dnnl_stream().wait();
  }
  std::string impl() const { return pd_.impl_info_str(); }

 private:
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul prim_;
  memory weights_;
};

// A ResNet-20 convolution (square input and kernel).
struct ConvCase {
  const char* name;
  std::int64_t cin, cout, hw, kernel, stride, pad;
  std::int64_t out_hw() const { return (hw + 2 * pad - kernel) / stride + 1; }
};

const ConvCase kResnet20Convs[] = {
    {"conv1 1->16 3x3 @32x32", 1, 16, 32, 3, 1, 1},
    {"16->16 3x3 @32x32", 16, 16, 32, 3, 1, 1},
    {"16->32 3x3 s2 @32x32", 16, 32, 32, 3, 2, 1},
    {"32->32 3x3 @16x16", 32, 32, 16, 3, 1, 1},
    {"32->64 3x3 s2 @16x16", 32, 64, 16, 3, 2, 1},
    {"64->64 3x3 @8x8", 64, 64, 8, 3, 1, 1},
    {"shortcut 16->32 1x1 s2 @32x32", 16, 32, 32, 1, 2, 0},
    {"shortcut 32->64 1x1 s2 @16x16", 32, 64, 16, 1, 2, 0},
};

// oneDNN direct convolution for inference: NHWC activations, weights `any` (reordered once from OIHW).
class DnnlConv {
 public:
  DnnlConv(const ConvCase& c, std::int64_t batch, dt src_dt, dt wei_dt, dt dst_dt, const void* w_oihw) {
    auto& eng = cpu::dnnl_engine();
    const memory::desc src({batch, c.cin, c.hw, c.hw}, src_dt, tag::nhwc);
    const memory::desc wts({c.cout, c.cin, c.kernel, c.kernel}, wei_dt, tag::any);
    const memory::desc dst({batch, c.cout, c.out_hw(), c.out_hw()}, dst_dt, tag::nhwc);
    const memory::dims strides{c.stride, c.stride}, pad{c.pad, c.pad};
    const memory::dims pad_r{(c.out_hw() - 1) * c.stride + c.kernel - c.hw - c.pad,
                             (c.out_hw() - 1) * c.stride + c.kernel - c.hw - c.pad};
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference,
                                         dnnl::algorithm::convolution_direct, src, wts, dst, strides, pad,
                                         pad_r);
    pd_ = dnnl::convolution_forward::primitive_desc(desc, eng);
    prim_ = dnnl::convolution_forward(pd_);
    memory user({{c.cout, c.cin, c.kernel, c.kernel}, wei_dt, tag::oihw}, eng, const_cast<void*>(w_oihw));
    weights_ = memory(pd_.weights_desc(), eng);
    dnnl::reorder(user, weights_).execute(cpu::dnnl_stream(), user, weights_);
    cpu::dnnl_stream().wait();
  }
  void run(const void* src, void* dst) {
    auto& eng = cpu::dnnl_engine();
    prim_.execute(cpu::dnnl_stream(), {{DNNL_ARG_SRC, memory(pd_.src_desc(), eng, const_cast<void*>(src))},
                                       {DNNL_ARG_WEIGHTS, weights_},
                                       {DNNL_ARG_DST, memory(pd_.dst_desc(), eng, dst)}});
    cpu::dnnl_stream().wait();
  }
  std::string impl() const { return pd_.impl_info_str(); }

 private:
  dnnl::convolution_forward::primitive_desc pd_;
  dnnl::convolution_forward prim_;
  memory weights_;
};

class Bench {
 public:
  Bench(const KernelReport& report, const Timing& timing) : report_(report), timing_(timing) {}

  KernelRow& add(const std::string& group, const std::string& name, const std::string& dtype, std::int64_t m,
                 std::int64_t n, std::int64_t k, const std::string& impl, const std::function<void()>& fn) {
    KernelRow row{group, name, dtype, impl, m, n, k};
    const double s = seconds_per_call(fn, timing_);
    row.ms = s * 1e3;
    row.gops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / s * 1e-9;
    const double peak = dtype == "f32" ? report_.fma_gflops : report_.vnni_gops;
    row.pct_peak = peak > 0 ? 100.0 * row.gops / peak : 0.0;
    rows_.push_back(row);
    return rows_.back();
  }
  std::vector<KernelRow> take() { return std::move(rows_); }

 private:
  const KernelReport& report_;
  Timing timing_;
  std::vector<KernelRow> rows_;
};

// f32, int8 and int4 GEMM rows at M = N = K = size.
void gemm_rows(Bench& bench, std::int64_t size, Rng& rng) {
  const std::int64_t m = size, n = size, k = size;
  const std::string name = fmt::format("M=N=K={}", size);
  {
    const auto a = random_f32(m * k, rng), w = random_f32(n * k, rng);
    std::vector<float> c(static_cast<std::size_t>(m * n));
    F32Matmul mm(m, n, k, w.data());
    bench.add("gemm", name, "f32", m, n, k, mm.impl(), [&] { mm.run(a.data(), c.data()); });
  }
  const auto a = random_values<std::uint8_t>(m * k, 0, 255, rng);
  const auto w = random_values<std::int8_t>(n * k, -8, 7, rng);
  std::vector<std::int32_t> c(static_cast<std::size_t>(m * n));
  {
    const auto packed = cpu::pack_int8_matmul_weights(w.data(), n, k, k);
    bench.add("gemm", name, "int8", m, n, k, cpu::matmul_int8_impl_info(m, k, packed, false),
              [&] { cpu::matmul_u8s8s32(a.data(), m, k, packed, c.data(), n); });
  }
  const auto packed = cpu::pack_int4_weights(w.data(), n, k, k);
  bench.add("gemm", name, "int4", m, n, k, cpu::kInt4KernelName,
            [&] { cpu::gemm_u8s4s32(a.data(), m, k, packed, c.data(), n); });
}

// int8 vs int4 at small M with weights larger than the last-level cache: the memory-bound case.
void membound_rows(Bench& bench, std::int64_t kn, Rng& rng) {
  const std::int64_t n = kn, k = kn;
  const auto w = random_values<std::int8_t>(n * k, -8, 7, rng);
  const auto packed8 = cpu::pack_int8_matmul_weights(w.data(), n, k, k);
  const auto packed4 = cpu::pack_int4_weights(w.data(), n, k, k);
  for (std::int64_t m : {1, 4, 16}) {
    const auto a = random_values<std::uint8_t>(m * k, 0, 255, rng);
    std::vector<std::int32_t> c(static_cast<std::size_t>(m * n));
    const std::string name = fmt::format("M={} K=N={}", m, kn);
    const double int8_ms =
        bench
            .add("membound", name, "int8", m, n, k, cpu::matmul_int8_impl_info(m, k, packed8, false),
                 [&] { cpu::matmul_u8s8s32(a.data(), m, k, packed8, c.data(), n); })
            .ms;
    auto& row = bench.add("membound", name, "int4", m, n, k, cpu::kInt4KernelName,
                          [&] { cpu::gemm_u8s4s32(a.data(), m, k, packed4, c.data(), n); });
    row.speedup_vs_int8 = int8_ms / row.ms;
  }
}

// One convolution in f32 (oneDNN), int8 (oneDNN: u8 src, s8 weights, s32 dst) and int4 (blocked
// im2col + int4 GEMM, conv2d_int4.h).
void conv_rows(Bench& bench, const ConvCase& c, std::int64_t batch, Rng& rng) {
  const std::int64_t oh = c.out_hw();
  const std::int64_t m = batch * oh * oh, n = c.cout, k = c.kernel * c.kernel * c.cin;
  const std::int64_t in_elems = batch * c.hw * c.hw * c.cin, w_elems = n * k;
  {
    const auto x = random_f32(in_elems, rng), w = random_f32(w_elems, rng);
    std::vector<float> y(static_cast<std::size_t>(m * n));
    DnnlConv conv(c, batch, dt::f32, dt::f32, dt::f32, w.data());
    bench.add("conv", c.name, "f32", m, n, k, conv.impl(), [&] { conv.run(x.data(), y.data()); });
  }
  const auto x = random_values<std::uint8_t>(in_elems, 0, 255, rng);
  std::vector<std::int32_t> y(static_cast<std::size_t>(m * n));
  {
    const auto w = random_values<std::int8_t>(w_elems, -128, 127, rng);
    DnnlConv conv(c, batch, dt::u8, dt::s8, dt::s32, w.data());
    bench.add("conv", c.name, "int8", m, n, k, conv.impl(), [&] { conv.run(x.data(), y.data()); });
  }
  const auto w = random_values<std::int8_t>(w_elems, -8, 7, rng);  // OHWI, as im2col orders K
  const auto packed = cpu::pack_int4_weights(w.data(), n, k, k);
  const cpu::Im2colShape shape{.n = batch,
                               .h = c.hw,
                               .w = c.hw,
                               .c = c.cin,
                               .kh = c.kernel,
                               .kw = c.kernel,
                               .p = ops::Conv2dParams{c.stride, c.stride, c.pad, c.pad, 1, 1, 1}};
  bench.add("conv", c.name, "int4", m, n, k, cpu::kInt4ConvName,
            [&] { cpu::conv2d_u8s4s32(x.data(), shape, 0, packed, y.data()); });
}

}  // namespace

KernelReport run_kernel_bench(const KernelBenchOptions& options) {
  KernelReport report;
  report.threads = omp_get_max_threads();
  report.quick = options.quick;
  report.conv_batch = options.quick ? 2 : 128;
  const double peak_s = options.quick ? 0.02 : 0.2;
  const int peak_repeats = options.quick ? 1 : 3;
  report.fma_gflops = cpu::measure_fma_peak_gflops(peak_s, peak_repeats);
  report.vnni_gops = cpu::has_avx512_vnni() ? cpu::measure_vnni_peak_gops(peak_s, peak_repeats) : 0.0;

  const Timing timing = options.quick ? Timing{1, 3, 0.001} : Timing{};
  Bench bench(report, timing);
  Rng rng(0);
  const std::vector<std::int64_t> sizes =
      options.quick ? std::vector<std::int64_t>{64, 128} : std::vector<std::int64_t>{1024, 2048, 4096};
  for (std::int64_t size : sizes) gemm_rows(bench, size, rng);
  membound_rows(bench, options.quick ? 512 : 8192, rng);
  for (const auto& c : kResnet20Convs) conv_rows(bench, c, report.conv_batch, rng);
  report.rows = bench.take();
  return report;
}

}  // namespace zsq::cli
