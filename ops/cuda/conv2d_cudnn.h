// CUDA convolution through cuDNN's convolution API (conv2d_cudnn.cpp). Same contract as the oneDNN
// path in ops/conv2d.h: activations in either memory format, weights [O, C/groups, KH, KW] contiguous,
// outputs and input gradients channels-last. No validation and no autograd: ops/conv2d.cpp's front
// functions do both, then call these for tensors on a GPU.
//
// Algorithms are chosen once per problem (shapes, strides, filter layout, stride/pad/dilation/groups,
// direction) and cached: timed with cudnnFind*AlgorithmEx by default (one synchronizing search per new
// shape), or taken from cuDNN's heuristics (cudnnGet*Algorithm_v7). The cached list is ordered; an
// algorithm whose workspace cannot be allocated or that cuDNN refuses at run time is dropped and the
// next one runs. Math is CUDNN_FMA_MATH: no TF32, so results match the CPU within f32 rounding.
#pragma once
#include "engine/tensor.h"
#include "ops/conv2d.h"

namespace zsq::ops::cudnn_impl {

struct CudnnConvSettings {
  // true: time the candidates (cudnnFind*AlgorithmEx) on first use of a shape; false: cuDNN's heuristic
  // order, no timing run. $ZSQ_CUDNN_CONV_SEARCH = find | heuristic sets the initial value.
  bool find = true;
  // true: for channels-last activations, hand cuDNN the filters in its NHWC ("KRSC") layout, a small
  // per-call permuted copy of the weight (what PyTorch's channels_last convolutions do); false: the
  // weight tensor's own OIHW layout. Either falls back to the other when cuDNN has no algorithm for it.
  // $ZSQ_CUDNN_FILTERS = oihw | nhwc sets the initial value.
  bool nhwc_filters = false;
  // The memory format of the activations the GPU convolutions write (outputs and input gradients).
  // cuDNN's fp32 kernels without TF32 are fastest in NCHW, and its batch norm reads NCHW with coalesced
  // kernels (on NHWC strides it falls back to a slow generic one); the CPU path stays channels-last
  // for oneDNN. $ZSQ_CUDA_LAYOUT = nchw | nhwc sets the initial value.
  MemoryFormat activation_format = MemoryFormat::contiguous;
};
CudnnConvSettings cudnn_conv_settings();
// Later convolutions use the new settings; plans already cached for a shape keep their choice.
void set_cudnn_conv_settings(const CudnnConvSettings& settings);
// Forgets every cached algorithm choice (tests, benchmarks).
void clear_cudnn_conv_cache();

// y = epilogue(conv(x, weight) + bias): bias, residual and ReLU applied in one pass after cuDNN.
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p,
                      const ConvEpilogue& epilogue = {});
Tensor conv2d_backward_data(const Tensor& grad_out, const Tensor& weight, const Shape& x_shape,
                            const Conv2dParams& p);
void conv2d_backward_weights(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                             bool with_bias, const Conv2dParams& p, Tensor& grad_weight, Tensor& grad_bias);

}  // namespace zsq::ops::cudnn_impl
