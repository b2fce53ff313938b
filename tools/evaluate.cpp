#include "tools/evaluate.h"

#include <chrono>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/progress.h"
#include "ops/loss.h"

namespace zsq::cli {

std::int64_t count_correct(const Tensor& logits, const Tensor& labels,
                           std::vector<std::int64_t>* correct_per_label,
                           std::vector<std::int64_t>* count_per_label) {
  const auto n = logits.size(0), k = logits.size(1);
  const Tensor host_logits = logits.to(Device::cpu()), host_labels = labels.to(Device::cpu());
  const float* p = host_logits.f32();
  const std::int32_t* y = host_labels.data<std::int32_t>();
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t best = 0;
    for (std::int64_t j = 1; j < k; ++j)
      if (p[i * k + j] > p[i * k + best]) best = j;
    correct += best == y[i];
    if (correct_per_label != nullptr && count_per_label != nullptr && y[i] >= 0 &&
        static_cast<std::size_t>(y[i]) < count_per_label->size()) {
      (*correct_per_label)[static_cast<std::size_t>(y[i])] += best == y[i];
      (*count_per_label)[static_cast<std::size_t>(y[i])] += 1;
    }
  }
  return correct;
}

std::string format_class_accuracy(const std::vector<double>& class_accuracy) {
  static const char* const kFashionMnistLabels[] = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                    "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                    "Bag",         "Ankle boot"};
  std::string out;
  for (std::size_t c = 0; c < class_accuracy.size(); ++c) {
    const std::string name = class_accuracy.size() == 10 ? kFashionMnistLabels[c] : std::to_string(c);
    out += fmt::format("{}{} {:.1f}", c == 0 ? "" : ", ", name, 100.0 * class_accuracy[c]);
  }
  return out;
}

EvalResult evaluate(models::Classifier& model, const FashionMnist& data, std::int64_t batch_size,
                    bool show_progress) {
  const bool was_training = model.is_training();
  model.eval();
  NoGrad no_grad;
  const auto r = evaluate_forward([&](const Tensor& x) { return model.forward(x); }, data, batch_size,
                                  show_progress, model.device());
  model.train(was_training);
  return r;
}

EvalResult evaluate_forward(const std::function<Tensor(const Tensor&)>& forward, const FashionMnist& data,
                            std::int64_t batch_size, bool show_progress, Device device) {
  const auto start = std::chrono::steady_clock::now();
  BatchLoader loader(data, batch_size, false, false, Rng(0));
  Progress progress("eval", loader.batches_per_epoch(), "img");
  EvalResult r;
  Tensor images, labels;
  double loss_sum = 0.0;
  std::int64_t correct = 0, batch = 0;
  std::vector<std::int64_t> correct_per_label, count_per_label;
  while (loader.next(images, labels)) {
    images = images.to(device);
    labels = labels.to(device);
    Tensor logits = forward(images);
    const auto classes = static_cast<std::size_t>(logits.size(1));
    if (count_per_label.size() < classes) correct_per_label.resize(classes), count_per_label.resize(classes);
    correct += count_correct(logits, labels, &correct_per_label, &count_per_label);
    loss_sum += static_cast<double>(ops::cross_entropy(logits, labels).item()) * images.size(0);
    r.n += images.size(0);
    if (show_progress) progress.update(++batch, "", static_cast<double>(batch_size));
  }
  r.accuracy = r.n > 0 ? static_cast<double>(correct) / static_cast<double>(r.n) : 0.0;
  r.loss = r.n > 0 ? loss_sum / static_cast<double>(r.n) : 0.0;
  r.class_count = count_per_label;
  for (std::size_t c = 0; c < count_per_label.size(); ++c)
    r.class_accuracy.push_back(count_per_label[c] > 0 ? static_cast<double>(correct_per_label[c]) /
                                                            static_cast<double>(count_per_label[c])
                                                      : 0.0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace zsq::cli
