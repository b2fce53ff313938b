#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "quant/observer.h"
#include "quant/qconfig.h"
#include "quant/weight_ranges.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::quant;

namespace {

// A JSON file under the temp directory, removed at scope exit.
struct TempFile {
  std::filesystem::path path;
  explicit TempFile(const std::string& text, const std::string& name = "zsq_qconfig_test.json") {
    path = std::filesystem::temp_directory_path() / name;
    std::ofstream(path) << text;
  }
  ~TempFile() { std::filesystem::remove(path); }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

Tensor batch(const std::vector<float>& v) {
  return Tensor::from_vector({static_cast<std::int64_t>(v.size())}, v);
}

}  // namespace

TEST_CASE("paper preset matches the reference code's convention") {
  const QConfig p = QConfig::paper();
  CHECK(p.convention == "paper");
  CHECK(p.weight_bits == 4);
  CHECK(p.act_bits == 4);
  CHECK(p.weight_granularity == Granularity::per_channel);
  CHECK_FALSE(p.weight_symmetric);
  CHECK_FALSE(p.act_symmetric);
  CHECK(p.act_observer == ObserverKind::minmax);
  CHECK(p.ema_momentum == doctest::Approx(0.9));
  CHECK_FALSE(p.freeze_after.has_value());
  CHECK(p.ste == SteKind::plain);
  CHECK(p.bn_mode == BnMode::eval);
  CHECK_FALSE(p.fold_bn);
  CHECK_FALSE(p.quantize_input);
  CHECK(p.first_last_bits == 0);
  CHECK(p.layers.empty());
  CHECK(QConfig{} == p);
  CHECK(p.bits_for("features.0", LayerRole::first) == LayerBits{4, 4});
  CHECK(QConfig::paper(3, 5).bits_for("fc", LayerRole::last) == LayerBits{3, 5});
}

TEST_CASE("deploy preset: symmetric per-channel weights, u8 activations, 8-bit first/last, BN folded") {
  const QConfig d = QConfig::deploy(4, 4);
  CHECK(d.convention == "deploy");
  CHECK(d.weight_granularity == Granularity::per_channel);
  CHECK(d.weight_symmetric);
  CHECK_FALSE(d.act_symmetric);
  CHECK(d.first_last_bits == 8);
  CHECK(d.fold_bn);
  CHECK_FALSE(d.quantize_input);
  CHECK(d.act_observer == ObserverKind::minmax);
  CHECK(d.bits_for("stem", LayerRole::first) == LayerBits{8, 8});
  CHECK(d.bits_for("fc", LayerRole::last) == LayerBits{8, 8});
  CHECK(d.bits_for("stage1.0.conv1") == LayerBits{4, 4});
  CHECK(QConfig::preset("deploy", 4, 4) == d);
  CHECK_THROWS_WITH_AS(QConfig::preset("tensorrt"), doctest::Contains("tensorrt"), Error);
}

TEST_CASE("per-layer overrides win over first_last_bits and the global bits") {
  QConfig c = QConfig::paper(4, 4);
  c.first_last_bits = 8;
  c.layers["fc"] = {6, 0};
  c.layers["stage2.1.conv2"] = {0, 3};
  CHECK(c.bits_for("fc", LayerRole::last) == LayerBits{6, 8});
  CHECK(c.bits_for("stage2.1.conv2") == LayerBits{4, 3});
  CHECK(c.bits_for("stage2.1.conv1") == LayerBits{4, 4});
}

TEST_CASE("a JSON file applies its keys over the named preset") {
  TempFile f(R"({"act_bits": 3, "convention": "deploy", "act_observer": "gdfq_ema", "freeze_after": 800,
                 "ste": "clipped", "bn_mode": "train", "weight_granularity": "per_tensor",
                 "layers": {"stage1.0.conv1": {"weight_bits": 2}}})");
  const QConfig c = load_qconfig(f.path.string());
  CHECK(c.convention == "deploy");
  CHECK(c.weight_symmetric);  // from the preset
  CHECK(c.weight_bits == 4);
  CHECK(c.act_bits == 3);  // applied after the convention whatever the key order
  CHECK(c.act_observer == ObserverKind::gdfq_ema);
  REQUIRE(c.freeze_after.has_value());
  CHECK(*c.freeze_after == 800);
  CHECK(c.ste == SteKind::clipped);
  CHECK(c.bn_mode == BnMode::train);
  CHECK(c.weight_granularity == Granularity::per_tensor);
  CHECK(c.bits_for("stage1.0.conv1") == LayerBits{2, 3});
}

