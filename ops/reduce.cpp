// Reductions over axis sets, planned once per call in memory order so that channels-last tensors are
// reduced in place (no NCHW copy). The plan drops size-1 dimensions and merges neighbours of the same
// kind, which leaves a few shapes that cover nearly every real use:
//   [rows (reduced), cols (kept)]   column sums: channels-last per-channel stats (axes {0, 2, 3}),
//                                   batch sums of [N, C]; a direct loop with per-thread accumulators.
//   ... (kept) x run (reduced)      each output is a sum of contiguous runs (row sums, NCHW per-channel).
//   ... x run (kept)                each reduced combination adds a contiguous run into the output.
// Accumulation is in double; the backward passes broadcast the output gradient with the same plan.
// A CUDA tensor takes the same merged dims to ops/cuda/reduce.cu (two-level double reductions; the
// variance there in one pass over x, from sums shifted by a data point).
#include "ops/reduce.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "engine/autograd.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/reduce.h"

namespace zsq::ops {

namespace {

constexpr std::int64_t kChunk = 4096;  // elements of a contiguous run handled by one task

struct Dim {
  std::int64_t size, in_stride, out_stride;
  bool reduced;
};

struct Plan {
  Shape out_shape;
  std::int64_t out_numel = 1;
  std::int64_t count = 1;  // input elements that reduce into one output element
  // Innermost memory run: length, whether it is reduced, its stride in the output (when kept).
  std::int64_t run = 1;
  bool run_reduced = true;
  std::int64_t run_out_stride = 0;
  // Column pattern: memory is [rows, run] with rows reduced and the run kept with output stride 1.
  bool columns = false;
  std::int64_t rows = 1;
  // Otherwise: every combination of the outer kept dims (input and output offsets) and of the outer
  // reduced dims (input offsets).
  std::vector<std::int64_t> kept_in, kept_out, red_in;
  // The merged dims in memory order (outermost first); the CUDA path's whole description.
  std::vector<Dim> dims;
};

// Enumerates the offsets of all index combinations of `dims` (outermost first) in row-major order.
void enumerate(const std::vector<Dim>& dims, std::vector<std::int64_t>& in, std::vector<std::int64_t>* out) {
  std::int64_t total = 1;
  for (const auto& d : dims) total *= d.size;
  in.resize(static_cast<std::size_t>(total));
  if (out != nullptr) out->resize(static_cast<std::size_t>(total));
  std::vector<std::int64_t> idx(dims.size(), 0);
  std::int64_t oi = 0, oo = 0;
  for (std::int64_t t = 0; t < total; ++t) {
    in[static_cast<std::size_t>(t)] = oi;
    if (out != nullptr) (*out)[static_cast<std::size_t>(t)] = oo;
    for (auto k = static_cast<std::ptrdiff_t>(dims.size()) - 1; k >= 0; --k) {
      const auto& d = dims[static_cast<std::size_t>(k)];
      auto& i = idx[static_cast<std::size_t>(k)];
      oi += d.in_stride;
      oo += d.out_stride;
      if (++i < d.size) break;
      oi -= d.in_stride * d.size;
      oo -= d.out_stride * d.size;
      i = 0;
    }
  }
}

Plan make_plan(const char* op, const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  ZSQ_CHECK(x.defined(), "{}: undefined input", op);
  ZSQ_CHECK(x.dtype() == DType::f32, "{}: f32 input expected, got {}", op, x.str());
  const auto nd = x.dim();
  const Shape& s = x.shape();
  std::vector<bool> red(static_cast<std::size_t>(nd), axes.empty());
  for (auto a : axes) {
    ZSQ_CHECK(a >= -nd && a < nd, "{}: axis {} is out of range for {}", op, a, x.str());
    const auto d = static_cast<std::size_t>(a < 0 ? a + nd : a);
    ZSQ_CHECK(!red[d], "{}: axis {} appears more than once in axes [{}]", op, a, fmt::join(axes, ", "));
    red[d] = true;
  }
  Plan p;
  Shape kept_shape(s);
  for (std::size_t d = 0; d < s.size(); ++d) {
    if (red[d]) {
      p.count *= s[d];
      kept_shape[d] = 1;
    } else {
      p.out_shape.push_back(s[d]);
    }
  }
  if (keepdim) p.out_shape = kept_shape;
  p.out_numel = shape_numel(kept_shape);
  // Output strides per logical axis (row-major over the keepdim shape; 0 on reduced axes).
  std::vector<std::int64_t> out_stride(s.size(), 0);
  for (std::int64_t d = nd - 1, st = 1; d >= 0; --d) {
    const auto du = static_cast<std::size_t>(d);
    out_stride[du] = red[du] ? 0 : st;
    st *= kept_shape[du];
  }
  // Memory order of the logical axes.
  std::vector<std::size_t> order(s.size());
  for (std::size_t d = 0; d < s.size(); ++d) order[d] = d;
  if (x.format() == MemoryFormat::channels_last) order = {0, 2, 3, 1};
  std::vector<std::int64_t> mem_stride(s.size(), 1);
  for (auto k = static_cast<std::ptrdiff_t>(s.size()) - 2; k >= 0; --k)
    mem_stride[static_cast<std::size_t>(k)] =
        mem_stride[static_cast<std::size_t>(k) + 1] * s[order[static_cast<std::size_t>(k) + 1]];
  // Drop size-1 dims and merge neighbours of the same kind that are contiguous in input and output.
  std::vector<Dim> dims;
  for (std::size_t k = 0; k < s.size(); ++k) {
    const auto d = order[k];
    if (s[d] == 1) continue;
    Dim cur{s[d], mem_stride[k], out_stride[d], red[d]};
    if (!dims.empty()) {
      Dim& last = dims.back();
      if (last.reduced == cur.reduced && last.in_stride == cur.in_stride * cur.size &&
          (cur.reduced || last.out_stride == cur.out_stride * cur.size)) {
        last.size *= cur.size;
        last.in_stride = cur.in_stride;
        last.out_stride = cur.out_stride;
        continue;
      }
    }
    dims.push_back(cur);
  }
  if (dims.empty()) dims.push_back({1, 1, 0, true});  // a single element
  p.dims = dims;
  if (x.is_cuda()) return p;  // the offset tables below are for the CPU loops
  const Dim inner = dims.back();
  dims.pop_back();
  p.run = inner.size;
  p.run_reduced = inner.reduced;
  p.run_out_stride = inner.out_stride;
  if (!inner.reduced && inner.out_stride == 1 && dims.size() == 1 && dims[0].reduced) {
    p.columns = true;
    p.rows = dims[0].size;
    return p;
  }
  std::vector<Dim> kept, reduced;
  for (const auto& d : dims) (d.reduced ? reduced : kept).push_back(d);
  enumerate(kept, p.kept_in, &p.kept_out);
  enumerate(reduced, p.red_in, nullptr);
  return p;
}

int threads() {
  return omp_get_max_threads();
}

constexpr std::int64_t kRowBlock = 128;  // rows summed in float (vector lanes) before a flush into double

// acc[c] += sum over rows [r0, r1) of f(x[r * L + c], c) for c in [c0, c1); part has c1 - c0 floats.
template <typename F>
void column_block(const float* __restrict x, std::int64_t L, std::int64_t r0, std::int64_t r1,
                  std::int64_t c0, std::int64_t c1, double* __restrict acc, float* __restrict part, F f) {
  for (std::int64_t b = r0; b < r1; b += kRowBlock) {
    const std::int64_t be = std::min(r1, b + kRowBlock);
    std::fill(part, part + (c1 - c0), 0.0f);
    for (std::int64_t r = b; r < be; ++r) {
      const float* row = x + r * L;
#pragma omp simd
      for (std::int64_t c = c0; c < c1; ++c) part[c - c0] += f(row[c], c);
    }
    for (std::int64_t c = c0; c < c1; ++c) acc[c] += part[c - c0];
  }
}

// acc[o] = sum over the inputs i that reduce into o of f(x[i], o), f returning float. acc has out_numel
// entries and accumulates in double (the column path in float blocks of kRowBlock rows first).
template <typename F>
void reduce_kernel(const Plan& p, const float* __restrict x, double* __restrict acc, F f) {
  std::fill(acc, acc + p.out_numel, 0.0);
  const std::int64_t L = p.run;
  const bool big = p.out_numel * p.count > cpu::kParallelThreshold;
  if (p.columns) {
    const std::int64_t R = p.rows;
    if (!big || L >= 64 * threads()) {
      // Wide rows: each thread owns a block of columns and walks all rows.
#pragma omp parallel for schedule(static) if (big)
      for (std::int64_t c0 = 0; c0 < L; c0 += 64) {
        float part[64];
        column_block(x, L, 0, R, c0, std::min(L, c0 + 64), acc, part, f);
      }
      return;
    }
    // Narrow rows (the channels of a channels-last map): blocks of rows per thread, merged at the end.
    const std::int64_t blocks = (R + kRowBlock - 1) / kRowBlock;
#pragma omp parallel
    {
      std::vector<double> local(static_cast<std::size_t>(L), 0.0);
      std::vector<float> part(static_cast<std::size_t>(L));
#pragma omp for schedule(static) nowait
      for (std::int64_t t = 0; t < blocks; ++t)
        column_block(x, L, t * kRowBlock, std::min(R, (t + 1) * kRowBlock), 0, L, local.data(), part.data(),
                     f);
#pragma omp critical
      for (std::int64_t c = 0; c < L; ++c) acc[c] += local[static_cast<std::size_t>(c)];
    }
    return;
  }
  const auto P = static_cast<std::int64_t>(p.kept_in.size());
  const auto Q = static_cast<std::int64_t>(p.red_in.size());
  const std::int64_t* kin = p.kept_in.data();
  const std::int64_t* kout = p.kept_out.data();
  const std::int64_t* rin = p.red_in.data();
  if (p.run_reduced) {
    if (!big || P >= threads()) {
#pragma omp parallel for schedule(static) if (big)
      for (std::int64_t k = 0; k < P; ++k) {
        const std::int64_t o = kout[k];
        double s = 0.0;
        for (std::int64_t q = 0; q < Q; ++q) {
          const float* run = x + kin[k] + rin[q];
#pragma omp simd reduction(+ : s)
          for (std::int64_t l = 0; l < L; ++l) s += f(run[l], o);
        }
        acc[o] = s;
      }
      return;
    }
    // Few outputs: parallelize over the runs (and chunks of them) of each output.
    const std::int64_t nb = (L + kChunk - 1) / kChunk;
    for (std::int64_t k = 0; k < P; ++k) {
      const std::int64_t o = kout[k];
      double s = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : s)
      for (std::int64_t t = 0; t < Q * nb; ++t) {
        const float* run = x + kin[k] + rin[t / nb];
        const std::int64_t l0 = (t % nb) * kChunk, l1 = std::min(L, l0 + kChunk);
        double part = 0.0;
#pragma omp simd reduction(+ : part)
        for (std::int64_t l = l0; l < l1; ++l) part += f(run[l], o);
        s += part;
      }
      acc[o] = s;
    }
    return;
  }
  const std::int64_t os = p.run_out_stride;
  if (!big || P >= threads()) {
#pragma omp parallel for schedule(static) if (big)
    for (std::int64_t k = 0; k < P; ++k)
      for (std::int64_t q = 0; q < Q; ++q) {
        const float* run = x + kin[k] + rin[q];
        double* a = acc + kout[k];
        const std::int64_t o = kout[k];
#pragma omp simd
        for (std::int64_t l = 0; l < L; ++l) a[l * os] += f(run[l], o + l * os);
      }
    return;
  }
  for (std::int64_t k = 0; k < P; ++k) {
    double* a = acc + kout[k];
    const std::int64_t o = kout[k];
#pragma omp parallel
    {
      std::vector<double> local(static_cast<std::size_t>(L), 0.0);
      double* __restrict lb = local.data();
#pragma omp for schedule(static) nowait
      for (std::int64_t q = 0; q < Q; ++q) {
        const float* run = x + kin[k] + rin[q];
#pragma omp simd
        for (std::int64_t l = 0; l < L; ++l) lb[l] += f(run[l], o + l * os);
      }
#pragma omp critical
      for (std::int64_t l = 0; l < L; ++l) a[l * os] += lb[l];
    }
  }
}

// out[i] = f(g[o], o, i) for every input position i (memory order of x) reducing into output o.
template <typename F>
void broadcast_kernel(const Plan& p, const float* __restrict g, float* __restrict out, F f) {
  const std::int64_t L = p.run;
  const bool big = p.out_numel * p.count > cpu::kParallelThreshold;
  if (p.columns) {
#pragma omp parallel for schedule(static) if (big)
    for (std::int64_t r = 0; r < p.rows; ++r) {
      float* row = out + r * L;
      const std::int64_t base = r * L;
#pragma omp simd
      for (std::int64_t c = 0; c < L; ++c) row[c] = f(g[c], c, base + c);
    }
    return;
  }
  const auto P = static_cast<std::int64_t>(p.kept_in.size());
  const auto Q = static_cast<std::int64_t>(p.red_in.size());
  const std::int64_t* kin = p.kept_in.data();
  const std::int64_t* kout = p.kept_out.data();
  const std::int64_t* rin = p.red_in.data();
  const std::int64_t nb = (L + kChunk - 1) / kChunk;
  const std::int64_t os = p.run_reduced ? 0 : p.run_out_stride;
#pragma omp parallel for schedule(static) if (big)
  for (std::int64_t t = 0; t < P * Q * nb; ++t) {
    const std::int64_t k = t / (Q * nb), q = (t / nb) % Q;
    const std::int64_t l0 = (t % nb) * kChunk, l1 = std::min(L, l0 + kChunk);
    const std::int64_t base = kin[k] + rin[q], o = kout[k];
    float* run = out + base;
#pragma omp simd
    for (std::int64_t l = l0; l < l1; ++l) run[l] = f(g[o + l * os], o + l * os, base + l);
  }
}

Tensor from_doubles(const Shape& shape, const std::vector<double>& v, double scale) {
  Tensor out = Tensor::empty(shape);
  float* po = out.f32();
  for (std::size_t i = 0; i < v.size(); ++i) po[i] = static_cast<float>(v[i] * scale);
  return out;
}

// The output gradient as contiguous floats (a channels-last 4-D keepdim gradient is converted).
Tensor contiguous_grad(const Tensor& g) {
  return g.to_format(MemoryFormat::contiguous);
}

#if ZSQ_WITH_CUDA
cuda::ReduceLayout cuda_layout(const Plan& p) {
  ZSQ_CHECK(p.dims.size() <= static_cast<std::size_t>(cuda::kMaxReduceDims),
            "reductions on CUDA handle at most {} dims after merging, got {}", cuda::kMaxReduceDims,
            p.dims.size());
  cuda::ReduceLayout l;
  l.ndim = static_cast<int>(p.dims.size());
  for (std::size_t k = 0; k < p.dims.size(); ++k) {
    l.size[k] = p.dims[k].size;
    l.out_stride[k] = p.dims[k].reduced ? 0 : p.dims[k].out_stride;
    l.reduced[k] = p.dims[k].reduced;
  }
  return l;
}
#endif

// d/dx of sum(x) * scale: the output gradient broadcast back over the reduced axes, in x's format.
Tensor broadcast_grad(const std::shared_ptr<const Plan>& plan, const Shape& x_shape, MemoryFormat format,
                      const Tensor& g, float scale) {
  Tensor gc = contiguous_grad(g);
  Tensor out = Tensor::empty(x_shape, DType::f32, format, g.device());
  if (out.numel() == 0) return out;
#if ZSQ_WITH_CUDA
  if (out.is_cuda()) {
    cuda::reduce_broadcast_backward(gc.cuda_f32(), cuda_layout(*plan), scale, out.cuda_f32());
    return out;
  }
#endif
  broadcast_kernel(*plan, gc.f32(), out.f32(),
                   [=](float gv, std::int64_t, std::int64_t) { return gv * scale; });
  return out;
}

enum class Kind { sum, mean };

Tensor reduce_sum(const char* op, Kind kind, const Tensor& x, const std::vector<std::int64_t>& axes,
                  bool keepdim) {
  auto plan = std::make_shared<const Plan>(make_plan(op, x, axes, keepdim));
  const double scale = kind == Kind::mean ? 1.0 / static_cast<double>(plan->count) : 1.0;
  Tensor out;
  if (x.numel() == 0) {
    out = Tensor::full(plan->out_shape, kind == Kind::mean ? std::numeric_limits<float>::quiet_NaN() : 0.0f,
                       MemoryFormat::contiguous, x.device());
#if ZSQ_WITH_CUDA
  } else if (x.is_cuda()) {
    out = Tensor::empty(plan->out_shape, DType::f32, MemoryFormat::contiguous, x.device());
    cuda::reduce_sum(x.cuda_f32(), cuda_layout(*plan), scale, out.cuda_f32());
#endif
  } else {
    std::vector<double> acc(static_cast<std::size_t>(plan->out_numel));
    reduce_kernel(*plan, x.f32(), acc.data(), [](float v, std::int64_t) { return v; });
    out = from_doubles(plan->out_shape, acc, scale);
  }
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
  return record(out, op, {x}, [=](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{broadcast_grad(plan, x_shape, format, g, static_cast<float>(scale))};
  });
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  return reduce_sum("sum", Kind::sum, x, axes, keepdim);
}

Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim) {
  return reduce_sum("mean", Kind::mean, x, axes, keepdim);
}

