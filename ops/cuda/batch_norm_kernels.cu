// zsq's batch-normalization kernels (contract in batch_norm_kernels.h). Each op is a reduction sweep
// over the activation, a per-channel finisher and an element-wise sweep (batch_norm_sweep.cuh):
//   forward (training): sums of x -> mean, inv_std, running stats -> y   (x read twice, y written)
//   backward: sums of g', g' (x - mean) -> dgamma, dbeta, dx coefficients -> dx   (g', x read twice)
// The statistics sum x - x_c0, with x_c0 the channel's first value, so that the float runs of a thread
// do not cancel on channels whose mean is large against their spread; the finishers work in double.
#include "ops/cuda/batch_norm_kernels.h"

#include "ops/cuda/batch_norm_sweep.cuh"

namespace zsq::cuda {

namespace {

using namespace batch_norm_detail;

// grad, masked by relu_output > 0 when the forward fused a ReLU (inputs 0 and 1).
template <int V, int L>
__device__ __forceinline__ void masked_grad(const float* const (&src)[L], const float (&v)[L][V],
                                            float (&g)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) g[j] = src[1] == nullptr || v[1][j] > 0.0f ? v[0][j] : 0.0f;
}

// ---- element operations ---------------------------------------------------------------------------
// Each op names the kLoads inputs it reads (src) and a per-channel State (state(c)). A reduction's
// terms(v, state, a, b) gives the two values that V elements add into the sums; an element-wise
// apply(i, v, state) writes the output at i. The sweeps load kUnroll units of every input before they
// use any, so that many loads are in flight per thread.

struct StatsTerms {
  static constexpr int kLoads = 1;
  const float* src[kLoads];  // x
  i64 inner;
  using State = float;
  // The shift: the channel's first value.
  __device__ __forceinline__ State state(i64 c) const { return src[0][c * inner]; }
  template <int V>
  __device__ __forceinline__ void terms(const float (&v)[kLoads][V], const State (&shift)[V], float (&a)[V],
                                        float (&b)[V]) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      a[j] = v[0][j] - shift[j];
      b[j] = a[j] * a[j];
    }
  }
};

struct GradTerms {
  static constexpr int kLoads = 3;
  const float* src[kLoads];  // grad, relu_output (may be null), x
  const float* mean;
  using State = float;
  __device__ __forceinline__ State state(i64 c) const { return mean[c]; }
  template <int V>
  __device__ __forceinline__ void terms(const float (&v)[kLoads][V], const State (&m)[V], float (&a)[V],
                                        float (&b)[V]) const {
    masked_grad<V>(src, v, a);
#pragma unroll
    for (int j = 0; j < V; ++j) b[j] = a[j] * (v[2][j] - m[j]);
  }
};

struct NormalizeApply {
  static constexpr int kLoads = 1;
  const float* src[kLoads];  // x
  float* y;
  const float* mean;
  const float* stat;
  const float* gamma;
  const float* beta;
  float eps;
  bool stat_is_var;
  bool relu;
  struct State {
    float mean, scale, shift;
  };
  __device__ __forceinline__ State state(i64 c) const {
    const float inv_std = stat_is_var ? 1.0f / sqrtf(stat[c] + eps) : stat[c];
    return {mean[c], inv_std * (gamma != nullptr ? gamma[c] : 1.0f), beta != nullptr ? beta[c] : 0.0f};
  }
  template <int V>
  __device__ __forceinline__ void apply(i64 i, const float (&v)[kLoads][V], const State (&st)[V]) const {
    float out[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float t = (v[0][j] - st[j].mean) * st[j].scale + st[j].shift;
      out[j] = relu ? fmaxf(t, 0.0f) : t;
    }
    store<V>(y, i, out);
  }
};

// dx = p * g' + q * (x - mean) + r; x is null (not read) with running statistics, where q = r = 0.
struct GradInputApply {
  static constexpr int kLoads = 3;
  const float* src[kLoads];  // grad, relu_output (may be null), x (may be null)
  float* dx;
  const float* mean;
  const float* coef;  // [3][channels]: p, q, r
  i64 channels;
  struct State {
    float p, q, r, mean;
  };
  __device__ __forceinline__ State state(i64 c) const {
    return {coef[c], coef[channels + c], coef[2 * channels + c], src[2] != nullptr ? mean[c] : 0.0f};
  }
  template <int V>
  __device__ __forceinline__ void apply(i64 i, const float (&v)[kLoads][V], const State (&st)[V]) const {
    float g[V];
    masked_grad<V>(src, v, g);
    if (src[2] != nullptr) {
#pragma unroll
      for (int j = 0; j < V; ++j) g[j] = st[j].p * g[j] + (st[j].q * (v[2][j] - st[j].mean) + st[j].r);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) g[j] *= st[j].p;
    }
    store<V>(dx, i, g);
  }
};

