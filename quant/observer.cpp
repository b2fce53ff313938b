#include "quant/observer.h"

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "engine/check.h"
#include "ops/cpu/kernels.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/quant_stats.h"
#endif

namespace zsq::quant {

namespace {

// The ALGORITHMS.md §0 quantizer of one value on [m, M] with `levels` = 2^k - 1 steps, in double:
// delta * clamp(round(v/delta), round(m/delta), round(m/delta) + levels), delta = max(M - m, 1e-8)/levels.
// Rounding is to nearest even, as torch.round. A local helper on purpose (the fake-quant op is separate).
struct Grid {
  double delta, qlo, qhi;
  Grid(double m, double M, int levels)
      : delta(std::max(M - m, 1e-8) / levels), qlo(std::nearbyint(m / delta)), qhi(qlo + levels) {}
  double operator()(double v) const { return delta * std::clamp(std::nearbyint(v / delta), qlo, qhi); }
};

}  // namespace

std::pair<float, float> tensor_min_max(const Tensor& t) {
  ZSQ_CHECK(t.defined(), "observer: undefined tensor");
  ZSQ_CHECK(t.dtype() == DType::f32, "observer: f32 tensor expected, got {}", t.str());
  ZSQ_CHECK(t.numel() > 0, "observer: empty tensor {}", t.str());
#if ZSQ_WITH_CUDA
  if (t.is_cuda()) {
    // Reduced on the device; only the three results come back (the observer's state is on the host).
    const auto r = cuda::tensor_min_max(t.cuda_f32(), t.numel());
    ZSQ_CHECK(r.non_finite == 0, "observer: {} non-finite values in {}", r.non_finite, t.str());
    return {r.lo, r.hi};
  }
#endif
  const Tensor& x = t;
  // Every element once, in memory order: the range does not depend on the layout.
  const float* __restrict p = x.f32();
  const std::int64_t n = x.numel();
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  std::int64_t bad = 0;
#pragma omp parallel for simd schedule(static) reduction(min : lo) reduction(max : hi) reduction(+ : bad) \
    if (n > ops::cpu::kParallelThreshold)
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = p[i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    bad += !(std::fabs(v) <= FLT_MAX);  // NaN or Inf
  }
  ZSQ_CHECK(bad == 0, "observer: {} non-finite values in {}", bad, t.str());
  return {lo, hi};
}

// ---- Observer ----

void Observer::observe(const Tensor& x) {
  if (frozen_) return;
  update(x);
  ++steps_;
  if (freeze_after_ && steps_ == *freeze_after_) frozen_ = true;
}

void Observer::reset() {
  lo_ = hi_ = 0.0f;
  steps_ = 0;
  frozen_ = false;
  reset_extra();
}

std::vector<float> Observer::state() const {
  std::vector<float> s{static_cast<float>(kind()), static_cast<float>(steps_), frozen_ ? 1.0f : 0.0f, lo_,
                       hi_};
  const auto extra = extra_state();
  s.insert(s.end(), extra.begin(), extra.end());
  return s;
}

void Observer::load_state(const std::vector<float>& s) {
  ZSQ_CHECK(s.size() >= 5, "observer state: {} values, need at least 5 for a {} observer", s.size(),
            to_string(kind()));
  ZSQ_CHECK(s[0] == static_cast<float>(kind()), "observer state: saved by observer kind {}, loading into {}",
            s[0], to_string(kind()));
  ZSQ_CHECK(s[1] >= 0.0f && std::isfinite(s[3]) && std::isfinite(s[4]),
            "observer state: invalid step count or range for a {} observer", to_string(kind()));
  load_extra_state(s.data() + 5, s.size() - 5);
  steps_ = static_cast<std::int64_t>(s[1]);
  frozen_ = s[2] != 0.0f;
  lo_ = s[3];
  hi_ = s[4];
}

// ---- minmax ----

void MinMaxObserver::update(const Tensor& x) {
  const auto [bmin, bmax] = tensor_min_max(x);
  lo_ = std::min(lo_, bmin);  // from 0, as the ZAQ buffers: the range always contains 0
  hi_ = std::max(hi_, bmax);
}

void MinMaxObserver::load_extra_state(const float*, std::size_t count) {
  ZSQ_CHECK(count == 0, "observer state: minmax takes 5 values, got {}", count + 5);
}

// ---- ema ----

EmaObserver::EmaObserver(float momentum) : beta_(momentum) {
  ZSQ_CHECK(momentum > 0.0f && momentum < 1.0f, "ema observer: momentum must be in (0, 1), got {}", momentum);
}

void EmaObserver::update(const Tensor& x) {
  const auto [bmin, bmax] = tensor_min_max(x);
  if (steps_ == 0) {
    lo_ = bmin;
    hi_ = bmax;
    return;
  }
  lo_ = beta_ * lo_ + (1.0f - beta_) * bmin;
  hi_ = beta_ * hi_ + (1.0f - beta_) * bmax;
}

void EmaObserver::load_extra_state(const float*, std::size_t count) {
  ZSQ_CHECK(count == 0, "observer state: ema takes 5 values, got {}", count + 5);
}

// ---- gdfq_ema ----

GdfqEmaObserver::GdfqEmaObserver(float momentum) : beta_(momentum) {
  ZSQ_CHECK(momentum > 0.0f && momentum < 1.0f, "gdfq_ema observer: momentum must be in (0, 1), got {}",
            momentum);
}

void GdfqEmaObserver::update(const Tensor& x) {
  const auto [bmin, bmax] = tensor_min_max(x);
  // The reference's float32 buffer arithmetic, one rounding per operation (no FMA contraction in ISO
  // C++ mode): the stored (already divided) value is divided again every step. Quirk kept on purpose.
  beta_t_ = beta_t_ * beta_;
  const float keep = 1.0f - beta_;
  const float correction = 1.0f - beta_t_;
  lo_ = (lo_ * beta_ + bmin * keep) / correction;
  hi_ = (hi_ * beta_ + bmax * keep) / correction;
}

void GdfqEmaObserver::load_extra_state(const float* extra, std::size_t count) {
  ZSQ_CHECK(count == 1, "observer state: gdfq_ema takes 6 values, got {}", count + 5);
  ZSQ_CHECK(extra[0] > 0.0f && extra[0] <= 1.0f, "observer state: gdfq_ema beta_t must be in (0, 1], got {}",
            extra[0]);
  beta_t_ = extra[0];
}

// ---- mse ----

MseObserver::MseObserver(int bits, int candidates, float min_ratio, bool symmetric)
    : bits_(bits), candidates_(candidates), min_ratio_(min_ratio), symmetric_(symmetric) {
  ZSQ_CHECK(bits >= kMinBits && bits <= kMaxBits, "mse observer: bits must be in {}..{}, got {}", kMinBits,
            kMaxBits, bits);
  ZSQ_CHECK(candidates >= 2, "mse observer: need at least 2 candidate ratios, got {}", candidates);
  ZSQ_CHECK(min_ratio > 0.0f && min_ratio <= 1.0f, "mse observer: min_ratio must be in (0, 1], got {}",
            min_ratio);
  reset_extra();
}

void MseObserver::reset_extra() {
  range_lo_ = range_hi_ = 0.0f;
  ratio_ = 1.0f;
  count_.assign(kBins, 0.0);
  sum_.assign(kBins, 0.0);
  sumsq_.assign(kBins, 0.0);
}

namespace {
// Bin of v for a histogram of kBins bins starting at lo with 1/width = inv (0 when the span is 0).
inline int bin_of(double v, double lo, double inv) {
  const double f = (v - lo) * inv;
  return f <= 0.0 ? 0 : f >= MseObserver::kBins - 1 ? MseObserver::kBins - 1 : static_cast<int>(f);
}
inline double inv_width(float lo, float hi) {
  return hi > lo ? MseObserver::kBins / (static_cast<double>(hi) - lo) : 0.0;
}
}  // namespace

// The span grew: move each old bin's totals to the new bin holding its mean (exact totals; only the
// within-bin position is approximated).
void MseObserver::rebin(float new_lo, float new_hi) {
  std::vector<double> count(kBins, 0.0), sum(kBins, 0.0), sumsq(kBins, 0.0);
  const double inv = inv_width(new_lo, new_hi);
  for (int b = 0; b < kBins; ++b) {
    if (count_[b] == 0.0) continue;
    const int nb = bin_of(sum_[b] / count_[b], new_lo, inv);
    count[nb] += count_[b];
    sum[nb] += sum_[b];
    sumsq[nb] += sumsq_[b];
  }
  count_.swap(count);
  sum_.swap(sum);
  sumsq_.swap(sumsq);
  range_lo_ = new_lo;
  range_hi_ = new_hi;
}

void MseObserver::update(const Tensor& t) {
  const auto [bmin, bmax] = tensor_min_max(t);
  const float new_lo = std::min({range_lo_, bmin, 0.0f});
  const float new_hi = std::max({range_hi_, bmax, 0.0f});
  if (new_lo < range_lo_ || new_hi > range_hi_) rebin(new_lo, new_hi);

  const double lo = range_lo_, inv = inv_width(range_lo_, range_hi_);
#if ZSQ_WITH_CUDA
  if (t.is_cuda()) {
    // The histogram is built on the device and only its bins come back (the bins' order of addition
    // differs from the CPU's, so the sums may differ in the last bits of a double).
    static_assert(cuda::kHistogramBins == kBins);
    std::vector<double> count(kBins), sum(kBins), sumsq(kBins);
    cuda::histogram(t.cuda_f32(), t.numel(), lo, inv, count.data(), sum.data(), sumsq.data());
    for (std::size_t b = 0; b < static_cast<std::size_t>(kBins); ++b) {
      count_[b] += count[b];
      sum_[b] += sum[b];
      sumsq_[b] += sumsq[b];
    }
    choose();
    return;
  }
#endif
  const float* p = t.f32();
  const std::int64_t n = t.numel();
  // Per-thread histograms merged in thread order, so a fixed thread count gives fixed sums.
  const bool parallel = n > ops::cpu::kParallelThreshold;
  const int threads = parallel ? omp_get_max_threads() : 1;
  std::vector<std::vector<double>> local(static_cast<std::size_t>(threads),
                                         std::vector<double>(3 * static_cast<std::size_t>(kBins), 0.0));
#pragma omp parallel num_threads(threads) if (parallel)
  {
    auto& h = local[static_cast<std::size_t>(omp_get_thread_num())];
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = p[i];
      const auto b = static_cast<std::size_t>(bin_of(v, lo, inv));
      h[3 * b] += 1.0;
      h[3 * b + 1] += v;
      h[3 * b + 2] += v * v;
    }
  }
  for (const auto& h : local)
    for (std::size_t b = 0; b < static_cast<std::size_t>(kBins); ++b) {
      count_[b] += h[3 * b];
      sum_[b] += h[3 * b + 1];
      sumsq_[b] += h[3 * b + 2];
    }
  choose();
}

