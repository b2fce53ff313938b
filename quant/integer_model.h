// The deploy-form integer model (DESIGN.md §4): what `zsq export --int` writes and the integer runner
// executes. BN is folded; weights are symmetric per output channel (zero point 0) held as integers;
// activations are per-tensor u8 grids; biases are int32 in accumulator units.
//
// Numbers, for a convolution with input grid s_in (u8 q_in, real = s_in * (q_in - zp_in)) and weight
// scales ws[o] (real folded weight = ws[o] * w[o, ...]):
//   real output[o] = s_in * ws[o] * (sum w * (q_in - zp_in) + bias[o])
// and a u8 output grid s_out stores clamp(round(real / s_out), qmin, qmax). The grids are the fake-quant
// grids of the student (ops::fake_quant_grid): a post-ReLU activation on [0, hi] with k bits is
// s = hi / (2^k - 1), q in [0, 2^k - 1]; a grid whose range starts above 0 keeps its q range
// [qmin, qmax] with zero point 0, which u8 storage still holds as long as 0 <= qmin and qmax <= 255.
//
// Architectures: the CIFAR ResNets (stem, BasicBlocks with identity or 1x1-conv shortcuts, global
// average pool, linear classifier). Others are refused at conversion with a message saying so.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint.h"

namespace zsq::quant {

class Student;

// A u8 activation grid: real = scale * (q - zero_point), q in [qmin, qmax].
struct ActGrid {
  float scale = 1.0f;
  std::int32_t zero_point = 0;
  std::int32_t qmin = 0, qmax = 255;
  bool operator==(const ActGrid&) const = default;
};

// One convolution or the classifier (kernel = 1, stride = 1, padding = 0, spatial 1x1).
struct IntLayer {
  std::string name;  // module path in the float model, e.g. "stage2.0.conv1"
  std::int64_t in_channels = 0, out_channels = 0, kernel = 1, stride = 1, padding = 0;
  int weight_bits = 8;              // values lie in [-(2^(b-1) - 1), 2^(b-1) - 1]
  std::vector<std::int8_t> weight;  // OIHW (a linear layer: [out, in])
  std::vector<float> weight_scale;  // [out] > 0, BN folded in
  std::vector<std::int32_t> bias;   // [out], accumulator units
  ActGrid output;                   // unused for shortcuts (they produce f32 in the block's output units)
  std::int64_t weight_numel() const { return out_channels * in_channels * kernel * kernel; }
};

struct IntBlock {
  IntLayer conv1, conv2;
  std::optional<IntLayer> shortcut;  // absent: identity shortcut
};

struct IntegerModel {
  std::string arch;             // "resnet20", ...
  nlohmann::json arch_config;   // the float model's resolved config
  nlohmann::json quant_config;  // the student's QConfig (provenance)
  std::int64_t in_channels = 1, height = 32, width = 32, num_classes = 10;
  ActGrid input;  // how float images become u8
  IntLayer stem;
  std::vector<IntBlock> blocks;
  IntLayer fc;  // input: the per-channel sum of the last block's u8 output

  // The largest weight bit width (8 for "int8", 4 for a model whose middle layers are 4-bit).
  int max_weight_bits() const;
  int min_weight_bits() const;
  // Every layer in execution order (stem, each block's conv1 [shortcut] conv2, fc).
  std::vector<const IntLayer*> layers() const;
  // Positions (H * W) of the last feature map, which the classifier's input averages over.
  std::int64_t final_positions() const;
};

// The images the model will see: their value range in the normalized units the float model takes
// (the 8-bit input grid spans it) and their size.
struct InputSpec {
  float lo = 0.0f, hi = 1.0f;
  std::int64_t height = 32, width = 32;
};

// BN folding + deploy conversion of a student quantized with the deploy convention (symmetric
// per-channel weights). Throws zsq::Error naming the reason when the student cannot be represented
// (paper convention, an activation grid below 0, an unsupported architecture, a site without range).
IntegerModel convert_to_integer(Student& student, const InputSpec& input);

// The safetensors form: "<layer>.weight" (s8 OIHW, or u8 two 4-bit values per byte, low nibble first,
// when weight_bits <= 4), "<layer>.weight_scale" (f32), "<layer>.bias" (s32); metadata "zsq.format" =
// "zsq-int-v1" and "zsq.int.model" (JSON: grids, geometry, bits, wiring). Load validates everything and
// names the file and field in its errors.
Checkpoint integer_model_to_checkpoint(const IntegerModel& model);
IntegerModel integer_model_from_checkpoint(const Checkpoint& checkpoint);
bool is_integer_model_checkpoint(const Checkpoint& checkpoint);
void save_integer_model(const std::string& path, const IntegerModel& model);
IntegerModel load_integer_model(const std::string& path);

}  // namespace zsq::quant
