#include "ops/attention.h"

#include <cmath>

#include "engine/autograd.h"
#include "ops/cuda/attention.h"

namespace zsq::ops {

namespace {
void check_operand(const Tensor& t, const char* name) {
  ZSQ_CHECK(t.defined(), "attention: {} is undefined", name);
  ZSQ_CHECK(t.dim() == 3 && t.dtype() == DType::f32, "attention: {} must be 3-D f32 [B, N, D], got {}", name,
            t.str());
}

// Every tensor an attention function reads must sit on q's device.
void check_device(const Tensor& q, const Tensor& t, const char* name) {
  ZSQ_CHECK(t.device() == q.device(), "attention: q and {} are on different devices: {} on {} and {} on {}",
            name, q.str(), q.device().str(), t.str(), t.device().str());
}

blockwise::Dims check_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  check_operand(q, "q");
  check_operand(k, "k");
  check_operand(v, "v");
  check_device(q, k, "k");
  check_device(q, v, "v");
  ZSQ_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0),
            "attention: batch sizes differ: q {}, k {}, v {}", q.str(), k.str(), v.str());
  ZSQ_CHECK(q.size(2) == k.size(2), "attention: q {} and k {} must have the same feature size D ({} vs {})",
            q.str(), k.str(), q.size(2), k.size(2));
  ZSQ_CHECK(k.size(1) == v.size(1), "attention: k {} and v {} must have the same number of keys ({} vs {})",
            k.str(), v.str(), k.size(1), v.size(1));
  ZSQ_CHECK(k.size(1) >= 1, "attention: softmax over an empty key set (k {})", k.str());
  ZSQ_CHECK(std::isfinite(scale), "attention: scale must be finite, got {}", scale);
  return {q.size(0), q.size(1), k.size(1), q.size(2), v.size(2)};
}
}  // namespace

Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor* logsumexp_out) {
  const auto d = check_attention(q, k, v, scale);
  Tensor out = Tensor::empty({d.B, d.Nq, d.Dv}, DType::f32, MemoryFormat::contiguous, q.device());
  Tensor lse = Tensor::empty({d.B, d.Nq}, DType::f32, MemoryFormat::contiguous, q.device());
#if ZSQ_WITH_CUDA
  if (q.is_cuda()) {
    cuda::attention_forward({d.B, d.Nq, d.Nk, d.D, d.Dv}, q.cuda_f32(), k.cuda_f32(), v.cuda_f32(), scale,
                            out.cuda_f32(), lse.cuda_f32());
    if (logsumexp_out != nullptr) *logsumexp_out = lse;
    return out;
  }
#endif
  blockwise::forward(d, q.f32(), k.f32(), v.f32(), scale, out.f32(), lse.f32());
  if (logsumexp_out != nullptr) *logsumexp_out = lse;
  return out;
}

AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& logsumexp, float scale,
                                  std::array<bool, 3> needs) {
  const auto d = check_attention(q, k, v, scale);
  const Shape out_shape{d.B, d.Nq, d.Dv};
  ZSQ_CHECK(grad_out.defined() && grad_out.dtype() == DType::f32 && grad_out.shape() == out_shape,
            "attention backward: grad_out must be f32 {}, got {}", shape_str(out_shape),
            grad_out.defined() ? grad_out.str() : "undefined");
  ZSQ_CHECK(out.defined() && out.dtype() == DType::f32 && out.shape() == out_shape,
            "attention backward: out must be f32 {}, got {}", shape_str(out_shape),
            out.defined() ? out.str() : "undefined");
  ZSQ_CHECK(logsumexp.defined() && logsumexp.dtype() == DType::f32 && (logsumexp.shape() == Shape{d.B, d.Nq}),
            "attention backward: logsumexp must be f32 [{}, {}], got {}", d.B, d.Nq,
            logsumexp.defined() ? logsumexp.str() : "undefined");
  check_device(q, grad_out, "grad_out");
  check_device(q, out, "out");
  check_device(q, logsumexp, "logsumexp");
  AttentionGrads g;
  const Device device = q.device();
  if (needs[0]) g.dq = Tensor::empty(q.shape(), DType::f32, MemoryFormat::contiguous, device);
  if (needs[1]) g.dk = Tensor::empty(k.shape(), DType::f32, MemoryFormat::contiguous, device);
  if (needs[2]) g.dv = Tensor::empty(v.shape(), DType::f32, MemoryFormat::contiguous, device);
  if (!needs[0] && !needs[1] && !needs[2]) return g;
#if ZSQ_WITH_CUDA
  if (q.is_cuda()) {
    Tensor delta = Tensor::empty({d.B, d.Nq}, DType::f32, MemoryFormat::contiguous, device);
    cuda::attention_backward({d.B, d.Nq, d.Nk, d.D, d.Dv}, grad_out.cuda_f32(), q.cuda_f32(), k.cuda_f32(),
                             v.cuda_f32(), out.cuda_f32(), logsumexp.cuda_f32(), scale, delta.cuda_f32(),
                             needs[0] ? g.dq.cuda_f32() : nullptr, needs[1] ? g.dk.cuda_f32() : nullptr,
                             needs[2] ? g.dv.cuda_f32() : nullptr);
    return g;
  }
#endif
  blockwise::backward(d, grad_out.f32(), q.f32(), k.f32(), v.f32(), out.f32(), logsumexp.f32(), scale,
                      needs[0] ? g.dq.f32() : nullptr, needs[1] ? g.dk.f32() : nullptr,
                      needs[2] ? g.dv.f32() : nullptr);
  return g;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  Tensor lse;
  Tensor out = attention_forward(q, k, v, scale, &lse);
  if (!any_requires_grad({&q, &k, &v})) return out;
  // Saved without history (detach shares storage; no reference cycle through out's own node).
  Tensor sq = q.detach(), sk = k.detach(), sv = v.detach(), so = out.detach();
  return record(out, "attention", {q, k, v}, [=](const Tensor& g, const std::vector<bool>& needs) {
    auto grads = attention_backward(g, sq, sk, sv, so, lse, scale, {needs[0], needs[1], needs[2]});
    return std::vector<Tensor>{grads.dq, grads.dk, grads.dv};
  });
}

}  // namespace zsq::ops
