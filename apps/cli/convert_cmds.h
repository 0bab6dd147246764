// `mixtral quantize IN.gguf OUT.gguf TYPE` and `mixtral convert DIR -o OUT.gguf [--type TYPE]`.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>

namespace mixtral::cli {

// Registers the quantize and convert subcommands on `app` (before app.parse()). After parsing, call the
// returned function: it runs whichever of them was chosen and returns its exit status (0 ok, 1 data
// error, 2 usage error), or nullopt when neither was.
std::function<std::optional<int>()> add_convert_commands(CLI::App& app);

}  // namespace mixtral::cli