double MseObserver::error_at(float r) const {
  double m = static_cast<double>(r) * range_lo_, M = static_cast<double>(r) * range_hi_;
  if (symmetric_) {
    M = static_cast<double>(r) * std::max(-static_cast<double>(range_lo_), static_cast<double>(range_hi_));
    m = -M;
  }
  const Grid q(m, M, (1 << bits_) - 1);
  double err = 0.0;
  for (int b = 0; b < kBins; ++b) {
    const double n = count_[b];
    if (n == 0.0) continue;
    const double mean = sum_[b] / n;
    const double spread = std::max(0.0, sumsq_[b] - sum_[b] * mean);  // sum of (v - mean)^2
    const double off = mean - q(mean);
    err += spread + n * off * off;
  }
  return err;
}

void MseObserver::choose() {
  // From r = 1 down; a smaller ratio must be strictly better (relative 1e-9) to win.
  double best_err = std::numeric_limits<double>::infinity();
  float best = 1.0f;
  for (int i = candidates_ - 1; i >= 0; --i) {
    const float r = i == candidates_ - 1
                        ? 1.0f
                        : static_cast<float>(min_ratio_ + (1.0 - min_ratio_) * i / (candidates_ - 1));
    const double err = error_at(r);
    if (err < best_err * (1.0 - 1e-9)) {
      best_err = err;
      best = r;
    }
  }
  ratio_ = best;
  if (symmetric_) {
    const float a = std::max(-range_lo_, range_hi_);
    hi_ = best * a;
    lo_ = -hi_;
  } else {
    lo_ = best * range_lo_;
    hi_ = best * range_hi_;
  }
}

