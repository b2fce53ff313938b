// cuDNN convolutions for zsq tensors on a GPU (see conv2d_cudnn.h for the contract). Activations are
// described to cuDNN by their own strides (cudnnSetTensor4dDescriptorEx), so channels-last and
// contiguous tensors need no copy; filters are the weight's OIHW bytes unless the plan chose cuDNN's
// NHWC filter layout, in which case the weight (or, for the weight gradient, the result) goes through a
// small permuted copy.
//
// Algorithm plans are cached per problem and direction. Building one: cuDNN's heuristic list, filtered
// to algorithms that are supported, use FMA math and report their workspace size; then, unless the
// settings say heuristic, cudnnFind*AlgorithmEx times them on the call's own buffers (its outputs are
// overwritten afterwards) and the timed order comes first, the heuristic's remaining ones after it as
// fallbacks. Find synchronizes the device, once per new shape (as does growing the shared workspace);
// nothing else here does.
#include "ops/cuda/conv2d_cudnn.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/check.h"
#include "ops/cuda/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/conv_bn_kernels.h"
#include "ops/cuda/cuda_runtime_api.h"
#include "ops/cuda/descriptors.h"

namespace zsq::ops::cudnn_impl {

namespace {

// Find may grow the shared workspace to the largest candidate's need, up to this; an algorithm that
// needs more is still tried (after the timed ones) if the heuristic lists it.
constexpr std::size_t kFindWorkspaceLimit = std::size_t{256} << 20;

CudnnConvSettings initial_settings() {
  CudnnConvSettings s;
  if (const char* search = std::getenv("ZSQ_CUDNN_CONV_SEARCH")) {
    const std::string v = search;
    ZSQ_CHECK(v == "find" || v == "heuristic",
              "$ZSQ_CUDNN_CONV_SEARCH: unknown value '{}' (find or heuristic)", v);
    s.find = v == "find";
  }
  if (const char* layout = std::getenv("ZSQ_CUDA_LAYOUT")) {
    const std::string v = layout;
    ZSQ_CHECK(v == "nchw" || v == "nhwc", "$ZSQ_CUDA_LAYOUT: unknown value '{}' (nchw or nhwc)", v);
    s.activation_format = v == "nhwc" ? MemoryFormat::channels_last : MemoryFormat::contiguous;
  }
  if (const char* filters = std::getenv("ZSQ_CUDNN_FILTERS")) {
    const std::string v = filters;
    ZSQ_CHECK(v == "oihw" || v == "nhwc", "$ZSQ_CUDNN_FILTERS: unknown value '{}' (oihw or nhwc)", v);
    s.nhwc_filters = v == "nhwc";
  }
  return s;
}

CudnnConvSettings& settings() {
  static CudnnConvSettings s = initial_settings();
  return s;
}

int to_int(std::int64_t v, const char* what) {
  ZSQ_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "conv2d (cuDNN): {} = {} does not fit in an int",
            what, v);
  return static_cast<int>(v);
}

void set_activation(cudnnTensorDescriptor_t desc, const Shape& s, const Strides4& st) {
  ZSQ_CUDNN_CHECK(cudnnSetTensor4dDescriptorEx(
      desc, CUDNN_DATA_FLOAT, to_int(s[0], "N"), to_int(s[1], "C"), to_int(s[2], "H"), to_int(s[3], "W"),
      to_int(st.n, "stride"), to_int(st.c, "stride"), to_int(st.h, "stride"), to_int(st.w, "stride")));
}

// The three operands of one convolution call, whatever the direction: x (the input, or the input
// gradient being written), w (the OIHW weight, or the weight gradient being written), y (the output,
// or the output gradient being read).
struct Operands {
  const Tensor& x;
  const Tensor& w;
  const Tensor& y;
  const Conv2dParams& p;
};

struct Problem {
  cuda::TensorDescriptor x, y;
  cuda::FilterDescriptor w;
  cuda::ConvolutionDescriptor conv;

