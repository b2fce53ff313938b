#include "quant/methods/method_options.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

#include "engine/check.h"

namespace zsq::quant {

namespace {
std::string names(const std::vector<OptionField>& fields) {
  std::string out;
  for (const auto& f : fields) out += (out.empty() ? "" : ", ") + f.name;
  return out;
}

template <typename T>
T parse_number(const std::string& text, const std::string& what) {
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  ZSQ_CHECK(!text.empty() && ec == std::errc() && ptr == end, "{}: '{}' is not a valid {}", what, text,
            std::is_floating_point_v<T> ? "number" : "integer");
  return value;
}

nlohmann::json value_json(const OptionField& f) {
  return std::visit(
      [](auto* p) {
        // A float goes out as its shortest decimal (1e-4, not 9.999999747378752e-05).
        if constexpr (std::is_same_v<std::remove_pointer_t<decltype(p)>, float>)
          return nlohmann::json(std::stod(fmt::format("{}", *p)));
        else
          return nlohmann::json(*p);
      },
      f.target);
}
}  // namespace

void set_option(const std::vector<OptionField>& fields, const std::string& key_equals_value,
                const std::string& method) {
  const auto eq = key_equals_value.find('=');
  ZSQ_CHECK(eq != std::string::npos && eq > 0, "--opt '{}': expected KEY=VALUE (keys of {}: {})",
            key_equals_value, method, names(fields));
  const std::string key = key_equals_value.substr(0, eq), text = key_equals_value.substr(eq + 1);
  auto field =
      std::find_if(fields.begin(), fields.end(), [&](const OptionField& f) { return f.name == key; });
  ZSQ_CHECK(field != fields.end(), "--opt {}: {} has no option '{}' (options: {})", key_equals_value, method,
            key, names(fields));
  const std::string what = fmt::format("--opt {} ({})", key, method);
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, float>) {
          const float v = parse_number<float>(text, what);
          ZSQ_CHECK(std::isfinite(v) && v >= 0.0f, "{}: must be a finite number >= 0, got {}", what, text);
          *p = v;
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          *p = parse_number<std::int64_t>(text, what);
        } else if constexpr (std::is_same_v<T, bool>) {
          ZSQ_CHECK(text == "true" || text == "false" || text == "1" || text == "0",
                    "{}: expected true or false, got '{}'", what, text);
          *p = text == "true" || text == "1";
        } else if constexpr (std::is_same_v<T, std::string>) {
          ZSQ_CHECK(field->choices.empty() ||
                        std::find(field->choices.begin(), field->choices.end(), text) != field->choices.end(),
                    "{}: '{}' is not one of {}", what, text, fmt::join(field->choices, ", "));
          *p = text;
        } else {
          p->clear();
          if (text.empty() || text == "none") return;
          std::stringstream items(text);
          for (std::string item; std::getline(items, item, ',');) {
            p->push_back(parse_number<std::int64_t>(item, what));
            ZSQ_CHECK(p->back() >= 0 && (p->size() < 2 || p->back() > (*p)[p->size() - 2]),
                      "{}: expected increasing non-negative integers, got '{}'", what, text);
          }
        }
      },
      field->target);
}

nlohmann::json options_to_json(const std::vector<OptionField>& fields) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& f : fields) out[f.name] = value_json(f);
  return out;
}

std::string options_help(const std::vector<OptionField>& fields) {
  std::string out;
  for (const auto& f : fields)
    out += fmt::format("  {:<22} {} (default {})\n", f.name, f.help, value_json(f).dump());
  return out;
}

}  // namespace zsq::quant
