#include "ops/elementwise.h"

#include <cmath>

#include "engine/autograd.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/elementwise.h"

namespace zsq::ops {

namespace {
void check_binary(const char* op, const Tensor& a, const Tensor& b) {
  ZSQ_CHECK(a.defined() && b.defined(), "{}: undefined operand", op);
  ZSQ_CHECK(a.shape() == b.shape(), "{}: shapes differ: {} vs {}", op, a.str(), b.str());
  ZSQ_CHECK(a.dtype() == DType::f32 && b.dtype() == DType::f32, "{}: f32 operands expected, got {} and {}",
            op, a.str(), b.str());
  ZSQ_CHECK(a.device() == b.device(), "{}: operands on different devices: {} on {} and {} on {}", op, a.str(),
            a.device().str(), b.str(), b.device().str());
}

// b read in a's memory format (a copy only when the formats really differ).
Tensor like(const Tensor& b, const Tensor& a) {
  return b.format() == a.format() ? b : b.to_format(a.format());
}

// Each map takes the op twice: as the CPU lambda (inlined and vectorized by the compiler) and as the
// CUDA kernel's enum (same arithmetic, ops/cuda/elementwise.cu). Outputs live on the input's device.
template <typename F>
Tensor map_binary(const Tensor& a, const Tensor& b, [[maybe_unused]] cuda::BinaryOp op, F f,
                  [[maybe_unused]] float param = 0.0f) {
  ZSQ_CHECK(a.device() == b.device(), "element-wise op: {} on {} and {} on {}", a.str(), a.device().str(),
            b.str(), b.device().str());
  Tensor bb = like(b, a);
  Tensor out = Tensor::empty(a.shape(), DType::f32, a.format(), a.device());
#if ZSQ_WITH_CUDA
  if (a.is_cuda()) {
    cuda::binary_f32(op, a.cuda_f32(), bb.cuda_f32(), out.cuda_f32(), a.numel(), param);
    return out;
  }
#endif
  cpu::parallel_map2(a.f32(), bb.f32(), out.f32(), a.numel(), f);
  return out;
}

template <typename F>
Tensor map_unary(const Tensor& a, [[maybe_unused]] cuda::UnaryOp op, F f, [[maybe_unused]] float p0 = 0.0f,
                 [[maybe_unused]] float p1 = 0.0f) {
  Tensor out = Tensor::empty(a.shape(), DType::f32, a.format(), a.device());
#if ZSQ_WITH_CUDA
  if (a.is_cuda()) {
    cuda::unary_f32(op, a.cuda_f32(), out.cuda_f32(), a.numel(), p0, p1);
    return out;
  }
#endif
  cpu::parallel_map1(a.f32(), out.f32(), a.numel(), f);
  return out;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  check_binary("add", a, b);
  Tensor out = map_binary(a, b, cuda::BinaryOp::add, [](float x, float y) { return x + y; });
  return record(out, "add", {a, b}, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g, g};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  check_binary("sub", a, b);
  Tensor out = map_binary(a, b, cuda::BinaryOp::sub, [](float x, float y) { return x - y; });
  return record(out, "sub", {a, b}, [](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{g, needs[1] ? affine_scalar(g, -1.0f, 0.0f) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_binary("mul", a, b);
  Tensor out = map_binary(a, b, cuda::BinaryOp::mul, [](float x, float y) { return x * y; });
  Tensor sa = a.detach(), sb = b.detach();
  return record(out, "mul", {a, b}, [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector<Tensor>{
        needs[0] ? map_binary(g, sb, cuda::BinaryOp::mul, [](float x, float y) { return x * y; }) : Tensor(),
        needs[1] ? map_binary(g, sa, cuda::BinaryOp::mul, [](float x, float y) { return x * y; }) : Tensor()};
  });
}

Tensor affine_scalar(const Tensor& a, float scale, float shift) {
  ZSQ_CHECK(a.defined() && a.dtype() == DType::f32, "affine_scalar: f32 operand expected, got {}", a.str());
  Tensor out = map_unary(
      a, cuda::UnaryOp::affine, [=](float x) { return x * scale + shift; }, scale, shift);
  return record(out, "affine_scalar", {a}, [scale](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{map_unary(
        g, cuda::UnaryOp::affine, [=](float x) { return x * scale; }, scale, 0.0f)};
  });
}

Tensor relu(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "relu: f32 input expected, got {}", x.str());
  Tensor out = map_unary(x, cuda::UnaryOp::relu, [](float v) { return v > 0.0f ? v : 0.0f; });
  Tensor saved = out.detach();  // the output decides the mask; saving it avoids keeping the input alive
  return record(out, "relu", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{map_binary(g, saved, cuda::BinaryOp::relu_grad,
                                          [](float gv, float y) { return y > 0.0f ? gv : 0.0f; })};
  });
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  check_binary("add_relu", a, b);
  Tensor out = map_binary(a, b, cuda::BinaryOp::add_relu,
                          [](float x, float y) { return x + y > 0.0f ? x + y : 0.0f; });
  Tensor saved = out.detach();
  return record(out, "add_relu", {a, b}, [saved](const Tensor& g, const std::vector<bool>&) {
    Tensor masked = map_binary(g, saved, cuda::BinaryOp::relu_grad,
                               [](float gv, float y) { return y > 0.0f ? gv : 0.0f; });
    return std::vector<Tensor>{masked, masked};
  });
}

Tensor leaky_relu(const Tensor& x, float slope) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "leaky_relu: f32 input expected, got {}", x.str());
  ZSQ_CHECK(slope >= 0.0f, "leaky_relu: negative_slope must be >= 0, got {}", slope);
  Tensor out = map_unary(
      x, cuda::UnaryOp::leaky_relu, [=](float v) { return v > 0.0f ? v : v * slope; }, slope);
  Tensor saved = out.detach();  // sign(out) == sign(x) for slope >= 0
  return record(out, "leaky_relu", {x}, [saved, slope](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{map_binary(
        g, saved, cuda::BinaryOp::leaky_relu_grad,
        [=](float gv, float y) { return y > 0.0f ? gv : gv * slope; }, slope)};
  });
}

Tensor tanh(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "tanh: f32 input expected, got {}", x.str());
  Tensor out = map_unary(x, cuda::UnaryOp::tanh, [](float v) { return std::tanh(v); });
  Tensor saved = out.detach();
  return record(out, "tanh", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{map_binary(g, saved, cuda::BinaryOp::tanh_grad,
                                          [](float gv, float y) { return gv * (1.0f - y * y); })};
  });
}