  Problem(const Operands& o, bool nhwc_filter) {
    set_activation(x, o.x.shape(), o.x.strides4());
    set_activation(y, o.y.shape(), o.y.strides4());
    const Shape& ws = o.w.shape();
    ZSQ_CUDNN_CHECK(cudnnSetFilter4dDescriptor(
        w, CUDNN_DATA_FLOAT, nhwc_filter ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, to_int(ws[0], "O"),
        to_int(ws[1], "C/groups"), to_int(ws[2], "KH"), to_int(ws[3], "KW")));
    const Conv2dParams& p = o.p;
    ZSQ_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
        conv, to_int(p.pad_h, "pad"), to_int(p.pad_w, "pad"), to_int(p.stride_h, "stride"),
        to_int(p.stride_w, "stride"), to_int(p.dilation_h, "dilation"), to_int(p.dilation_w, "dilation"),
        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    ZSQ_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, to_int(p.groups, "groups")));
    // FMA: no TF32 tensor-core math (CUDNN_DEFAULT_MATH permits TF32 on Ampere and later), so results
    // stay within f32 rounding of the CPU path.
    ZSQ_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, CUDNN_FMA_MATH));
    int n = 0, c = 0, h = 0, wd = 0;
    ZSQ_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv, x, w, &n, &c, &h, &wd));
    const Shape& ys = o.y.shape();
    ZSQ_CHECK(n == ys[0] && c == ys[1] && h == ys[2] && wd == ys[3],
              "conv2d (cuDNN): cuDNN computes output [{}, {}, {}, {}] for input {} and weight {}, zsq {}", n,
              c, h, wd, o.x.str(), o.w.str(), o.y.str());
  }
};

struct Buffers {
  void* x;
  void* w;
  void* y;
};

const float kOne = 1.0f;
const float kZero = 0.0f;

struct Forward {
  using Perf = cudnnConvolutionFwdAlgoPerf_t;
  using Algo = cudnnConvolutionFwdAlgo_t;
  static constexpr int kMaxAlgos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  static constexpr const char* kName = "forward";
  static constexpr const char* kRunName = "cudnnConvolutionForward";
  static constexpr bool kFilterIsOutput = false;
  static constexpr bool kXIsOutput = false, kYIsOutput = true;
  static cudnnStatus_t heuristic(const Problem& pr, int* count, Perf* perf) {
    return cudnnGetConvolutionForwardAlgorithm_v7(cuda::cudnn(), pr.x, pr.w, pr.conv, pr.y, kMaxAlgos, count,
                                                  perf);
  }
  static cudnnStatus_t find(const Problem& pr, const Buffers& b, int* count, Perf* perf, void* ws,
                            std::size_t bytes) {
    return cudnnFindConvolutionForwardAlgorithmEx(cuda::cudnn(), pr.x, b.x, pr.w, b.w, pr.conv, pr.y, b.y,
                                                  kMaxAlgos, count, perf, ws, bytes);
  }
  static cudnnStatus_t workspace(const Problem& pr, int algo, std::size_t* bytes) {
    return cudnnGetConvolutionForwardWorkspaceSize(cuda::cudnn(), pr.x, pr.w, pr.conv, pr.y,
                                                   static_cast<Algo>(algo), bytes);
  }
  static cudnnStatus_t run(const Problem& pr, const Buffers& b, int algo, void* ws, std::size_t bytes) {
    return cudnnConvolutionForward(cuda::cudnn(), &kOne, pr.x, b.x, pr.w, b.w, pr.conv,
                                   static_cast<Algo>(algo), ws, bytes, &kZero, pr.y, b.y);
  }
};

struct BackwardData {
  using Perf = cudnnConvolutionBwdDataAlgoPerf_t;
  using Algo = cudnnConvolutionBwdDataAlgo_t;
  static constexpr int kMaxAlgos = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  static constexpr const char* kName = "backward-data";
  static constexpr const char* kRunName = "cudnnConvolutionBackwardData";
  static constexpr bool kFilterIsOutput = false;
  static constexpr bool kXIsOutput = true, kYIsOutput = false;
  static cudnnStatus_t heuristic(const Problem& pr, int* count, Perf* perf) {
    return cudnnGetConvolutionBackwardDataAlgorithm_v7(cuda::cudnn(), pr.w, pr.y, pr.conv, pr.x, kMaxAlgos,
                                                       count, perf);
  }
  static cudnnStatus_t find(const Problem& pr, const Buffers& b, int* count, Perf* perf, void* ws,
                            std::size_t bytes) {
    return cudnnFindConvolutionBackwardDataAlgorithmEx(cuda::cudnn(), pr.w, b.w, pr.y, b.y, pr.conv, pr.x,
                                                       b.x, kMaxAlgos, count, perf, ws, bytes);
  }
  static cudnnStatus_t workspace(const Problem& pr, int algo, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(cuda::cudnn(), pr.w, pr.y, pr.conv, pr.x,
                                                        static_cast<Algo>(algo), bytes);
  }
  static cudnnStatus_t run(const Problem& pr, const Buffers& b, int algo, void* ws, std::size_t bytes) {
    return cudnnConvolutionBackwardData(cuda::cudnn(), &kOne, pr.w, b.w, pr.y, b.y, pr.conv,
                                        static_cast<Algo>(algo), ws, bytes, &kZero, pr.x, b.x);
  }
};

