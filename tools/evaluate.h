// Test-set accuracy of a classifier (eval mode, no gradients), shared by `train` and `eval`.
#pragma once
#include <functional>

#include "models/layers.h"
#include "tools/datasets/fashion_mnist.h"

namespace zsq::cli {

struct EvalResult {
  double accuracy = 0.0;  // fraction in [0, 1]
  double loss = 0.0;      // mean cross-entropy
  std::int64_t n = 0;
  double seconds = 0.0;
};

EvalResult evaluate(models::Classifier& model, const FashionMnist& data, std::int64_t batch_size = 500,
                    bool show_progress = false);
// The same for any function from an image batch to logits (e.g. the integer runner).
EvalResult evaluate_forward(const std::function<Tensor(const Tensor&)>& forward, const FashionMnist& data,
                            std::int64_t batch_size = 500, bool show_progress = false);
// Number of rows whose argmax equals the label.
std::int64_t count_correct(const Tensor& logits, const Tensor& labels);

}  // namespace zsq::cli
