// libFuzzer target: arbitrary bytes as a JSON Schema through the schema compiler, then the emitted GBNF
// through parse_gbnf and a matcher. A refusal is the compiler's error channel; a finding is a crash, a
// sanitizer report, an uncaught exception, or emitted GBNF that is malformed (a syntax error rather than
// a limit or a left-recursive $ref cycle, which parse_gbnf reports as such).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"
#include "grammar/grammar.h"
#include "grammar/json_schema.h"

namespace {

bool is_limit_or_semantic(const std::string& m) {
  for (const char* ok : {"max_rules", "max_nesting", "max_text_bytes", "too large", "repetition count above",
                         "left recursion", "matches no text"})
    if (m.find(ok) != std::string::npos) return true;
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* text = reinterpret_cast<const char*>(data);
  const nlohmann::json schema = nlohmann::json::parse(text, text + size, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return 0;
  mixtral::grammar::SchemaOptions opts;
  opts.max_rules = 2000;
  opts.max_depth = 24;
  opts.strict = size % 2 == 1;
  auto gbnf = mixtral::grammar::json_schema_to_gbnf(schema, opts);
  if (!gbnf.ok()) {
    mixtral::fuzz::require(!gbnf.error().message.empty(), "a refusal without a message");
    return 0;
  }
  auto g = mixtral::grammar::parse_gbnf(*gbnf);
  if (!g.ok()) {
    mixtral::fuzz::require(is_limit_or_semantic(g.error().message), "the compiler emitted malformed GBNF");
    return 0;
  }
  // A few bytes through a matcher: no crash, and all-or-nothing advances.
  mixtral::grammar::Matcher m(*g);
  for (const char* probe : {"{", "\"", "[", "1", "n", "t", "-", " ", "}", "]"}) {
    mixtral::grammar::Matcher copy = m;
    if (copy.advance_bytes(probe)) m = copy;
  }
  (void)m.can_end();
  return 0;
}
