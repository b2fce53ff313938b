// Depthwise convolution on the GPU (see ops/cuda/depthwise_conv.h), fp32, NCHW or NHWC.
//
// Work split: a thread keeps one channel for the whole kernel, so its filter lives in registers. In NCHW
// a block holds one channel (blockIdx.y) and its threads walk output positions along W (coalesced); in
// NHWC a block holds `cb` consecutive channels as its fastest thread index (coalesced along C) and
// blockDim / cb position lanes. Each thread then grid-strides over work items of its channel.
//
// Register-blocked items (square K in {3, 5, 7}, stride S in {1, 2}): an item is one output column ow
// and kRows output rows oh0 + r * dh. Output row oh0 + r dh, tap kh reads input row
// (oh0 S - pad) + dh (r S + kh), so for each kw the thread loads the T = (kRows - 1) S + K input values
// t = r S + kh of one column once and reuses them across rows and taps. Row bands of kRows * dh rows
// are split into dh interleaved items, so every output row belongs to exactly one item.
//
// The weight gradient uses the same items (the roles of filter and output swap), reduces each
// thread's per-tap sums inside the block (warp shuffles, then shared-memory adds), writes one partial
// per block and channel, and a second kernel adds the partials in a fixed order.
#include <algorithm>

#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/depthwise_conv.h"

namespace zsq::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kRows = 4;                   // output rows per register-blocked item
constexpr int kMaxChannelsPerBlock = 128;  // NHWC blocks hold up to this many channels

struct Geom {
  int N, C, H, W;  // input of this pass
  int OH, OW;      // output of this pass
  int KH, KW, sh, sw, ph, pw, dh, dw;
};

template <DepthwiseLayout L>
__device__ __forceinline__ int offset(int n, int c, int h, int w, int C, int H, int W) {
  if constexpr (L == DepthwiseLayout::nchw)
    return ((n * C + c) * H + h) * W + w;
  else
    return ((n * H + h) * W + w) * C + c;
}

// This thread's channel, its index inside the block, its position lane and the number of lanes.
struct Lanes {
  int c, c_local, p, P;
};
__device__ __forceinline__ Lanes lanes(int cb) {
  Lanes l;
  l.c_local = static_cast<int>(threadIdx.x) % cb;
  l.c = static_cast<int>(blockIdx.y) * cb + l.c_local;
  l.p = static_cast<int>(threadIdx.x) / cb;
  l.P = static_cast<int>(blockDim.x) / cb;
  return l;
}

