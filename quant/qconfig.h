// QConfig: every quantization choice of a run in one value, so a report can state its convention
// (DESIGN.md §4) and any deviation from it.
//
// Two presets:
//   paper  (default) what the GDFQ/ZAQ reference code does (ALGORITHMS.md §0): per-channel asymmetric
//          min/max weights recomputed every forward, per-tensor asymmetric activations after every
//          ReLU, input image not quantized, first/last layers at the same bits, BN unfolded (kept in
//          eval mode as GDFQ does), plain straight-through gradient.
//   deploy what integer runtimes want: symmetric per-channel weights (zero point 0), per-tensor
//          activations that are u8 after a ReLU (asymmetric with lo = 0, which min/max gives for
//          free), first conv and last linear at 8 bits, the input image quantized (the first conv runs
//          in integers too), BN folded.
// Both presets use the `minmax` activation observer: a calibration baseline that needs no schedule.
// Methods pick their own (GDFQ: gdfq_ema with freeze_after 800; ZAQ: minmax) by overriding
// act_observer / freeze_after.
//
// Sources, applied in order: a preset, a JSON file (load_qconfig), then "key=value" strings
// (QConfig::set, for --set flags). The keys are the fields below, spelled as in to_json():
//   convention          paper | deploy | custom. paper and deploy reset every field to that preset
//                       except weight_bits and act_bits (bits are orthogonal to the convention);
//                       custom only relabels. In a JSON file it is applied before the other keys.
//   weight_bits, act_bits            2..8
//   weight_granularity               per_channel | per_tensor
//   weight_symmetric, act_symmetric  true | false
//   weight_observer     minmax | mse: each output channel's [min, max], or that range shrunk by the
//                       clip ratio with the least squared error (mse_candidates ratios from
//                       mse_min_ratio to 1), recomputed from the weights on every forward.
//                       mse needs weight_granularity per_channel.
//   weight_range        observed | learned: each weight channel's range as weight_observer gives it, or
//                       [r min, r max] (symmetric: r max|w|) with a clip ratio r per output channel that
//                       starts at weight_observer's choice (minmax: 1, mse: the MSE ratio) and trains
//                       with the student (LSQ gradient, ops::fake_quant_per_channel_ratio; same Adam
//                       as learned activation ranges). Needs weight_granularity per_channel.
//   act_observer        minmax | ema | gdfq_ema | mse
//   act_range           observed | learned: once an activation site's observer freezes, quantize with
//                       its range as observed, or with [0, hi] where hi starts from the observed one
//                       and trains with the student (LSQ gradient, ops::fake_quant_learned_range;
//                       the methods give it its own Adam, --opt range_lr). learned needs unsigned
//                       activations (act_symmetric false) and post-ReLU sites (lo = 0).
//   ema_momentum        (0, 1), beta of ema and gdfq_ema
//   freeze_after        null (--set: none) or an observation count >= 1 after which ranges freeze
//   mse_candidates      >= 2 clip ratios, evenly spaced from mse_min_ratio to 1
//   mse_min_ratio       (0, 1]
//   ste                 plain | clipped (clipped: zero gradient outside [lo, hi])
//   bn_mode             train (batch stats, running stats update) | eval (running stats, affine
//                       trainable) | frozen (running stats and affine fixed)
//   fold_bn, quantize_input          true | false
//   first_last_bits     0 (same as the rest) or 2..8, weight and act bits of the first conv and the
//                       last linear
//   layers              {"<layer name>": {"weight_bits": N, "act_bits": N}}, 0 = inherit;
//                       --set form: layers.<layer name>.weight_bits=N (the name may contain dots)
// Unknown keys and bad values throw zsq::Error naming the key and the source (file or "--set").
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace zsq::quant {

enum class Granularity : unsigned char { per_channel, per_tensor };
enum class ObserverKind : unsigned char { minmax, ema, gdfq_ema, mse };
enum class SteKind : unsigned char { plain, clipped };
enum class BnMode : unsigned char { train, eval, frozen };
enum class ActRange : unsigned char { observed, learned };

const char* to_string(Granularity g);
const char* to_string(ObserverKind k);
const char* to_string(SteKind s);
const char* to_string(BnMode m);
const char* to_string(ActRange r);
// Parse an enum name; `field` names the key in the error message.
Granularity parse_granularity(const std::string& name, const std::string& field = "weight_granularity");
ObserverKind parse_observer_kind(const std::string& name, const std::string& field = "act_observer");
SteKind parse_ste_kind(const std::string& name, const std::string& field = "ste");
BnMode parse_bn_mode(const std::string& name, const std::string& field = "bn_mode");
ActRange parse_act_range(const std::string& name, const std::string& field = "act_range");

// Bits of one layer; 0 means "inherit".
struct LayerBits {
  int weight_bits = 0;
  int act_bits = 0;
  bool operator==(const LayerBits&) const = default;
};

// Where a layer sits, for first_last_bits.
enum class LayerRole : unsigned char { middle, first, last };

inline constexpr int kMinBits = 2;
inline constexpr int kMaxBits = 8;

struct QConfig {
  std::string convention = "paper";
  int weight_bits = 4;
  int act_bits = 4;
  Granularity weight_granularity = Granularity::per_channel;
  bool weight_symmetric = false;
  bool act_symmetric = false;
  ObserverKind weight_observer = ObserverKind::minmax;  // minmax | mse (quant/weight_ranges.h)
  ActRange weight_range = ActRange::observed;           // learned: trained per-channel clip ratios
  ObserverKind act_observer = ObserverKind::minmax;
  ActRange act_range = ActRange::observed;
  float ema_momentum = 0.9f;
  std::optional<std::int64_t> freeze_after;
  int mse_candidates = 100;
  float mse_min_ratio = 0.3f;
  SteKind ste = SteKind::plain;
  BnMode bn_mode = BnMode::eval;
  bool fold_bn = false;
  bool quantize_input = false;
  int first_last_bits = 0;
  std::map<std::string, LayerBits> layers;

  static QConfig paper(int weight_bits = 4, int act_bits = 4);
  static QConfig deploy(int weight_bits = 4, int act_bits = 4);
  // "paper" or "deploy".
  static QConfig preset(const std::string& name, int weight_bits = 4, int act_bits = 4);

  // Applies one "key=value" string. The value is read as JSON when it parses (8, 0.95, true, null)
  // and as a bare string otherwise (ema, per_tensor). Validates the result.
  void set(const std::string& key_value, const std::string& source = "--set");
  // Applies every key of a JSON object (convention first). Validates the result.
  void apply_json(const nlohmann::json& object, const std::string& source);

  // Throws zsq::Error naming the first invalid field (and `source` when given).
  void validate(const std::string& source = "") const;

  // Resolved bits of a layer: its `layers` entry, else first_last_bits for the first/last layer, else
  // the global bits.
  LayerBits bits_for(const std::string& layer, LayerRole role = LayerRole::middle) const;

  nlohmann::ordered_json to_json() const;
  bool operator==(const QConfig&) const = default;
};

// Preset `paper` with the file's keys applied. Unknown keys are errors naming the key and the file.
QConfig load_qconfig(const std::string& path);

}  // namespace zsq::quant
