// Softmax family and losses on the CPU: row-wise loops over contiguous [N, K] logits parallelized
// across rows, element-wise losses with double accumulation. Each loss returns a 0-d tensor and records
// a backward that scales by the (scalar) upstream gradient. CUDA tensors run the same ops through
// ops/cuda/loss.cu; their backward passes read the upstream gradient on the device (no g.item()).
#include "ops/loss.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "engine/autograd.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/loss.h"

namespace zsq::ops {

namespace {

void check_matrix(const char* op, const char* name, const Tensor& x) {
  ZSQ_CHECK(x.defined(), "{}: undefined {}", op, name);
  ZSQ_CHECK(x.dim() == 2 && x.dtype() == DType::f32, "{}: {} must be 2-D f32 [N, K], got {}", op, name,
            x.str());
}

// Operands of one op live on one device.
void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.device() == b.device(), "{}: operands are on different devices: {} on {} and {} on {}", op,
            a.str(), a.device().str(), b.str(), b.device().str());
}

void check_pair(const char* op, const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.defined() && b.defined(), "{}: undefined operand", op);
  ZSQ_CHECK(a.dtype() == DType::f32 && b.dtype() == DType::f32, "{}: f32 operands expected, got {} and {}",
            op, a.str(), b.str());
  ZSQ_CHECK(a.shape() == b.shape(), "{}: shapes differ: {} vs {}", op, a.str(), b.str());
  check_same_device(op, a, b);
}

// b read in a's memory format (a copy only when the formats really differ).
Tensor like(const Tensor& b, const Tensor& a) {
  return b.format() == a.format() ? b : b.to_format(a.format());
}

bool parallel_rows(std::int64_t n, std::int64_t k) {
  return n > 1 && n * k > cpu::kParallelThreshold / 4;
}

float row_max(const float* x, std::int64_t k) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (std::int64_t j = 0; j < k; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// Row maximum m and log(sum(exp(x - m))): x - m is exact, so log-probabilities x - m - log_s keep full
// precision even for logits far from 0 (folding m into one log-sum-exp would round it at |m|'s scale).
struct RowStats {
  float max, log_sum;
};
RowStats row_stats(const float* x, std::int64_t k) {
  const float m = row_max(x, k);
  if (std::isinf(m)) return {m, 0.0f};  // all -inf (or a +inf entry)
  double s = 0.0;
  for (std::int64_t j = 0; j < k; ++j) s += std::exp(x[j] - m);
  return {m, static_cast<float>(std::log(s))};
}

template <typename F>
double parallel_sum(std::int64_t n, F f) {
  double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > cpu::kParallelThreshold)
  for (std::int64_t i = 0; i < n; ++i) s += f(i);
  return s;
}

float upstream(const Tensor& g) {
  return g.item();
}

#if ZSQ_WITH_CUDA
// mse / l1 / kl_div on CUDA: a and b (b already in a's format) reduce to loss = sum(term) / divisor;
// inputs are the op's own operands, for the autograd record. kl_div's backward scales by 1 / batch.
Tensor pair_loss_cuda(const char* name, cuda::PairLoss kind, const std::vector<Tensor>& inputs,
                      const Tensor& a, const Tensor& b, double divisor, float batch) {
  const auto n = a.numel();
  Tensor out = Tensor::empty({}, DType::f32, MemoryFormat::contiguous, a.device());
  cuda::pair_loss_forward(kind, a.cuda_f32(), b.cuda_f32(), n, divisor, out.cuda_f32());
  Tensor sa = a.detach(), sb = b.detach();
  return record(out, name, inputs, [=](const Tensor& g, const std::vector<bool>& needs) {
    auto grad = [&](bool needed) {
      return needed ? Tensor::empty(sa.shape(), DType::f32, sa.format(), sa.device()) : Tensor();
    };
    Tensor ga = grad(needs[0]), gb = grad(needs[1]);
    float* pa = ga.defined() ? ga.cuda_f32() : nullptr;
    float* pb = gb.defined() ? gb.cuda_f32() : nullptr;
    switch (kind) {
      case cuda::PairLoss::mse:
        cuda::mse_backward(g.cuda_f32(), sa.cuda_f32(), sb.cuda_f32(), n, pa, pb);
        break;
      case cuda::PairLoss::l1:
        cuda::l1_backward(g.cuda_f32(), sa.cuda_f32(), sb.cuda_f32(), n, pa, pb);
        break;
      case cuda::PairLoss::kl_div:
        cuda::kl_div_backward(g.cuda_f32(), sa.cuda_f32(), sb.cuda_f32(), n, batch, pa, pb);
        break;
    }
    return std::vector<Tensor>{ga, gb};
  });
}
#endif

}  // namespace

