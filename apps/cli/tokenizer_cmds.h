// `mixtral tokenize`, `mixtral detokenize`, `mixtral chat`, and text prompts for `mixtral run`.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

#include "mixtral/engine.h"

namespace mixtral::cli {

// Registers the tokenize, detokenize and chat subcommands on `app` (before app.parse()). After parsing,
// call the returned function: it runs whichever of them was chosen and returns its exit status (0 ok,
// 1 data error, 2 usage error), or nullopt when none of them was.
std::function<std::optional<int>()> add_tokenizer_commands(CLI::App& app);

// `mixtral run --prompt TEXT`: encodes the prompt with the model's own tokenizer (BOS as the file says,
// special tokens not parsed), generates, and streams the continuation as text (or, with ids_only, prints
// the generated ids as one JSON array). Returns the exit status.
int run_text_prompt(const EngineOptions& eo, const std::string& prompt, const GenerateOptions& go,
                    bool ids_only);

}  // namespace mixtral::cli
