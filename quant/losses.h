// Losses shared by the zero-shot methods (ALGORITHMS.md §1, §2, §5). All are differentiable scalars.
#pragma once
#include <vector>

#include "models/layers.h"

namespace zsq::quant {

// Runs `teacher` on `images` and returns its logits plus the input of every BN layer (in the
// teacher's batch_norms() order), still attached to the graph so gradients reach `images`.
struct TeacherPass {
  Tensor logits;
  std::vector<Tensor> bn_inputs;
};
TeacherPass run_with_bn_inputs(models::Classifier& teacher, const Tensor& images);

// GDFQ's L_BNS = (1/L) sum_l [ MSE(mu_l, running_mean_l) + MSE(var_l, running_var_l) ], with the batch
// mean and *biased* variance of each BN input over (N, H, W); MSE averages over channels.
Tensor bns_loss_gdfq(const std::vector<Tensor>& bn_inputs, const std::vector<models::BatchNorm2d*>& bns);
// ZeroQ's form: sum_l ||mu_l - running_mean_l||_2 + ||sigma_l - running_std_l||_2.
Tensor bns_loss_zeroq(const std::vector<Tensor>& bn_inputs, const std::vector<models::BatchNorm2d*>& bns);

// GZNQ-style distribution matching (ALGORITHMS.md §2): mean over layers and channels of
// KL(N(mu_hat, var_hat) || N(mu, var)) = log(sigma / sigma_hat) + (var_hat + (mu_hat - mu)^2) / (2 var) -
// 1/2, with the batch mean and biased variance of each BN input and the layer's running statistics (eps added
// to both variances).
Tensor bns_loss_gaussian_kl(const std::vector<Tensor>& bn_inputs,
                            const std::vector<models::BatchNorm2d*>& bns);

// Knowledge distillation with temperature T: T^2 * KL(softmax(t/T) || softmax(s/T)), batch-mean.
// legacy_mean reproduces GDFQ's PyTorch default reduction (mean over all N*K elements), which equals
// the batch-mean value divided by K.
Tensor kd_loss(const Tensor& student_logits, const Tensor& teacher_logits, float temperature,
               bool legacy_mean);

// ZAQ's output discrepancy: mean |z_P - z_Q| over batch x classes, on logits.
Tensor output_discrepancy(const Tensor& teacher_logits, const Tensor& student_logits);

// Label-space diversity of a batch: H(mean_b softmax(logits_b)) in nats, the entropy of the batch's
// average prediction (DAFL's information-entropy term). ln K when the batch spreads evenly over the K
// classes, 0 when every sample lands in one class. Logits [B, K].
Tensor batch_label_entropy(const Tensor& logits);

}  // namespace zsq::quant
