// Small helpers shared by the CLI's subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mixtral/engine.h"
#include "mixtral/result.h"
#include "mixtral/tokenizer.h"

namespace mixtral::cli {

// Prints "mixtral: error: MESSAGE" and returns the error's exit status (1 data, 2 usage).
int fail(const Error& e);
// "1,2,3" (spaces allowed) -> ids; an Error naming the flag on anything else.
Result<std::vector<int32_t>> parse_ids(const std::string& text, const char* flag);
// The whole of a text file; errors name the flag and the path.
Result<std::string> read_text_file(const std::string& path, const char* flag);
// ids -> "[1,2,3]"
std::string json_ids(const std::vector<int32_t>& ids);
// User text quoted in a one-line message: control characters escaped, long text shortened.
std::string quote_text(const std::string& s);

// --cache-type f32|f16|q8_0 on `app` into *t (its value stays the default when the flag is not given).
// Another name is a parse error naming the flag (exit 2).
void add_cache_type_option(CLI::App* app, KvCacheType* t);
// The sampling flags of `run` and `chat` into *go (their defaults are go's values): --temp, --top-k, --top-p,
// --seed, --min-p, --repeat-penalty, --presence-penalty, --frequency-penalty and --logit-bias ID=BIAS
// (repeatable). Out-of-range values and malformed biases are parse errors naming the flag (exit 2).
void add_sampling_options(CLI::App* app, GenerateOptions* go);
// --logit-bias ids must lie in the model's vocabulary: a usage error naming the flag otherwise.
Status check_logit_bias(const GenerateOptions& go, int64_t vocab);

// The engine and the tokenizer of the same model; the tokenizer must not exceed the model's vocabulary.
struct Loaded {
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Engine> engine;
};
Result<Loaded> load_model(const EngineOptions& eo);

}  // namespace mixtral::cli