TEST_CASE("to_json round-trips through a file") {
  QConfig c = QConfig::deploy(5, 6);
  c.act_observer = ObserverKind::mse;
  c.ema_momentum = 0.95f;
  c.freeze_after = 123;
  c.layers["a.b"] = {3, 0};
  TempFile f(c.to_json().dump(2));
  CHECK(load_qconfig(f.path.string()) == c);
  CHECK(c.to_json()["act_observer"] == "mse");
  CHECK(QConfig::paper().to_json()["freeze_after"].is_null());
}

TEST_CASE("JSON errors name the key and the file") {
  {
    TempFile f(R"({"act_bits": 4, "act_obsrever": "ema"})");
    const auto msg = error_of([&] { load_qconfig(f.path.string()); });
    CHECK(msg.find("act_obsrever") != std::string::npos);
    CHECK(msg.find(f.path.string()) != std::string::npos);
  }
  {
    TempFile f(R"({"weight_bits": 9})");
    const auto msg = error_of([&] { load_qconfig(f.path.string()); });
    CHECK(msg.find("weight_bits") != std::string::npos);
    CHECK(msg.find("2..8") != std::string::npos);
    CHECK(msg.find(f.path.string()) != std::string::npos);
  }
  {
    TempFile f(R"({"act_bits": 1})");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("act_bits") != std::string::npos);
  }
  {
    TempFile f(R"({"act_observer": "percentile"})");
    const auto msg = error_of([&] { load_qconfig(f.path.string()); });
    CHECK(msg.find("act_observer") != std::string::npos);
    CHECK(msg.find("percentile") != std::string::npos);
    CHECK(msg.find(f.path.string()) != std::string::npos);
  }
  {
    TempFile f(R"({"weight_bits": "4"})");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("must be an integer") != std::string::npos);
  }
  {
    TempFile f(R"({"layers": {"fc": {"weight_bits": 4, "bias_bits": 8}}})");
    const auto msg = error_of([&] { load_qconfig(f.path.string()); });
    CHECK(msg.find("layers.fc.bias_bits") != std::string::npos);
    CHECK(msg.find(f.path.string()) != std::string::npos);
  }
  {
    TempFile f(R"({"layers": {"fc": {"act_bits": 12}}})");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("layers.fc.act_bits") != std::string::npos);
  }
  {
    TempFile f(R"({"ema_momentum": 1.5})");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("ema_momentum") != std::string::npos);
  }
  {
    TempFile f(R"({"convention": "tflite"})");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("convention") != std::string::npos);
  }
  {
    TempFile f(R"({"act_bits": 4,)");
    const auto msg = error_of([&] { load_qconfig(f.path.string()); });
    CHECK(msg.find("not valid JSON") != std::string::npos);
    CHECK(msg.find(f.path.string()) != std::string::npos);
  }
  {
    TempFile f(R"([1, 2])");
    CHECK(error_of([&] { load_qconfig(f.path.string()); }).find("JSON object") != std::string::npos);
  }
  CHECK(error_of([] { load_qconfig("/nonexistent/zsq.json"); }).find("/nonexistent/zsq.json") !=
        std::string::npos);
}

