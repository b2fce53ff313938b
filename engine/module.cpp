#include "engine/module.h"

#include <map>

namespace zsq {

void Module::train(bool on) {
  training_ = on;
  on_train_changed();
  for (auto& [name, child] : children_) child->train(on);
}

void Module::collect(const std::string& prefix, bool params, bool buffers,
                     std::vector<std::pair<std::string, Tensor>>& out) const {
  if (params)
    for (const auto& [name, t] : parameters_) out.emplace_back(prefix + name, t);
  if (buffers)
    for (const auto& [name, t] : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, buffers, out);
}

void Module::for_each_descendant(const std::function<void(const std::string&, Module&)>& visit,
                                 const std::string& prefix) {
  for (auto& [name, child] : children_) {
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    visit(path, *child);
    child->for_each_descendant(visit, path);
  }
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, false, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, true, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_state() const {
  auto out = named_parameters();
  auto buffers = named_buffers();
  out.insert(out.end(), buffers.begin(), buffers.end());
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

std::int64_t Module::parameter_count() const {
  std::int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::set_requires_grad(bool on) {
  for (auto& [name, t] : named_parameters()) t.set_requires_grad(on);
}

void Module::to(Device device) {
  for (auto& [name, t] : named_state()) move_storage(t, device);
}

Device Module::device() const {
  auto state = named_state();
  return state.empty() ? Device::cpu() : state.front().second.device();
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

void Module::load_state(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& source) {
  std::map<std::string, Tensor> by_name(state.begin(), state.end());
  for (auto& [name, t] : named_state()) {
    auto it = by_name.find(name);
    ZSQ_CHECK(it != by_name.end(), "{}: missing tensor '{}' (model expects {})", source, name, t.str());
    ZSQ_CHECK(it->second.shape() == t.shape() && it->second.dtype() == t.dtype(),
              "{}: tensor '{}' is {}, model expects {}", source, name, it->second.str(), t.str());
    t.copy_from(it->second.format() == t.format() ? it->second : it->second.to_format(t.format()));
    by_name.erase(it);
  }
  ZSQ_CHECK(by_name.empty(), "{}: unexpected tensor '{}' not in the model", source, by_name.begin()->first);
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.set_requires_grad(true);
  parameters_.emplace_back(name, std::move(t));
  return parameters_.back().second;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, std::move(t));
  return buffers_.back().second;
}

}  // namespace zsq
