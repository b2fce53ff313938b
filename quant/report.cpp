#include "quant/report.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "engine/autograd.h"

namespace zsq::quant {

double sqnr_db(const Tensor& reference, const Tensor& got) {
  ZSQ_CHECK(reference.shape() == got.shape(), "sqnr: {} vs {}", reference.str(), got.str());
  const auto r = reference.to_vector(), g = got.to_vector();
  double signal = 0.0, noise = 0.0;
  for (std::size_t i = 0; i < r.size(); ++i) {
    signal += static_cast<double>(r[i]) * r[i];
    noise += (static_cast<double>(r[i]) - g[i]) * (static_cast<double>(r[i]) - g[i]);
  }
  if (noise == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

double cosine_similarity(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double dot = 0.0, nx = 0.0, ny = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    dot += static_cast<double>(x[i]) * y[i];
    nx += static_cast<double>(x[i]) * x[i];
    ny += static_cast<double>(y[i]) * y[i];
  }
  return nx > 0 && ny > 0 ? dot / std::sqrt(nx * ny) : (nx == ny ? 1.0 : 0.0);
}

namespace {

// Runs `model` on `inputs` and returns the output of every post-ReLU ConvBnAct unit by path, after
// whatever quantizer the unit already has.
std::map<std::string, Tensor> capture(models::Classifier& model, const Tensor& inputs, Tensor& logits) {
  std::map<std::string, Tensor> seen;
  std::vector<std::pair<models::ConvBnAct*, models::TensorTransform>> saved;
  model.for_each_descendant([&](const std::string& path, Module& m) {
    if (auto* unit = dynamic_cast<models::ConvBnAct*>(&m)) {
      saved.emplace_back(unit, unit->output_quantizer);
      auto inner = unit->output_quantizer;
      unit->output_quantizer = [&seen, path, inner](const Tensor& a) {
        Tensor y = inner ? inner(a) : a;
        seen[path] = y.detach();
        return y;
      };
    }
  });
  const bool was_training = model.is_training();
  model.eval();
  {
    NoGrad no_grad;
    logits = model.forward(inputs);
  }
  model.train(was_training);
  for (auto& [unit, q] : saved) unit->output_quantizer = q;
  return seen;
}

double finite_or(double v, double cap) {
  return std::isfinite(v) ? v : cap;
}
}  // namespace

nlohmann::json analyze_layers(Student& student, models::Classifier& teacher, const Tensor& inputs) {
  const Phase phase = student.phase();
  student.set_phase(Phase::quantized);
  // Ranges must not move while we measure.
  std::vector<bool> was_frozen;
  for (auto& s : student.activation_sites()) was_frozen.push_back(s.observer->frozen());
  student.freeze_ranges();
  Tensor t_logits, s_logits;
  auto t_acts = capture(teacher, inputs, t_logits);
  auto s_acts = capture(student.model(), inputs, s_logits);
  for (std::size_t i = 0; i < was_frozen.size(); ++i)
    if (!was_frozen[i]) student.activation_sites()[i].observer->unfreeze();
  student.set_phase(phase);

  std::map<std::string, const ActivationSite*> sites;
  for (const auto* s : student.used_activation_sites()) sites[s->name] = s;
  nlohmann::json rows = nlohmann::json::array();
  for (auto& w : student.weight_sites()) {
    nlohmann::json row{{"layer", w.name}, {"shape", w.weight.shape()}, {"weight_bits", w.bits}};
    {
      NoGrad no_grad;
      row["weight_sqnr_db"] = finite_or(sqnr_db(w.weight, (*w.hook)(w.weight)), 999.0);
    }
    // A conv inside a ConvBnAct unit "a.b.conv" owns the unit's activation site "a.b".
    const auto dot = w.name.rfind('.');
    const std::string unit = dot == std::string::npos ? "" : w.name.substr(0, dot);
    auto it = sites.find(unit);
    if (it != sites.end() && t_acts.count(unit) && s_acts.count(unit)) {
      const auto* s = it->second;
      row["act_site"] = unit;
      row["act_bits"] = s->bits;
      const auto [lo, hi] = student.activation_range(*s);
      row["act_range"] = {lo, hi};
      row["act_sqnr_db"] = finite_or(sqnr_db(t_acts[unit], s_acts[unit]), 999.0);
      row["act_cosine"] = cosine_similarity(t_acts[unit], s_acts[unit]);
    }
    rows.push_back(row);
  }
  rows.push_back({{"layer", "logits"},
                  {"act_sqnr_db", finite_or(sqnr_db(t_logits, s_logits), 999.0)},
                  {"act_cosine", cosine_similarity(t_logits, s_logits)}});
  return rows;
}

void write_report(const std::string& dir, const nlohmann::json& report) {
  std::filesystem::create_directories(dir);
  auto write_atomic = [](const std::filesystem::path& path, const std::string& text) {
    const auto tmp = path.string() + ".tmp";
    {
      std::ofstream f(tmp);
      ZSQ_CHECK(f.good(), "cannot write {}", tmp);
      f << text;
      ZSQ_CHECK(f.good(), "error writing {}", tmp);
    }
    std::filesystem::rename(tmp, path);
  };
  write_atomic(std::filesystem::path(dir) / "report.json", report.dump(2) + "\n");
  write_atomic(std::filesystem::path(dir) / "report.md", render_report_markdown(report));
}

nlohmann::json read_report(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "report.json";
  std::ifstream f(path);
  ZSQ_CHECK(f.good(), "{}: cannot open (is {} a zsq quantize run directory?)", path.string(), dir);
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

namespace {
std::string num(const nlohmann::json& j, const char* key, const char* fmt_spec = "{:.2f}") {
  if (!j.contains(key) || j[key].is_null()) return "";
  return fmt::format(fmt::runtime(fmt_spec), j[key].get<double>());
}

// A research run (--eval-data) looked at the test set after every epoch; the report says so first,
// because a best-epoch figure chosen on test data is optimistic and such a run is not zero-shot.
std::string render_research_mode(const nlohmann::json& m) {
  std::string md = fmt::format(
      "> **Research mode: test set evaluated every epoch (--eval-data {}); best epoch {} acc {:.2f}%; last "
      "epoch acc {:.2f}%.** The best epoch is selected on test data (optimistic, as the reference code "
      "reports); the last-epoch figure is the honest one. Zero-shot runs never evaluate during "
      "training.\n\n",
      m.value("eval_data", std::string("?")), m.value("best_epoch", 0), 100.0 * m.value("best_accuracy", 0.0),
      100.0 * m.value("last_accuracy", 0.0));
  md += "| epoch | test top-1 % |\n|---|---|\n";
  for (const auto& row : m.value("epochs", nlohmann::json::array()))
    md += fmt::format("| {} | {:.2f} |\n", row.value("epoch", 0), 100.0 * row.value("accuracy", 0.0));
  return md + "\n";
}
}  // namespace

std::string render_report_markdown(const nlohmann::json& r) {
  std::string md = fmt::format("# zsq quantization report: {}\n\n", r.value("run", std::string("run")));
  if (r.contains("research_mode")) md += render_research_mode(r["research_mode"]);
  md += "| field | value |\n|---|---|\n";
  for (const char* key : {"method", "teacher", "convention", "weight_bits", "act_bits", "seed", "threads",
                          "conv_algorithm", "synthetic_inputs", "seconds", "zsq_version", "cpu"})
    if (r.contains(key))
      md += fmt::format("| {} | {} |\n", key, r[key].is_string() ? r[key].get<std::string>() : r[key].dump());
  if (r.contains("losses")) md += fmt::format("| losses | {} |\n", r["losses"].dump());
  if (r.contains("method_options"))
    md += fmt::format("| method options | {} |\n", r["method_options"].dump());
  if (r.contains("accuracy")) {
    md += "\n## Test accuracy (zsq eval --report)\n\n| model | top-1 % | n |\n|---|---|---|\n";
    for (const auto& row : r["accuracy"])
      md += fmt::format("| {} | {:.2f} | {} |\n", row.value("model", std::string()),
                        100.0 * row.value("accuracy", 0.0), row.value("n", 0));
  }
  md +=
      "\n## Per-layer table\n\nSQNR in dB against full precision; activation columns are cumulative "
      "(measured on the "
      "method's own synthetic inputs";
  md += r.contains("layers_test") ? "; the test-image columns come from `zsq eval --report`).\n\n" : ").\n\n";
  const bool test = r.contains("layers_test");
  md += "| layer | W bits | weight SQNR | A bits | act range | act SQNR | cosine |";
  md += test ? " act SQNR (test) | cosine (test) |\n|---|---|---|---|---|---|---|---|---|\n"
             : "\n|---|---|---|---|---|---|---|\n";
  std::map<std::string, nlohmann::json> by_layer;
  if (test)
    for (const auto& row : r["layers_test"]) by_layer[row.value("layer", std::string())] = row;
  for (const auto& row : r.value("layers", nlohmann::json::array())) {
    const std::string layer = row.value("layer", std::string());
    std::string range;
    if (row.contains("act_range"))
      range = fmt::format("[{:.3g}, {:.3g}]", row["act_range"][0].get<double>(),
                          row["act_range"][1].get<double>());
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |", layer,
                      row.contains("weight_bits") ? row["weight_bits"].dump() : "",
                      num(row, "weight_sqnr_db", "{:.1f}"),
                      row.contains("act_bits") ? row["act_bits"].dump() : "", range,
                      num(row, "act_sqnr_db", "{:.1f}"), num(row, "act_cosine", "{:.4f}"));
    if (test) {
      const auto& t = by_layer[layer];
      md += fmt::format(" {} | {} |", num(t, "act_sqnr_db", "{:.1f}"), num(t, "act_cosine", "{:.4f}"));
    }
    md += "\n";
  }
  if (r.contains("config")) md += "\n## Quantization config\n\n```json\n" + r["config"].dump(2) + "\n```\n";
  return md;
}

}  // namespace zsq::quant
