// Launchers for the CUDA softmax family and losses behind ops/loss.cpp. Plain C++. Scalar losses are
// written to a one-float device buffer and the backward passes read the upstream gradient g[0] on the
// device, so no op waits for the GPU. Sums are in double with fixed-order trees (no atomics), as the
// CPU path sums in double; only embedding_backward adds with atomics (repeated indices).
//
// Labels and indices are s32, as on the CPU. Their range cannot be checked on the host without a copy
// (a synchronization), so the kernels check it: an out-of-range label makes the loss NaN (and its row's
// gradient NaN), an out-of-range index makes its embedding row NaN and adds nothing to the table.
#pragma once
#include <cstdint>

namespace zsq::cuda {

// y = softmax or log_softmax of each row of x [rows, cols].
void softmax_rows(const float* x, std::int64_t rows, std::int64_t cols, bool log, float* y);
// gx = y * (g - sum(g * y)) per row (softmax backward).
void softmax_backward(const float* g, const float* y, std::int64_t rows, std::int64_t cols, float* gx);
// gx = g - exp(y) * sum(g) per row (log_softmax backward; y holds log-probabilities).
void log_softmax_backward(const float* g, const float* y, std::int64_t rows, std::int64_t cols, float* gx);

// loss[0] = mean over rows of the label-smoothed cross entropy; row_stats [rows][2] = (max,
// log sum exp(x - max)) per row, kept for the backward pass.
void cross_entropy_forward(const float* logits, const std::int32_t* labels, std::int64_t rows,
                           std::int64_t cols, float label_smoothing, float* row_stats, float* loss);
void cross_entropy_backward(const float* g, const float* logits, const std::int32_t* labels,
                            const float* row_stats, std::int64_t rows, std::int64_t cols,
                            float label_smoothing, float* gx);

// loss[0] = sum over n elements of the term / divisor, summed in double.
enum class PairLoss { mse, l1, kl_div };
void pair_loss_forward(PairLoss kind, const float* a, const float* b, std::int64_t n, double divisor,
                       float* loss);
// Gradients of mean((a - b)^2) and mean(|a - b|); ga / gb may be null when not wanted.
void mse_backward(const float* g, const float* a, const float* b, std::int64_t n, float* ga, float* gb);
void l1_backward(const float* g, const float* a, const float* b, std::int64_t n, float* ga, float* gb);
// Gradients of sum(t log t - t x) / batch for x (log_input) and t (target); either may be null.
void kl_div_backward(const float* g, const float* x, const float* t, std::int64_t n, float batch, float* gx,
                     float* gt);

// out [n, dim] = table[indices[i]] rows; backward adds g's rows into grad_table (zeroed by the caller).
void embedding_forward(const float* table, const std::int32_t* indices, std::int64_t n, std::int64_t vocab,
                       std::int64_t dim, float* out);
void embedding_backward(const float* g, const std::int32_t* indices, std::int64_t n, std::int64_t vocab,
                        std::int64_t dim, float* grad_table);

}  // namespace zsq::cuda
