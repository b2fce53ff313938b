#include "ops/linear.h"

#include "engine/autograd.h"
#include "ops/cuda/linear_cublas.h"

namespace zsq::ops {

namespace {
void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.device() == b.device(), "{}: operands on different devices: {} on {} and {} on {}", op, a.str(),
            a.device().str(), b.str(), b.device().str());
}

// Every product of this file, on the operands' device: cuBLAS on a GPU, oneDNN on the CPU.
Tensor gemm(const char* op, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
            const Tensor& bias = {}) {
  check_same_device(op, a, b);
  if (bias.defined()) check_same_device(op, a, bias);
#if ZSQ_WITH_CUDA
  if (a.is_cuda()) return cuda_impl::gemm(a, trans_a, b, trans_b, bias);
#endif
  return dnnl_impl::gemm(a, trans_a, b, trans_b, bias);
}

Tensor column_sums(const Tensor& m) {
#if ZSQ_WITH_CUDA
  if (m.is_cuda()) return cuda_impl::column_sums(m);
#endif
  return dnnl_impl::column_sums(m);
}

void check_linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  ZSQ_CHECK(x.defined() && weight.defined(), "linear: undefined input or weight");
  ZSQ_CHECK(x.dim() == 2 && x.dtype() == DType::f32,
            "linear: input must be 2-D f32 [N, K] (flatten 4-D activations first), got {}", x.str());
  ZSQ_CHECK(weight.dim() == 2 && weight.dtype() == DType::f32,
            "linear: weight must be 2-D f32 [M, K], got {}", weight.str());
  ZSQ_CHECK(x.size(1) == weight.size(1), "linear: input {} and weight {} do not match (K = {} vs {})",
            x.str(), weight.str(), x.size(1), weight.size(1));
  if (bias.defined())
    ZSQ_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0) && bias.dtype() == DType::f32,
              "linear: bias must be f32 [{}] for weight {}, got {}", weight.size(0), weight.str(),
              bias.str());
}
}  // namespace

Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_linear(x, weight, bias);
  return gemm("linear", x, false, weight, true, bias);
}

Tensor linear_backward_data(const Tensor& grad_out, const Tensor& weight) {
  return gemm("linear backward data", grad_out, false, weight, false);
}

void linear_backward_weights(const Tensor& grad_out, const Tensor& x, bool with_bias, Tensor& grad_weight,
                             Tensor& grad_bias) {
  grad_weight = gemm("linear backward weights", grad_out, true, x, false);
  if (with_bias) grad_bias = column_sums(grad_out);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor out = linear_forward(x, weight, bias);
  Tensor saved_x = weight.requires_grad() ? x.detach() : Tensor();
  Tensor saved_w = x.requires_grad() ? weight.detach() : Tensor();
  const bool with_bias = bias.defined();
  std::vector<Tensor> inputs{x, weight};
  if (with_bias) inputs.push_back(bias);
  return record(out, "linear", std::move(inputs), [=](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(needs.size());
    if (needs[0]) grads[0] = linear_backward_data(g, saved_w);
    if (needs[1]) grads[1] = gemm("linear backward weights", g, true, saved_x, false);
    if (with_bias && needs[2]) grads[2] = column_sums(g);
    return grads;
  });
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.defined() && b.defined(), "matmul: undefined operand");
  ZSQ_CHECK(a.dim() == 2 && b.dim() == 2 && a.dtype() == DType::f32 && b.dtype() == DType::f32,
            "matmul: 2-D f32 operands expected, got {} and {}", a.str(), b.str());
  ZSQ_CHECK(a.size(1) == b.size(0), "matmul: {} x {} do not match ({} vs {})", a.str(), b.str(), a.size(1),
            b.size(0));
  Tensor out = gemm("matmul", a, false, b, false);
  Tensor sa = b.requires_grad() ? a.detach() : Tensor();
  Tensor sb = a.requires_grad() ? b.detach() : Tensor();
  return record(out, "matmul", {a, b}, [=](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(2);
    if (needs[0]) grads[0] = gemm("matmul backward", g, false, sb, true);
    if (needs[1]) grads[1] = gemm("matmul backward", sa, true, g, false);
    return grads;
  });
}

}  // namespace zsq::ops
