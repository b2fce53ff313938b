// Pooling front functions. On the CPU, global pooling and nearest upsampling are hand loops (per-row
// vector work along C for channels-last, per-plane work for contiguous) and windowed pooling goes to
// oneDNN. On a GPU every op runs zsq's own kernels (ops/cuda/pool.cu) on the tensor's own format; the
// max variants save an s32 argmax tensor for the backward pass instead of oneDNN's workspace.
#include "ops/pool.h"

#include <cstring>

#include "engine/autograd.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/pool.h"

namespace zsq::ops {

namespace {
using i64 = std::int64_t;

void check_input(const char* op, const Tensor& x) {
  ZSQ_CHECK(x.defined(), "{}: undefined input", op);
  ZSQ_CHECK(x.dim() == 4 && x.dtype() == DType::f32, "{}: input must be f32 [N, C, H, W], got {}", op,
            x.str());
  ZSQ_CHECK(x.numel() > 0, "{}: empty input {}", op, x.str());
}

bool parallel(i64 n) {
  return n > cpu::kParallelThreshold;
}

// Geometry of a 4-D tensor as N images of S = H*W positions and C channels.
struct Planes {
  i64 N, C, S;
  bool cl;  // channels-last: element (n, c, s) at (n*S + s)*C + c; else (n*C + c)*S + s
  explicit Planes(const Tensor& x)
      : N(x.size(0)), C(x.size(1)), S(x.size(2) * x.size(3)), cl(x.format() == MemoryFormat::channels_last) {}
};

Tensor global_avg_forward(const Tensor& x) {
  const Planes g(x);
  Tensor out = Tensor::empty({g.N, g.C, 1, 1}, DType::f32, x.format());
  const float* __restrict src = x.f32();
  float* __restrict dst = out.f32();  // [N, C, 1, 1] reads the same in both formats
  const float scale = 1.0f / static_cast<float>(g.S);
  if (g.cl) {
#pragma omp parallel for schedule(static) if (parallel(x.numel()))
    for (i64 n = 0; n < g.N; ++n) {
      float* __restrict o = dst + n * g.C;
      for (i64 c = 0; c < g.C; ++c) o[c] = 0.0f;
      for (i64 s = 0; s < g.S; ++s) {
        const float* __restrict row = src + (n * g.S + s) * g.C;
#pragma omp simd
        for (i64 c = 0; c < g.C; ++c) o[c] += row[c];
      }
      for (i64 c = 0; c < g.C; ++c) o[c] *= scale;
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel(x.numel()))
    for (i64 p = 0; p < g.N * g.C; ++p) {
      const float* __restrict plane = src + p * g.S;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (i64 s = 0; s < g.S; ++s) acc += plane[s];
      dst[p] = acc * scale;
    }
  }
  return out;
}

Tensor global_avg_backward(const Tensor& g_out, const Shape& x_shape, MemoryFormat format) {
  Tensor gx = Tensor::empty(x_shape, DType::f32, format);
  const Planes g(gx);
  const float* __restrict go = g_out.f32();  // [N, C, 1, 1]: same bytes in both formats
  float* __restrict dst = gx.f32();
  const float scale = 1.0f / static_cast<float>(g.S);
  if (g.cl) {
#pragma omp parallel for schedule(static) if (parallel(gx.numel()))
    for (i64 n = 0; n < g.N; ++n)
      for (i64 s = 0; s < g.S; ++s) {
        float* __restrict row = dst + (n * g.S + s) * g.C;
#pragma omp simd
        for (i64 c = 0; c < g.C; ++c) row[c] = go[n * g.C + c] * scale;
      }
  } else {
#pragma omp parallel for schedule(static) if (parallel(gx.numel()))
    for (i64 p = 0; p < g.N * g.C; ++p) {
      const float v = go[p] * scale;
      float* __restrict plane = dst + p * g.S;
#pragma omp simd
      for (i64 s = 0; s < g.S; ++s) plane[s] = v;
    }
  }
  return gx;
}

// Also returns the position s of the first maximum of every (n, c) in `argmax` (s32 [N, C]).
Tensor global_max_forward(const Tensor& x, Tensor& argmax) {
  const Planes g(x);
  Tensor out = Tensor::empty({g.N, g.C, 1, 1}, DType::f32, x.format());
  argmax = Tensor::empty({g.N, g.C}, DType::s32);
  const float* __restrict src = x.f32();
  float* __restrict dst = out.f32();
  std::int32_t* __restrict idx = argmax.data<std::int32_t>();
  if (g.cl) {
#pragma omp parallel for schedule(static) if (parallel(x.numel()))
    for (i64 n = 0; n < g.N; ++n) {
      float* __restrict o = dst + n * g.C;
      std::int32_t* __restrict oi = idx + n * g.C;
      const float* first = src + n * g.S * g.C;
      for (i64 c = 0; c < g.C; ++c) o[c] = first[c], oi[c] = 0;
      for (i64 s = 1; s < g.S; ++s) {
        const float* __restrict row = src + (n * g.S + s) * g.C;
        const auto si = static_cast<std::int32_t>(s);
#pragma omp simd
        for (i64 c = 0; c < g.C; ++c) {
          const bool greater = row[c] > o[c];
          o[c] = greater ? row[c] : o[c];
          oi[c] = greater ? si : oi[c];
        }
      }
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel(x.numel()))
    for (i64 p = 0; p < g.N * g.C; ++p) {
      const float* __restrict plane = src + p * g.S;
      float best = plane[0];
      i64 at = 0;
      for (i64 s = 1; s < g.S; ++s)
        if (plane[s] > best) best = plane[s], at = s;
      dst[p] = best;
      idx[p] = static_cast<std::int32_t>(at);
    }
  }
  return out;
}

Tensor global_max_backward(const Tensor& g_out, const Tensor& argmax, const Shape& x_shape,
                           MemoryFormat format) {
  Tensor gx = Tensor::zeros(x_shape, DType::f32, format);
  const Planes g(gx);
  const float* go = g_out.f32();
  const std::int32_t* idx = argmax.data<std::int32_t>();
  float* dst = gx.f32();
  for (i64 n = 0; n < g.N; ++n)
    for (i64 c = 0; c < g.C; ++c) {
      const i64 s = idx[n * g.C + c];
      dst[g.cl ? (n * g.S + s) * g.C + c : (n * g.C + c) * g.S + s] = go[n * g.C + c];
    }
  return gx;
}

Tensor upsample_forward(const Tensor& x) {
  const i64 N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OW = 2 * W;
  Tensor out = Tensor::empty({N, C, 2 * H, OW}, DType::f32, x.format());
  const float* __restrict src = x.f32();
  float* __restrict dst = out.f32();
  if (x.format() == MemoryFormat::channels_last) {
    // One output row (n, oh) is W input rows of C values, each written twice.
#pragma omp parallel for schedule(static) if (parallel(out.numel()))
    for (i64 r = 0; r < N * 2 * H; ++r) {
      const i64 n = r / (2 * H), h = (r % (2 * H)) / 2;
      const float* __restrict in = src + (n * H + h) * W * C;
      float* __restrict o = dst + r * OW * C;
      for (i64 w = 0; w < W; ++w) {
        std::memcpy(o + 2 * w * C, in + w * C, static_cast<std::size_t>(C) * sizeof(float));
        std::memcpy(o + (2 * w + 1) * C, in + w * C, static_cast<std::size_t>(C) * sizeof(float));
      }
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel(out.numel()))
    for (i64 r = 0; r < N * C * 2 * H; ++r) {
      const i64 plane = r / (2 * H), h = (r % (2 * H)) / 2;
      const float* __restrict in = src + (plane * H + h) * W;
      float* __restrict o = dst + r * OW;
#pragma omp simd
      for (i64 ow = 0; ow < OW; ++ow) o[ow] = in[ow / 2];
    }
  }
  return out;
}

Tensor upsample_backward(const Tensor& g_out, const Shape& x_shape, MemoryFormat format) {
  const i64 N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3], OW = 2 * W;
  Tensor gx = Tensor::empty(x_shape, DType::f32, format);
  const float* __restrict go = g_out.f32();
  float* __restrict dst = gx.f32();
  if (format == MemoryFormat::channels_last) {
#pragma omp parallel for schedule(static) if (parallel(g_out.numel()))
    for (i64 r = 0; r < N * H; ++r) {
      const float* __restrict top = go + 2 * r * OW * C;  // output row 2h of image n
      const float* __restrict bottom = top + OW * C;
      float* __restrict o = dst + r * W * C;
      for (i64 w = 0; w < W; ++w) {
        const i64 a = 2 * w * C, b = a + C;
#pragma omp simd
        for (i64 c = 0; c < C; ++c)
          o[w * C + c] = (top[a + c] + top[b + c]) + (bottom[a + c] + bottom[b + c]);
      }
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel(g_out.numel()))
    for (i64 r = 0; r < N * C * H; ++r) {
      const float* __restrict top = go + 2 * r * OW;
      const float* __restrict bottom = top + OW;
      float* __restrict o = dst + r * W;
#pragma omp simd
      for (i64 w = 0; w < W; ++w) o[w] = (top[2 * w] + top[2 * w + 1]) + (bottom[2 * w] + bottom[2 * w + 1]);
    }
  }
  return gx;
}

#if ZSQ_WITH_CUDA
// CUDA paths: the same outputs and gradients in the input's format, on the input's device.
bool channels_last(const Tensor& x) {
  return x.format() == MemoryFormat::channels_last;
}

Tensor global_avg_forward_cuda(const Tensor& x) {
  const Planes g(x);
  Tensor out = Tensor::empty({g.N, g.C, 1, 1}, DType::f32, x.format(), x.device());
  cuda::global_avg_pool_forward(x.cuda_f32(), out.cuda_f32(), g.N, g.C, g.S, g.cl);
  return out;
}

Tensor global_avg_backward_cuda(const Tensor& g_out, const Shape& x_shape, MemoryFormat format) {
  Tensor gx = Tensor::empty(x_shape, DType::f32, format, g_out.device());
  const Planes g(gx);
  cuda::global_avg_pool_backward(g_out.cuda_f32(), gx.cuda_f32(), g.N, g.C, g.S, g.cl);
  return gx;
}

Tensor global_max_forward_cuda(const Tensor& x, Tensor& argmax) {
  const Planes g(x);
  Tensor out = Tensor::empty({g.N, g.C, 1, 1}, DType::f32, x.format(), x.device());
  argmax = Tensor::empty({g.N, g.C}, DType::s32, MemoryFormat::contiguous, x.device());
  cuda::global_max_pool_forward(x.cuda_f32(), out.cuda_f32(), argmax.device_data<std::int32_t>(), g.N, g.C,
                                g.S, g.cl);
  return out;
}

Tensor global_max_backward_cuda(const Tensor& g_out, const Tensor& argmax, const Shape& x_shape,
                                MemoryFormat format) {
  Tensor gx = Tensor::empty(x_shape, DType::f32, format, g_out.device());
  const Planes g(gx);
  cuda::global_max_pool_backward(g_out.cuda_f32(), argmax.device_data<std::int32_t>(), gx.cuda_f32(), g.N,
                                 g.C, g.S, g.cl);
  return gx;
}

Tensor upsample_forward_cuda(const Tensor& x) {
  const i64 N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = Tensor::empty({N, C, 2 * H, 2 * W}, DType::f32, x.format(), x.device());
  cuda::upsample_nearest2x_forward(x.cuda_f32(), out.cuda_f32(), N, C, H, W, channels_last(x));
  return out;
}

Tensor upsample_backward_cuda(const Tensor& g_out, const Shape& x_shape, MemoryFormat format) {
  Tensor gx = Tensor::empty(x_shape, DType::f32, format, g_out.device());
  cuda::upsample_nearest2x_backward(g_out.cuda_f32(), gx.cuda_f32(), x_shape[0], x_shape[1], x_shape[2],
                                    x_shape[3], format == MemoryFormat::channels_last);
  return gx;
}

cuda::PoolGeometry geometry(const Shape& x, MemoryFormat format, const Pool2dParams& p) {
  return {x[0],
          x[1],
          x[2],
          x[3],
          (x[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1,
          (x[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1,
          p.kernel_h,
          p.kernel_w,
          p.stride_h,
          p.stride_w,
          p.pad_h,
          p.pad_w,
          format == MemoryFormat::channels_last};
}

Tensor windowed_pool_cuda(const char* op, const Tensor& x, const Pool2dParams& p, bool max) {
  const cuda::PoolGeometry geo = geometry(x.shape(), x.format(), p);
  const bool recording = any_requires_grad({&x});
  Tensor out = Tensor::empty({geo.N, geo.C, geo.OH, geo.OW}, DType::f32, x.format(), x.device());
  Tensor argmax;
  if (max && recording) argmax = Tensor::empty(out.shape(), DType::s32, MemoryFormat::contiguous, x.device());
  cuda::pool2d_forward(x.cuda_f32(), out.cuda_f32(),
                       argmax.defined() ? argmax.device_data<std::int32_t>() : nullptr, geo, max);
  if (!recording) return out;
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
  // argmax holds out's elements in out's memory order (its own shape/format tags are not read).
  return record(out, op, {x}, [=](const Tensor& g, const std::vector<bool>&) {
    Tensor go = g.to_format(format);
    Tensor gx = Tensor::empty(x_shape, DType::f32, format, go.device());
    cuda::pool2d_backward(go.cuda_f32(), argmax.defined() ? argmax.device_data<std::int32_t>() : nullptr,
                          gx.cuda_f32(), geo, max);
    return std::vector<Tensor>{gx};
  });
}
#endif

void check_window(const char* op, const Tensor& x, const Pool2dParams& p) {
  check_input(op, x);
  ZSQ_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1 && p.stride_h >= 1 && p.stride_w >= 1 && p.pad_h >= 0 &&
                p.pad_w >= 0 && p.pad_h < p.kernel_h && p.pad_w < p.kernel_w,
            "{}: bad parameters (kernel {}x{}, stride {}x{}, padding {}x{}; padding must be smaller than the "
            "kernel)",
            op, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w);
  ZSQ_CHECK(x.size(2) + 2 * p.pad_h >= p.kernel_h && x.size(3) + 2 * p.pad_w >= p.kernel_w,
            "{}: input {} is smaller than the {}x{} kernel (padding {}x{})", op, x.str(), p.kernel_h,
            p.kernel_w, p.pad_h, p.pad_w);
}

Tensor windowed_pool(const char* op, const Tensor& x, const Pool2dParams& p, bool max) {
  check_window(op, x, p);
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) return windowed_pool_cuda(op, x, p, max);
#endif
  const bool recording = any_requires_grad({&x});
  std::shared_ptr<void> workspace;
  Tensor out = dnnl_impl::pool2d_forward(x, p, max, recording, workspace);
  if (!recording) return out;
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
  return record(out, op, {x}, [=](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{dnnl_impl::pool2d_backward(g.to_format(format), x_shape, p, max, workspace)};
  });
}
}  // namespace

Tensor global_avg_pool(const Tensor& x) {
  check_input("global_avg_pool", x);
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
#if ZSQ_WITH_CUDA
  if (x.is_cuda())
    return record(global_avg_forward_cuda(x), "global_avg_pool", {x},
                  [=](const Tensor& g, const std::vector<bool>&) {
                    return std::vector<Tensor>{global_avg_backward_cuda(g, x_shape, format)};
                  });
#endif
  Tensor out = global_avg_forward(x);
  return record(out, "global_avg_pool", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{global_avg_backward(g, x_shape, format)};
  });
}

Tensor global_max_pool(const Tensor& x) {
  check_input("global_max_pool", x);
  Tensor argmax;
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
#if ZSQ_WITH_CUDA
  if (x.is_cuda()) {
    Tensor out = global_max_forward_cuda(x, argmax);
    return record(out, "global_max_pool", {x}, [=](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{global_max_backward_cuda(g, argmax, x_shape, format)};
    });
  }
#endif
  Tensor out = global_max_forward(x, argmax);
  return record(out, "global_max_pool", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{global_max_backward(g, argmax, x_shape, format)};
  });
}

Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) {
  return windowed_pool("avg_pool2d", x, p, false);
}

Tensor max_pool2d(const Tensor& x, const Pool2dParams& p) {
  return windowed_pool("max_pool2d", x, p, true);
}

Tensor upsample_nearest2x(const Tensor& x) {
  check_input("upsample_nearest2x", x);
  const Shape x_shape = x.shape();
  const MemoryFormat format = x.format();
#if ZSQ_WITH_CUDA
  if (x.is_cuda())
    return record(upsample_forward_cuda(x), "upsample_nearest2x", {x},
                  [=](const Tensor& g, const std::vector<bool>&) {
                    return std::vector<Tensor>{upsample_backward_cuda(g.to_format(format), x_shape, format)};
                  });
#endif
  Tensor out = upsample_forward(x);
  return record(out, "upsample_nearest2x", {x}, [=](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{upsample_backward(g.to_format(format), x_shape, format)};
  });
}

}  // namespace zsq::ops
