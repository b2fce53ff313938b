#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "ops/cuda/cuda_runtime_api.h"

namespace zsq {

namespace {
thread_local bool grad_enabled = true;

// Whether nothing else can see t's values: the only handle to its impl and to its storage (no view,
// no detached copy saved by a backward closure, no other pending slot).
bool sole_owner(const Tensor& t) {
  return t.impl_ptr().use_count() == 1 && t.impl_ptr()->storage.use_count() == 1;
}

// The sum of two gradients of the same logical shape (formats may differ). Written into one of them
// when nothing else holds it (a residual block's two branch gradients: the conv branch's is fresh),
// which saves an allocation and a third of the memory traffic; a + b == b + a bit for bit either way.
Tensor add_gradients(Tensor a, Tensor b) {
  if (!sole_owner(a) && sole_owner(b)) std::swap(a, b);
  Tensor rhs = b.format() == a.format() ? b : b.to_format(a.format());
  Tensor sum = sole_owner(a) ? a : Tensor::empty(a.shape(), DType::f32, a.format(), a.device());
  ZSQ_CHECK(a.device() == rhs.device(), "gradients on different devices: {} on {} and {} on {}", a.str(),
            a.device().str(), rhs.str(), rhs.device().str());
  if (a.is_cuda()) {
    cuda::add_f32(a.cuda_f32(), rhs.cuda_f32(), sum.cuda_f32(), a.numel());
    return sum;
  }
  const float* pa = a.f32();
  const float* pb = rhs.f32();
  float* ps = sum.f32();
  const auto n = a.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) ps[i] = pa[i] + pb[i];
  return sum;
}

void accumulate_into_leaf(const Tensor& leaf, const Tensor& g) {
  Tensor existing = leaf.grad();
  if (!existing.defined()) {
    // A private copy: the incoming gradient may be shared with other inputs of the same node.
    leaf.set_grad(g.to_format(leaf.format()).clone());
    return;
  }
  Tensor rhs = g.format() == existing.format() ? g : g.to_format(existing.format());
  if (existing.is_cuda()) {
    rhs = rhs.to(existing.device());
    cuda::add_f32(existing.cuda_f32(), rhs.cuda_f32(), existing.cuda_f32(), existing.numel());
    return;
  }
  float* pe = existing.f32();
  const float* pg = rhs.f32();
  const auto n = existing.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) pe[i] += pg[i];
}
}  // namespace

bool GradMode::enabled() {
  return grad_enabled;
}
void GradMode::set_enabled(bool on) {
  grad_enabled = on;
}

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!GradMode::enabled()) return false;
  for (const Tensor* t : inputs)
    if (t != nullptr && t->requires_grad()) return true;
  return false;
}

Tensor record(Tensor out, std::string name, std::vector<Tensor> inputs, BackwardFn backward) {
  if (!GradMode::enabled()) return out;
  std::vector<bool> needs(inputs.size());
  bool any = false;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    needs[i] = inputs[i].requires_grad();
    any = any || needs[i];
  }
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = std::move(name);
  node->inputs = std::move(inputs);
  node->needs = std::move(needs);
  node->backward = std::move(backward);
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
  return out;
}

void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph) {
  ZSQ_CHECK(root.requires_grad(), "backward() on a tensor that does not require grad: {}", root.str());
  Tensor root_grad = seed;
  if (!root_grad.defined()) {
    ZSQ_CHECK(root.numel() == 1, "backward() without a seed needs a scalar, got {}", root.str());
    root_grad = Tensor::full(root.shape(), 1.0f, MemoryFormat::contiguous, root.device());
  }
  ZSQ_CHECK(root_grad.shape() == root.shape(), "backward seed {} does not match {}", root_grad.str(),
            root.str());
  if (!root.grad_fn()) {
    accumulate_into_leaf(root, root_grad);
    return;
  }

  // Iterative DFS post-order gives a topological order; deep nets must not overflow the stack.
  // Shared ownership: releasing a node's inputs below must not free nodes still waiting in `order`.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> visited;
  std::vector<std::pair<std::shared_ptr<Node>, std::size_t>> stack{{root.grad_fn(), 0}};
  visited.insert(root.grad_fn().get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      const Tensor& in = node->inputs[next++];
      if (in.defined() && in.grad_fn() && visited.insert(in.grad_fn().get()).second)
        stack.push_back({in.grad_fn(), 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }

  NoGrad no_grad;
  std::unordered_map<Node*, Tensor> pending;
  pending[root.grad_fn().get()] = root_grad;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = it->get();
    auto found = pending.find(node);
    if (found == pending.end()) continue;  // no path from root carried a gradient here
    Tensor grad_out = std::move(found->second);
    pending.erase(found);
    ZSQ_CHECK(node->backward, "backward through '{}' a second time; pass retain_graph=true", node->name);
    std::vector<Tensor> grads = node->backward(grad_out, node->needs);
    ZSQ_CHECK(grads.size() == node->inputs.size(), "node '{}' returned {} gradients for {} inputs",
              node->name, grads.size(), node->inputs.size());
    for (std::size_t i = 0; i < grads.size(); ++i) {
      if (!node->needs[i]) continue;
      const Tensor& in = node->inputs[i];
      Tensor g = std::move(grads[i]);  // so add_gradients can see when nothing else holds it
      ZSQ_CHECK(g.defined(), "node '{}' gave no gradient for input {}", node->name, i);
      ZSQ_CHECK(g.shape() == in.shape(), "node '{}' gradient {} for input {} of shape {}", node->name,
                g.str(), i, in.str());
      if (in.grad_fn()) {
        auto [slot, inserted] = pending.try_emplace(in.grad_fn().get(), g);
        if (!inserted) slot->second = add_gradients(std::move(slot->second), std::move(g));
      } else {
        accumulate_into_leaf(in, g);
      }
    }
    if (!retain_graph) {
      node->backward = nullptr;  // frees saved activations now rather than at graph destruction
      node->inputs.clear();
    }
  }
}

}  // namespace zsq