std::vector<float> MseObserver::extra_state() const {
  std::vector<float> s{range_lo_, range_hi_, ratio_};
  s.reserve(3 + 3 * static_cast<std::size_t>(kBins));
  for (const auto* v : {&count_, &sum_, &sumsq_})
    for (double d : *v) s.push_back(static_cast<float>(d));
  return s;
}

void MseObserver::load_extra_state(const float* extra, std::size_t count) {
  const std::size_t want = 3 + 3 * static_cast<std::size_t>(kBins);
  ZSQ_CHECK(count == want, "observer state: mse takes {} values, got {}", want + 5, count + 5);
  ZSQ_CHECK(extra[0] <= 0.0f && extra[1] >= 0.0f && extra[2] > 0.0f && extra[2] <= 1.0f,
            "observer state: invalid mse range [{}, {}] or ratio {}", extra[0], extra[1], extra[2]);
  range_lo_ = extra[0];
  range_hi_ = extra[1];
  ratio_ = extra[2];
  const float* h = extra + 3;
  for (auto* v : {&count_, &sum_, &sumsq_}) {
    v->assign(h, h + kBins);
    h += kBins;
  }
}

// ---- factory ----

std::unique_ptr<Observer> make_observer(const QConfig& cfg, int bits) {
  std::unique_ptr<Observer> obs;
  switch (cfg.act_observer) {
    case ObserverKind::minmax:
      obs = std::make_unique<MinMaxObserver>();
      break;
    case ObserverKind::ema:
      obs = std::make_unique<EmaObserver>(cfg.ema_momentum);
      break;
    case ObserverKind::gdfq_ema:
      obs = std::make_unique<GdfqEmaObserver>(cfg.ema_momentum);
      break;
    case ObserverKind::mse:
      obs = std::make_unique<MseObserver>(bits, cfg.mse_candidates, cfg.mse_min_ratio, cfg.act_symmetric);
      break;
  }
  ZSQ_CHECK(obs != nullptr, "make_observer: unknown observer kind {}", static_cast<int>(cfg.act_observer));
  obs->set_freeze_after(cfg.freeze_after);
  return obs;
}

}  // namespace zsq::quant
