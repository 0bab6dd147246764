// `mixtral imatrix --model FILE --text-file TEXT [--ctx N] -o OUT`: an importance matrix in llama.cpp's GGUF
// imatrix format (src/io/imatrix.h), the statistic llama-imatrix collects.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>

namespace mixtral::cli {

// Registers the imatrix subcommand on `app` (before app.parse()). After parsing, call the returned function:
// it runs the command when it was chosen and returns its exit status (0 ok, 1 data error, 2 usage error),
// or nullopt when it was not.
std::function<std::optional<int>()> add_imatrix_command(CLI::App& app);

}  // namespace mixtral::cli