Tensor softmax(const Tensor& x) {
  check_matrix("softmax", "input", x);
  const auto N = x.size(0), K = x.size(1);
  Tensor y = Tensor::empty({N, K}, DType::f32, MemoryFormat::contiguous, x.device());
  if (x.is_cuda()) {
#if ZSQ_WITH_CUDA
    cuda::softmax_rows(x.cuda_f32(), N, K, false, y.cuda_f32());
#endif
  } else {
    const float* px = x.f32();
    float* py = y.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, K))
    for (std::int64_t n = 0; n < N; ++n) {
      const auto [m, log_s] = row_stats(px + n * K, K);
      for (std::int64_t j = 0; j < K; ++j) py[n * K + j] = std::exp((px[n * K + j] - m) - log_s);
    }
  }
  Tensor saved = y.detach();
  return record(y, "softmax", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    const auto N = saved.size(0), K = saved.size(1);
    Tensor gx = Tensor::empty({N, K}, DType::f32, MemoryFormat::contiguous, saved.device());
#if ZSQ_WITH_CUDA
    if (saved.is_cuda()) {
      cuda::softmax_backward(g.cuda_f32(), saved.cuda_f32(), N, K, gx.cuda_f32());
      return std::vector<Tensor>{gx};
    }
#endif
    const float* pg = g.f32();
    const float* ps = saved.f32();
    float* po = gx.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, K))
    for (std::int64_t n = 0; n < N; ++n) {
      const float* gr = pg + n * K;
      const float* yr = ps + n * K;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (std::int64_t j = 0; j < K; ++j) dot += gr[j] * yr[j];
#pragma omp simd
      for (std::int64_t j = 0; j < K; ++j) po[n * K + j] = yr[j] * (gr[j] - dot);
    }
    return std::vector<Tensor>{gx};
  });
}

Tensor log_softmax(const Tensor& x) {
  check_matrix("log_softmax", "input", x);
  const auto N = x.size(0), K = x.size(1);
  Tensor y = Tensor::empty({N, K}, DType::f32, MemoryFormat::contiguous, x.device());
  if (x.is_cuda()) {
#if ZSQ_WITH_CUDA
    cuda::softmax_rows(x.cuda_f32(), N, K, true, y.cuda_f32());
#endif
  } else {
    const float* px = x.f32();
    float* py = y.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, K))
    for (std::int64_t n = 0; n < N; ++n) {
      const auto [m, log_s] = row_stats(px + n * K, K);
#pragma omp simd
      for (std::int64_t j = 0; j < K; ++j) py[n * K + j] = (px[n * K + j] - m) - log_s;
    }
  }
  Tensor saved = y.detach();
  return record(y, "log_softmax", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    const auto N = saved.size(0), K = saved.size(1);
    Tensor gx = Tensor::empty({N, K}, DType::f32, MemoryFormat::contiguous, saved.device());
#if ZSQ_WITH_CUDA
    if (saved.is_cuda()) {
      cuda::log_softmax_backward(g.cuda_f32(), saved.cuda_f32(), N, K, gx.cuda_f32());
      return std::vector<Tensor>{gx};
    }
#endif
    const float* pg = g.f32();
    const float* ps = saved.f32();
    float* po = gx.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, K))
    for (std::int64_t n = 0; n < N; ++n) {
      const float* gr = pg + n * K;
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (std::int64_t j = 0; j < K; ++j) total += gr[j];
      for (std::int64_t j = 0; j < K; ++j) po[n * K + j] = gr[j] - std::exp(ps[n * K + j]) * total;
    }
    return std::vector<Tensor>{gx};
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  check_matrix("cross_entropy", "logits", logits);
  ZSQ_CHECK(labels.defined() && labels.dtype() == DType::s32 && labels.dim() == 1 &&
                labels.size(0) == logits.size(0),
            "cross_entropy: labels must be s32 [{}] to match logits {}, got {}", logits.size(0), logits.str(),
            labels.str());
  ZSQ_CHECK(label_smoothing >= 0.0f && label_smoothing < 1.0f,
            "cross_entropy: label_smoothing must be in [0, 1), got {}", label_smoothing);
  check_same_device("cross_entropy", logits, labels);
  const auto N = logits.size(0), K = logits.size(1);