struct BackwardFilter {
  using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
  using Algo = cudnnConvolutionBwdFilterAlgo_t;
  static constexpr int kMaxAlgos = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  static constexpr const char* kName = "backward-filter";
  static constexpr const char* kRunName = "cudnnConvolutionBackwardFilter";
  static constexpr bool kFilterIsOutput = true;
  static constexpr bool kXIsOutput = false, kYIsOutput = false;
  static cudnnStatus_t heuristic(const Problem& pr, int* count, Perf* perf) {
    return cudnnGetConvolutionBackwardFilterAlgorithm_v7(cuda::cudnn(), pr.x, pr.y, pr.conv, pr.w, kMaxAlgos,
                                                         count, perf);
  }
  static cudnnStatus_t find(const Problem& pr, const Buffers& b, int* count, Perf* perf, void* ws,
                            std::size_t bytes) {
    return cudnnFindConvolutionBackwardFilterAlgorithmEx(cuda::cudnn(), pr.x, b.x, pr.y, b.y, pr.conv, pr.w,
                                                         b.w, kMaxAlgos, count, perf, ws, bytes);
  }
  static cudnnStatus_t workspace(const Problem& pr, int algo, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(cuda::cudnn(), pr.x, pr.y, pr.conv, pr.w,
                                                          static_cast<Algo>(algo), bytes);
  }
  static cudnnStatus_t run(const Problem& pr, const Buffers& b, int algo, void* ws, std::size_t bytes) {
    return cudnnConvolutionBackwardFilter(cuda::cudnn(), &kOne, pr.x, b.x, pr.y, b.y, pr.conv,
                                          static_cast<Algo>(algo), ws, bytes, &kZero, pr.w, b.w);
  }
};

struct Candidate {
  int algo;
  std::size_t workspace;
};

// An ordered candidate list and the filter layout it was chosen for.
struct Plan {
  bool nhwc_filter = false;
  std::vector<Candidate> candidates;
};

std::mutex& plans_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, Plan>& plans() {
  static std::map<std::string, Plan> cache;
  return cache;
}

// The shared workspace, or null when it cannot be had: a failed cudaMalloc is retried once after the
// allocator hands its cached blocks back to the driver (a rare path; that release synchronizes).
void* try_workspace(std::size_t bytes) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      if (void* p = cuda::workspace(bytes)) return p;
    } catch (const Error&) {
      (void)cudaGetLastError();  // out of memory is not sticky, but stays the "last error" until read
    }
    if (attempt == 0) cuda::empty_cache();
  }
  return nullptr;
}

// Statuses that mean "this algorithm, not this problem": try the next candidate.
bool try_next_algorithm(cudnnStatus_t status) {
  return CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_NOT_SUPPORTED ||
         status == CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT ||
         status == CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER ||
         status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
}

bool contains(const std::vector<Candidate>& list, int algo) {
  return std::any_of(list.begin(), list.end(), [&](const Candidate& c) { return c.algo == algo; });
}

// Supported, FMA-math entries of a perf list with their exact workspace needs, first occurrence only.
template <class D>
std::vector<Candidate> usable(const Problem& pr, const typename D::Perf* perf, int count) {
  std::vector<Candidate> out;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (perf[i].mathType != CUDNN_DEFAULT_MATH && perf[i].mathType != CUDNN_FMA_MATH) continue;
    const int algo = static_cast<int>(perf[i].algo);
    if (contains(out, algo)) continue;
    std::size_t bytes = 0;
    if (D::workspace(pr, algo, &bytes) != CUDNN_STATUS_SUCCESS) continue;
    out.push_back({algo, bytes});
  }
  return out;
}

