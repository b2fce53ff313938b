#include "quant/methods/trainer_state.h"

#include <nlohmann/json.hpp>

namespace zsq::quant {

void save_trainer_state(Checkpoint& ckpt, const std::string& method, std::int64_t epochs_done,
                        const std::vector<EpochAccuracy>& test_accuracy, const TrainerParts& parts) {
  ckpt.metadata["zsq." + method + ".epochs_done"] = std::to_string(epochs_done);
  if (!test_accuracy.empty()) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& a : test_accuracy) rows.push_back({a.epoch, a.accuracy});
    ckpt.metadata["zsq." + method + ".test_accuracy"] = rows.dump();
  }
  for (auto& [name, t] : parts.generator.named_state()) ckpt.add("generator." + name, t);
  for (auto& [name, t] : parts.generator_optim.state()) ckpt.add("optim.generator." + name, t);
  for (auto& [name, t] : parts.student_optim.state()) ckpt.add("optim.student." + name, t);
  for (const auto& site : parts.student.activation_sites()) {
    const auto s = site.observer->state();
    ckpt.add("observer." + site.name, Tensor::from_vector({static_cast<std::int64_t>(s.size())}, s));
    if (site.learned_hi.defined()) ckpt.add("learned_range." + site.name, site.learned_hi.detach().clone());
  }
  if (parts.range_optim != nullptr)
    for (auto& [name, t] : parts.range_optim->state()) ckpt.add("optim.ranges." + name, t);
}

std::int64_t load_trainer_state(const Checkpoint& ckpt, const std::string& method,
                                std::vector<EpochAccuracy>& test_accuracy, const TrainerParts& parts) {
  auto it = ckpt.metadata.find("zsq." + method + ".epochs_done");
  ZSQ_CHECK(it != ckpt.metadata.end(), "{}: not a {} training state", ckpt.path, method);
  std::vector<std::pair<std::string, Tensor>> gen, g_opt, q_opt, r_opt;
  for (const auto& [name, t] : ckpt.tensors) {
    if (name.rfind("generator.", 0) == 0) gen.emplace_back(name.substr(10), t);
    if (name.rfind("optim.generator.", 0) == 0) g_opt.emplace_back(name.substr(16), t);
    if (name.rfind("optim.student.", 0) == 0) q_opt.emplace_back(name.substr(14), t);
    if (name.rfind("optim.ranges.", 0) == 0) r_opt.emplace_back(name.substr(13), t);
  }
  parts.generator.load_state(gen, ckpt.path);
  parts.generator_optim.load_state(g_opt);
  parts.student_optim.load_state(q_opt);
  ZSQ_CHECK(parts.range_optim == nullptr || !r_opt.empty(),
            "{}: no state of the learned ranges' optimizer (was it written with act_range=observed and "
            "weight_range=observed?)",
            ckpt.path);
  if (parts.range_optim != nullptr) parts.range_optim->load_state(r_opt);
  for (auto& site : parts.student.activation_sites()) {
    const Tensor* s = ckpt.find("observer." + site.name);
    ZSQ_CHECK(s != nullptr, "{}: missing observer state for {}", ckpt.path, site.name);
    site.observer->load_state(s->to_vector());
    site.observations = site.observer->steps();
    if (site.learned_hi.defined()) {
      const Tensor* learned = ckpt.find("learned_range." + site.name);
      ZSQ_CHECK(learned != nullptr && learned->numel() == 1,
                "{}: missing learned range of {} (was it written with act_range=observed?)", ckpt.path,
                site.name);
      site.learned_hi.copy_from(learned->to_format(site.learned_hi.format()));  // either device
    }
  }
  // The student's learned weight clip ratios travel in its own checkpoint entries (Student::to_checkpoint,
  // which the state file starts from); the weights are loaded by the caller, the ratios here.
  parts.student.load_weight_ratios(ckpt);
  test_accuracy.clear();
  auto acc = ckpt.metadata.find("zsq." + method + ".test_accuracy");
  if (acc != ckpt.metadata.end()) {
    try {
      for (const auto& row : nlohmann::json::parse(acc->second))
        test_accuracy.push_back({row.at(0).get<std::int64_t>(), row.at(1).get<double>()});
    } catch (const nlohmann::json::exception& e) {
      fail(fmt::format("{}: bad zsq.{}.test_accuracy: {}", ckpt.path, method, e.what()));
    }
  }
  return ckpt.metadata_int(it->first);
}

}  // namespace zsq::quant