#if ZSQ_WITH_CUDA
  if (logits.is_cuda()) {
    // The labels' range is checked by the kernels (a label out of range makes the loss NaN): checking it
    // here would copy them to the host and wait for the GPU.
    const Device device = logits.device();
    Tensor out = Tensor::empty({}, DType::f32, MemoryFormat::contiguous, device);
    Tensor stats = Tensor::empty({N, 2}, DType::f32, MemoryFormat::contiguous, device);
    cuda::cross_entropy_forward(logits.cuda_f32(), labels.device_data<std::int32_t>(), N, K, label_smoothing,
                                stats.cuda_f32(), out.cuda_f32());
    Tensor saved_x = logits.detach(), saved_y = labels.clone();  // the caller may reuse its label buffer
    return record(out, "cross_entropy", {logits}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = Tensor::empty({N, K}, DType::f32, MemoryFormat::contiguous, device);
      cuda::cross_entropy_backward(g.cuda_f32(), saved_x.cuda_f32(), saved_y.device_data<std::int32_t>(),
                                   stats.cuda_f32(), N, K, label_smoothing, gx.cuda_f32());
      return std::vector<Tensor>{gx};
    });
  }
#endif
  const std::int32_t* pl = labels.data<std::int32_t>();
  for (std::int64_t n = 0; n < N; ++n)
    ZSQ_CHECK(pl[n] >= 0 && pl[n] < K,
              "cross_entropy: label {} at index {} is out of range [0, {}) for logits {}", pl[n], n, K,
              logits.str());
  const float* px = logits.f32();
  auto stats = std::make_shared<std::vector<RowStats>>(static_cast<std::size_t>(N));
  RowStats* ps = stats->data();
  const double eps = label_smoothing;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (parallel_rows(N, K))
  for (std::int64_t n = 0; n < N; ++n) {
    const float* row = px + n * K;
    const RowStats st = ps[n] = row_stats(row, K);
    double row_sum = 0.0;  // sum_j (x_j - max)
    if (eps > 0.0)
      for (std::int64_t j = 0; j < K; ++j) row_sum += row[j] - st.max;
    // -(1-eps) * logp[y] - eps/K * sum_j logp[j], with logp = (x - max) - log_sum.
    total += static_cast<double>(st.log_sum) - (1.0 - eps) * (row[pl[n]] - st.max) -
             eps / static_cast<double>(K) * row_sum;
  }
  Tensor out = Tensor::scalar(static_cast<float>(total / static_cast<double>(N)));
  Tensor saved_x = logits.detach(), saved_y = labels.clone();  // the caller may reuse its label buffer
  return record(out, "cross_entropy", {logits}, [=](const Tensor& g, const std::vector<bool>&) {
    const float scale = upstream(g) / static_cast<float>(N);
    const float off = static_cast<float>(eps / static_cast<double>(K));
    const float on = static_cast<float>(1.0 - eps);
    Tensor gx = Tensor::empty({N, K});
    const float* x = saved_x.f32();
    const std::int32_t* y = saved_y.data<std::int32_t>();
    const RowStats* e = stats->data();
    float* po = gx.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, K))
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t j = 0; j < K; ++j)
        po[n * K + j] = scale * (std::exp((x[n * K + j] - e[n].max) - e[n].log_sum) - off);
      po[n * K + y[n]] -= scale * on;
    }
    return std::vector<Tensor>{gx};
  });
}