TEST_CASE("key=value overrides for --set flags") {
  QConfig c = QConfig::paper();
  c.set("act_observer=ema");
  CHECK(c.act_observer == ObserverKind::ema);
  c.set("ema_momentum=0.99");
  CHECK(c.ema_momentum == doctest::Approx(0.99));
  c.set("freeze_after=800");
  CHECK(c.freeze_after == 800);
  c.set("freeze_after=none");
  CHECK_FALSE(c.freeze_after.has_value());
  c.set("act_symmetric=true");
  CHECK(c.act_symmetric);
  c.set("weight_observer=mse");
  CHECK(c.weight_observer == ObserverKind::mse);
  CHECK(error_of([&] { c.set("weight_granularity=per_tensor"); }).find("per_channel") != std::string::npos);
  c.set("weight_observer=minmax");
  CHECK(error_of([&] { c.set("weight_observer=ema"); }).find("weight_observer") != std::string::npos);
  c.set("weight_granularity=per_tensor");
  CHECK(c.weight_granularity == Granularity::per_tensor);
  c.set("layers.stage1.0.conv1.weight_bits=3");
  CHECK(c.bits_for("stage1.0.conv1") == LayerBits{3, 4});
  c.set("act_bits=3");
  c.set("convention=deploy");  // resets to the preset but keeps the bits
  CHECK(c.weight_symmetric);
  CHECK(c.act_observer == ObserverKind::minmax);
  CHECK(c.act_bits == 3);
  CHECK(c.layers.empty());
  c.set("convention=custom");
  CHECK(c.convention == "custom");
  CHECK(c.weight_symmetric);

  const QConfig before = c;
  auto msg = error_of([&] { c.set("act_bits=9"); });
  CHECK(msg.find("act_bits") != std::string::npos);
  CHECK(msg.find("--set") != std::string::npos);
  CHECK(c == before);  // a failed set leaves the config unchanged
  CHECK(error_of([&] { c.set("act_observr=ema"); }).find("unknown key 'act_observr'") != std::string::npos);
  CHECK(error_of([&] { c.set("ste=hard"); }).find("ste") != std::string::npos);
  CHECK(error_of([&] { c.set("act_bits"); }).find("key=value") != std::string::npos);
  CHECK(error_of([&] { c.set("act_bits="); }).find("empty value") != std::string::npos);
  CHECK(error_of([&] { c.set("fold_bn=maybe"); }).find("fold_bn") != std::string::npos);
  CHECK(error_of([&] { c.set("freeze_after=0"); }).find("freeze_after") != std::string::npos);
  CHECK(error_of([&] { c.set("layers.fc.weight_bits=1"); }).find("layers.fc.weight_bits") !=
        std::string::npos);
  CHECK(error_of([&] { c.set("layers.fc=3"); }).find("layers.fc") != std::string::npos);
  CHECK(c == before);
}

// ---- observers ----

TEST_CASE("tensor_min_max: one pass over any layout, parallel for large tensors, rejects non-finite") {
  Rng rng(3);
  Tensor x = randn({8, 16, 32, 32}, rng);  // above the parallel threshold
  auto v = x.to_vector();
  v[12345] = -40.0f;
  v[54321] = 35.0f;
  x = Tensor::from_vector(x.shape(), v, MemoryFormat::channels_last);
  const auto [lo, hi] = tensor_min_max(x);
  CHECK(lo == -40.0f);
  CHECK(hi == 35.0f);
  v[7] = NAN;
  CHECK_THROWS_WITH_AS(tensor_min_max(Tensor::from_vector(x.shape(), v)), doctest::Contains("non-finite"),
                       Error);
  CHECK_THROWS_AS(tensor_min_max(Tensor::zeros({0})), Error);
}

TEST_CASE("minmax observer: cumulative from zero, as the ZAQ buffers") {
  MinMaxObserver o;
  o.observe(batch({0.5f, 2.0f}));
  CHECK(o.lo() == 0.0f);  // starts at 0, so a positive stream keeps lo = 0
  CHECK(o.hi() == 2.0f);
  o.observe(batch({-1.0f, 1.0f}));
  CHECK(o.lo() == -1.0f);
  CHECK(o.hi() == 2.0f);
  o.observe(batch({3.0f}));
  CHECK(o.hi() == 3.0f);
  CHECK(o.steps() == 3);
}

TEST_CASE("ema observer: first batch initializes, then a plain EMA") {
  EmaObserver o(0.9f);
  o.observe(batch({-1.0f, 2.0f}));
  CHECK(o.lo() == doctest::Approx(-1.0));
  CHECK(o.hi() == doctest::Approx(2.0));
  o.observe(batch({0.5f, 4.0f}));
  CHECK(o.lo() == doctest::Approx(0.9 * -1.0 + 0.1 * 0.5));
  CHECK(o.hi() == doctest::Approx(0.9 * 2.0 + 0.1 * 4.0));
  for (int i = 0; i < 200; ++i) o.observe(batch({1.0f, 3.0f}));
  CHECK(o.lo() == doctest::Approx(1.0).epsilon(1e-4));
  CHECK(o.hi() == doctest::Approx(3.0).epsilon(1e-4));
}

