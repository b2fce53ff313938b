// Module: a named tree of parameters (trainable tensors), buffers (state such as BN running
// statistics) and child modules, with a train/eval switch. Names are dotted paths ("stage1.0.conv1.weight")
// and are what checkpoints store.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace zsq {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  // Parameters then buffers: everything a checkpoint must hold to rebuild the module.
  std::vector<std::pair<std::string, Tensor>> named_state() const;
  std::vector<Tensor> parameters() const;
  std::int64_t parameter_count() const;
  // Turns gradients on or off for every parameter (freezing a teacher).
  void set_requires_grad(bool on);
  void zero_grad();
  // Moves every parameter and buffer to `device` in place (handles held elsewhere, such as an
  // optimizer's parameter list, follow). Gradients are dropped.
  void to(Device device);
  // The device of the first parameter or buffer (cpu for a module without state).
  Device device() const;
  // Copies values from a name->tensor list. Every state entry must be present with its exact shape;
  // errors name the entry (and `source`, typically the checkpoint file).
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& source);

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  // Visits every descendant depth-first in registration order (the forward order of our models) with
  // its dotted path, e.g. "stage1.0.conv2".
  void for_each_descendant(const std::function<void(const std::string& path, Module& module)>& visit,
                           const std::string& prefix = "");

 protected:
  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // Called by train(); modules with mode-dependent children override nothing: the flag propagates.
  virtual void on_train_changed() {}

 private:
  void collect(const std::string& prefix, bool params, bool buffers,
               std::vector<std::pair<std::string, Tensor>>& out) const;
  bool training_ = true;
  std::vector<std::pair<std::string, Tensor>> parameters_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace zsq
