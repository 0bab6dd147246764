#include "request.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "grammar/json_schema.h"

namespace mixtral::server {

using json = nlohmann::ordered_json;

namespace {

// Fields of POST /v1/chat/completions. Everything here changes the answer and is honoured, except the
// metadata fields marked (*), which by definition have no effect on what is generated: `user` (an end-user
// id for abuse tracking), `metadata` (tags stored with the completion), `store` (OpenAI's storage for
// distillation: nothing is ever stored here), `service_tier` (auto/default only: one tier here),
// `prompt_cache_key` and `safety_identifier` (routing hints). A null value counts as absent for every field.
const std::vector<const char*> kChatFields = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "n", "ignore_eos", "stop",
    "logprobs", "top_logprobs", "stream", "stream_options", "response_format", "json_schema", "grammar",
    "tools", "tool_choice", "parallel_tool_calls", "logit_bias",
    // (*) metadata
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"};

const std::vector<const char*> kCompletionFields = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "seed", "n", "ignore_eos", "stop", "logprobs", "stream",
    "stream_options", "response_format", "json_schema", "grammar", "echo", "best_of", "suffix", "logit_bias",
    // (*) metadata
    "user", "metadata", "store", "service_tier"};

// Keys of a chat message. `refusal`, `annotations`, `parsed` and `audio` are fields of the assistant
// message this server (or OpenAI) answered with: clients append that message to the history as is
// (openai's chat.completions.parse adds `parsed`), so they are accepted and ignored — they are a copy of
// what `content` already says, or empty.
const std::vector<const char*> kMessageFields = {
    "role", "content", "name", "tool_calls", "tool_call_id", "refusal", "annotations", "parsed", "audio"};

std::string quoted(const std::string& k) {
  return "'" + k + "'";
}

void check_metadata(const json& b) {
  if (present(b, "metadata") && !b["metadata"].is_object())
    throw BadRequest{"'metadata' must be an object", "metadata"};
  if (present(b, "user") && !b["user"].is_string()) throw BadRequest{"'user' must be a string", "user"};
  if (present(b, "store") && !b["store"].is_boolean()) throw BadRequest{"'store' must be a boolean", "store"};
  if (present(b, "service_tier")) {
    const json& s = b["service_tier"];
    if (!s.is_string() || (s != "auto" && s != "default"))
      throw BadRequest{"'service_tier' must be \"auto\" or \"default\" (one tier here)", "service_tier"};
  }
  for (const char* k : {"prompt_cache_key", "safety_identifier"})
    if (present(b, k) && !b[k].is_string()) throw BadRequest{quoted(k) + " must be a string", k};
}

// OpenAI's logit_bias: {"<token id>": bias in [-100, 100], ...}, the id in decimal digits. The ids' range
// is checked against the vocabulary by check_logit_bias_ids.
std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& b) {
  std::vector<std::pair<int32_t, float>> out;
  if (!present(b, "logit_bias")) return out;
  const json& lb = b["logit_bias"];
  if (!lb.is_object())
    throw BadRequest{"'logit_bias' must be an object of token ids to numbers in [-100, 100]", "logit_bias"};
  std::set<int32_t> seen;
  for (auto it = lb.begin(); it != lb.end(); ++it) {
    const std::string& k = it.key();
    int64_t id = 0;
    bool ok = !k.empty() && k.size() <= 10;
    for (char c : k) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) id = id * 10 + (c - '0');
    }
    if (!ok || id > INT32_MAX)
      throw BadRequest{"'logit_bias' keys must be token ids (decimal integers), not '" + k + "'",
                       "logit_bias"};
    if (!seen.insert(static_cast<int32_t>(id)).second)
      throw BadRequest{"'logit_bias' names token " + std::to_string(id) + " twice", "logit_bias"};
    if (!it->is_number() || !(it->get<double>() >= -100 && it->get<double>() <= 100))
      throw BadRequest{"'logit_bias' values must be numbers in [-100, 100] (token " + k + ")", "logit_bias"};
    out.emplace_back(static_cast<int32_t>(id), it->get<float>());
  }
  return out;
}

