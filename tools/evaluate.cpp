#include "tools/evaluate.h"

#include <chrono>

#include "engine/autograd.h"
#include "engine/progress.h"
#include "ops/loss.h"

namespace zsq::cli {

std::int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const auto n = logits.size(0), k = logits.size(1);
  const float* p = logits.f32();
  const std::int32_t* y = labels.data<std::int32_t>();
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t best = 0;
    for (std::int64_t j = 1; j < k; ++j)
      if (p[i * k + j] > p[i * k + best]) best = j;
    correct += best == y[i];
  }
  return correct;
}

EvalResult evaluate(models::Classifier& model, const FashionMnist& data, std::int64_t batch_size,
                    bool show_progress) {
  const bool was_training = model.is_training();
  model.eval();
  NoGrad no_grad;
  const auto r =
      evaluate_forward([&](const Tensor& x) { return model.forward(x); }, data, batch_size, show_progress);
  model.train(was_training);
  return r;
}

EvalResult evaluate_forward(const std::function<Tensor(const Tensor&)>& forward, const FashionMnist& data,
                            std::int64_t batch_size, bool show_progress) {
  const auto start = std::chrono::steady_clock::now();
  BatchLoader loader(data, batch_size, false, false, Rng(0));
  Progress progress("eval", loader.batches_per_epoch(), "img");
  EvalResult r;
  Tensor images, labels;
  double loss_sum = 0.0;
  std::int64_t correct = 0, batch = 0;
  while (loader.next(images, labels)) {
    Tensor logits = forward(images);
    correct += count_correct(logits, labels);
    loss_sum += static_cast<double>(ops::cross_entropy(logits, labels).item()) * images.size(0);
    r.n += images.size(0);
    if (show_progress) progress.update(++batch, "", static_cast<double>(batch_size));
  }
  r.accuracy = r.n > 0 ? static_cast<double>(correct) / static_cast<double>(r.n) : 0.0;
  r.loss = r.n > 0 ? loss_sum / static_cast<double>(r.n) : 0.0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace zsq::cli