Tensor variance(const Tensor& x, const std::vector<std::int64_t>& axes, bool keepdim, bool unbiased) {
  auto plan = std::make_shared<const Plan>(make_plan("variance", x, axes, keepdim));
  const double denom = static_cast<double>(plan->count) - (unbiased ? 1.0 : 0.0);
  // Means rounded to float: deviations x - mean are then formed exactly enough in float lanes.
  // (A CUDA tensor keeps them in means_gpu, on its device.)
  auto means =
      std::make_shared<std::vector<float>>(x.is_cuda() ? 0 : static_cast<std::size_t>(plan->out_numel));
  Tensor means_gpu;
  Tensor out;
  if (x.numel() == 0) {
    out = Tensor::full(plan->out_shape, std::numeric_limits<float>::quiet_NaN(), MemoryFormat::contiguous,
                       x.device());
#if ZSQ_WITH_CUDA
  } else if (x.is_cuda()) {
    // One pass over x gives the variance and the float means the backward pass needs.
    means_gpu = Tensor::empty({plan->out_numel}, DType::f32, MemoryFormat::contiguous, x.device());
    out = Tensor::empty(plan->out_shape, DType::f32, MemoryFormat::contiguous, x.device());
    cuda::reduce_variance(x.cuda_f32(), cuda_layout(*plan), denom, out.cuda_f32(), means_gpu.cuda_f32());
#endif
  } else {
    // Two passes (mean, then squared deviations) for accuracy when |mean| >> stddev.
    std::vector<double> acc(means->size());
    reduce_kernel(*plan, x.f32(), acc.data(), [](float v, std::int64_t) { return v; });
    for (std::size_t o = 0; o < acc.size(); ++o)
      (*means)[o] = static_cast<float>(acc[o] / static_cast<double>(plan->count));
    const float* m = means->data();
    reduce_kernel(*plan, x.f32(), acc.data(), [=](float v, std::int64_t o) {
      const float d = v - m[o];
      return d * d;
    });
    out = from_doubles(plan->out_shape, acc, 1.0 / denom);
  }
  Tensor saved = x.requires_grad() ? x.detach() : Tensor();
  return record(out, "variance", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    // d var / dx = 2 (x - mean) / denom: per output o, grad = coef[o] * (x - mean[o]).
    Tensor gc = contiguous_grad(g);
#if ZSQ_WITH_CUDA
    if (saved.is_cuda()) {
      Tensor grad = Tensor::empty(saved.shape(), DType::f32, saved.format(), saved.device());
      if (grad.numel() > 0)
        cuda::variance_backward(gc.cuda_f32(), saved.cuda_f32(), means_gpu.cuda_f32(), cuda_layout(*plan),
                                2.0 / denom, grad.cuda_f32());
      return std::vector<Tensor>{grad};
    }
#endif
    Tensor coef = Tensor::empty({plan->out_numel});
    const float* pg = gc.f32();
    float* pc = coef.f32();
    for (std::int64_t o = 0; o < plan->out_numel; ++o) pc[o] = static_cast<float>(pg[o] * 2.0 / denom);
    Tensor grad = Tensor::empty(saved.shape(), DType::f32, saved.format());
    if (grad.numel() == 0) return std::vector<Tensor>{grad};
    const float* xs = saved.f32();
    const float* m = means->data();
    broadcast_kernel(*plan, pc, grad.f32(),
                     [=](float c, std::int64_t o, std::int64_t i) { return c * (xs[i] - m[o]); });
    return std::vector<Tensor>{grad};
  });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  ZSQ_CHECK(x.defined(), "reshape: undefined input");
  Shape target = shape;
  std::int64_t known = 1;
  std::ptrdiff_t infer = -1;
  for (std::size_t d = 0; d < target.size(); ++d) {
    if (target[d] == -1) {
      ZSQ_CHECK(infer < 0, "reshape: more than one -1 in target shape {}", shape_str(shape));
      infer = static_cast<std::ptrdiff_t>(d);
    } else {
      ZSQ_CHECK(target[d] >= 0, "reshape: negative size in target shape {}", shape_str(shape));
      known *= target[d];
    }
  }
  if (infer >= 0) {
    ZSQ_CHECK(known > 0 && x.numel() % known == 0, "reshape: cannot reshape {} to {}", x.str(),
              shape_str(shape));
    target[static_cast<std::size_t>(infer)] = x.numel() / known;
  }
  ZSQ_CHECK(shape_numel(target) == x.numel(), "reshape: cannot reshape {} ({} elements) to {} ({} elements)",
            x.str(), x.numel(), shape_str(shape), shape_numel(target));
  // Zero-copy when the bytes already read row-major; otherwise one NCHW copy.
  Tensor src = x.is_layout_equivalent(MemoryFormat::contiguous) ? x : x.to_format(MemoryFormat::contiguous);
  Tensor out = view_as_shape(src, target);
  const Shape x_shape = x.shape();
  return record(out, "reshape", {x}, [x_shape](const Tensor& g, const std::vector<bool>&) {
    Tensor gc = g.is_layout_equivalent(MemoryFormat::contiguous) ? g : g.to_format(MemoryFormat::contiguous);
    return std::vector<Tensor>{view_as_shape(gc, x_shape)};
  });
}

Tensor flatten(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dim() >= 1, "flatten: input must have a batch dimension, got {}", x.str());
  std::int64_t rest = 1;
  for (std::int64_t d = 1; d < x.dim(); ++d) rest *= x.size(d);
  return reshape(x, {x.size(0), rest});
}

}  // namespace zsq::ops