template <class D>
std::vector<Candidate> choose(const Problem& pr, const Buffers& b, bool find) {
  typename D::Perf perf[D::kMaxAlgos];
  int count = 0;
  const cudnnStatus_t listed = D::heuristic(pr, &count, perf);
  if (listed != CUDNN_STATUS_SUCCESS) {
    // Nothing for this filter layout or these strides: the callers try the other layout, then
    // channels-last copies, and name the problem if all of that fails.
    if (try_next_algorithm(listed) || CUDNN_STATUS_CATEGORY(listed) == CUDNN_STATUS_BAD_PARAM) return {};
    ZSQ_CUDNN_CHECK(listed);
  }
  std::vector<Candidate> ranked = usable<D>(pr, perf, count);
  if (!find || ranked.empty()) return ranked;
  std::size_t find_bytes = 0;
  for (const Candidate& c : ranked)
    if (c.workspace <= kFindWorkspaceLimit) find_bytes = std::max(find_bytes, c.workspace);
  void* ws = find_bytes > 0 ? try_workspace(find_bytes) : nullptr;
  if (find_bytes > 0 && ws == nullptr) return ranked;
  int timed_count = 0;
  const cudnnStatus_t timed_status = D::find(pr, b, &timed_count, perf, ws, find_bytes);
  (void)cudaGetLastError();  // a candidate that failed inside the search must not be blamed on a later launch
  if (timed_status != CUDNN_STATUS_SUCCESS) return ranked;
  std::vector<Candidate> timed = usable<D>(pr, perf, timed_count);
  for (const Candidate& c : ranked)
    if (!contains(timed, c.algo)) timed.push_back(c);
  return timed;
}

// The filter operand as cuDNN sees it: the weight itself for OIHW; for NHWC, the weight's channels-last
// copy (an input) or a fresh channels-last buffer (the weight gradient, permuted back afterwards).
template <class D>
Tensor filter_operand(const Tensor& w, bool nhwc_filter) {
  if (!nhwc_filter) return w;
  if (D::kFilterIsOutput)
    return Tensor::empty(w.shape(), DType::f32, MemoryFormat::channels_last, w.device());
  return w.to_format(MemoryFormat::channels_last);
}

std::string strides_key(const Tensor& t) {
  const Strides4 s = t.strides4();
  return fmt::format("{}/{},{},{},{}", shape_str(t.shape()), s.n, s.c, s.h, s.w);
}

std::string problem_key(const char* direction, const Operands& o) {
  const Conv2dParams& p = o.p;
  return fmt::format("{}|{}|x{}|w{}|y{}|s{}x{}|p{}x{}|d{}x{}|g{}", direction, o.x.device().str(),
                     strides_key(o.x), shape_str(o.w.shape()), strides_key(o.y), p.stride_h, p.stride_w,
                     p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups);
}

template <class D>
Plan& plan_for(const std::string& key, const Operands& o) {
  auto it = plans().find(key);
  if (it != plans().end()) return it->second;
  // cuDNN's NHWC filter layout only goes with NHWC activations.
  const bool nhwc_possible = o.x.is_layout_equivalent(MemoryFormat::channels_last) &&
                             o.y.is_layout_equivalent(MemoryFormat::channels_last);
  const bool preferred = settings().nhwc_filters && nhwc_possible;
  Plan plan;
  for (const bool nhwc_filter : {preferred, !preferred}) {
    if (nhwc_filter && !nhwc_possible) continue;
    const Tensor filter = filter_operand<D>(o.w, nhwc_filter);
    const Problem pr(o, nhwc_filter);
    plan.candidates = choose<D>(pr, {o.x.raw_data(), filter.raw_data(), o.y.raw_data()}, settings().find);
    plan.nhwc_filter = nhwc_filter;
    if (!plan.candidates.empty()) break;
  }
  return plans().emplace(key, std::move(plan)).first->second;
}

// Runs direction D with the first candidate that works, dropping the ones that do not for good.
// False when no candidate is left (nothing was written).
template <class D>
bool execute(const Operands& o) {
  std::lock_guard lock(plans_mutex());
  Plan& plan = plan_for<D>(problem_key(D::kName, o), o);
  if (plan.candidates.empty()) return false;
  const Tensor filter = filter_operand<D>(o.w, plan.nhwc_filter);
  const Problem pr(o, plan.nhwc_filter);
  const Buffers buffers{o.x.raw_data(), filter.raw_data(), o.y.raw_data()};
  while (!plan.candidates.empty()) {
    const Candidate c = plan.candidates.front();
    void* ws = nullptr;
    if (c.workspace > 0 && (ws = try_workspace(c.workspace)) == nullptr) {
      plan.candidates.erase(plan.candidates.begin());
      continue;
    }
    const cudnnStatus_t status = D::run(pr, buffers, c.algo, ws, c.workspace);
    if (status == CUDNN_STATUS_SUCCESS) {
      if (D::kFilterIsOutput && plan.nhwc_filter) o.w.copy_from(filter);  // KRSC back into OIHW
      return true;
    }
    if (!try_next_algorithm(status)) cuda::raise_cudnn_error(status, D::kRunName, __FILE__, __LINE__);
    plan.candidates.erase(plan.candidates.begin());
  }
  return false;
}

