// zsq export --int STUDENT --out MODEL: turn a fake-quant student (deploy convention) into the integer
// model the integer kernels run: BN folded, integer weights (4-bit ones packed two per byte), int32
// biases, u8 activation grids (quant/integer_model.h). Reads no data: the input grid spans the range of
// the benchmark's normalized images, a constant of the preprocessing.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "quant/integer_model.h"
#include "quant/student.h"
#include "tools/commands.h"
#include "tools/datasets/fashion_mnist.h"

namespace zsq::cli {

void add_export_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string student, out;
    std::vector<float> input_range{kFashionBlack, fashion_normalize(255)};
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  auto* verb = app.add_subcommand("export", "Convert a quantized student into an integer model");
  verb->add_option("--int", o->student, "Student checkpoint from `zsq quantize --convention deploy`")
      ->required();
  verb->add_option("--out", o->out, "Integer model file to write (.safetensors)")->required();
  verb->add_option(
          "--input-range", o->input_range,
          "LO HI: value range of the normalized input images (default: Fashion-MNIST black to white)")
      ->expected(2)
      ->capture_default_str();
  verb->add_flag("--json", o->json, "Print one JSON object describing the export");
  add_common_options(verb, o->common);
  verb->callback([o] {
    apply_common_options(o->common);
    const Checkpoint checkpoint = load_checkpoint(o->student);
    ZSQ_CHECK(quant::Student::is_student_checkpoint(checkpoint),
              "{}: not a quantized student; run `zsq quantize --teacher {} --convention deploy ...` first",
              o->student, o->student);
    auto student = quant::Student::from_checkpoint(checkpoint);
    const auto model = quant::convert_to_integer(*student, {o->input_range[0], o->input_range[1], 32, 32});
    quant::save_integer_model(o->out, model);
    const auto bytes = std::filesystem::file_size(o->out);
    if (o->json) {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto* l : model.layers())
        layers.push_back({{"name", l->name},
                          {"weight_bits", l->weight_bits},
                          {"storage", l->weight_bits <= 4 ? "packed int4" : "int8"},
                          {"act_qmax", l->output.qmax},
                          {"act_scale", l->output.scale}});
      fmt::print("{}\n", nlohmann::json{{"out", o->out},
                                        {"bytes", bytes},
                                        {"arch", model.arch},
                                        {"input_scale", model.input.scale},
                                        {"input_zero_point", model.input.zero_point},
                                        {"layers", layers}}
                             .dump());
      return;
    }
    fmt::print("{:<20} {:>5} {:>12} {:>10}\n", "layer", "bits", "storage", "act grid");
    for (const auto* l : model.layers())
      fmt::print("{:<20} {:>5} {:>12} {:>10}\n", l->name, l->weight_bits,
                 l->weight_bits <= 4 ? "packed int4" : "int8",
                 l == &model.fc                   ? std::string("f32 logits")
                 : l->name.ends_with(".shortcut") ? std::string("f32 (added)")
                                                  : fmt::format("u8 {}..{}", l->output.qmin, l->output.qmax));
    fmt::print("input: u8, scale {:.6g}, zero point {}; wrote {} ({} bytes)\n", model.input.scale,
               model.input.zero_point, o->out, bytes);
  });
}

}  // namespace zsq::cli