// First output row of item group grp: bands of kRows * dh rows, dh interleaved items per band.
__device__ __forceinline__ int first_row(int grp, int dh) {
  return (grp / dh) * kRows * dh + grp % dh;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// y = conv(x, w) + bias, register-blocked. flip reads the filter rotated by 180 degrees (the data
// gradient of a stride-1 convolution is this forward on grad_y).
template <DepthwiseLayout L, int K, int S>
__global__ void __launch_bounds__(kBlock)
    forward_blocked(Geom g, const float* __restrict__ x, const float* __restrict__ w,
                    const float* __restrict__ bias, float* __restrict__ y, int cb, int groups, bool flip) {
  constexpr int T = (kRows - 1) * S + K;
  const Lanes ln = lanes(cb);
  if (ln.c >= g.C) return;  // no barrier in this kernel
  float wr[K][K];
  const float* wc = w + ln.c * K * K;
#pragma unroll
  for (int kh = 0; kh < K; ++kh)
#pragma unroll
    for (int kw = 0; kw < K; ++kw) wr[kh][kw] = flip ? wc[(K - 1 - kh) * K + (K - 1 - kw)] : wc[kh * K + kw];
  const float b0 = bias != nullptr ? bias[ln.c] : 0.0f;
  const int items = g.N * groups * g.OW;
  for (int i = static_cast<int>(blockIdx.x) * ln.P + ln.p; i < items;
       i += static_cast<int>(gridDim.x) * ln.P) {
    const int ow = i % g.OW, t = i / g.OW, grp = t % groups, n = t / groups;
    const int oh0 = first_row(grp, g.dh);
    if (oh0 >= g.OH) continue;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = b0;
    const int ih0 = oh0 * S - g.ph;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const int iw = ow * S - g.pw + kw * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      float win[T];
#pragma unroll
      for (int u = 0; u < T; ++u) {
        const int ih = ih0 + u * g.dh;
        win[u] = ih >= 0 && ih < g.H ? __ldg(x + offset<L>(n, ln.c, ih, iw, g.C, g.H, g.W)) : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int kh = 0; kh < K; ++kh) acc[r] = fmaf(win[r * S + kh], wr[kh][kw], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int oh = oh0 + r * g.dh;
      if (oh < g.OH) y[offset<L>(n, ln.c, oh, ow, g.C, g.OH, g.OW)] = acc[r];
    }
  }
}

// Any filter size, stride and dilation: one output per item.
template <DepthwiseLayout L>
__global__ void __launch_bounds__(kBlock)
    forward_general(Geom g, const float* __restrict__ x, const float* __restrict__ w,
                    const float* __restrict__ bias, float* __restrict__ y, int cb) {
  const Lanes ln = lanes(cb);
  if (ln.c >= g.C) return;
  const float* wc = w + ln.c * g.KH * g.KW;
  const float b0 = bias != nullptr ? bias[ln.c] : 0.0f;
  const int items = g.N * g.OH * g.OW;
  for (int i = static_cast<int>(blockIdx.x) * ln.P + ln.p; i < items;
       i += static_cast<int>(gridDim.x) * ln.P) {
    const int ow = i % g.OW, t = i / g.OW, oh = t % g.OH, n = t / g.OH;
    float acc = b0;
    for (int kh = 0; kh < g.KH; ++kh) {
      const int ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int kw = 0; kw < g.KW; ++kw) {
        const int iw = ow * g.sw - g.pw + kw * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc = fmaf(__ldg(x + offset<L>(n, ln.c, ih, iw, g.C, g.H, g.W)), wc[kh * g.KW + kw], acc);
      }
    }
    y[offset<L>(n, ln.c, oh, ow, g.C, g.OH, g.OW)] = acc;
  }
}

// grad_x of any convolution (g is the forward geometry): each input position gathers the outputs whose
// taps reach it.
template <DepthwiseLayout L>
__global__ void __launch_bounds__(kBlock)
    backward_data_general(Geom g, const float* __restrict__ gy, const float* __restrict__ w,
                          float* __restrict__ gx, int cb) {
  const Lanes ln = lanes(cb);
  if (ln.c >= g.C) return;
  const float* wc = w + ln.c * g.KH * g.KW;
  const int items = g.N * g.H * g.W;
  for (int i = static_cast<int>(blockIdx.x) * ln.P + ln.p; i < items;
       i += static_cast<int>(gridDim.x) * ln.P) {
    const int iw = i % g.W, t = i / g.W, ih = t % g.H, n = t / g.H;
    float acc = 0.0f;
    for (int kh = 0; kh < g.KH; ++kh) {
      const int th = ih + g.ph - kh * g.dh;  // = oh * sh
      if (th < 0 || th % g.sh != 0 || th / g.sh >= g.OH) continue;
      for (int kw = 0; kw < g.KW; ++kw) {
        const int tw = iw + g.pw - kw * g.dw;
        if (tw < 0 || tw % g.sw != 0 || tw / g.sw >= g.OW) continue;
        acc = fmaf(__ldg(gy + offset<L>(n, ln.c, th / g.sh, tw / g.sw, g.C, g.OH, g.OW)), wc[kh * g.KW + kw],
                   acc);
      }
    }
    gx[offset<L>(n, ln.c, ih, iw, g.C, g.H, g.W)] = acc;
  }
}

