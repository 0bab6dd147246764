// JSON Schema (draft 2020-12 and draft-07 spellings) -> GBNF text for grammar::parse_gbnf. The grammar
// accepts exactly the JSON texts (in the whitespace layout documented in json_schema.cpp) whose value is
// valid against the schema. A constraining keyword that is not enforced is an error naming the keyword and
// its JSON pointer inside the schema; annotations (title, description, default, examples, $schema, $id,
// $comment, deprecated, readOnly, writeOnly, ...) are accepted.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "io/ordered_json.h"
#include "mixtral/result.h"

namespace mixtral::grammar {

struct SchemaOptions {
  bool strict = false;  // OpenAI's strict: additionalProperties defaults to false (else true, as the spec)
  int max_depth = 64;   // nesting of subschemas
  size_t max_rules = 10000;
};

// Collects the rules of one or more schemas (and any other rules) into one GBNF text.
class GbnfBuilder {
 public:
  GbnfBuilder();
  ~GbnfBuilder();
  // Adds the rules for a JSON value valid against `schema`; returns the rule's name. Rule names get
  // `prefix` so several schemas (e.g. one per tool) share one grammar. Errors: Error::data with a message
  // "<pointer>: <what>", e.g. "/properties/a/patternProperties: keyword 'patternProperties' is not
  // supported". The schema is an ordered_json so its members keep the order they were written in: properties
  // are written in the schema's order (a nlohmann::json converts implicitly, with its keys sorted).
  Result<std::string> add_schema(const nlohmann::ordered_json& schema, std::string_view prefix,
                                 const SchemaOptions& opts = {});
  // Rules of any JSON value / JSON object (json_object mode), shared.
  std::string any_value();
  std::string any_object();
  // Adds a rule of the caller's (GBNF body text); returns its (unique) name built from `name`.
  std::string add_rule(std::string_view name, std::string_view body);
  // A GBNF literal for the given bytes ("..." with escapes).
  static std::string literal(std::string_view bytes);
  // The whole grammar, with root ::= root_body.
  std::string gbnf(std::string_view root_body) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One schema as a whole grammar (root = a value valid against it).
Result<std::string> json_schema_to_gbnf(const nlohmann::ordered_json& schema, const SchemaOptions& opts = {});

}  // namespace mixtral::grammar
