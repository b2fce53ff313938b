// oneDNN 2.x int8 matmul (see matmul_int8_dnnl.h). W[N, K] row-major is the {K, N} weights operand with
// strides {1, ldw}; oneDNN picks its blocked layout (format_tag::any) and the weights are reordered into it
// once. The per-column scales are runtime output scales (DNNL_RUNTIME_F32_VAL), so one cached primitive
// serves any scale values; the bias is a per-column binary-add post-op applied after the scales, because
// oneDNN 2.x adds a matmul's own bias before scaling (dst = scale * (acc + bias)) and we want
// scale * acc + bias with an f32 bias.
#include "ops/cpu/matmul_int8_dnnl.h"

#include <cstdlib>
#include <vector>

#include "engine/check.h"
#include "ops/cpu/dnnl_context.h"

namespace zsq::ops::cpu {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Int8MatmulWeightsImpl {
  std::vector<memory> layouts;  // [0]: the layout chosen at packing time; more only if a primitive asks
};

namespace {
// The M that picks the layout at packing time; oneDNN's brgemm matmul blocks W by N and K only.
constexpr std::int64_t kPackingRows = 64;

enum class Out { s32, f32 };

struct Key {
  std::int64_t m, lda, ldc;
  Out out;
  bool bias, relu;
};

dnnl::matmul::primitive_desc& cached_pd(const Key& key, std::int64_t n, std::int64_t k) {
  const std::string name =
      fmt::format("matmul_u8s8:{}x{}x{}|lda{}|ldc{}|{}{}{}", key.m, k, n, key.lda, key.ldc,
                  key.out == Out::s32 ? "s32" : "f32", key.bias ? "+bias" : "", key.relu ? "+relu" : "");
  return dnnl_cached<dnnl::matmul::primitive_desc>(name, [&] {
    const memory::desc a_md({key.m, k}, dt::u8, memory::dims{key.lda, 1});
    const memory::desc w_md({k, n}, dt::s8, tag::any);
    const memory::desc c_md({key.m, n}, key.out == Out::s32 ? dt::s32 : dt::f32, memory::dims{key.ldc, 1});
    dnnl::primitive_attr attr;
    if (key.out == Out::f32) {
      attr.set_output_scales(1 << 1, {DNNL_RUNTIME_F32_VAL});
      dnnl::post_ops ops;
      if (key.bias) ops.append_binary(dnnl::algorithm::binary_add, memory::desc({1, n}, dt::f32, tag::ab));
      if (key.relu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(ops);
    }
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, w_md, c_md), attr, dnnl_engine());
  });
}

dnnl::matmul& cached_primitive(const Key& key, std::int64_t n, std::int64_t k) {
  auto& pd = cached_pd(key, n, k);
  const std::string name = fmt::format("matmul_u8s8_prim:{}x{}x{}|lda{}|ldc{}|{}{}{}", key.m, k, n, key.lda,
                                       key.ldc, key.out == Out::s32 ? "s32" : "f32", key.bias, key.relu);
  return dnnl_cached<dnnl::matmul>(name, [&] { return dnnl::matmul(pd); });
}

// The packed weights in the layout `want`, reordered from the first layout on first request.
memory& weights_for(const Int8MatmulWeights& w, const memory::desc& want) {
  auto& layouts = w.impl->layouts;
  for (auto& mem : layouts)
    if (mem.get_desc() == want) return mem;
  memory converted(want, dnnl_engine());
  dnnl::reorder(layouts.front(), converted).execute(dnnl_stream(), layouts.front(), converted);
  dnnl_stream().wait();
  layouts.push_back(converted);
  return layouts.back();
}

void check_call(const Int8MatmulWeights& w, std::int64_t m, std::int64_t lda, std::int64_t ldc,
                const char* what) {
  ZSQ_CHECK(w.impl != nullptr && !w.impl->layouts.empty(), "{}: weights are not packed", what);
  ZSQ_CHECK(m >= 0, "{}: negative row count {}", what, m);
  ZSQ_CHECK(lda >= w.k && ldc >= w.n, "{}: strides lda={} ldc={} too small for k={} n={}", what, lda, ldc,
            w.k, w.n);
}

void execute(const Key& key, const Int8MatmulWeights& w, const std::uint8_t* a, void* c,
             const GemmEpilogue* e) {
  auto& pd = cached_pd(key, w.n, w.k);
  auto& prim = cached_primitive(key, w.n, w.k);
  auto& eng = dnnl_engine();
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(pd.src_desc(), eng, const_cast<std::uint8_t*>(a))},
      {DNNL_ARG_WEIGHTS, weights_for(w, pd.weights_desc())},
      {DNNL_ARG_DST, memory(pd.dst_desc(), eng, c)}};
  if (e != nullptr) {
    args.emplace(DNNL_ARG_ATTR_OUTPUT_SCALES,
                 memory({{w.n}, dt::f32, tag::x}, eng, const_cast<float*>(e->col_scale)));
    if (e->col_bias != nullptr)
      args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
                   memory({{1, w.n}, dt::f32, tag::ab}, eng, const_cast<float*>(e->col_bias)));
  }
  if (std::getenv("ZSQ_VERBOSE_DNNL") != nullptr)
    fmt::print(stderr, "matmul u8s8 {}x{}x{}: {}\n", key.m, w.k, w.n, pd.impl_info_str());
  prim.execute(dnnl_stream(), args);
  dnnl_stream().wait();
}
}  // namespace