// Sums of x - shift and (x - shift)^2 -> batch statistics, running-stat update.
struct StatsFinish {
  const float* x;
  i64 inner;
  double count;
  float eps;
  float momentum;
  float* mean;
  float* inv_std;
  float* running_mean;
  float* running_var;
  __device__ __forceinline__ void operator()(i64 c, double sum, double sum_sq) const {
    const double shift = x[c * inner];
    const double d = sum / count;
    const double var = fmax(0.0, sum_sq / count - d * d);
    const float batch_mean = static_cast<float>(shift + d);
    const float batch_var = static_cast<float>(var);
    mean[c] = batch_mean;
    inv_std[c] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    if (running_mean != nullptr) {
      // ops/batch_norm.cpp's CPU update, operation for operation.
      const double m = momentum;
      running_mean[c] = static_cast<float>((1.0 - m) * running_mean[c] + m * batch_mean);
      running_var[c] = static_cast<float>((1.0 - m) * running_var[c] + m * batch_var * count / (count - 1.0));
    }
  }
};

// Sums of g' and g' * (x - mean) -> dgamma, dbeta and the dx coefficients p, q, r.
struct GradFinish {
  const float* stat;
  const float* gamma;
  double count;
  float eps;
  bool batch_stats;
  i64 channels;
  float* coef;
  float* dgamma;
  float* dbeta;
  __device__ __forceinline__ void operator()(i64 c, double sum_g, double sum_gx) const {
    const double inv_std = batch_stats ? static_cast<double>(stat[c])
                                       : 1.0 / sqrt(static_cast<double>(stat[c]) + static_cast<double>(eps));
    const double p = (gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0) * inv_std;
    const double grad_gamma = sum_gx * inv_std;
    if (dbeta != nullptr) dbeta[c] = static_cast<float>(sum_g);
    if (dgamma != nullptr) dgamma[c] = static_cast<float>(grad_gamma);
    coef[c] = static_cast<float>(p);
    coef[channels + c] = batch_stats ? static_cast<float>(-p * inv_std * grad_gamma / count) : 0.0f;
    coef[2 * channels + c] = batch_stats ? static_cast<float>(-p * sum_g / count) : 0.0f;
  }
};

}  // namespace

void batch_norm_batch_stats(const float* x, const BatchNormLayout& layout, float eps, float momentum,
                            float* mean, float* inv_std, float* running_mean, float* running_var) {
  const Sweep s = plan_reduce<StatsTerms>(make_sweep(layout, aligned16(x)));
  Scratch partial(partial_bytes(s));
  run_reduce(s, StatsTerms{{x}, s.inner}, partial.as<double2>());
  const double count = static_cast<double>(s.outer) * static_cast<double>(s.inner);
  run_finish(partial.as<double2>(), s.splits, s.channels,
             StatsFinish{x, s.inner, count, eps, momentum, mean, inv_std, running_mean, running_var});
}

void batch_norm_normalize(const float* x, const BatchNormLayout& layout, const float* mean, const float* stat,
                          bool stat_is_var, float eps, const float* gamma, const float* beta, bool relu,
                          float* y) {
  const Sweep s = make_sweep(layout, aligned16(x) && aligned16(y));
  run_apply(s, NormalizeApply{{x}, y, mean, stat, gamma, beta, eps, stat_is_var, relu});
}

void batch_norm_grad(const float* grad, const float* relu_output, const float* x,
                     const BatchNormLayout& layout, const float* mean, const float* stat, bool batch_stats,
                     float eps, const float* gamma, float* dx, float* dgamma, float* dbeta) {
  if (batch_stats && (dgamma == nullptr || dbeta == nullptr))
    raise_error("batch_norm backward (CUDA): batch statistics need the dgamma and dbeta outputs");
  const Sweep geometry =
      make_sweep(layout, aligned16(grad) && aligned16(relu_output) && aligned16(x) && aligned16(dx));
  const Sweep s = plan_reduce<GradTerms>(geometry);
  const bool reduce_needed = batch_stats || dgamma != nullptr || dbeta != nullptr;
  const i64 splits = reduce_needed ? s.splits : 0;  // no partials: the finisher sees zero sums
  Scratch partial(reduce_needed ? partial_bytes(s) : 0);
  Scratch coef(static_cast<std::size_t>(3 * s.channels) * sizeof(float));
  if (reduce_needed) run_reduce(s, GradTerms{{grad, relu_output, x}, mean}, partial.as<double2>());
  const double count = static_cast<double>(s.outer) * static_cast<double>(s.inner);
  run_finish(partial.as<double2>(), splits, s.channels,
             GradFinish{stat, gamma, count, eps, batch_stats, s.channels, coef.as<float>(), dgamma, dbeta});
  run_apply(
      geometry,
      GradInputApply{{grad, relu_output, batch_stats ? x : nullptr}, dx, mean, coef.as<float>(), s.channels});
}

}  // namespace zsq::cuda
