// Looking at synthetic images: the per-epoch PNG grids of gdfq/zaq runs, generator files, and
// `zsq synth` (which rebuilds a generator from its file alone and must refuse anything else clearly).
#include <doctest/doctest.h>

#include "models/generator_file.h"
#include "tests/cli_testing.h"
#include "tests/testing.h"

using namespace zsq;
using zsq::testing::flat_state;
using namespace zsq::clitest;

namespace {
fs::path scratch() {
  return work_dir("synth");
}
Result run(const std::string& args) {
  return run_zsq(scratch(), "", args);
}
// Grid side in pixels for `tiles` 32x32 images with the 2-pixel gutter (tools/sample_grid.h).
std::uint32_t side(std::uint32_t tiles) {
  return tiles * 32 + (tiles + 1) * 2;
}
void check_png(const fs::path& path, std::uint32_t width, std::uint32_t height) {
  CAPTURE(path.string());
  REQUIRE(fs::exists(path));
  const auto h = read_png_header(path);
  CHECK(h.signature_ok);
  CHECK(h.ihdr_ok);
  CHECK(h.width == width);
  CHECK(h.height == height);
  CHECK(h.bit_depth == 8);
  CHECK(h.color_type == 0);  // greyscale
}
}  // namespace

TEST_CASE("gdfq writes a PNG grid and the generator every epoch; zsq synth rebuilds the generator") {
  const auto out = scratch() / "gdfq";
  auto r = run(
      fmt::format("quantize --teacher {} --method gdfq --budget tiny --out {} --threads 1 --calib-images 32",
                  small_teacher(scratch()), out.string()));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  // Conditional generator: one row per class (10), 80 / 10 = 8 per row.
  for (const char* name : {"epoch_001.png", "epoch_002.png"})
    check_png(out / "samples" / name, side(8), side(10));
  CHECK_FALSE(fs::exists(out / "samples" / "epoch_003.png"));
  const auto generator = (out / "generator.safetensors").string();
  const Checkpoint file = load_checkpoint(generator);
  CHECK(models::is_generator_checkpoint(file));
  CHECK(file.metadata.at("zsq.generator.epochs_done") == "2");
  CHECK(file.metadata.at("zsq.quant.method") == "gdfq");

  const auto a = scratch() / "a.png", b = scratch() / "b.png", c = scratch() / "c.png";
  r = run(fmt::format("synth --generator {} --out {} --count 25 --seed 4", generator, a.string()));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.find("10 rows x 3 columns") != std::string::npos);
  check_png(a, side(3), side(10));  // ceil(25 / 10) = 3 per class
  REQUIRE(run(fmt::format("synth --generator {} --out {} --count 25 --seed 4", generator, b.string())).code ==
          0);
  REQUIRE(run(fmt::format("synth --generator {} --out {} --count 25 --seed 5", generator, c.string())).code ==
          0);
  CHECK(slurp(a) == slurp(b));  // same seed, same picture
  CHECK(slurp(a) != slurp(c));
}

TEST_CASE("zsq synth on an unconditional (ZAQ) generator: 10 images per row") {
  Rng rng(3);
  models::Generator g(models::GeneratorConfig::zaq(1), rng);
  const auto path = (scratch() / "zaq_generator.safetensors").string();
  models::save_generator(path, g);
  const auto png = scratch() / "zaq.png";
  auto r = run(fmt::format("synth --generator {} --out {} --count 25", path, png.string()));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  check_png(png, side(10), side(3));
}

TEST_CASE("generator files round-trip; sampling leaves the generator's state untouched") {
  Rng rng(5);
  models::Generator g(models::GeneratorConfig::gdfq(10, 1), rng);
  Tensor labels = Tensor::empty({6}, DType::s32);
  for (int i = 0; i < 6; ++i) labels.data<std::int32_t>()[i] = i;
  g.generate(randn({6, 100}, rng), labels);  // moves the BN running statistics away from their init
  const auto before = flat_state(g);
  Tensor z = randn({6, 100}, rng);
  Tensor x = g.sample(z, labels);
  CHECK(x.shape() == Shape{6, 1, 32, 32});
  CHECK(flat_state(g) == before);
  CHECK(g.is_training());

  const auto path = (scratch() / "roundtrip.safetensors").string();
  models::save_generator(path, g, {{"note", "kept"}});
  auto loaded = models::load_generator(path);
  CHECK(loaded.metadata.at("note") == "kept");
  CHECK(loaded.generator->config().conditional);
  CHECK(loaded.generator->config().gdfq_bn_eps_quirk);
  CHECK(flat_state(*loaded.generator) == before);
  CHECK(loaded.generator->sample(z, labels).to_vector() == x.to_vector());
}

TEST_CASE("zsq synth refuses missing, corrupt and non-generator files with one clear message") {
  Rng rng(6);
  models::Generator g(models::GeneratorConfig::gdfq(10, 1), rng);
  const auto good = (scratch() / "good.safetensors").string();
  models::save_generator(good, g);
  const auto truncated = (scratch() / "truncated.safetensors").string();
  fs::copy_file(good, truncated, fs::copy_options::overwrite_existing);
  fs::resize_file(truncated, fs::file_size(good) / 2);
  const auto garbage = (scratch() / "garbage.safetensors").string();
  std::ofstream(garbage) << "this is not a checkpoint at all, just text";
  const auto bad_config = (scratch() / "bad_config.safetensors").string();
  save_checkpoint(bad_config, Checkpoint(g.named_state(), {{"zsq.kind", "generator"},
                                                           {"zsq.generator.config", R"({"latent": 5})"}}));
  const auto teacher = small_teacher(scratch());

  struct Case {
    std::string file, expect;
  };
  for (const Case& c : {Case{(scratch() / "missing.safetensors").string(), "missing.safetensors"},
                        Case{truncated, "truncated"}, Case{garbage, "garbage.safetensors"},
                        Case{teacher, "not a zsq generator file"}, Case{bad_config, "lacks field"}}) {
    CAPTURE(c.file);
    const auto png = scratch() / "never.png";
    auto r = run(fmt::format("synth --generator {} --out {}", c.file, png.string()));
    CHECK(r.code == 1);
    CHECK(r.err.find(c.file) != std::string::npos);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK(r.err.find("zsq: error:") == 0);
    CHECK_FALSE(fs::exists(png));
  }
  CHECK(run(fmt::format("synth --generator {} --out {} --count 0", good, (scratch() / "x.png").string()))
            .code != 0);
  CHECK(run("synth --out x.png").code != 0);  // --generator is required
}