// Partial weight (and bias, slot K * K) gradients of this block's channels over its share of the items:
// partial[(blockIdx.x * C + c) * (K * K + 1) + slot].
template <DepthwiseLayout L, int K, int S>
__global__ void __launch_bounds__(kBlock)
    weights_blocked(Geom g, const float* __restrict__ gy, const float* __restrict__ x,
                    float* __restrict__ partial, int cb, int groups) {
  constexpr int T = (kRows - 1) * S + K;
  constexpr int kSlots = K * K + 1;
  __shared__ float sums[kMaxChannelsPerBlock * kSlots];
  const Lanes ln = lanes(cb);
  const bool active = ln.c < g.C;
  for (int e = static_cast<int>(threadIdx.x); e < cb * kSlots; e += static_cast<int>(blockDim.x))
    sums[e] = 0.0f;
  __syncthreads();
  float acc[K][K], acc_bias = 0.0f;
#pragma unroll
  for (int kh = 0; kh < K; ++kh)
#pragma unroll
    for (int kw = 0; kw < K; ++kw) acc[kh][kw] = 0.0f;
  const int items = active ? g.N * groups * g.OW : 0;
  for (int i = static_cast<int>(blockIdx.x) * ln.P + ln.p; i < items;
       i += static_cast<int>(gridDim.x) * ln.P) {
    const int ow = i % g.OW, t = i / g.OW, grp = t % groups, n = t / groups;
    const int oh0 = first_row(grp, g.dh);
    if (oh0 >= g.OH) continue;
    float go[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int oh = oh0 + r * g.dh;
      go[r] = oh < g.OH ? __ldg(gy + offset<L>(n, ln.c, oh, ow, g.C, g.OH, g.OW)) : 0.0f;
      acc_bias += go[r];
    }
    const int ih0 = oh0 * S - g.ph;
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const int iw = ow * S - g.pw + kw * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      float win[T];
#pragma unroll
      for (int u = 0; u < T; ++u) {
        const int ih = ih0 + u * g.dh;
        win[u] = ih >= 0 && ih < g.H ? __ldg(x + offset<L>(n, ln.c, ih, iw, g.C, g.H, g.W)) : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int kh = 0; kh < K; ++kh) acc[kh][kw] = fmaf(win[r * S + kh], go[r], acc[kh][kw]);
    }
  }
  if constexpr (L == DepthwiseLayout::nchw) {
    // One channel per block (cb == 1, blockDim a multiple of 32, every thread active): reduce each
    // warp first so only one shared add per warp and slot remains.
    const bool lead = threadIdx.x % 32 == 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh)
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const float v = warp_sum(acc[kh][kw]);
        if (lead) atomicAdd(&sums[kh * K + kw], v);
      }
    const float vb = warp_sum(acc_bias);
    if (lead) atomicAdd(&sums[K * K], vb);
  } else {
    // Lanes of a warp hold different channels: shared adds without a warp reduction.
    if (active) {
      float* mine = sums + ln.c_local * kSlots;
#pragma unroll
      for (int kh = 0; kh < K; ++kh)
#pragma unroll
        for (int kw = 0; kw < K; ++kw) atomicAdd(&mine[kh * K + kw], acc[kh][kw]);
      atomicAdd(&mine[K * K], acc_bias);
    }
  }
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < cb * kSlots; e += static_cast<int>(blockDim.x)) {
    const int c = static_cast<int>(blockIdx.y) * cb + e / kSlots;
    if (c < g.C) partial[(static_cast<std::size_t>(blockIdx.x) * g.C + c) * kSlots + e % kSlots] = sums[e];
  }
}

// Any geometry: one block per (share of the items, channel blockIdx.y, slot blockIdx.z), the slot being
// a tap kh * KW + kw or the bias (slot KH * KW). Same partial layout as weights_blocked.
template <DepthwiseLayout L>
__global__ void __launch_bounds__(kBlock)
    weights_general(Geom g, const float* __restrict__ gy, const float* __restrict__ x,
                    float* __restrict__ partial) {
  __shared__ float warp_sums[kBlock / 32];
  const int c = static_cast<int>(blockIdx.y), slot = static_cast<int>(blockIdx.z);
  const int taps = g.KH * g.KW, kh = slot / g.KW, kw = slot % g.KW;
  const int items = g.N * g.OH * g.OW;
  float acc = 0.0f;
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < items;
       i += static_cast<int>(gridDim.x * blockDim.x)) {
    const int ow = i % g.OW, t = i / g.OW, oh = t % g.OH, n = t / g.OH;
    const float go = __ldg(gy + offset<L>(n, c, oh, ow, g.C, g.OH, g.OW));
    if (slot == taps) {
      acc += go;
      continue;
    }
    const int ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
      acc = fmaf(go, __ldg(x + offset<L>(n, c, ih, iw, g.C, g.H, g.W)), acc);
  }
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int k = 0; k < kBlock / 32; ++k) total += warp_sums[k];
    partial[(static_cast<std::size_t>(blockIdx.x) * g.C + c) * (taps + 1) + slot] = total;
  }
}

