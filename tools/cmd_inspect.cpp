// zsq inspect FILE: architecture, metadata and every tensor's name, shape and dtype.
#include "engine/checkpoint.h"
#include "tools/commands.h"

namespace zsq::cli {

void add_inspect_command(CLI::App& app) {
  auto file = std::make_shared<std::string>();
  auto common = std::make_shared<CommonOptions>();
  auto* verb = app.add_subcommand("inspect", "List a checkpoint's architecture, metadata and tensors");
  verb->add_option("FILE", *file, "Checkpoint (.safetensors)")->required();
  add_common_options(verb, *common);
  verb->callback([file, common] {
    apply_common_options(*common);
    const Checkpoint ckpt = load_checkpoint(*file);
    auto meta = [&](const char* key) {
      auto it = ckpt.metadata.find(key);
      return it == ckpt.metadata.end() ? std::string("-") : it->second;
    };
    fmt::print("file:         {}\narchitecture: {}\nconfig:       {}\n", *file, meta("zsq.arch"),
               meta("zsq.config"));
    for (const auto& [key, value] : ckpt.metadata)
      if (key != "zsq.arch" && key != "zsq.config") fmt::print("{:<13} {}\n", key + ":", value);
    std::int64_t total = 0;
    std::size_t width = 4;
    for (const auto& [name, t] : ckpt.tensors) width = std::max(width, name.size());
    fmt::print("\n{:<{}}  {:<5} {}\n", "name", width, "dtype", "shape");
    for (const auto& [name, t] : ckpt.tensors) {
      fmt::print("{:<{}}  {:<5} {}\n", name, width, dtype_name(t.dtype()), shape_str(t.shape()));
      total += t.numel();
    }
    fmt::print("\n{} tensors, {} values\n", ckpt.tensors.size(), total);
  });
}

}  // namespace zsq::cli