std::vector<std::string> parse_stop(const json& b) {
  std::vector<std::string> stop;
  if (!present(b, "stop")) return stop;
  const json& s = b["stop"];
  if (s.is_string()) {
    stop.push_back(s.get<std::string>());
  } else if (s.is_array() && s.size() <= 4 &&
             std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); })) {
    for (const auto& x : s) stop.push_back(x.get<std::string>());
  } else {
    throw BadRequest{"'stop' must be a string or a list of at most 4 strings", "stop"};
  }
  for (const auto& x : stop)
    if (x.empty()) throw BadRequest{"'stop' strings must not be empty", "stop"};
  return stop;
}

void parse_max_tokens(const json& b, GenRequest& r, int64_t ctx, bool chat) {
  if (chat && present(b, "max_completion_tokens")) {
    r.max_tokens = get_int(b, "max_completion_tokens", 1, INT64_MAX, 0);
    r.max_tokens_param = "max_completion_tokens";
  } else if (present(b, "max_tokens")) {
    r.max_tokens = get_int(b, "max_tokens", 1, INT64_MAX, 0);
  }
  if (r.max_tokens && *r.max_tokens >= ctx)
    throw BadRequest{
        "the maximum number of tokens is " + std::to_string(ctx) + " (--ctx-size) including the prompt",
        r.max_tokens_param};
}

void parse_stream(const json& b, GenRequest& r) {
  r.stream = get_bool(b, "stream", false);
  if (present(b, "stream_options")) {
    const json& so = b["stream_options"];
    if (!so.is_object()) throw BadRequest{"'stream_options' must be an object", "stream_options"};
    if (!r.stream) throw BadRequest{"'stream_options' is only allowed with 'stream': true", "stream_options"};
    check_fields(so, {"include_usage"}, "stream_options.");
    r.include_usage = get_bool(so, "include_usage", false, "stream_options.");
  }
}

// response_format, and llama.cpp's json_schema and grammar fields.
OutputFormat parse_format(const json& b) {
  OutputFormat f;
  int set = 0;
  if (present(b, "response_format")) {
    const json& rf = b["response_format"];
    if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string())
      throw BadRequest{"'response_format' must be an object with a string 'type'", "response_format"};
    const std::string type = rf["type"].get<std::string>();
    f.param = "response_format";
    if (type == "text") {
      check_fields(rf, {"type"}, "response_format.");
    } else if (type == "json_object") {
      check_fields(rf, {"type"}, "response_format.");
      f.kind = OutputFormat::Kind::kJsonObject;
      ++set;
    } else if (type == "json_schema") {
      check_fields(rf, {"type", "json_schema"}, "response_format.");
      if (!present(rf, "json_schema") || !rf["json_schema"].is_object())
        throw BadRequest{"'response_format.json_schema' must be an object", "response_format.json_schema"};
      const json& js = rf["json_schema"];
      const std::string p = "response_format.json_schema.";
      check_fields(js, {"name", "schema", "strict", "description"}, p);
      if (!present(js, "name") || !js["name"].is_string() || !valid_function_name(js["name"]))
        throw BadRequest{"'" + p + "name' must be a string of 1 to 64 characters a-z, A-Z, 0-9, _ or -",
                         p + "name"};
      if (present(js, "description") && !js["description"].is_string())
        throw BadRequest{"'" + p + "description' must be a string", p + "description"};
      f.strict = get_bool(js, "strict", false, p);
      f.schema = present(js, "schema") ? schema_field(js["schema"], p + "schema") : json::object();
      f.kind = OutputFormat::Kind::kJsonSchema;
      f.param = p + "schema";
      ++set;
    } else {
      throw BadRequest{"'response_format.type' must be one of text, json_object, json_schema",
                       "response_format.type"};
    }
  }
  if (present(b, "json_schema")) {
    if (set) throw BadRequest{"'json_schema' cannot be combined with 'response_format'", "json_schema"};
    f.kind = OutputFormat::Kind::kJsonSchema;
    f.schema = schema_field(b["json_schema"], "json_schema");
    f.param = "json_schema";
    ++set;
  }
  if (present(b, "grammar")) {
    if (set)
      throw BadRequest{"'grammar' cannot be combined with 'response_format' or 'json_schema'", "grammar"};
    if (!b["grammar"].is_string()) throw BadRequest{"'grammar' must be a string (GBNF)", "grammar"};
    f.kind = OutputFormat::Kind::kGrammar;
    f.gbnf = b["grammar"].get<std::string>();
    f.param = "grammar";
  }
  return f;
}

void parse_n(const json& b, GenRequest& r) {
  r.n = static_cast<int>(get_int(b, "n", 1, kMaxChoices, 1));
}

