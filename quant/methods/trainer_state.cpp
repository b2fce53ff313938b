#include "quant/methods/trainer_state.h"

namespace zsq::quant {

void save_trainer_state(Checkpoint& ckpt, const std::string& method, std::int64_t epochs_done,
                        const TrainerParts& parts) {
  ckpt.metadata["zsq." + method + ".epochs_done"] = std::to_string(epochs_done);
  for (auto& [name, t] : parts.generator.named_state()) ckpt.add("generator." + name, t);
  for (auto& [name, t] : parts.generator_optim.state()) ckpt.add("optim.generator." + name, t);
  for (auto& [name, t] : parts.student_optim.state()) ckpt.add("optim.student." + name, t);
  for (const auto& site : parts.student.activation_sites()) {
    const auto s = site.observer->state();
    ckpt.add("observer." + site.name, Tensor::from_vector({static_cast<std::int64_t>(s.size())}, s));
  }
}

std::int64_t load_trainer_state(const Checkpoint& ckpt, const std::string& method,
                                const TrainerParts& parts) {
  auto it = ckpt.metadata.find("zsq." + method + ".epochs_done");
  ZSQ_CHECK(it != ckpt.metadata.end(), "{}: not a {} training state", ckpt.path, method);
  std::vector<std::pair<std::string, Tensor>> gen, g_opt, q_opt;
  for (const auto& [name, t] : ckpt.tensors) {
    if (name.rfind("generator.", 0) == 0) gen.emplace_back(name.substr(10), t);
    if (name.rfind("optim.generator.", 0) == 0) g_opt.emplace_back(name.substr(16), t);
    if (name.rfind("optim.student.", 0) == 0) q_opt.emplace_back(name.substr(14), t);
  }
  parts.generator.load_state(gen, ckpt.path);
  parts.generator_optim.load_state(g_opt);
  parts.student_optim.load_state(q_opt);
  for (auto& site : parts.student.activation_sites()) {
    const Tensor* s = ckpt.find("observer." + site.name);
    ZSQ_CHECK(s != nullptr, "{}: missing observer state for {}", ckpt.path, site.name);
    site.observer->load_state(s->to_vector());
    site.observations = site.observer->steps();
  }
  return std::stoll(it->second);
}

}  // namespace zsq::quant
