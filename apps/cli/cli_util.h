// Small helpers shared by the CLI's subcommands.
#pragma once

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

// The engine and the tokenizer of the same model; the tokenizer must not exceed the model's vocabulary.
struct Loaded {
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Engine> engine;
};
Result<Loaded> load_model(const EngineOptions& eo);

}  // namespace mixtral::cli
