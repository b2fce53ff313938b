// oneDNN matmul for every product a fully connected layer needs: forward (x * W^T + b), backward data
// (g * W) and backward weights (g^T * x), expressed as one gemm with transposition flags. A transposed
// operand is just the row-major buffer described with the "ba" tag, so nothing is ever copied. Primitive
// descriptors and primitives are cached by shapes and flags.
#include <algorithm>
#include <cstring>
#include <vector>

#include <omp.h>

#include "ops/cpu/dnnl_context.h"
#include "ops/cpu/kernels.h"
#include "ops/linear.h"

namespace zsq::ops::dnnl_impl {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {
// op(t) as a [rows, cols] oneDNN descriptor over t's row-major buffer.
memory::desc operand_desc(const Shape& s, bool trans) {
  return trans ? memory::desc({s[1], s[0]}, dt::f32, tag::ba) : memory::desc({s[0], s[1]}, dt::f32, tag::ab);
}
}  // namespace

Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias) {
  ZSQ_CHECK(a.dim() == 2 && b.dim() == 2 && a.dtype() == DType::f32 && b.dtype() == DType::f32,
            "gemm: 2-D f32 operands expected, got {} and {}", a.str(), b.str());
  const auto N = trans_a ? a.size(1) : a.size(0);
  const auto K = trans_a ? a.size(0) : a.size(1);
  const auto M = trans_b ? b.size(0) : b.size(1);
  ZSQ_CHECK((trans_b ? b.size(1) : b.size(0)) == K, "gemm: inner sizes differ: {}{} x {}{}", a.str(),
            trans_a ? "^T" : "", b.str(), trans_b ? "^T" : "");
  if (bias.defined())
    ZSQ_CHECK(bias.dim() == 1 && bias.size(0) == M, "gemm: bias must be [{}], got {}", M, bias.str());
  Tensor out = Tensor::empty({N, M});
  if (N == 0 || M == 0) return out;
  if (K == 0) {  // an empty sum: just the bias
    float* po = out.f32();
    const float* pb = bias.defined() ? bias.f32() : nullptr;
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t j = 0; j < M; ++j) po[i * M + j] = pb != nullptr ? pb[j] : 0.0f;
    return out;
  }
  const std::string key = fmt::format("matmul:{}{}|{}{}|b{}", shape_str(a.shape()), trans_a ? "T" : "",
                                      shape_str(b.shape()), trans_b ? "T" : "", bias.defined());
  const memory::desc a_md = operand_desc(a.shape(), trans_a);
  const memory::desc b_md = operand_desc(b.shape(), trans_b);
  const memory::desc c_md({N, M}, dt::f32, tag::ab);
  const memory::desc bias_md = bias.defined() ? memory::desc({1, M}, dt::f32, tag::ab) : memory::desc();
  auto& pd = cpu::dnnl_cached<dnnl::matmul::primitive_desc>(key, [&] {
    auto desc =
        bias.defined() ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md) : dnnl::matmul::desc(a_md, b_md, c_md);
    return dnnl::matmul::primitive_desc(desc, cpu::dnnl_engine());
  });
  auto& prim = cpu::dnnl_cached<dnnl::matmul>(key + ":prim", [&] { return dnnl::matmul(pd); });
  auto& eng = cpu::dnnl_engine();
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(a_md, eng, a.raw_data())},
                                       {DNNL_ARG_WEIGHTS, memory(b_md, eng, b.raw_data())},
                                       {DNNL_ARG_DST, memory(c_md, eng, out.raw_data())}};
  if (bias.defined()) args.emplace(DNNL_ARG_BIAS, memory(bias_md, eng, bias.raw_data()));
  prim.execute(cpu::dnnl_stream(), args);
  cpu::dnnl_stream().wait();
  return out;
}

Tensor column_sums(const Tensor& m) {
  ZSQ_CHECK(m.dim() == 2 && m.dtype() == DType::f32, "column_sums: 2-D f32 expected, got {}", m.str());
  const auto rows = m.size(0), cols = m.size(1);
  const float* p = m.f32();
  std::vector<double> acc(static_cast<std::size_t>(cols), 0.0);
  const bool parallel = rows * cols > cpu::kParallelThreshold && rows > 1;
#pragma omp parallel if (parallel)
  {
    std::vector<double> local(static_cast<std::size_t>(cols), 0.0);
    double* l = local.data();
#pragma omp for schedule(static) nowait
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = p + r * cols;
#pragma omp simd
      for (std::int64_t c = 0; c < cols; ++c) l[c] += row[c];
    }
#pragma omp critical
    for (std::int64_t c = 0; c < cols; ++c) acc[static_cast<std::size_t>(c)] += l[c];
  }
  Tensor out = Tensor::empty({cols});
  std::transform(acc.begin(), acc.end(), out.f32(), [](double v) { return static_cast<float>(v); });
  return out;
}

}  // namespace zsq::ops::dnnl_impl