ToolCall parse_tool_call(const json& tc, const std::string& p) {
  if (!tc.is_object()) throw BadRequest{p + " must be an object", p};
  check_fields(tc, {"id", "type", "function", "index"}, p + ".");
  if (present(tc, "type") && tc["type"] != "function")
    throw BadRequest{p + ".type must be \"function\"", p + ".type"};
  if (!present(tc, "function") || !tc["function"].is_object())
    throw BadRequest{p + ".function must be an object", p + ".function"};
  const json& fn = tc["function"];
  check_fields(fn, {"name", "arguments"}, p + ".function.");
  ToolCall c;
  c.id = get_string(tc, "id", p + ".");
  c.name = get_string(fn, "name", p + ".function.");
  if (c.name.empty()) throw BadRequest{p + ".function.name is required", p + ".function.name"};
  c.arguments = present(fn, "arguments") ? get_string(fn, "arguments", p + ".function.") : "{}";
  const json args = mixtral::parse_ordered_json(c.arguments);
  if (args.is_discarded() || !args.is_object())
    throw BadRequest{p + ".function.arguments must be the JSON text of an object", p + ".function.arguments"};
  return c;
}

std::vector<ChatMessage> parse_messages(const json& b) {
  if (!present(b, "messages")) throw BadRequest{"'messages' is required", "messages"};
  if (!b["messages"].is_array() || b["messages"].empty())
    throw BadRequest{"'messages' must be a non-empty array", "messages"};
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < b["messages"].size(); ++i) {
    const json& m = b["messages"][i];
    const std::string p = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw BadRequest{p + " must be an object with a string 'role'", p + ".role"};
    check_fields(m, kMessageFields, p + ".");
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool")
      throw BadRequest{p + ".role must be one of system, developer, user, assistant, tool", p + ".role"};
    if (present(m, "name")) msg.name = get_string(m, "name", p + ".");
    const bool has_content = present(m, "content");
    if (has_content) msg.content = content_text(m["content"], p + ".content");
    if (present(m, "tool_calls")) {
      if (msg.role != "assistant")
        throw BadRequest{p + ".tool_calls is only allowed on assistant messages", p + ".tool_calls"};
      if (!m["tool_calls"].is_array())
        throw BadRequest{p + ".tool_calls must be an array", p + ".tool_calls"};
      for (size_t j = 0; j < m["tool_calls"].size(); ++j)
        msg.tool_calls.push_back(
            parse_tool_call(m["tool_calls"][j], p + ".tool_calls[" + std::to_string(j) + "]"));
    }
    if (msg.role == "tool") {
      if (!present(m, "tool_call_id") || !m["tool_call_id"].is_string() ||
          m["tool_call_id"].get<std::string>().empty())
        throw BadRequest{p + ".tool_call_id is required on tool messages", p + ".tool_call_id"};
      msg.tool_call_id = m["tool_call_id"].get<std::string>();
    } else if (present(m, "tool_call_id")) {
      throw BadRequest{p + ".tool_call_id is only allowed on tool messages", p + ".tool_call_id"};
    }
    // content may be null (or absent) beside tool_calls, and on an assistant message being continued
    if (!has_content && !(msg.role == "assistant"))
      throw BadRequest{p + ".content is required", p + ".content"};
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

bool present(const json& b, const char* k) {
  return b.is_object() && b.contains(k) && !b[k].is_null();
}

void check_fields(const json& obj, const std::vector<const char*>& allowed, const std::string& prefix) {
  if (!obj.is_object()) return;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (it->is_null()) continue;
    const std::string& k = it.key();
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; }))
      throw BadRequest{"unsupported field '" + prefix + k + "'", prefix + k};
  }
}

double get_number(const json& b, const char* k, double lo, double hi, double def, const std::string& prefix) {
  if (!present(b, k)) return def;
  const std::string name = prefix + k;
  if (!b[k].is_number()) throw BadRequest{quoted(name) + " must be a number", name};
  const double v = b[k].get<double>();
  if (!(v >= lo && v <= hi))
    throw BadRequest{quoted(name) + " must be between " + json(lo).dump() + " and " + json(hi).dump(), name};
  return v;
}

