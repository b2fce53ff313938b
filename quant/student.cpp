#include "quant/student.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "ops/fake_quant.h"
#include "quant/weight_ranges.h"
#if ZSQ_WITH_CUDA
#include "ops/cuda/quant_stats.h"
#endif

namespace zsq::quant {

Student::Student(const models::ModelSpec& spec, const models::Classifier& teacher, const QConfig& config)
    : spec_(spec), config_(config) {
  config_.validate();
  ZSQ_CHECK(!config_.quantize_input,
            "quantize_input=true is not supported by the fake-quantized student yet");
  Rng rng(0);
  model_ = models::build_model(spec_, rng);
  model_->to(teacher.device());  // the student computes where its teacher does
  model_->load_state(teacher.named_state(), "teacher");
  install_hooks();
}

void Student::install_hooks() {
  std::vector<std::pair<std::string, Module*>> convs;
  model_->for_each_descendant([&](const std::string& path, Module& m) {
    if (auto* unit = dynamic_cast<models::ConvBnAct*>(&m)) {
      ActivationSite site;
      site.name = path;
      site.unit = unit;
      activations_.push_back(std::move(site));
    }
    if (dynamic_cast<models::Conv2d*>(&m) != nullptr || dynamic_cast<models::Linear*>(&m) != nullptr)
      convs.emplace_back(path, &m);
  });
  for (std::size_t i = 0; i < convs.size(); ++i) {
    const LayerRole role =
        i == 0 ? LayerRole::first : (i + 1 == convs.size() ? LayerRole::last : LayerRole::middle);
    WeightSite site;
    site.name = convs[i].first;
    site.bits = config_.bits_for(site.name, role).weight_bits;
    if (auto* conv = dynamic_cast<models::Conv2d*>(convs[i].second)) {
      site.weight = conv->weight;
      site.hook = &conv->weight_quantizer;
    } else {
      auto* linear = dynamic_cast<models::Linear*>(convs[i].second);
      site.weight = linear->weight;
      site.hook = &linear->weight_quantizer;
    }
    if (config_.weight_range == ActRange::learned) site.learned_ratio = initial_clip_ratios(site);
    weights_.push_back(site);
  }
  for (std::size_t i = 0; i < weights_.size(); ++i)
    *weights_[i].hook = [this, i](const Tensor& w) {
      return phase_ == Phase::full_precision ? w : quantize_weight(weights_[i], w);
    };
  for (std::size_t i = 0; i < activations_.size(); ++i) {
    auto& site = activations_[i];
    // An activation belongs to its unit; the first unit (the stem) is the "first layer" for bits.
    site.bits = config_.bits_for(site.name, i == 0 ? LayerRole::first : LayerRole::middle).act_bits;
    site.observer = make_observer(config_, site.bits);
    if (config_.act_range == ActRange::learned) {
      site.learned_hi = Tensor::zeros({1}, DType::f32, MemoryFormat::contiguous, model_->device());
      site.learned_hi.set_requires_grad(true);
    }
    site.unit->output_quantizer = [this, i](const Tensor& a) {
      return quantize_activation(activations_[i], a);
    };
  }
}

Tensor Student::initial_clip_ratios(const WeightSite& site) const {
  // Once per construction: a GPU weight is searched on a host copy, so both devices start from the
  // same ratios.
  const Tensor w = site.weight.detach().to(Device::cpu());
  const auto channels = w.size(0);
  std::vector<float> ratios(static_cast<std::size_t>(channels), 1.0f);
  if (config_.weight_observer == ObserverKind::mse) {
    const ops::FakeQuantSpec spec{site.bits, config_.weight_symmetric, false};
    const auto [lo, hi] = weight_channel_ranges(w, spec, config_);
    const auto [mn, mx] = ops::channel_min_max(w);
    for (std::int64_t c = 0; c < channels; ++c) {
      // The MSE search scales min and max by one ratio (symmetric grids: max|w|); recover it.
      const float full = std::max(std::abs(mn.f32()[c]), std::abs(mx.f32()[c]));
      const float clipped = std::max(std::abs(lo.f32()[c]), std::abs(hi.f32()[c]));
      if (full > 0.0f) ratios[static_cast<std::size_t>(c)] = std::min(1.0f, clipped / full);
    }
  }
  Tensor out = Tensor::from_vector({channels}, ratios).to(site.weight.device());
  out.set_requires_grad(true);
  return out;
}

void Student::to(Device device) {
  model_->to(device);
  move_learned_ranges(device);
}

void Student::move_learned_ranges(Device device) const {
  // move_storage keeps each TensorImpl: optimizers holding these handles see the move.
  for (const auto& s : activations_)
    if (s.learned_hi.defined()) move_storage(s.learned_hi, device);
  for (const auto& s : weights_)
    if (s.learned_ratio.defined()) move_storage(s.learned_ratio, device);
}

void Student::follow_device(const Tensor& learned, const Tensor& x) const {
  // All ranges at once, not only this one: the learned hi of a unit that is never post-ReLU (a ResNet
  // shortcut) is never reached by a forward, and would stay behind on the old device.
  if (learned.device() != x.device()) move_learned_ranges(x.device());
}

Tensor Student::quantize_weight(const WeightSite& site, const Tensor& w) const {
  ops::FakeQuantSpec spec{site.bits, config_.weight_symmetric, config_.ste == SteKind::clipped};
  if (site.learned_ratio.defined()) {
    follow_device(site.learned_ratio, w);
    return ops::fake_quant_per_channel_ratio(w, site.learned_ratio, spec);
  }
  if (config_.weight_granularity == Granularity::per_channel) {
    if (config_.weight_observer == ObserverKind::minmax) return ops::fake_quant_per_channel_minmax(w, spec);
    const auto [lo, hi] = weight_channel_ranges(w.detach(), spec, config_);
    return ops::fake_quant_per_channel(w, lo, hi, spec);
  }
  const auto v = w.detach();
#if ZSQ_WITH_CUDA
  if (v.is_cuda()) {
    // fake_quant_per_tensor takes the range as floats: one small read-back per weight and forward
    // (per-tensor weight ranges are not the default; per-channel ones stay on the device).
    const auto r = cuda::tensor_min_max(v.cuda_f32(), v.numel());
    return ops::fake_quant_per_tensor(w, r.lo, r.hi, spec);
  }
#endif
  float lo = v.f32()[0], hi = v.f32()[0];
  for (std::int64_t i = 0; i < v.numel(); ++i) {
    lo = std::min(lo, v.f32()[i]);
    hi = std::max(hi, v.f32()[i]);
  }
  return ops::fake_quant_per_tensor(w, lo, hi, spec);
}

Tensor Student::quantize_activation(ActivationSite& site, const Tensor& a) {
  if (phase_ == Phase::full_precision) return a;
  if (!site.observer->frozen()) {
    site.observer->observe(a.detach());
    ++site.observations;
    if (site.learned_hi.defined()) {
      follow_device(site.learned_hi, a);
      site.learned_hi.fill(site.observer->hi());
    }
  }
  if (phase_ == Phase::calibrate) return a;
  ZSQ_CHECK(site.observations > 0 || site.observer->frozen(),
            "activation site {} has no range yet; calibrate first", site.name);
  if (uses_learned_range(site)) {
    ZSQ_CHECK(
        site.observer->lo() == 0.0f,
        "activation site {}: act_range learned needs a post-ReLU range [0, hi], the observer saw [{}, {}]",
        site.name, site.observer->lo(), site.observer->hi());
    follow_device(site.learned_hi, a);
    // On a GPU the learned hi is not read back every step (a synchronization per site): a hi that is
    // no longer > 0 quantizes to NaN there (ops/cuda/fake_quant.h), which the loss checks then report.
    if (!site.learned_hi.is_cuda()) {
      const float hi = site.learned_hi.f32()[0];
      ZSQ_CHECK(
          std::isfinite(hi) && hi > 0.0f,
          "activation site {}: the learned range [0, {}] is no longer a range (observed hi was {}); lower "
          "the ranges' learning rate (--opt range_lr=...)",
          site.name, hi, site.observer->hi());
    }
    return ops::fake_quant_learned_range(a, site.learned_hi, site.bits);
  }
  // Post-ReLU activations are quantized on [0, hi] when the observer saw only non-negative values.
  ops::FakeQuantSpec spec{site.bits, config_.act_symmetric, config_.ste == SteKind::clipped};
  return ops::fake_quant_per_tensor(a, site.observer->lo(), site.observer->hi(), spec);
}

bool Student::uses_learned_range(const ActivationSite& site) {
  // A site whose observer saw only zeros (hi 0) has no range to learn and keeps the fixed one.
  return site.learned_hi.defined() && site.observer->frozen() && site.observer->hi() > 0.0f;
}

std::pair<float, float> Student::activation_range(const ActivationSite& site) const {
  if (uses_learned_range(site)) return {site.observer->lo(), site.learned_hi.item()};  // either device
  return {site.observer->lo(), site.observer->hi()};
}

std::vector<float> Student::activation_state(const ActivationSite& site) const {
  auto state = site.observer->state();
  const auto [lo, hi] = activation_range(site);
  state[3] = lo;  // Observer::state(): [kind, steps, frozen, lo, hi, ...]
  state[4] = hi;
  return state;
}

std::vector<Tensor> Student::learned_ranges() const {
  std::vector<Tensor> out;
  for (const auto& s : activations_)
    if (s.learned_hi.defined()) out.push_back(s.learned_hi);
  for (const auto& s : weights_)
    if (s.learned_ratio.defined()) out.push_back(s.learned_ratio);
  return out;
}

bool Student::learned_ranges_active() const {
  for (const auto& s : activations_)
    if (uses_learned_range(s) && s.observations > 0) return true;
  for (const auto& s : weights_)
    if (s.learned_ratio.defined()) return true;
  return false;
}

void Student::reset_learned_ranges_to_observed() {
  for (auto& s : activations_)
    if (s.learned_hi.defined()) s.learned_hi.fill(s.observer->hi());
}

void Student::freeze_ranges() {
  for (auto& s : activations_) s.observer->freeze();
}

void Student::unfreeze_ranges() {
  for (auto& s : activations_) s.observer->unfreeze();
}

void Student::reset_ranges() {
  for (auto& s : activations_) {
    s.observer->reset();
    s.observations = 0;
  }
}

void Student::calibrate(std::int64_t batches, const std::function<Tensor(std::int64_t batch)>& batch_at) {
  set_phase(Phase::calibrate);
  model_->eval();
  {
    NoGrad no_grad;
    for (std::int64_t b = 0; b < batches; ++b) model_->forward(batch_at(b));
  }
  freeze_ranges();
  set_phase(Phase::quantized);
}

void Student::prepare_for_training() {
  model_->train();
  model_->set_requires_grad(true);
  if (config_.bn_mode == BnMode::train) return;
  for (auto* bn : model_->batch_norms()) {
    bn->eval();
    if (config_.bn_mode == BnMode::frozen) bn->set_requires_grad(false);
  }
}

std::optional<std::pair<std::string, float>> Student::first_diverged_parameter() const {
  static constexpr float kExplodedWeight = 1e15f;
  const auto params = model_->named_parameters();
#if ZSQ_WITH_CUDA
  // GPU parameters are scanned on the device in one pass; one copy brings back each one's first bad
  // index (this runs after every student step).
  std::vector<const float*> ptrs;
  std::vector<std::int64_t> sizes, first;
  for (const auto& [name, p] : params)
    if (p.is_cuda()) {
      ptrs.push_back(p.cuda_f32());
      sizes.push_back(p.numel());
    }
  first.assign(ptrs.size(), -1);
  cuda::first_outside(ptrs.data(), sizes.data(), ptrs.size(), kExplodedWeight, first.data());
  std::size_t gpu_index = 0;
#endif
  for (const auto& [name, p] : params) {
#if ZSQ_WITH_CUDA
    if (p.is_cuda()) {
      const std::size_t k = gpu_index++;
      if (first[k] >= 0) return std::pair{name, cuda::read_float(ptrs[k] + first[k])};
      continue;
    }
#endif
    const float* v = p.f32();
    for (std::int64_t i = 0, n = p.numel(); i < n; ++i)
      if (!std::isfinite(v[i]) || std::abs(v[i]) > kExplodedWeight) return std::pair{name, v[i]};
  }
  return std::nullopt;
}

std::vector<const ActivationSite*> Student::used_activation_sites() const {
  std::vector<const ActivationSite*> out;
  for (const auto& s : activations_)
    if (s.observations > 0) out.push_back(&s);
  return out;
}

Checkpoint Student::to_checkpoint(std::map<std::string, std::string> metadata) const {
  metadata["zsq.arch"] = spec_.name;
  metadata["zsq.config"] = spec_.config.dump();
  metadata["zsq.quant.config"] = config_.to_json().dump();
  Checkpoint ckpt(model_->named_state(), std::move(metadata));
  // The whole observer state (kind, steps, frozen flag, range, running statistics) so a run resumes exactly.
  for (const auto* s : used_activation_sites()) {
    const auto state = activation_state(*s);
    ckpt.add("quant.act." + s->name, Tensor::from_vector({static_cast<std::int64_t>(state.size())}, state));
  }
  for (const auto& s : weights_)
    if (s.learned_ratio.defined()) ckpt.add("quant.weight_ratio." + s.name, s.learned_ratio.detach().clone());
  return ckpt;
}

bool Student::is_student_checkpoint(const Checkpoint& checkpoint) {
  return checkpoint.metadata.count("zsq.quant.config") > 0;
}

void Student::load_weight_ratios(const Checkpoint& checkpoint, bool fresh_if_missing) {
  const std::string& file = checkpoint.path;
  for (auto& site : weights_) {
    const Tensor* ratio = checkpoint.find("quant.weight_ratio." + site.name);
    if (!site.learned_ratio.defined()) {
      ZSQ_CHECK(ratio == nullptr,
                "{}: quant.weight_ratio.{} in a student whose config has weight_range observed", file,
                site.name);
      continue;
    }
    if (ratio == nullptr && fresh_if_missing) continue;
    ZSQ_CHECK(ratio != nullptr, "{}: weight_range learned but no quant.weight_ratio.{}", file, site.name);
    ZSQ_CHECK(ratio->dtype() == DType::f32 && ratio->shape() == site.learned_ratio.shape(),
              "{}: quant.weight_ratio.{} is {}, expected f32 [{}]", file, site.name, ratio->str(),
              site.learned_ratio.size(0));
    site.learned_ratio.copy_from(*ratio);  // either device
  }
}

QConfig Student::config_of(const Checkpoint& checkpoint) {
  const std::string& file = checkpoint.path;
  ZSQ_CHECK(is_student_checkpoint(checkpoint), "{}: not a quantized model (no zsq.quant.config)", file);
  QConfig config;
  try {
    config.apply_json(nlohmann::json::parse(checkpoint.metadata.at("zsq.quant.config")), file);
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: zsq.quant.config is not valid JSON: {}", file, e.what()));
  }
  return config;
}

std::unique_ptr<Student> Student::from_checkpoint(const Checkpoint& checkpoint, bool fresh_weight_ratios) {
  const std::string& file = checkpoint.path;
  ZSQ_CHECK(is_student_checkpoint(checkpoint), "{}: not a quantized model (no zsq.quant.config)", file);
  auto loaded = models::model_from_checkpoint(checkpoint);
  auto student = std::make_unique<Student>(loaded.spec, *loaded.model, config_of(checkpoint));
  std::size_t restored = 0;
  for (auto& site : student->activations_) {
    const Tensor* range = checkpoint.find("quant.act." + site.name);
    if (range == nullptr) continue;
    try {
      site.observer->load_state(range->to_vector());
    } catch (const Error& e) {
      fail(fmt::format("{}: quant.act.{}: {}", file, site.name, e.what()));
    }
    site.observer->freeze();
    site.observations = 1;
    ++restored;
  }
  ZSQ_CHECK(restored > 0, "{}: quantized model without activation ranges", file);
  student->reset_learned_ranges_to_observed();
  student->load_weight_ratios(checkpoint, fresh_weight_ratios);
  for (const auto& [name, t] : checkpoint.tensors)
    if (name.rfind("quant.act.", 0) == 0) {
      bool known = false;
      for (auto& site : student->activations_) known = known || name == "quant.act." + site.name;
      ZSQ_CHECK(known, "{}: activation range '{}' matches no site of {}", file, name, loaded.spec.name);
    }
  student->set_phase(Phase::quantized);
  student->model().eval();  // a loaded student is for inference until a method puts it back in training
  return student;
}

}  // namespace zsq::quant
