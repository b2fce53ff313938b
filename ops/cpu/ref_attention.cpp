// Naive attention in double over logical values: materializes each sample's [Nq, Nk] probability matrix.
// The oracle for the blockwise fast path (ops/cpu/attention_blockwise.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/attention.h"

namespace zsq::ops::ref {

namespace {
using i64 = std::int64_t;
std::size_t at(i64 i) {
  return static_cast<std::size_t>(i);
}

struct Sizes {
  i64 B, Nq, Nk, D, Dv;
};

Sizes sizes_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  ZSQ_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.size(0) == k.size(0) &&
                k.size(0) == v.size(0) && q.size(2) == k.size(2) && k.size(1) == v.size(1) && k.size(1) >= 1,
            "ref::attention: incompatible q {}, k {}, v {}", q.str(), k.str(), v.str());
  return {q.size(0), q.size(1), k.size(1), q.size(2), v.size(2)};
}

// P [Nq, Nk] = softmax(scale q_b k_b^T) for batch b, and each row's logsumexp.
void probabilities(const std::vector<float>& q, const std::vector<float>& k, const Sizes& s, i64 b,
                   double scale, std::vector<double>& p, std::vector<double>& lse) {
  p.assign(at(s.Nq * s.Nk), 0.0);
  lse.assign(at(s.Nq), 0.0);
  for (i64 i = 0; i < s.Nq; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (i64 j = 0; j < s.Nk; ++j) {
      double dot = 0.0;
      for (i64 t = 0; t < s.D; ++t)
        dot += static_cast<double>(q[at((b * s.Nq + i) * s.D + t)]) * k[at((b * s.Nk + j) * s.D + t)];
      p[at(i * s.Nk + j)] = scale * dot;
      m = std::max(m, scale * dot);
    }
    double sum = 0.0;
    for (i64 j = 0; j < s.Nk; ++j) sum += std::exp(p[at(i * s.Nk + j)] - m);
    for (i64 j = 0; j < s.Nk; ++j) p[at(i * s.Nk + j)] = std::exp(p[at(i * s.Nk + j)] - m) / sum;
    lse[at(i)] = m + std::log(sum);
  }
}
}  // namespace

Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor* logsumexp_out) {
  const Sizes s = sizes_of(q, k, v);
  const auto qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<float> out(at(s.B * s.Nq * s.Dv)), lse_all(at(s.B * s.Nq));
  std::vector<double> p, lse;
  for (i64 b = 0; b < s.B; ++b) {
    probabilities(qv, kv, s, b, scale, p, lse);
    for (i64 i = 0; i < s.Nq; ++i) {
      for (i64 e = 0; e < s.Dv; ++e) {
        double acc = 0.0;
        for (i64 j = 0; j < s.Nk; ++j) acc += p[at(i * s.Nk + j)] * vv[at((b * s.Nk + j) * s.Dv + e)];
        out[at((b * s.Nq + i) * s.Dv + e)] = static_cast<float>(acc);
      }
      lse_all[at(b * s.Nq + i)] = static_cast<float>(lse[at(i)]);
    }
  }
  if (logsumexp_out != nullptr) *logsumexp_out = Tensor::from_vector({s.B, s.Nq}, lse_all);
  return Tensor::from_vector({s.B, s.Nq, s.Dv}, out);
}

AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  float scale) {
  const Sizes s = sizes_of(q, k, v);
  ZSQ_CHECK(grad_out.shape() == Shape({s.B, s.Nq, s.Dv}), "ref::attention_backward: grad_out {} for v {}",
            grad_out.str(), v.str());
  const auto qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector(), gv = grad_out.to_vector();
  std::vector<float> dq(at(s.B * s.Nq * s.D)), dk(at(s.B * s.Nk * s.D)), dv(at(s.B * s.Nk * s.Dv));
  std::vector<double> p, lse, ds(at(s.Nq * s.Nk));
  for (i64 b = 0; b < s.B; ++b) {
    probabilities(qv, kv, s, b, scale, p, lse);
    auto dout = [&](i64 i, i64 e) { return static_cast<double>(gv[at((b * s.Nq + i) * s.Dv + e)]); };
    // dV = P^T dO.
    for (i64 j = 0; j < s.Nk; ++j)
      for (i64 e = 0; e < s.Dv; ++e) {
        double acc = 0.0;
        for (i64 i = 0; i < s.Nq; ++i) acc += p[at(i * s.Nk + j)] * dout(i, e);
        dv[at((b * s.Nk + j) * s.Dv + e)] = static_cast<float>(acc);
      }
    // dP = dO V^T; dS = P * (dP - rowsum(dP * P)).
    for (i64 i = 0; i < s.Nq; ++i) {
      double rowsum = 0.0;
      for (i64 j = 0; j < s.Nk; ++j) {
        double dp = 0.0;
        for (i64 e = 0; e < s.Dv; ++e) dp += dout(i, e) * vv[at((b * s.Nk + j) * s.Dv + e)];
        ds[at(i * s.Nk + j)] = dp;
        rowsum += dp * p[at(i * s.Nk + j)];
      }
      for (i64 j = 0; j < s.Nk; ++j)
        ds[at(i * s.Nk + j)] = p[at(i * s.Nk + j)] * (ds[at(i * s.Nk + j)] - rowsum);
    }
    // dQ = scale dS K, dK = scale dS^T Q.
    for (i64 i = 0; i < s.Nq; ++i)
      for (i64 t = 0; t < s.D; ++t) {
        double acc = 0.0;
        for (i64 j = 0; j < s.Nk; ++j) acc += ds[at(i * s.Nk + j)] * kv[at((b * s.Nk + j) * s.D + t)];
        dq[at((b * s.Nq + i) * s.D + t)] = static_cast<float>(scale * acc);
      }
    for (i64 j = 0; j < s.Nk; ++j)
      for (i64 t = 0; t < s.D; ++t) {
        double acc = 0.0;
        for (i64 i = 0; i < s.Nq; ++i) acc += ds[at(i * s.Nk + j)] * qv[at((b * s.Nq + i) * s.D + t)];
        dk[at((b * s.Nk + j) * s.D + t)] = static_cast<float>(scale * acc);
      }
  }
  return {Tensor::from_vector(q.shape(), dq), Tensor::from_vector(k.shape(), dk),
          Tensor::from_vector(v.shape(), dv)};
}

}  // namespace zsq::ops::ref