int64_t get_int(const json& b, const char* k, int64_t lo, int64_t hi, int64_t def,
                const std::string& prefix) {
  if (!present(b, k)) return def;
  const std::string name = prefix + k;
  if (!b[k].is_number_integer()) throw BadRequest{quoted(name) + " must be an integer", name};
  const int64_t v = b[k].is_number_unsigned() && b[k].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                        ? INT64_MAX
                        : b[k].get<int64_t>();
  if (v < lo || v > hi)
    throw BadRequest{quoted(name) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi),
                     name};
  return v;
}

bool get_bool(const json& b, const char* k, bool def, const std::string& prefix) {
  if (!present(b, k)) return def;
  if (!b[k].is_boolean()) throw BadRequest{quoted(prefix + k) + " must be a boolean", prefix + k};
  return b[k].get<bool>();
}

std::string get_string(const json& b, const char* k, const std::string& prefix) {
  if (!present(b, k)) return "";
  if (!b[k].is_string()) throw BadRequest{quoted(prefix + k) + " must be a string", prefix + k};
  return b[k].get<std::string>();
}

// Text parts are joined with "\n\n" and empty ones skipped, as mistral-common's normaliser aggregates a
// message's text chunks (v3..v13 tokenizers); the one rule serves every chat format.
std::string content_text(const json& c, const std::string& param, std::initializer_list<const char*> types) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::string out;
    for (size_t i = 0; i < c.size(); ++i) {
      const json& part = c[i];
      const std::string p = param + "[" + std::to_string(i) + "]";
      const bool ok_type =
          part.is_object() && part.contains("type") && part["type"].is_string() &&
          std::any_of(types.begin(), types.end(), [&](const char* t) { return part["type"] == t; });
      if (!ok_type) {
        std::string names;
        for (const char* t : types) names += std::string(names.empty() ? "" : ", ") + t;
        throw BadRequest{"only text content parts are supported (type " + names + ")", p + ".type"};
      }
      if (!part.contains("text") || !part["text"].is_string())
        throw BadRequest{p + ".text must be a string", p + ".text"};
      check_fields(part, {"type", "text", "annotations", "logprobs"}, p + ".");
      const std::string& text = part["text"].get_ref<const std::string&>();
      if (text.empty()) continue;
      if (!out.empty()) out += "\n\n";
      out += text;
    }
    return out;
  }
  throw BadRequest{"message content must be a string or an array of text parts", param};
}

bool valid_function_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

json schema_field(const json& v, const std::string& param) {
  if (!v.is_object() && !v.is_boolean())
    throw BadRequest{"'" + param + "' must be a JSON Schema (an object or a boolean)", param};
  return v;
}

Tool parse_function(const json& fn, const std::string& param, bool default_strict) {
  Tool t;
  t.param = param;
  if (!fn.is_object()) throw BadRequest{param + " must be an object", param};
  const std::string p = param + ".";
  t.spec.name = get_string(fn, "name", p);
  if (!valid_function_name(t.spec.name))
    throw BadRequest{param + ".name must be a string of 1 to 64 characters a-z, A-Z, 0-9, _ or -",
                     p + "name"};
  t.spec.description = get_string(fn, "description", p);
  t.schema_param = p + "parameters";
  t.schema = present(fn, "parameters") ? schema_field(fn["parameters"], t.schema_param)
                                       : json{{"type", "object"}, {"properties", json::object()}};
  t.spec.parameters = t.schema.dump();  // the prompt shows them as given
  // Arguments are a JSON object (OpenAI's and mistral-common's rule): the grammar's schema says so.
  if (t.schema.is_boolean()) {
    if (!t.schema.get<bool>())
      throw BadRequest{"'" + t.schema_param + "' admits no arguments (false)", t.schema_param};
    t.schema = json{{"type", "object"}};
  } else if (!t.schema.contains("type")) {
    t.schema["type"] = "object";
  } else {
    const json& ty = t.schema["type"];
    const bool object =
        ty == "object" || (ty.is_array() && std::find(ty.begin(), ty.end(), "object") != ty.end());
    if (!object)
      throw BadRequest{"'" + t.schema_param + "' must describe a JSON object (type \"object\")",
                       t.schema_param};
    t.schema["type"] = "object";
  }
  t.strict = get_bool(fn, "strict", default_strict, p);
  return t;
}