Tensor kl_div(const Tensor& log_input, const Tensor& target) {
  check_pair("kl_div", log_input, target);
  ZSQ_CHECK(log_input.dim() >= 1, "kl_div: inputs need a batch dimension, got {}", log_input.str());
  const auto n = log_input.numel();
  const float batch = static_cast<float>(log_input.size(0));
  Tensor t = like(target, log_input);
#if ZSQ_WITH_CUDA
  if (log_input.is_cuda())
    return pair_loss_cuda("kl_div", cuda::PairLoss::kl_div, {log_input, target}, log_input, t, batch, batch);
#endif
  const float* px = log_input.f32();
  const float* pt = t.f32();
  // PyTorch: xlogy(t, t) - t * x, where xlogy(0, 0) = 0 (and t < 0 gives NaN).
  const double total = parallel_sum(n, [=](std::int64_t i) {
    const double tv = pt[i];
    const double tlogt =
        tv > 0.0 ? tv * std::log(tv) : (tv == 0.0 ? 0.0 : std::numeric_limits<double>::quiet_NaN());
    return tlogt - tv * px[i];
  });
  Tensor out = Tensor::scalar(static_cast<float>(total / batch));
  Tensor sx = log_input.detach(), st = t.detach();
  return record(out, "kl_div", {log_input, target}, [=](const Tensor& g, const std::vector<bool>& needs) {
    const float scale = upstream(g) / batch;
    std::vector<Tensor> grads(2);
    const float* x = sx.f32();
    const float* tv = st.f32();
    if (needs[0]) {
      grads[0] = Tensor::empty(sx.shape(), DType::f32, sx.format());
      cpu::parallel_map1(tv, grads[0].f32(), n, [=](float v) { return -v * scale; });
    }
    if (needs[1]) {
      // d/dt [t log t - t x] = log t + 1 - x; the 0 log 0 term is a constant at t = 0.
      grads[1] = Tensor::empty(sx.shape(), DType::f32, sx.format());
      cpu::parallel_map2(tv, x, grads[1].f32(), n, [=](float v, float xv) {
        return ((v > 0.0f ? std::log(v) + 1.0f : 0.0f) - xv) * scale;
      });
    }
    return grads;
  });
}

Tensor mse(const Tensor& a, const Tensor& b) {
  check_pair("mse", a, b);
  const auto n = a.numel();
  Tensor bb = like(b, a);
#if ZSQ_WITH_CUDA
  if (a.is_cuda())
    return pair_loss_cuda("mse", cuda::PairLoss::mse, {a, b}, a, bb, static_cast<double>(n), 1.0f);
#endif
  const float* pa = a.f32();
  const float* pb = bb.f32();
  const double total = parallel_sum(n, [=](std::int64_t i) {
    const double d = static_cast<double>(pa[i]) - pb[i];
    return d * d;
  });
  Tensor out = Tensor::scalar(static_cast<float>(total / static_cast<double>(n)));
  Tensor sa = a.detach(), sb = bb.detach();
  return record(out, "mse", {a, b}, [=](const Tensor& g, const std::vector<bool>& needs) {
    const float scale = 2.0f * upstream(g) / static_cast<float>(n);
    Tensor ga = Tensor::empty(sa.shape(), DType::f32, sa.format());
    cpu::parallel_map2(sa.f32(), sb.f32(), ga.f32(), n, [=](float x, float y) { return (x - y) * scale; });
    Tensor gb;
    if (needs[1]) {
      gb = Tensor::empty(sa.shape(), DType::f32, sa.format());
      cpu::parallel_map1(ga.f32(), gb.f32(), n, [](float v) { return -v; });
    }
    return std::vector<Tensor>{needs[0] ? ga : Tensor(), gb};
  });
}