// execute, and when cuDNN has nothing for the operands' strides (an input in the other format than the
// output is the unusual case), once more on copies of the inputs in the output activation's format
// (channels-last when the weight gradient is the output). The failed plan stays cached empty, so later
// calls go straight to the copy.
template <class D>
void execute_any_layout(const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dParams& p) {
  if (execute<D>({x, w, y, p})) return;
  const MemoryFormat target =
      D::kXIsOutput ? x.format() : (D::kYIsOutput ? y.format() : MemoryFormat::channels_last);
  const Tensor x_nhwc = D::kXIsOutput ? x : x.to_format(target);
  const Tensor y_nhwc = D::kYIsOutput ? y : y.to_format(target);
  const bool converted = x_nhwc.impl() != x.impl() || y_nhwc.impl() != y.impl();
  if (converted && execute<D>({x_nhwc, w, y_nhwc, p})) return;
  fail(fmt::format(
      "conv2d: cuDNN has no usable {} algorithm for input {}, weight {}, output {} (stride {}x{}, "
      "padding {}x{}, dilation {}x{}, groups {}): every candidate was unsupported or needed more "
      "workspace than could be allocated (CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr shows why)",
      D::kName, x.str(), w.str(), y.str(), p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
      p.dilation_w, p.groups));
}

}  // namespace

CudnnConvSettings cudnn_conv_settings() {
  return settings();
}

void set_cudnn_conv_settings(const CudnnConvSettings& s) {
  settings() = s;
}

void clear_cudnn_conv_cache() {
  std::lock_guard lock(plans_mutex());
  plans().clear();
}

Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p,
                      const ConvEpilogue& epilogue) {
  const Shape y_shape = conv2d_output_shape(x, weight, bias, p);
  const MemoryFormat format = settings().activation_format;
  Tensor out = Tensor::empty(y_shape, DType::f32, format, x.device());
  if (out.numel() == 0) return out;
  if (x.numel() == 0)
    out.fill(0.0f);  // no input channels: the convolution sums nothing
  else
    execute_any_layout<Forward>(x, weight, out, p);
  Tensor residual;
  if (epilogue.residual.defined()) residual = epilogue.residual.to_format(format);
  const float* bias_ptr = bias.defined() ? bias.cuda_f32() : nullptr;
  const float* residual_ptr = residual.defined() ? residual.cuda_f32() : nullptr;
  if (out.format() == MemoryFormat::channels_last)
    cuda::conv_epilogue_channels_last(out.cuda_f32(), bias_ptr, residual_ptr,
                                      y_shape[0] * y_shape[2] * y_shape[3], y_shape[1], epilogue.relu);
  else
    cuda::conv_epilogue_nchw(out.cuda_f32(), bias_ptr, residual_ptr, out.numel(), y_shape[2] * y_shape[3],
                             y_shape[1], epilogue.relu);
  return out;
}

Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p) {
  Tensor grad_x = Tensor::empty(x_shape, DType::f32, settings().activation_format, grad_out.device());
  if (grad_x.numel() == 0) return grad_x;
  if (grad_out.numel() == 0 || weight.numel() == 0) {
    grad_x.fill(0.0f);
    return grad_x;
  }
  execute_any_layout<BackwardData>(grad_x, weight, grad_out, p);
  return grad_x;
}

void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias) {
  grad_weight = Tensor::empty(weight_shape, DType::f32, MemoryFormat::contiguous, grad_out.device());
  if (grad_weight.numel() > 0) {
    if (x.numel() == 0 || grad_out.numel() == 0)
      grad_weight.fill(0.0f);
    else
      execute_any_layout<BackwardFilter>(x, grad_weight, grad_out, p);
  }
  if (!with_bias) return;
  grad_bias = Tensor::empty({weight_shape[0]}, DType::f32, MemoryFormat::contiguous, grad_out.device());
  if (grad_bias.numel() == 0) return;
  if (grad_out.numel() == 0) {
    grad_bias.fill(0.0f);
    return;
  }
  cuda::TensorDescriptor dy, db;
  set_activation(dy, grad_out.shape(), grad_out.strides4());
  ZSQ_CUDNN_CHECK(cudnnSetTensor4dDescriptor(db, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1,
                                             to_int(weight_shape[0], "O"), 1, 1));
  ZSQ_CUDNN_CHECK(cudnnConvolutionBackwardBias(cuda::cudnn(), &kOne, dy, grad_out.raw_data(), &kZero, db,
                                               grad_bias.raw_data()));
}

}  // namespace zsq::ops::cudnn_impl
