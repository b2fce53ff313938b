// Softmax family and losses. logits are f32 [N, K] contiguous; labels are s32 [N] with values in [0, K).
// Losses return a scalar (0-d) tensor; reduction is the mean over the batch unless stated.
#pragma once
#include "engine/tensor.h"

namespace zsq::ops {

// Along the last axis of a 2-D tensor.
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
// mean_n( -log_softmax(logits)[n, label_n] ); label_smoothing in [0, 1).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing = 0.0f);
// KL(target || input) where input holds log-probabilities and target probabilities, as PyTorch's
// kl_div(input, target, reduction="batchmean"): sum(target * (log(target) - input)) / N.
Tensor kl_div(const Tensor& log_input, const Tensor& target);
// mean of squared / absolute differences over all elements.
Tensor mse(const Tensor& a, const Tensor& b);
Tensor l1(const Tensor& a, const Tensor& b);
// Embedding lookup: table [V, D], indices s32 [N] -> [N, D]; gradient flows to the table.
Tensor embedding(const Tensor& table, const Tensor& indices);

namespace ref {
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing);
Tensor kl_div(const Tensor& log_input, const Tensor& target);
Tensor mse(const Tensor& a, const Tensor& b);
Tensor l1(const Tensor& a, const Tensor& b);
Tensor embedding(const Tensor& table, const Tensor& indices);
}  // namespace ref

}  // namespace zsq::ops
