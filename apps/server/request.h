// Request bodies of the OpenAI-style endpoints, parsed and validated (pure: no engine, no tokenizer).
// Every field a client may send is either honoured or refused with a 400 naming it (BadRequest::param);
// the accepted fields of each endpoint are listed in request.cpp (kChatFields, kCompletionFields) and
// responses.cpp (kResponsesFields), and documented in docs/agents.md.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mixtral/server_engine.h"
#include "mixtral/tokenizer.h"

namespace mixtral::server {

// A 400 naming the offending field (OpenAI's error.param, e.g. "messages[2].tool_call_id").
struct BadRequest {
  std::string message, param;
};

// What the answer is constrained to, besides tool calls.
struct OutputFormat {
  enum class Kind { kText, kJsonObject, kJsonSchema, kGrammar } kind = Kind::kText;
  nlohmann::ordered_json schema;  // kJsonSchema
  bool strict = false;            // kJsonSchema: OpenAI's strict (additionalProperties false by default)
  std::string gbnf;               // kGrammar: llama.cpp's `grammar` field
  std::string param;  // the field that set it ("response_format", "json_schema", "grammar", "text")
};

struct Tool {
  ToolSpec spec;                  // name, description, parameters (JSON text)
  nlohmann::ordered_json schema;  // parameters, parsed
  bool strict = false;            // OpenAI's per-function strict
  std::string param;              // "tools[3]" (errors in its schema name "tools[3].function.parameters")
  std::string schema_param;       // the parameters' own param path
};

struct ToolChoice {
  enum class Kind { kAuto, kNone, kRequired, kNamed } kind = Kind::kAuto;
  std::string name;  // kNamed
};

struct GenRequest {
  bool chat = true;  // chat (messages) or legacy completions (prompt)
  std::string model;
  std::vector<ChatMessage> messages;
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  std::optional<int64_t> max_tokens;
  std::string max_tokens_param = "max_tokens";  // the field that set max_tokens
  CompletionParams params;                      // sampling; prompt and grammar filled by the server
  std::vector<std::string> stop;
  bool logprobs = false;
  int top_logprobs = 0;
  bool stream = false, include_usage = false;
  int n = 1;  // choices, 1..kMaxChoices
  OutputFormat format;
  std::vector<Tool> tools;
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
};

inline constexpr int kMaxChoices = 8;
inline constexpr size_t kMaxTools = 128;

// Body of POST /v1/chat/completions and /v1/completions. ctx: positions per sequence (max_tokens bound).
// Throws BadRequest.
GenRequest parse_chat_request(const nlohmann::ordered_json& body, int64_t ctx);
GenRequest parse_completion_request(const nlohmann::ordered_json& body, int64_t ctx);

// ---- Pieces shared with the Responses API (responses.cpp) ----

bool present(const nlohmann::ordered_json& b, const char* k);
// Every non-null key of `obj` must be in `allowed`; else a 400 naming `prefix + key`.
void check_fields(const nlohmann::ordered_json& obj, const std::vector<const char*>& allowed,
                  const std::string& prefix);
double get_number(const nlohmann::ordered_json& b, const char* k, double lo, double hi, double def,
                  const std::string& prefix = "");
int64_t get_int(const nlohmann::ordered_json& b, const char* k, int64_t lo, int64_t hi, int64_t def,
                const std::string& prefix = "");
bool get_bool(const nlohmann::ordered_json& b, const char* k, bool def, const std::string& prefix = "");
std::string get_string(const nlohmann::ordered_json& b, const char* k, const std::string& prefix = "");
// Text of a message content: a string or an array of parts whose type is one of `part_types`.
std::string content_text(const nlohmann::ordered_json& c, const std::string& param,
                         std::initializer_list<const char*> part_types = {"text"});
// A function name as OpenAI allows it: [a-zA-Z0-9_-]{1,64}.
bool valid_function_name(const std::string& s);
// A JSON Schema object from a request (object or boolean); `param` names it in errors.
nlohmann::ordered_json schema_field(const nlohmann::ordered_json& v, const std::string& param);
// The tools array: chat's {"type": "function", "function": {...}} or the Responses API's flat
// {"type": "function", "name", ...} (whose strict defaults to true). At most kMaxTools.
enum class ToolLayout { kChat, kResponses };
std::vector<Tool> parse_tools(const nlohmann::ordered_json& body, ToolLayout layout);
// One tool definition (its function object: name, description, parameters, strict).
Tool parse_function(const nlohmann::ordered_json& fn, const std::string& param, bool default_strict);
// tool_choice: "none" | "auto" | "required" | {"type":"function", "function":{"name"}} (chat) or
// {"type":"function","name"} (responses). Unknown names -> 400 "tool_choice".
ToolChoice parse_tool_choice(const nlohmann::ordered_json& v, const std::vector<Tool>& tools);
// Sampling fields common to every endpoint (temperature, top_p, top_k, min_p, penalties, seed).
void parse_sampling(const nlohmann::ordered_json& b, CompletionParams& cp);
// logit_bias's token ids against the model's vocabulary (parsing checked their form and the values).
void check_logit_bias_ids(const CompletionParams& p, int64_t n_vocab);
// Cross-field checks once format, tools and tool_choice are known.
void check_format_and_tools(const GenRequest& r);

}  // namespace mixtral::server
