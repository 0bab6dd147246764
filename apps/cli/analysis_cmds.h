// `mixtral perplexity`, `mixtral route`, `score --routing-out`, and the built-in model of `mixtral run`.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mixtral/engine.h"

namespace mixtral::cli {

// Registers the perplexity and route subcommands on `app` (before app.parse()). After parsing, call the
// returned function: it runs whichever was chosen and returns its exit status (0 ok, 1 data error, 2 usage
// error), or nullopt when neither was.
std::function<std::optional<int>()> add_analysis_commands(CLI::App& app);

// The built-in model (models/tiny-kjv.gguf), for `mixtral run` without --model. Looked up, first found wins:
//   1. $MIXTRAL_BUILTIN_MODEL (the path itself; an error when that file does not exist),
//   2. beside the executable: <exe dir>/tiny-kjv.gguf, <exe dir>/../share/mixtral/tiny-kjv.gguf,
//   3. the source tree this binary was built from: <MIXTRAL_SOURCE_DIR>/models/tiny-kjv.gguf.
// The error names every place looked at.
Result<std::string> builtin_model_path();

// `score --routing-out FILE.json`: {"tokens": [...], "n_layers": L, "k": K, "routing": [{"layer", "pos",
// "experts", "weights"}, ...]} with experts by decreasing router weight.
Status write_routing_json(const std::string& path, const std::vector<int32_t>& tokens, int64_t n_layers,
                          const std::vector<RoutingRecord>& routing);

}  // namespace mixtral::cli