// grad_weight[c * taps + tap] and grad_bias[c] (when not null) = sums of the partials over chunks.
__global__ void sum_partials(const float* __restrict__ partial, int chunks, int C, int taps,
                             float* __restrict__ grad_weight, float* __restrict__ grad_bias) {
  const int slots = taps + 1, total = C * slots;
  for (int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); e < total;
       e += static_cast<int>(gridDim.x * blockDim.x)) {
    const int c = e / slots, slot = e % slots;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[static_cast<std::size_t>(k) * total + e];
    if (slot < taps)
      grad_weight[c * taps + slot] = s;
    else if (grad_bias != nullptr)
      grad_bias[c] = s;
  }
}

// ---- host side ----

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// Checks the shape and converts it to the kernels' 32-bit geometry. Every element count and coordinate
// stays below 2^30, so offsets and grid-stride indices (at most twice an element count) fit in an int.
Geom checked_geometry(const DepthwiseConvShape& s) {
  if (s.N < 0 || s.C < 0 || s.H < 0 || s.W < 0 || s.KH < 1 || s.KW < 1 || s.stride_h < 1 || s.stride_w < 1 ||
      s.dilation_h < 1 || s.dilation_w < 1 || s.pad_h < 0 || s.pad_w < 0)
    raise_error("depthwise conv (CUDA): negative size, empty filter, or stride/dilation below 1");
  const std::int64_t OH = s.out_h(), OW = s.out_w();
  if (OH < 1 || OW < 1) raise_error("depthwise conv (CUDA): the filter does not fit the padded input");
  constexpr std::int64_t kMax = std::int64_t{1} << 30;
  const std::int64_t dims[] = {s.N * s.C * s.H * s.W, s.N * s.C * OH * OW, s.C * s.KH * s.KW,
                               s.H + 2 * s.pad_h + s.dilation_h * s.KH,
                               s.W + 2 * s.pad_w + s.dilation_w * s.KW};
  for (std::int64_t v : dims)
    if (v > kMax) raise_error("depthwise conv (CUDA): more than 2^30 elements (32-bit indexing)");
  auto i = [](std::int64_t v) { return static_cast<int>(v); };
  return {i(s.N),  i(s.C),        i(s.H),        i(s.W),     i(OH),      i(OW),           i(s.KH),
          i(s.KW), i(s.stride_h), i(s.stride_w), i(s.pad_h), i(s.pad_w), i(s.dilation_h), i(s.dilation_w)};
}

bool blocked_shape(const Geom& g) {
  return g.KH == g.KW && (g.KH == 3 || g.KH == 5 || g.KH == 7) && g.sh == g.sw && (g.sh == 1 || g.sh == 2);
}

// Channels per block and threads per block (see the file comment).
struct BlockShape {
  int cb, threads, channel_blocks;
};
BlockShape block_shape(DepthwiseLayout layout, int C) {
  if (layout == DepthwiseLayout::nchw) return {1, kBlock, C};
  const int cb = C <= kMaxChannelsPerBlock ? std::max(C, 1) : 32;
  return {cb, cb * std::max(1, kBlock / cb), static_cast<int>(ceil_div(C, cb))};
}

// Blocks along x for `items` per channel: enough to cover them, but about `waves` x the multiprocessor
// count in total (the kernels grid-stride).
unsigned item_blocks(std::int64_t items, const BlockShape& b, int waves) {
  const std::int64_t lanes = b.threads / b.cb;
  const std::int64_t wanted = std::max<std::int64_t>(1, ceil_div(items, lanes));
  const std::int64_t cap =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(multiprocessor_count()) * waves / b.channel_blocks);
  return static_cast<unsigned>(std::min({wanted, cap, static_cast<std::int64_t>(1) << 30}));
}

int item_groups(const Geom& g) {
  return static_cast<int>(ceil_div(g.OH, static_cast<std::int64_t>(kRows) * g.dh)) * g.dh;
}

void check_grid_y(int channel_blocks) {
  if (channel_blocks > 65535) raise_error("depthwise conv (CUDA): more than 65535 channel blocks");
}