Int8MatmulWeights pack_int8_matmul_weights(const std::int8_t* w, std::int64_t n, std::int64_t k,
                                           std::int64_t ldw) {
  ZSQ_CHECK(n >= 1 && k >= 1, "pack_int8_matmul_weights: need n >= 1 and k >= 1, got n={} k={}", n, k);
  ZSQ_CHECK(ldw >= k, "pack_int8_matmul_weights: row stride {} is smaller than k={}", ldw, k);
  Int8MatmulWeights packed{n, k, std::make_shared<Int8MatmulWeightsImpl>()};
  const Key key{kPackingRows, k, n, Out::s32, false, false};
  const memory::desc want = cached_pd(key, n, k).weights_desc();
  memory user(memory::desc({k, n}, dt::s8, memory::dims{1, ldw}), dnnl_engine(), const_cast<std::int8_t*>(w));
  memory mem(want, dnnl_engine());
  dnnl::reorder(user, mem).execute(dnnl_stream(), user, mem);
  dnnl_stream().wait();
  packed.impl->layouts.push_back(mem);
  return packed;
}

void matmul_u8s8s32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w,
                    std::int32_t* c, std::int64_t ldc) {
  check_call(w, m, lda, ldc, "matmul_u8s8s32");
  if (m == 0) return;
  execute({m, lda, ldc, Out::s32, false, false}, w, a, c, nullptr);
}

void matmul_u8s8f32(const std::uint8_t* a, std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w,
                    const GemmEpilogue& epilogue, float* out, std::int64_t ldo) {
  check_call(w, m, lda, ldo, "matmul_u8s8f32");
  ZSQ_CHECK(epilogue.col_scale != nullptr, "matmul_u8s8f32: col_scale is required");
  if (m == 0) return;
  execute({m, lda, ldo, Out::f32, epilogue.col_bias != nullptr, epilogue.relu}, w, a, out, &epilogue);
}

std::string matmul_int8_impl_info(std::int64_t m, std::int64_t lda, const Int8MatmulWeights& w, bool f32_out,
                                  bool with_bias, bool relu) {
  check_call(w, m, lda, w.n, "matmul_int8_impl_info");
  return cached_pd({m, lda, w.n, f32_out ? Out::f32 : Out::s32, f32_out && with_bias, f32_out && relu}, w.n,
                   w.k)
      .impl_info_str();
}

}  // namespace zsq::ops::cpu
