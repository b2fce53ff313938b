#include "engine/optim.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "ops/cuda/cuda_runtime_api.h"

namespace zsq {

void Optimizer::zero_grad() {
  for (auto& p : params_) p.zero_grad();
}

namespace {
void check_params(const std::vector<Tensor>& params, const char* who) {
  for (std::size_t i = 0; i < params.size(); ++i)
    ZSQ_CHECK(params[i].defined() && params[i].dtype() == DType::f32,
              "{}: parameter {} must be a defined f32 tensor, got {}", who, i, params[i].str());
}

std::map<std::string, Tensor> by_name(const std::vector<std::pair<std::string, Tensor>>& state) {
  return {state.begin(), state.end()};
}

void restore(std::map<std::string, Tensor>& saved, const std::string& name, Tensor& slot,
             const Tensor& like) {
  auto it = saved.find(name);
  if (it == saved.end()) {
    slot = Tensor();
    return;
  }
  ZSQ_CHECK(it->second.shape() == like.shape(), "optimizer state '{}' is {}, parameter is {}", name,
            it->second.str(), like.str());
  slot = Tensor::empty(like.shape(), DType::f32, like.format(), like.device());
  slot.copy_from(it->second);
}

// Gradient in the parameter's own memory format.
Tensor grad_of(const Tensor& p) {
  Tensor g = p.grad();
  return g.format() == p.format() ? g : g.to_format(p.format());
}
}  // namespace

Sgd::Sgd(std::vector<Tensor> params, const SgdOptions& options)
    : Optimizer(std::move(params), options.lr), options_(options), momentum_(params_.size()) {
  check_params(params_, "SGD");
  ZSQ_CHECK(options.lr >= 0 && options.momentum >= 0 && options.weight_decay >= 0,
            "SGD: lr, momentum and weight decay must be >= 0");
  ZSQ_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
            "SGD: Nesterov momentum needs momentum > 0 and zero dampening");
}

void Sgd::step() {
  const float lr = lr_, mu = options_.momentum, wd = options_.weight_decay, damp = options_.dampening;
  for (std::size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k];
    if (!p.grad().defined()) continue;
    Tensor g = grad_of(p);
    const auto n = p.numel();
    if (p.is_cuda()) {
      const bool first = !momentum_[k].defined();
      if (first && mu != 0.0f) momentum_[k] = Tensor::empty(p.shape(), DType::f32, p.format(), p.device());
      cuda::sgd_step(p.cuda_f32(), g.cuda_f32(), mu != 0.0f ? momentum_[k].cuda_f32() : nullptr, n, lr, mu,
                     damp, wd, options_.nesterov, first);
      continue;
    }
    float* w = p.f32();
    const float* gp = g.f32();
    if (mu == 0.0f) {
      for (std::int64_t i = 0; i < n; ++i) w[i] -= lr * (gp[i] + wd * w[i]);
      continue;
    }
    const bool first = !momentum_[k].defined();
    if (first) momentum_[k] = Tensor::empty(p.shape(), DType::f32, p.format());
    float* buf = momentum_[k].f32();
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = gp[i] + wd * w[i];
      buf[i] = first ? gi : mu * buf[i] + (1.0f - damp) * gi;
      w[i] -= lr * (options_.nesterov ? gi + mu * buf[i] : buf[i]);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> Sgd::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (std::size_t k = 0; k < momentum_.size(); ++k)
    if (momentum_[k].defined()) out.emplace_back(fmt::format("momentum.{}", k), momentum_[k]);
  return out;
}

void Sgd::load_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  auto saved = by_name(state);
  for (std::size_t k = 0; k < params_.size(); ++k)
    restore(saved, fmt::format("momentum.{}", k), momentum_[k], params_[k]);
}

Adam::Adam(std::vector<Tensor> params, const AdamOptions& options)
    : Optimizer(std::move(params), options.lr), options_(options), m_(params_.size()), v_(params_.size()) {
  check_params(params_, "Adam");
  ZSQ_CHECK(
      options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1 && options.eps > 0,
      "Adam: betas must be in [0, 1) and eps > 0");
}

void Adam::step() {
  ++steps_;
  const double c1 = 1.0 - std::pow(static_cast<double>(options_.beta1), static_cast<double>(steps_));
  const double c2 = 1.0 - std::pow(static_cast<double>(options_.beta2), static_cast<double>(steps_));
  const float b1 = options_.beta1, b2 = options_.beta2, wd = options_.weight_decay;
  const float step_size = static_cast<float>(lr_ / c1);
  const float sqrt_c2 = static_cast<float>(std::sqrt(c2));
  const float eps = options_.eps;
  for (std::size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k];
    if (!p.grad().defined()) continue;
    if (!m_[k].defined()) {
      m_[k] = Tensor::zeros(p.shape(), DType::f32, p.format(), p.device());
      v_[k] = Tensor::zeros(p.shape(), DType::f32, p.format(), p.device());
    }
    Tensor g = grad_of(p);
    if (p.is_cuda()) {
      cuda::adam_step(p.cuda_f32(), g.cuda_f32(), m_[k].cuda_f32(), v_[k].cuda_f32(), p.numel(), step_size,
                      b1, b2, eps, wd, sqrt_c2);
      continue;
    }
    float* __restrict w = p.f32();
    const float* __restrict gp = g.f32();
    float* __restrict m = m_[k].f32();
    float* __restrict v = v_[k].f32();
    const std::int64_t n = p.numel();
    // Locals and restrict so the loop vectorizes and splits across threads: the generator's 1M
    // parameters were a serial scalar loop that left the other thread idle (~1% of a GDFQ iteration).
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = gp[i] + wd * w[i];
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      w[i] -= step_size * m[i] / (std::sqrt(v[i]) / sqrt_c2 + eps);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> Adam::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back("steps", Tensor::scalar(static_cast<float>(steps_)));
  for (std::size_t k = 0; k < m_.size(); ++k)
    if (m_[k].defined()) {
      out.emplace_back(fmt::format("m.{}", k), m_[k]);
      out.emplace_back(fmt::format("v.{}", k), v_[k]);
    }
  return out;
}

void Adam::load_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  auto saved = by_name(state);
  auto it = saved.find("steps");
  ZSQ_CHECK(it != saved.end(), "Adam state has no 'steps' entry");
  steps_ = static_cast<std::int64_t>(it->second.item());
  for (std::size_t k = 0; k < params_.size(); ++k) {
    restore(saved, fmt::format("m.{}", k), m_[k], params_[k]);
    restore(saved, fmt::format("v.{}", k), v_[k], params_[k]);
  }
}

float MultiStepSchedule::at(std::int64_t step) const {
  const auto passed =
      std::count_if(milestones_.begin(), milestones_.end(), [&](auto m) { return m <= step; });
  return base_ * std::pow(gamma_, static_cast<float>(passed));
}

float CosineSchedule::at(std::int64_t step) const {
  if (step >= total_) return eta_min_;
  const double t = static_cast<double>(step) / static_cast<double>(total_);
  return static_cast<float>(eta_min_ + (base_ - eta_min_) * (1.0 + std::cos(M_PI * t)) / 2.0);
}

}  // namespace zsq
