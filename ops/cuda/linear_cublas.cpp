// cuBLAS is column-major and zsq is row-major. A row-major [r, c] buffer read column-major is its
// transpose, so C = op(A) op(B) (row-major) is computed as C^T = op(B)^T op(A)^T (column-major): the
// operands swap places and keep their own transposition flags, and nothing is ever copied. The bias is
// a rank-1 product bias * ones^T written into C before the main product (which then accumulates with
// beta = 1); the column sums are a gemv against a ones vector. TF32 is off on zsq's handle (context.cpp),
// so results match the CPU's fp32 within rounding.
#include "ops/cuda/linear_cublas.h"

#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"

namespace zsq::ops::cuda_impl {

namespace {
int as_int(std::int64_t v, const char* what, const Tensor& t) {
  ZSQ_CHECK(v <= INT_MAX, "cuBLAS: {} = {} of {} exceeds the 32-bit sizes cuBLAS takes", what, v, t.str());
  return static_cast<int>(v);
}

Tensor ones(std::int64_t n, Device device) {
  return Tensor::full({n}, 1.0f, MemoryFormat::contiguous, device);
}
}  // namespace

Tensor gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias) {
  ZSQ_CHECK(a.dim() == 2 && b.dim() == 2 && a.dtype() == DType::f32 && b.dtype() == DType::f32,
            "gemm: 2-D f32 operands expected, got {} and {}", a.str(), b.str());
  ZSQ_CHECK(a.is_cuda() && a.device() == b.device(),
            "gemm: operands on different devices: {} on {} and {} on {}", a.str(), a.device().str(), b.str(),
            b.device().str());
  const auto N = trans_a ? a.size(1) : a.size(0);
  const auto K = trans_a ? a.size(0) : a.size(1);
  const auto M = trans_b ? b.size(0) : b.size(1);
  ZSQ_CHECK((trans_b ? b.size(1) : b.size(0)) == K, "gemm: inner sizes differ: {}{} x {}{}", a.str(),
            trans_a ? "^T" : "", b.str(), trans_b ? "^T" : "");
  if (bias.defined()) {
    ZSQ_CHECK(bias.dim() == 1 && bias.size(0) == M && bias.dtype() == DType::f32,
              "gemm: bias must be f32 [{}], got {}", M, bias.str());
    ZSQ_CHECK(bias.device() == a.device(), "gemm: bias {} is on {}, the operands on {}", bias.str(),
              bias.device().str(), a.device().str());
  }
  Tensor out = Tensor::empty({N, M}, DType::f32, MemoryFormat::contiguous, a.device());
  if (N == 0 || M == 0) return out;
  const int n = as_int(N, "rows", a), m = as_int(M, "columns", b), k = as_int(K, "inner size", a);
  as_int(a.size(1), "leading dimension", a);
  as_int(b.size(1), "leading dimension", b);
  cublasHandle_t handle = cuda::cublas();
  const float one = 1.0f, zero = 0.0f;
  float beta = zero;
  if (bias.defined()) {
    // C^T [M, N] = bias [M, 1] * ones [1, N].
    Tensor unit = ones(N, a.device());
    ZSQ_CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 1, &one, bias.cuda_f32(), m,
                                 unit.cuda_f32(), 1, &zero, out.cuda_f32(), m));
    beta = one;
  }
  if (K == 0) {  // an empty sum: just the bias, or zeros
    if (!bias.defined()) out.fill(0.0f);
    return out;
  }
  // Column-major view of a row-major [r, c] buffer: a [c, r] matrix with leading dimension c.
  ZSQ_CUBLAS_CHECK(cublasSgemm(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, b.cuda_f32(),
                               static_cast<int>(b.size(1)), a.cuda_f32(), static_cast<int>(a.size(1)), &beta,
                               out.cuda_f32(), m));
  return out;
}

Tensor column_sums(const Tensor& m) {
  ZSQ_CHECK(m.dim() == 2 && m.dtype() == DType::f32 && m.is_cuda(),
            "column_sums: 2-D f32 GPU tensor expected, got {} on {}", m.str(), m.device().str());
  const auto rows = m.size(0), cols = m.size(1);
  Tensor out = Tensor::empty({cols}, DType::f32, MemoryFormat::contiguous, m.device());
  if (cols == 0) return out;
  if (rows == 0) {
    out.fill(0.0f);
    return out;
  }
  const int r = as_int(rows, "rows", m), c = as_int(cols, "columns", m);
  Tensor unit = ones(rows, m.device());
  const float one = 1.0f, zero = 0.0f;
  // out [cols] = m^T (column-major [cols, rows]) * ones [rows].
  ZSQ_CUBLAS_CHECK(cublasSgemv(cuda::cublas(), CUBLAS_OP_N, c, r, &one, m.cuda_f32(), c, unit.cuda_f32(), 1,
                               &zero, out.cuda_f32(), 1));
  return out;
}

}  // namespace zsq::ops::cuda_impl