template <DepthwiseLayout L, int K, int S>
void launch_forward_blocked(const Geom& g, const float* x, const float* w, const float* bias, float* y,
                            bool flip) {
  const BlockShape b = block_shape(L, g.C);
  const int groups = item_groups(g);
  const dim3 grid(item_blocks(static_cast<std::int64_t>(g.N) * groups * g.OW, b, 32),
                  static_cast<unsigned>(b.channel_blocks));
  forward_blocked<L, K, S><<<grid, b.threads, 0, stream()>>>(g, x, w, bias, y, b.cb, groups, flip);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <DepthwiseLayout L>
void forward(const Geom& g, const float* x, const float* w, const float* bias, float* y, bool flip) {
  const BlockShape b = block_shape(L, g.C);
  check_grid_y(b.channel_blocks);
  if (blocked_shape(g)) {
    switch (g.KH * 10 + g.sh) {
      case 31:
        return launch_forward_blocked<L, 3, 1>(g, x, w, bias, y, flip);
      case 32:
        return launch_forward_blocked<L, 3, 2>(g, x, w, bias, y, flip);
      case 51:
        return launch_forward_blocked<L, 5, 1>(g, x, w, bias, y, flip);
      case 52:
        return launch_forward_blocked<L, 5, 2>(g, x, w, bias, y, flip);
      case 71:
        return launch_forward_blocked<L, 7, 1>(g, x, w, bias, y, flip);
      default:
        return launch_forward_blocked<L, 7, 2>(g, x, w, bias, y, flip);
    }
  }
  if (flip) raise_error("depthwise conv (CUDA): flipped filters need the register-blocked path");
  const dim3 grid(item_blocks(static_cast<std::int64_t>(g.N) * g.OH * g.OW, b, 32),
                  static_cast<unsigned>(b.channel_blocks));
  forward_general<L><<<grid, b.threads, 0, stream()>>>(g, x, w, bias, y, b.cb);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <DepthwiseLayout L>
void backward_data(const Geom& g, const float* gy, const float* w, float* gx) {
  if (blocked_shape(g) && g.sh == 1) {
    // Stride 1: grad_x = conv(grad_y, rotated filter) with padding dilation * (K - 1) - pad. A negative
    // padding (pad > dilation * (K - 1)) is fine: the kernels bound-check every tap.
    const Geom t{
        g.N,  g.C, g.OH, g.OW, g.H, g.W, g.KH, g.KW, 1, 1, g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw,
        g.dh, g.dw};
    forward<L>(t, gy, w, nullptr, gx, true);
    return;
  }
  const BlockShape b = block_shape(L, g.C);
  check_grid_y(b.channel_blocks);
  const dim3 grid(item_blocks(static_cast<std::int64_t>(g.N) * g.H * g.W, b, 32),
                  static_cast<unsigned>(b.channel_blocks));
  backward_data_general<L><<<grid, b.threads, 0, stream()>>>(g, gy, w, gx, b.cb);
  ZSQ_CUDA_LAUNCH_CHECK();
}

template <DepthwiseLayout L, int K, int S>
unsigned launch_weights_blocked(const Geom& g, const float* gy, const float* x, float* partial_or_null) {
  const BlockShape b = block_shape(L, g.C);
  const int groups = item_groups(g);
  const unsigned chunks = item_blocks(static_cast<std::int64_t>(g.N) * groups * g.OW, b, 4);
  if (partial_or_null == nullptr) return chunks;  // sizing call
  const dim3 grid(chunks, static_cast<unsigned>(b.channel_blocks));
  weights_blocked<L, K, S><<<grid, b.threads, 0, stream()>>>(g, gy, x, partial_or_null, b.cb, groups);
  ZSQ_CUDA_LAUNCH_CHECK();
  return chunks;
}

// Launches the partial-sum kernel for g into `partial`, or with a null partial only returns how many
// chunks (partials per channel and slot) it would write.
template <DepthwiseLayout L>
unsigned weights_partials(const Geom& g, const float* gy, const float* x, float* partial) {
  if (blocked_shape(g)) {
    switch (g.KH * 10 + g.sh) {
      case 31:
        return launch_weights_blocked<L, 3, 1>(g, gy, x, partial);
      case 32:
        return launch_weights_blocked<L, 3, 2>(g, gy, x, partial);
      case 51:
        return launch_weights_blocked<L, 5, 1>(g, gy, x, partial);
      case 52:
        return launch_weights_blocked<L, 5, 2>(g, gy, x, partial);
      case 71:
        return launch_weights_blocked<L, 7, 1>(g, gy, x, partial);
      default:
        return launch_weights_blocked<L, 7, 2>(g, gy, x, partial);
    }
  }
  const std::int64_t slots = static_cast<std::int64_t>(g.KH) * g.KW + 1;
  if (slots > 65535) raise_error("depthwise conv (CUDA): filter with more than 65534 taps");
  const std::int64_t blocks_per_item_share =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(g.C) * slots);
  const std::int64_t cap = std::max<std::int64_t>(1, 4LL * multiprocessor_count() / blocks_per_item_share);
  const auto chunks = static_cast<unsigned>(
      std::min({std::max<std::int64_t>(1, ceil_div(static_cast<std::int64_t>(g.N) * g.OH * g.OW, kBlock)),
                cap, static_cast<std::int64_t>(1) << 30}));
  if (partial == nullptr) return chunks;
  const dim3 grid(chunks, static_cast<unsigned>(g.C), static_cast<unsigned>(slots));
  weights_general<L><<<grid, kBlock, 0, stream()>>>(g, gy, x, partial);
  ZSQ_CUDA_LAUNCH_CHECK();
  return chunks;
}

template <DepthwiseLayout L>
void backward_weights(const Geom& g, const float* gy, const float* x, float* gw, float* gb) {
  const BlockShape b = block_shape(L, g.C);
  check_grid_y(b.channel_blocks);
  if (!blocked_shape(g) && g.C > 65535) raise_error("depthwise conv (CUDA): more than 65535 channels");
  const unsigned chunks = weights_partials<L>(g, gy, x, nullptr);
  const int taps = g.KH * g.KW;
  const std::size_t floats = static_cast<std::size_t>(chunks) * g.C * (taps + 1);
  auto* partial = static_cast<float*>(workspace(floats * sizeof(float)));
  weights_partials<L>(g, gy, x, partial);
  sum_partials<<<grid_for(static_cast<std::int64_t>(g.C) * (taps + 1)), kThreads, 0, stream()>>>(
      partial, static_cast<int>(chunks), g.C, taps, gw, gb);
  ZSQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

bool depthwise_conv2d_is_register_blocked(const DepthwiseConvShape& s) {
  return blocked_shape(checked_geometry(s));
}

void depthwise_conv2d_forward(const DepthwiseConvShape& s, DepthwiseLayout layout, const float* x,
                              const float* weight, const float* bias, float* y) {
  const Geom g = checked_geometry(s);
  if (g.N == 0 || g.C == 0) return;
  if (layout == DepthwiseLayout::nchw)
    forward<DepthwiseLayout::nchw>(g, x, weight, bias, y, false);
  else
    forward<DepthwiseLayout::nhwc>(g, x, weight, bias, y, false);
}

void depthwise_conv2d_backward_data(const DepthwiseConvShape& s, DepthwiseLayout layout, const float* grad_y,
                                    const float* weight, float* grad_x) {
  const Geom g = checked_geometry(s);
  if (g.N == 0 || g.C == 0 || g.H == 0 || g.W == 0) return;
  if (layout == DepthwiseLayout::nchw)
    backward_data<DepthwiseLayout::nchw>(g, grad_y, weight, grad_x);
  else
    backward_data<DepthwiseLayout::nhwc>(g, grad_y, weight, grad_x);
}

void depthwise_conv2d_backward_weights(const DepthwiseConvShape& s, DepthwiseLayout layout,
                                       const float* grad_y, const float* x, float* grad_weight,
                                       float* grad_bias) {
  const Geom g = checked_geometry(s);
  if (g.C == 0) return;
  if (g.N == 0) {  // sums over nothing
    fill_f32(grad_weight, static_cast<std::int64_t>(g.C) * g.KH * g.KW, 0.0f);
    if (grad_bias != nullptr) fill_f32(grad_bias, g.C, 0.0f);
    return;
  }
  if (layout == DepthwiseLayout::nchw)
    backward_weights<DepthwiseLayout::nchw>(g, grad_y, x, grad_weight, grad_bias);
  else
    backward_weights<DepthwiseLayout::nhwc>(g, grad_y, x, grad_weight, grad_bias);
}

}  // namespace zsq::cuda
