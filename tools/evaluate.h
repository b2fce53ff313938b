// Test-set accuracy of a classifier (eval mode, no gradients), shared by `train` and `eval`.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "models/layers.h"
#include "tools/datasets/fashion_mnist.h"

namespace zsq::cli {

struct EvalResult {
  double accuracy = 0.0;  // fraction in [0, 1]
  double loss = 0.0;      // mean cross-entropy
  std::int64_t n = 0;
  double seconds = 0.0;
  // Per-label accuracy (index = label); a student that lost whole classes (a collapsed generator's
  // signature) shows here while the mean still looks plausible.
  std::vector<double> class_accuracy;
  std::vector<std::int64_t> class_count;
};

EvalResult evaluate(models::Classifier& model, const FashionMnist& data, std::int64_t batch_size = 500,
                    bool show_progress = false);
// The same for any function from an image batch to logits (e.g. the integer runner).
EvalResult evaluate_forward(const std::function<Tensor(const Tensor&)>& forward, const FashionMnist& data,
                            std::int64_t batch_size = 500, bool show_progress = false,
                            Device device = Device::cpu());
// Number of rows whose argmax equals the label; with `correct_per_label`/`count_per_label` (sized to the
// class count) also tallies per label.
std::int64_t count_correct(const Tensor& logits, const Tensor& labels,
                           std::vector<std::int64_t>* correct_per_label = nullptr,
                           std::vector<std::int64_t>* count_per_label = nullptr);
// "T-shirt/top 91.2, Trouser 98.9, ..." for Fashion-MNIST's ten labels (label numbers for other counts).
std::string format_class_accuracy(const std::vector<double>& class_accuracy);

}  // namespace zsq::cli