ToolChoice parse_tool_choice(const json& v, const std::vector<Tool>& tools) {
  ToolChoice c;
  const char* bad = "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", ...}";
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "none")
      c.kind = ToolChoice::Kind::kNone;
    else if (s == "auto")
      c.kind = ToolChoice::Kind::kAuto;
    else if (s == "required")
      c.kind = ToolChoice::Kind::kRequired;
    else
      throw BadRequest{bad, "tool_choice"};
  } else if (v.is_object()) {
    if (!v.contains("type") || v["type"] != "function") throw BadRequest{bad, "tool_choice"};
    std::string name;
    if (v.contains("function") && v["function"].is_object()) {  // chat: {"function": {"name"}}
      check_fields(v, {"type", "function"}, "tool_choice.");
      check_fields(v["function"], {"name"}, "tool_choice.function.");
      name = get_string(v["function"], "name", "tool_choice.function.");
    } else {  // responses: {"type": "function", "name"}
      check_fields(v, {"type", "name"}, "tool_choice.");
      name = get_string(v, "name", "tool_choice.");
    }
    if (std::none_of(tools.begin(), tools.end(), [&](const Tool& t) { return t.spec.name == name; }))
      throw BadRequest{"'tool_choice' names the function '" + name + "', which is not among 'tools'",
                       "tool_choice"};
    c.kind = ToolChoice::Kind::kNamed;
    c.name = name;
  } else {
    throw BadRequest{bad, "tool_choice"};
  }
  if (tools.empty() && (c.kind == ToolChoice::Kind::kRequired))
    throw BadRequest{"'tool_choice' \"required\" needs 'tools'", "tool_choice"};
  return c;
}

void parse_sampling(const json& b, CompletionParams& cp) {
  cp.temperature = static_cast<float>(get_number(b, "temperature", 0, 2, 1));
  cp.top_p = static_cast<float>(get_number(b, "top_p", 0, 1, 1));
  if (cp.top_p <= 0) throw BadRequest{"'top_p' must be greater than 0", "top_p"};
  cp.top_k = get_int(b, "top_k", 0, INT32_MAX, 0);
  cp.min_p = static_cast<float>(get_number(b, "min_p", 0, 1, 0));
  cp.presence_penalty = static_cast<float>(get_number(b, "presence_penalty", -2, 2, 0));
  cp.frequency_penalty = static_cast<float>(get_number(b, "frequency_penalty", -2, 2, 0));
  cp.repetition_penalty = static_cast<float>(get_number(b, "repetition_penalty", 0, 10, 1));
  if (cp.repetition_penalty <= 0)
    throw BadRequest{"'repetition_penalty' must be greater than 0", "repetition_penalty"};
  if (present(b, "seed")) {
    if (!b["seed"].is_number_integer()) throw BadRequest{"'seed' must be an integer", "seed"};
    cp.seed = b["seed"].is_number_unsigned() ? b["seed"].get<uint64_t>()
                                             : static_cast<uint64_t>(b["seed"].get<int64_t>());
  } else {
    cp.seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  cp.ignore_eos = get_bool(b, "ignore_eos", false);
}

void check_format_and_tools(const GenRequest& r) {
  const bool calls_possible = !r.tools.empty() && r.tool_choice.kind != ToolChoice::Kind::kNone;
  if (calls_possible && r.format.kind == OutputFormat::Kind::kGrammar)
    throw BadRequest{"'grammar' cannot be combined with 'tools' (unless 'tool_choice' is \"none\")",
                     "grammar"};
  std::set<std::string> names;
  for (const Tool& t : r.tools)
    if (!names.insert(t.spec.name).second)
      throw BadRequest{"two tools are named '" + t.spec.name + "'", t.param};
}

std::vector<Tool> parse_tools(const json& b, ToolLayout layout) {
  std::vector<Tool> tools;
  if (!present(b, "tools")) return tools;
  const json& ts = b["tools"];
  if (!ts.is_array()) throw BadRequest{"'tools' must be an array", "tools"};
  if (ts.size() > kMaxTools)
    throw BadRequest{"at most " + std::to_string(kMaxTools) + " tools are allowed", "tools"};
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string p = "tools[" + std::to_string(i) + "]";
    const json& t = ts[i];
    if (!t.is_object() || !t.contains("type") || t["type"] != "function")
      throw BadRequest{p + ".type must be \"function\" (no built-in tools here)", p + ".type"};
    if (layout == ToolLayout::kResponses) {
      check_fields(t, {"type", "name", "description", "parameters", "strict"}, p + ".");
      tools.push_back(parse_function(t, p, /*default_strict=*/true));  // the Responses API's default
      continue;
    }
    check_fields(t, {"type", "function"}, p + ".");
    if (!present(t, "function")) throw BadRequest{p + ".function is required", p + ".function"};
    check_fields(t["function"], {"name", "description", "parameters", "strict"}, p + ".function.");
    Tool tool = parse_function(t["function"], p + ".function", false);
    tool.param = p;
    tools.push_back(std::move(tool));
  }
  return tools;
}