Tensor l1(const Tensor& a, const Tensor& b) {
  check_pair("l1", a, b);
  const auto n = a.numel();
  Tensor bb = like(b, a);
#if ZSQ_WITH_CUDA
  if (a.is_cuda())
    return pair_loss_cuda("l1", cuda::PairLoss::l1, {a, b}, a, bb, static_cast<double>(n), 1.0f);
#endif
  const float* pa = a.f32();
  const float* pb = bb.f32();
  const double total =
      parallel_sum(n, [=](std::int64_t i) { return std::abs(static_cast<double>(pa[i]) - pb[i]); });
  Tensor out = Tensor::scalar(static_cast<float>(total / static_cast<double>(n)));
  Tensor sa = a.detach(), sb = bb.detach();
  return record(out, "l1", {a, b}, [=](const Tensor& g, const std::vector<bool>& needs) {
    const float scale = upstream(g) / static_cast<float>(n);
    // Subgradient 0 where a == b.
    auto sign = [=](float sgn) {
      Tensor t = Tensor::empty(sa.shape(), DType::f32, sa.format());
      cpu::parallel_map2(sa.f32(), sb.f32(), t.f32(), n, [=](float x, float y) {
        return x > y ? sgn * scale : (x < y ? -sgn * scale : 0.0f);
      });
      return t;
    };
    return std::vector<Tensor>{needs[0] ? sign(1.0f) : Tensor(), needs[1] ? sign(-1.0f) : Tensor()};
  });
}

Tensor embedding(const Tensor& table, const Tensor& indices) {
  check_matrix("embedding", "table", table);
  ZSQ_CHECK(indices.defined() && indices.dtype() == DType::s32, "embedding: indices must be s32, got {}",
            indices.str());
  check_same_device("embedding", table, indices);
  const auto V = table.size(0), D = table.size(1), N = indices.numel();
#if ZSQ_WITH_CUDA
  if (table.is_cuda()) {
    // Indices are range-checked by the kernels (an out-of-range index gives a NaN row and no gradient):
    // checking them here would copy them to the host and wait for the GPU.
    Shape out_shape = indices.shape();
    out_shape.push_back(D);
    Tensor out = Tensor::empty(out_shape, DType::f32, MemoryFormat::contiguous, table.device());
    cuda::embedding_forward(table.cuda_f32(), indices.device_data<std::int32_t>(), N, V, D, out.cuda_f32());
    Tensor saved = indices.clone();  // the caller may refill its buffer before backward runs
    return record(out, "embedding", {table}, [=](const Tensor& g, const std::vector<bool>&) {
      Tensor gc = g.to_format(MemoryFormat::contiguous);
      Tensor gt = Tensor::zeros({V, D}, DType::f32, MemoryFormat::contiguous, gc.device());
      cuda::embedding_backward(gc.cuda_f32(), saved.device_data<std::int32_t>(), N, V, D, gt.cuda_f32());
      return std::vector<Tensor>{gt};
    });
  }
#endif
  const std::int32_t* pi = indices.data<std::int32_t>();
  for (std::int64_t i = 0; i < N; ++i)
    ZSQ_CHECK(pi[i] >= 0 && pi[i] < V,
              "embedding: index {} at position {} is out of range [0, {}) for table {}", pi[i], i, V,
              table.str());
  Shape out_shape = indices.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape);
  const float* pt = table.f32();
  float* po = out.f32();
#pragma omp parallel for schedule(static) if (parallel_rows(N, D))
  for (std::int64_t i = 0; i < N; ++i)
    std::memcpy(po + i * D, pt + static_cast<std::int64_t>(pi[i]) * D,
                static_cast<std::size_t>(D) * sizeof(float));
  // A copy of the indices: the caller may refill its buffer before backward runs.
  Tensor saved = indices.clone();
  return record(out, "embedding", {table}, [=](const Tensor& g, const std::vector<bool>&) {
    Tensor gc = g.to_format(MemoryFormat::contiguous);
    Tensor gt = Tensor::zeros({V, D});
    const float* pg = gc.f32();
    const std::int32_t* idx = saved.data<std::int32_t>();
    float* pd = gt.f32();
    // Repeated indices add up; rows are scattered serially, columns vectorized.
    for (std::int64_t i = 0; i < N; ++i) {
      float* dst = pd + static_cast<std::int64_t>(idx[i]) * D;
      const float* src = pg + i * D;
#pragma omp simd
      for (std::int64_t j = 0; j < D; ++j) dst[j] += src[j];
    }
    return std::vector<Tensor>{gt};
  });
}

}  // namespace zsq::ops
