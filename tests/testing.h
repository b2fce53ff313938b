// Shared test helpers: closeness with |ref|-scaled tolerance, and finite-difference gradient checks
// the dlib way (scalarize with a random upstream gradient, central differences, double accumulation,
// relative + absolute error) on inputs and parameters alike.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/module.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace zsq::testing {

// Every parameter and buffer of a module, flattened in named_state() order (for bit-exact comparisons).
inline std::vector<float> flat_state(const Module& m) {
  std::vector<float> out;
  for (const auto& [name, t] : m.named_state()) {
    auto v = t.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// Largest violation of |got - ref| <= atol + rtol * |ref| over all elements, printed with its index.
inline void check_close(const Tensor& got, const Tensor& ref, double rtol = 1e-4, double atol = 1e-5,
                        const std::string& what = "") {
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": shape " << got.str() << " vs " << ref.str());
  auto g = got.to_vector();
  auto r = ref.to_vector();
  std::size_t worst = 0;
  double worst_excess = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(static_cast<double>(g[i]) - r[i]);
    const double excess = err - (atol + rtol * std::abs(static_cast<double>(r[i])));
    if (!std::isfinite(g[i]) || excess > worst_excess) {
      worst = i;
      worst_excess = std::isfinite(g[i]) ? excess : INFINITY;
    }
  }
  CHECK_MESSAGE(worst_excess <= 0.0, what << ": mismatch at flat index " << worst << ": got " << g[worst]
                                          << " ref " << r[worst] << " (" << got.str() << ")");
}

// f maps the inputs to one output tensor (building an autograd graph). Checks d<f, u>/d input_i for
// every input that requires grad, with u a fixed random upstream gradient, against central
// differences with step eps. Also checks that a second backward accumulates (grad doubles).
inline void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                            std::vector<Tensor> inputs, double eps = 1e-3, double rtol = 2e-2,
                            double atol = 2e-3, std::uint64_t seed = 7) {
  Rng rng(seed);
  Tensor out = f(inputs);
  REQUIRE(out.requires_grad());
  Tensor upstream = randn(out.shape(), rng);
  auto up = upstream.to_vector();
  auto scalarize = [&](const Tensor& o) {
    auto v = o.to_vector();
    double s = 0.0;
    for (std::size_t i = 0; i < v.size(); ++i) s += static_cast<double>(v[i]) * up[i];
    return s;
  };
  for (auto& t : inputs) t.zero_grad();
  out.backward(upstream, /*retain_graph=*/true);
  std::vector<std::vector<float>> analytic;
  for (auto& t : inputs) analytic.push_back(t.requires_grad() ? t.grad().to_vector() : std::vector<float>{});

  // backward accumulates: a second pass through the same graph doubles every leaf gradient.
  out.backward(upstream, /*retain_graph=*/true);
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].requires_grad()) continue;
    auto twice = inputs[k].grad().to_vector();
    for (std::size_t i = 0; i < twice.size(); ++i)
      REQUIRE_MESSAGE(std::abs(twice[i] - 2 * analytic[k][i]) <= 1e-4 * (1 + std::abs(analytic[k][i])),
                      "input " << k << " gradient does not accumulate at " << i);
  }

  NoGrad no_grad;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].requires_grad()) continue;
    Tensor x = inputs[k];
    // Perturb in the tensor's own memory; flat index i of to_vector() maps to memory via to_format.
    Tensor row = x.to_format(MemoryFormat::contiguous).clone();
    float* p = row.f32();
    for (std::int64_t i = 0; i < row.numel(); ++i) {
      const float saved = p[i];
      p[i] = saved + static_cast<float>(eps);
      x.copy_from(row);
      const double plus = scalarize(f(inputs));
      p[i] = saved - static_cast<float>(eps);
      x.copy_from(row);
      const double minus = scalarize(f(inputs));
      p[i] = saved;
      x.copy_from(row);
      const double numeric = (plus - minus) / (2 * eps);
      const double got = analytic[k][static_cast<std::size_t>(i)];
      CHECK_MESSAGE(std::abs(got - numeric) <= atol + rtol * std::abs(numeric),
                    "input " << k << " (" << x.str() << ") element " << i << ": analytic " << got
                             << " numeric " << numeric);
    }
  }
}

// A random f32 tensor that requires grad, in the given format.
inline Tensor random_input(const Shape& shape, Rng& rng, MemoryFormat format = MemoryFormat::contiguous,
                           bool requires_grad = true) {
  Tensor t = randn(shape, rng).to_format(format);
  if (format != MemoryFormat::contiguous && t.format() != format) t = t.clone();
  t.set_requires_grad(requires_grad);
  return t;
}

}  // namespace zsq::testing