void check_logit_bias_ids(const CompletionParams& p, int64_t n_vocab) {
  for (const auto& tb : p.logit_bias)
    if (tb.first >= n_vocab)
      throw BadRequest{"'logit_bias' names token " + std::to_string(tb.first) +
                           ", outside the vocabulary of " + std::to_string(n_vocab) + " tokens",
                       "logit_bias"};
}

GenRequest parse_chat_request(const json& b, int64_t ctx) {
  if (!b.is_object()) throw BadRequest{"the request body must be a JSON object", ""};
  check_fields(b, kChatFields, "");
  check_metadata(b);
  GenRequest r;
  r.chat = true;
  r.model = get_string(b, "model");
  r.messages = parse_messages(b);
  parse_max_tokens(b, r, ctx, true);
  parse_sampling(b, r.params);
  r.params.logit_bias = parse_logit_bias(b);
  parse_n(b, r);
  r.stop = parse_stop(b);
  r.logprobs = get_bool(b, "logprobs", false);
  r.top_logprobs = static_cast<int>(get_int(b, "top_logprobs", 0, 20, 0));
  if (present(b, "top_logprobs") && !r.logprobs)
    throw BadRequest{"'top_logprobs' needs 'logprobs': true", "top_logprobs"};
  r.params.top_logprobs = r.logprobs ? r.top_logprobs : -1;
  parse_stream(b, r);
  r.format = parse_format(b);
  r.tools = parse_tools(b, ToolLayout::kChat);
  if (present(b, "tool_choice")) r.tool_choice = parse_tool_choice(b["tool_choice"], r.tools);
  r.parallel_tool_calls = get_bool(b, "parallel_tool_calls", true);
  check_format_and_tools(r);
  return r;
}

GenRequest parse_completion_request(const json& b, int64_t ctx) {
  if (!b.is_object()) throw BadRequest{"the request body must be a JSON object", ""};
  check_fields(b, kCompletionFields, "");
  check_metadata(b);
  GenRequest r;
  r.chat = false;
  r.model = get_string(b, "model");
  if (!present(b, "prompt")) throw BadRequest{"'prompt' is required", "prompt"};
  const json& p = b["prompt"];
  if (p.is_string()) {
    r.prompt_text = p.get<std::string>();
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r.prompt_text = p[0].get<std::string>();
  } else if (p.is_array() && !p.empty() &&
             std::all_of(p.begin(), p.end(), [](const json& x) { return x.is_number_integer(); })) {
    for (const auto& x : p) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
        throw BadRequest{"prompt token id out of range", "prompt"};
      r.prompt_ids.push_back(x.get<int32_t>());
    }
  } else {
    throw BadRequest{"'prompt' must be a string, a list of one string or a list of token ids", "prompt"};
  }
  if (get_bool(b, "echo", false)) throw BadRequest{"'echo' is not supported", "echo"};
  if (present(b, "suffix") && (!b["suffix"].is_string() || !b["suffix"].get<std::string>().empty()))
    throw BadRequest{"'suffix' is not supported", "suffix"};
  parse_max_tokens(b, r, ctx, false);
  parse_sampling(b, r.params);
  r.params.logit_bias = parse_logit_bias(b);
  parse_n(b, r);
  if (present(b, "best_of") && get_int(b, "best_of", 1, kMaxChoices, 1) != r.n)
    throw BadRequest{"'best_of' must equal 'n' (no server-side ranking)", "best_of"};
  r.stop = parse_stop(b);
  if (present(b, "logprobs")) {  // legacy completions: an integer 0..5
    r.logprobs = true;
    r.top_logprobs = static_cast<int>(get_int(b, "logprobs", 0, 5, 0));
  }
  r.params.top_logprobs = r.logprobs ? r.top_logprobs : -1;
  parse_stream(b, r);
  r.format = parse_format(b);
  return r;
}

}  // namespace mixtral::server
