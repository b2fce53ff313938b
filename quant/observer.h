// Range observers: they watch a tensor (per-tensor activation ranges) and report the [lo, hi] an
// activation quantizer uses. Each one reads any f32 tensor (contiguous or channels-last: a range does
// not care about the element order) with one OpenMP pass for min and max. A CUDA tensor is reduced on
// its device (ops/cuda/quant_stats.h) and only the results (min, max, the MSE histogram's bins) are
// read back: the state stays on the host, where the ranges are read as floats.
//
//   minmax    cumulative running min/max from lo = hi = 0, as the ZAQ code does (its buffers start at
//             zero, so the range always contains 0; after a ReLU lo stays 0).
//   ema       plain EMA of the batch min and max with momentum beta; the first batch initializes.
//   gdfq_ema  GDFQ's bias-corrected EMA, copied as-is (ALGORITHMS.md §5): per step
//             beta_t <- beta_t*beta; m <- (beta*m + (1-beta)*batch_min)/(1-beta_t); M likewise. The
//             stored value is what gets divided each step, so it overshoots (~4000x near step 20 on a
//             constant stream) before settling. Initial state as the reference code's buffers:
//             m = M = 0, beta_t = 1. Arithmetic in float, like the reference's f32 buffers.
//   mse       a histogram of everything observed (cumulative; range includes 0) and, after each
//             observation, the clip [r*lo, r*hi] (or [-r*a, r*a], a = max|.|, when symmetric) with r on
//             an even grid from min_ratio to 1 that minimizes the squared error between the data and
//             its bits-bit quantization (the ALGORITHMS.md §0 grid). Ties go to the larger r.
//
// Every observer: freeze() makes observe() a no-op until unfreeze(); with set_freeze_after(n) it
// freezes itself once n observations were taken. state()/load_state() carry everything (statistics,
// step count, frozen flag) through checkpoints as floats.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "quant/qconfig.h"

namespace zsq::quant {

// Min and max of all elements of an f32 tensor in one pass; throws on NaN/Inf or an empty tensor.
std::pair<float, float> tensor_min_max(const Tensor& x);

class Observer {
 public:
  virtual ~Observer() = default;
  virtual ObserverKind kind() const = 0;

  // Updates the range from x unless frozen; then freezes when freeze_after is reached.
  void observe(const Tensor& x);
  float lo() const { return lo_; }
  float hi() const { return hi_; }
  // Observations taken (frozen calls not counted).
  std::int64_t steps() const { return steps_; }

  void freeze() { frozen_ = true; }
  void unfreeze() { frozen_ = false; }
  bool frozen() const { return frozen_; }
  void set_freeze_after(std::optional<std::int64_t> steps) { freeze_after_ = steps; }
  std::optional<std::int64_t> freeze_after() const { return freeze_after_; }

  // Back to the state of a new observer (statistics, steps, frozen flag); keeps the settings.
  void reset();

  // [kind, steps, frozen, lo, hi, kind-specific...]
  std::vector<float> state() const;
  // Throws zsq::Error naming the observer kind when the state is of another kind or size.
  void load_state(const std::vector<float>& state);

 protected:
  virtual void update(const Tensor& x) = 0;
  virtual void reset_extra() {}
  virtual std::vector<float> extra_state() const { return {}; }
  virtual void load_extra_state(const float* extra, std::size_t count) = 0;

  float lo_ = 0.0f, hi_ = 0.0f;
  std::int64_t steps_ = 0;  // incremented after update()

 private:
  bool frozen_ = false;
  std::optional<std::int64_t> freeze_after_;
};

class MinMaxObserver final : public Observer {
 public:
  ObserverKind kind() const override { return ObserverKind::minmax; }

 protected:
  void update(const Tensor& x) override;
  void load_extra_state(const float* extra, std::size_t count) override;
};

class EmaObserver final : public Observer {
 public:
  explicit EmaObserver(float momentum = 0.9f);
  ObserverKind kind() const override { return ObserverKind::ema; }
  float momentum() const { return beta_; }

 protected:
  void update(const Tensor& x) override;
  void load_extra_state(const float* extra, std::size_t count) override;

 private:
  float beta_;
};

class GdfqEmaObserver final : public Observer {
 public:
  explicit GdfqEmaObserver(float momentum = 0.9f);
  ObserverKind kind() const override { return ObserverKind::gdfq_ema; }
  float momentum() const { return beta_; }
  float beta_t() const { return beta_t_; }

 protected:
  void update(const Tensor& x) override;
  void reset_extra() override { beta_t_ = 1.0f; }
  std::vector<float> extra_state() const override { return {beta_t_}; }
  void load_extra_state(const float* extra, std::size_t count) override;

 private:
  float beta_;
  float beta_t_ = 1.0f;
};

class MseObserver final : public Observer {
 public:
  static constexpr int kBins = 2048;
  MseObserver(int bits, int candidates = 100, float min_ratio = 0.3f, bool symmetric = false);
  ObserverKind kind() const override { return ObserverKind::mse; }
  int bits() const { return bits_; }
  // The clip ratio chosen by the last observation (1 = the full observed range).
  float ratio() const { return ratio_; }
  // The full observed range (what ratio() scales).
  float range_lo() const { return range_lo_; }
  float range_hi() const { return range_hi_; }
  // Squared quantization error (summed over all observed elements, histogram estimate) at ratio r.
  double error_at(float r) const;

 protected:
  void update(const Tensor& x) override;
  void reset_extra() override;
  std::vector<float> extra_state() const override;
  void load_extra_state(const float* extra, std::size_t count) override;

 private:
  void rebin(float new_lo, float new_hi);
  void choose();

  int bits_;
  int candidates_;
  float min_ratio_;
  bool symmetric_;
  float range_lo_ = 0.0f, range_hi_ = 0.0f;  // histogram span, always contains 0
  float ratio_ = 1.0f;
  // Per bin: count, sum and sum of squares of the values that fell in it.
  std::vector<double> count_, sum_, sumsq_;
};

// The activation observer a QConfig asks for, for a quantizer of `bits` bits, with its freeze_after.
std::unique_ptr<Observer> make_observer(const QConfig& cfg, int bits);

}  // namespace zsq::quant
