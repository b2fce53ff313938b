// Reverse-mode autograd over a DAG built while ops run.
//
// Gradient semantics, stated once: a node's backward *returns* fresh gradients for its inputs; the
// engine *accumulates* them (+=) into the gradient of each input, whether that is an intermediate
// tensor (held only during backward) or a leaf's .grad (kept until zero_grad). Inputs that do not
// require a gradient are skipped before any work is done, so a frozen teacher costs no weight
// gradients while gradients still flow to its input.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace zsq {

// Computes the gradient of each input from the gradient of the node's output. needs[i] tells whether
// input i wants one; entries not wanted may be left undefined.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<bool>& needs)>;

struct Node {
  std::string name;
  std::vector<Tensor> inputs;
  std::vector<bool> needs;
  BackwardFn backward;
};

// Thread-local switch: while disabled, ops record no history.
class GradMode {
 public:
  static bool enabled();
  static void set_enabled(bool on);
};

// RAII: no history inside the scope (evaluation, optimizer steps, the backward pass itself).
class NoGrad {
 public:
  NoGrad() : previous_(GradMode::enabled()) { GradMode::set_enabled(false); }
  ~NoGrad() { GradMode::set_enabled(previous_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

// True when an op on these inputs must record history.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

// Attaches a node to `out` when history is recorded for `inputs`; returns `out`.
// Call it from an op's front function after the forward result exists.
Tensor record(Tensor out, std::string name, std::vector<Tensor> inputs, BackwardFn backward);

// Walks the graph below `root` in reverse topological order (see Tensor::backward).
void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph);

}  // namespace zsq
