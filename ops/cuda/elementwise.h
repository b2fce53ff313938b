// Launchers for the element-wise kernels behind ops/elementwise.cpp (plain C++: no CUDA types, so the
// front file includes it without the toolkit's headers). Every op of the family is one instantiation of
// a templated grid-stride kernel chosen by the enum; the arithmetic is the CPU lambda's, expression for
// expression, so results match the CPU path within float rounding (device tanhf/expf/logf are within
// 2 ulp of glibc's; sqrt and division are IEEE-exact as the build uses no fast-math).
#pragma once
#include <cstdint>

namespace zsq::cuda {

enum class UnaryOp : unsigned char {
  affine,      // x * p0 + p1
  relu,        // x > 0 ? x : 0
  leaky_relu,  // x > 0 ? x : x * p0
  tanh,
  sqrt,
  log,
  exp,
};

enum class BinaryOp : unsigned char {
  add,              // a + b
  sub,              // a - b
  mul,              // a * b
  add_relu,         // relu(a + b)
  relu_grad,        // b > 0 ? a : 0           (a: upstream gradient, b: saved output)
  leaky_relu_grad,  // b > 0 ? a : a * p0
  tanh_grad,        // a * (1 - b * b)
  sqrt_grad,        // a * 0.5 / b
  div,              // a / b                   (log's gradient: g / x)
};

// out[i] = op(a[i]) for i < n. out must not partially overlap a. Queued on zsq's stream.
void unary_f32(UnaryOp op, const float* a, float* out, std::int64_t n, float p0 = 0.0f, float p1 = 0.0f);
// out[i] = op(a[i], b[i]) for i < n. out must not partially overlap a or b.
void binary_f32(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, float p0 = 0.0f);

}  // namespace zsq::cuda