TEST_CASE("gdfq_ema observer: the reference formula, step by step") {
  GdfqEmaObserver o(0.9f);
  CHECK(o.beta_t() == 1.0f);
  CHECK(o.lo() == 0.0f);
  // step 1: beta_t = 0.9; m = (0.9*0 + 0.1*(-1))/0.1 = -1; M = (0 + 0.1*2)/0.1 = 2
  o.observe(batch({-1.0f, 0.0f, 2.0f}));
  CHECK(o.beta_t() == doctest::Approx(0.9));
  CHECK(o.lo() == doctest::Approx(-1.0).epsilon(1e-5));
  CHECK(o.hi() == doctest::Approx(2.0).epsilon(1e-5));
  // step 2: beta_t = 0.81; m = (0.9*(-1) + 0.1*0.5)/0.19 = -4.4736842; M = (0.9*2 + 0.1*4)/0.19 = 11.5789474
  o.observe(batch({0.5f, 4.0f}));
  CHECK(o.beta_t() == doctest::Approx(0.81));
  CHECK(o.lo() == doctest::Approx(-4.4736842).epsilon(1e-5));
  CHECK(o.hi() == doctest::Approx(11.5789474).epsilon(1e-5));
  // step 3: beta_t = 0.729; m = (0.9*(-4.4736842) + 0.1*(-2))/0.271 = -15.5952612;
  //         M = (0.9*11.5789474 + 0.1*1)/0.271 = 38.8230724
  o.observe(batch({-2.0f, 1.0f}));
  CHECK(o.beta_t() == doctest::Approx(0.729));
  CHECK(o.lo() == doctest::Approx(-15.5952612).epsilon(1e-5));
  CHECK(o.hi() == doctest::Approx(38.8230724).epsilon(1e-5));
}