Tensor sqrt(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "sqrt: f32 input expected, got {}", x.str());
  Tensor out = map_unary(x, cuda::UnaryOp::sqrt, [](float v) { return std::sqrt(v); });
  Tensor saved = out.detach();
  return record(out, "sqrt", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{
        map_binary(g, saved, cuda::BinaryOp::sqrt_grad, [](float gv, float y) { return gv * 0.5f / y; })};
  });
}

Tensor log(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "log: f32 input expected, got {}", x.str());
  Tensor out = map_unary(x, cuda::UnaryOp::log, [](float v) { return std::log(v); });
  Tensor saved = x.detach();
  return record(out, "log", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{
        map_binary(g, saved, cuda::BinaryOp::div, [](float gv, float v) { return gv / v; })};
  });
}

Tensor exp(const Tensor& x) {
  ZSQ_CHECK(x.defined() && x.dtype() == DType::f32, "exp: f32 input expected, got {}", x.str());
  Tensor out = map_unary(x, cuda::UnaryOp::exp, [](float v) { return std::exp(v); });
  Tensor saved = out.detach();
  return record(out, "exp", {x}, [saved](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{
        map_binary(g, saved, cuda::BinaryOp::mul, [](float gv, float y) { return gv * y; })};
  });
}

}  // namespace zsq::ops