TEST_CASE("gdfq_ema observer overshoots about 4000x near step 20, then converges") {
  GdfqEmaObserver o(0.9f);
  const Tensor ones = Tensor::full({4, 4}, 1.0f);
  float peak = 0.0f;
  int peak_step = 0;
  for (int t = 1; t <= 300; ++t) {
    o.observe(ones);
    if (t == 3) CHECK(o.hi() == doctest::Approx(17.8481258).epsilon(1e-5));
    if (o.hi() > peak) {
      peak = o.hi();
      peak_step = t;
    }
    if (t == 150) CHECK(o.hi() == doctest::Approx(1.01359).epsilon(1e-3));
  }
  CHECK(peak == doctest::Approx(3945.1).epsilon(1e-3));
  CHECK(peak_step == 21);
  CHECK(o.hi() == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(o.lo() == doctest::Approx(1.0).epsilon(1e-5));
}

TEST_CASE("mse observer clips a heavy tail and keeps the full range when nothing is gained") {
  Rng rng(11);
  SUBCASE("ReLU'd gaussian with one huge outlier: clip well below the max") {
    auto v = randn({100000}, rng).to_vector();
    for (auto& e : v) e = std::max(e, 0.0f);
    v[500] = 100.0f;
    MseObserver o(4);
    o.observe(batch(v));
    CHECK(o.range_hi() == 100.0f);
    CHECK(o.lo() == 0.0f);
    CHECK(o.hi() < 50.0f);
    CHECK(o.ratio() < 0.5f);
    CHECK(o.error_at(o.ratio()) < o.error_at(1.0f));
  }
  SUBCASE("uniform on the 4-bit grid: exactly the max") {
    std::vector<float> v;
    for (int rep = 0; rep < 1000; ++rep)
      for (int k = 0; k <= 15; ++k) v.push_back(3.0f * static_cast<float>(k) / 15.0f);
    MseObserver o(4);
    o.observe(batch(v));
    CHECK(o.ratio() == 1.0f);
    CHECK(o.lo() == 0.0f);
    CHECK(o.hi() == 3.0f);
  }
  SUBCASE("continuous uniform: within half a step of the max (the MSE optimum is just below it)") {
    MseObserver o(4);
    o.observe(rand_uniform({200000}, rng, 0.0f, 2.0f));
    CHECK(o.ratio() >= 0.95f);
    CHECK(o.hi() >= 0.95f * o.range_hi());
  }
  SUBCASE("symmetric: a range centered on zero") {
    auto v = randn({50000}, rng).to_vector();
    v[0] = -60.0f;
    MseObserver o(4, 100, 0.3f, /*symmetric=*/true);
    o.observe(batch(v));
    CHECK(o.lo() == -o.hi());
    CHECK(o.hi() < 30.0f);
  }
  SUBCASE("cumulative across batches whose range grows") {
    MseObserver o(8);
    o.observe(rand_uniform({20000}, rng, 0.0f, 1.0f));
    o.observe(rand_uniform({20000}, rng, 0.0f, 4.0f));
    CHECK(o.range_hi() == doctest::Approx(4.0).epsilon(1e-3));
    CHECK(o.steps() == 2);
    CHECK(o.hi() > 3.5f);
  }
}

// The oracle: every candidate ratio of every channel quantized by the reference fake quantizer.
std::pair<std::vector<float>, std::vector<float>> brute_force_mse_ranges(const Tensor& w, int bits,
                                                                         bool symmetric, int candidates,
                                                                         float min_ratio) {
  const Tensor c = w.to_format(MemoryFormat::contiguous);
  const auto channels = w.size(0), inner = w.numel() / channels;
  std::vector<float> lo, hi;
  for (std::int64_t ch = 0; ch < channels; ++ch) {
    std::vector<float> v(c.f32() + ch * inner, c.f32() + (ch + 1) * inner);
    const float mn = *std::min_element(v.begin(), v.end()), mx = *std::max_element(v.begin(), v.end());
    const Tensor block = Tensor::from_vector({inner}, v);
    double best = INFINITY;
    float blo = mn, bhi = mx;
    for (int i = candidates - 1; i >= 0; --i) {
      const float r = i == candidates - 1
                          ? 1.0f
                          : static_cast<float>(min_ratio + (1.0 - min_ratio) * i / (candidates - 1));
      const auto q = ops::ref::fake_quant_per_tensor(block, r * mn, r * mx, {bits, symmetric}).to_vector();
      double err = 0;
      for (std::size_t k = 0; k < v.size(); ++k) err += (double(q[k]) - v[k]) * (double(q[k]) - v[k]);
      if (err < best * (1.0 - 1e-9)) {
        best = err;
        blo = r * mn;
        bhi = r * mx;
      }
    }
    lo.push_back(blo);
    hi.push_back(bhi);
  }
  return {lo, hi};
}

TEST_CASE("weight mse ranges: the reference search per channel, any layout; minmax otherwise") {
  Rng rng(5);
  SUBCASE("the brute-force search's ranges, bit for bit, in both layouts") {
    for (const int bits : {3, 4})
      for (const bool symmetric : {false, true}) {
        CAPTURE(bits);
        CAPTURE(symmetric);
        Tensor w = randn({24, 16, 3, 3}, rng, 0.0f, 0.1f);
        w.f32()[7] = 0.9f;            // an outlier in channel 0: worth clipping
        w.f32()[16 * 9 + 3] = -0.7f;  // and one in channel 1
        const auto [want_lo, want_hi] = brute_force_mse_ranges(w, bits, symmetric, 100, 0.3f);
        for (const auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
          const auto [lo, hi] = mse_channel_ranges(w.to_format(fmt), {bits, symmetric}, {100, 0.3f});
          CHECK(lo.to_vector() == want_lo);
          CHECK(hi.to_vector() == want_hi);
        }
        CHECK(want_hi[0] < 0.9f);  // the outliers really were clipped
        CHECK(want_lo[1] > -0.7f);
        QConfig cfg = QConfig::paper(bits, bits);
        const auto [mlo, mhi] = weight_channel_ranges(w, {bits, symmetric}, cfg);
        CHECK(mhi.f32()[0] == 0.9f);  // minmax: the raw range
        cfg.set("weight_observer=mse");
        CHECK(weight_channel_ranges(w, {bits, symmetric}, cfg).second.to_vector() == want_hi);
      }
  }
  SUBCASE("values already on a grid keep their full range") {
    std::vector<float> v;
    for (int k = 0; k < 64; ++k) v.push_back(0.1f * static_cast<float>(k % 8) - 0.3f);
    const auto [lo, hi] = mse_channel_ranges(Tensor::from_vector({2, 32}, v), {3, false}, {100, 0.3f});
    CHECK(lo.to_vector() == std::vector<float>{-0.3f, -0.3f});
    CHECK(hi.to_vector() == std::vector<float>{0.4f, 0.4f});
  }
  SUBCASE("bad input is refused by name") {
    Tensor w = randn({4, 8}, rng);
    CHECK(error_of([&] {
            mse_channel_ranges(w, {3, false}, {1, 0.3f});
          }).find("candidate") != std::string::npos);
    CHECK(error_of([&] {
            mse_channel_ranges(w, {3, false}, {10, 0.0f});
          }).find("min_ratio") != std::string::npos);
    w.f32()[9] = NAN;
    CHECK(error_of([&] {
            mse_channel_ranges(w, {3, false}, {10, 0.3f});
          }).find("channel 1") != std::string::npos);
  }
}

TEST_CASE("freeze stops updates until unfreeze; freeze_after freezes by itself") {
  MinMaxObserver o;
  o.observe(batch({1.0f}));
  o.freeze();
  CHECK(o.frozen());
  o.observe(batch({5.0f}));
  CHECK(o.hi() == 1.0f);
  CHECK(o.steps() == 1);
  o.unfreeze();
  o.observe(batch({5.0f}));
  CHECK(o.hi() == 5.0f);

  QConfig cfg = QConfig::paper();
  cfg.set("act_observer=gdfq_ema");
  cfg.set("freeze_after=3");
  auto g = make_observer(cfg, 4);
  CHECK(g->kind() == ObserverKind::gdfq_ema);
  for (int i = 0; i < 3; ++i) g->observe(batch({1.0f}));
  CHECK(g->frozen());
  const float hi = g->hi();
  g->observe(batch({100.0f}));
  CHECK(g->hi() == hi);
  CHECK(g->steps() == 3);
  g->reset();
  CHECK_FALSE(g->frozen());
  CHECK(g->steps() == 0);
  CHECK(g->hi() == 0.0f);
}

TEST_CASE("make_observer builds the configured kind") {
  QConfig cfg = QConfig::paper();
  for (const auto* name : {"minmax", "ema", "gdfq_ema", "mse"}) {
    cfg.set(std::string("act_observer=") + name);
    CHECK(std::string(to_string(make_observer(cfg, 4)->kind())) == name);
  }
  cfg.set("act_observer=mse");
  CHECK(dynamic_cast<MseObserver&>(*make_observer(cfg, 3)).bits() == 3);
  cfg.set("act_observer=ema");
  cfg.set("ema_momentum=0.5");
  CHECK(dynamic_cast<EmaObserver&>(*make_observer(cfg, 4)).momentum() == 0.5f);
}

TEST_CASE("observer state round-trips through state()/load_state()") {
  Rng rng(5);
  QConfig cfg = QConfig::paper();
  for (const auto* name : {"minmax", "ema", "gdfq_ema", "mse"}) {
    CAPTURE(name);
    cfg.set(std::string("act_observer=") + name);
    auto a = make_observer(cfg, 4);
    a->observe(randn({1000}, rng));
    a->observe(randn({1000}, rng, 0.5f, 2.0f));
    a->freeze();
    auto b = make_observer(cfg, 4);
    b->load_state(a->state());
    CHECK(b->lo() == a->lo());
    CHECK(b->hi() == a->hi());
    CHECK(b->steps() == 2);
    CHECK(b->frozen());
    CHECK(b->state() == a->state());
    // Both continue identically.
    const Tensor next = randn({1000}, rng, 0.0f, 3.0f);
    a->unfreeze();
    b->unfreeze();
    a->observe(next);
    b->observe(next);
    CHECK(b->lo() == doctest::Approx(a->lo()).epsilon(1e-6));
    CHECK(b->hi() == doctest::Approx(a->hi()).epsilon(1e-6));
  }
  MinMaxObserver m;
  GdfqEmaObserver g;
  CHECK_THROWS_WITH_AS(m.load_state(g.state()), doctest::Contains("minmax"), Error);
  CHECK_THROWS_WITH_AS(g.load_state({2.0f, 0.0f}), doctest::Contains("gdfq_ema"), Error);
}
