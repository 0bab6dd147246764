#include "responses.h"

#include <random>

#include "grammar/json_schema.h"

namespace mixtral::server {

using json = nlohmann::ordered_json;

namespace {

// Fields of POST /v1/responses. Metadata with no effect on the answer (*): `user`, `metadata`, `store`
// (nothing is ever stored: stateless), `service_tier` (auto/default), `prompt_cache_key`,
// `safety_identifier`, `background` (false only), `include` (only "reasoning.encrypted_content", which
// names nothing here: no reasoning items), `truncation` ("disabled" only: a prompt that does not fit is a
// 400). previous_response_id is refused: nothing is kept to continue from.
const std::vector<const char*> kResponsesFields = {
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
    "max_output_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "seed", "stream", "stream_options",
    // (*)
    "store", "user", "metadata", "service_tier", "prompt_cache_key", "safety_identifier", "background",
    "include", "truncation"};

std::string random_hex(size_t n) {
  static const char kHex[] = "0123456789abcdef";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string s(n, '0');
  for (char& c : s) c = kHex[rng() % 16];
  return s;
}

OutputFormat parse_text_format(const json& b) {
  OutputFormat f;
  if (!present(b, "text")) return f;
  const json& t = b["text"];
  if (!t.is_object()) throw BadRequest{"'text' must be an object", "text"};
  check_fields(t, {"format", "verbosity"}, "text.");
  if (present(t, "verbosity") && t["verbosity"] != "medium")
    throw BadRequest{"'text.verbosity' must be \"medium\" (no other verbosity is implemented)",
                     "text.verbosity"};
  if (!present(t, "format")) return f;
  const json& fm = t["format"];
  if (!fm.is_object() || !fm.contains("type") || !fm["type"].is_string())
    throw BadRequest{"'text.format' must be an object with a string 'type'", "text.format"};
  const std::string type = fm["type"].get<std::string>();
  f.param = "text.format";
  if (type == "text") {
    check_fields(fm, {"type"}, "text.format.");
  } else if (type == "json_object") {
    check_fields(fm, {"type"}, "text.format.");
    f.kind = OutputFormat::Kind::kJsonObject;
  } else if (type == "json_schema") {
    check_fields(fm, {"type", "name", "schema", "strict", "description"}, "text.format.");
    if (!present(fm, "name") || !fm["name"].is_string() || !valid_function_name(fm["name"]))
      throw BadRequest{"'text.format.name' must be a string of 1 to 64 characters a-z, A-Z, 0-9, _ or -",
                       "text.format.name"};
    if (present(fm, "description") && !fm["description"].is_string())
      throw BadRequest{"'text.format.description' must be a string", "text.format.description"};
    f.kind = OutputFormat::Kind::kJsonSchema;
    f.strict = get_bool(fm, "strict", false, "text.format.");
    if (!present(fm, "schema")) throw BadRequest{"'text.format.schema' is required", "text.format.schema"};
    f.schema = schema_field(fm["schema"], "text.format.schema");
    f.param = "text.format.schema";
  } else {
    throw BadRequest{"'text.format.type' must be one of text, json_object, json_schema", "text.format.type"};
  }
  return f;
}

}  // namespace

std::vector<ChatMessage> responses_messages(const json& input, const std::string& instructions) {
  std::vector<ChatMessage> msgs;
  if (!instructions.empty()) msgs.push_back({"system", instructions, {}, "", ""});
  if (input.is_string()) {
    msgs.push_back({"user", input.get<std::string>(), {}, "", ""});
    return msgs;
  }
  if (!input.is_array() || input.empty())
    throw BadRequest{"'input' must be a string or a non-empty array of items", "input"};
  bool assistant_open = false;  // msgs.back() is an assistant turn that calls may join
  for (size_t i = 0; i < input.size(); ++i) {
    const json& it = input[i];
    const std::string p = "input[" + std::to_string(i) + "]";
    if (!it.is_object()) throw BadRequest{p + " must be an object", p};
    std::string type = "message";
    if (present(it, "type")) {
      if (!it["type"].is_string()) throw BadRequest{p + ".type must be a string", p + ".type"};
      type = it["type"].get<std::string>();
    }
    if (type == "message") {
      check_fields(it, {"type", "role", "content", "id", "status"}, p + ".");
      const std::string role = get_string(it, "role", p + ".");
      if (role != "user" && role != "system" && role != "developer" && role != "assistant")
        throw BadRequest{p + ".role must be one of user, system, developer, assistant", p + ".role"};
      if (!present(it, "content")) throw BadRequest{p + ".content is required", p + ".content"};
      ChatMessage m;
      m.role = role == "developer" ? "system" : role;
      m.content = content_text(it["content"], p + ".content", {"input_text", "output_text", "text"});
      msgs.push_back(std::move(m));
      assistant_open = role == "assistant";
    } else if (type == "function_call") {
      check_fields(it, {"type", "call_id", "name", "arguments", "id", "status"}, p + ".");
      ToolCall c;
      c.id = get_string(it, "call_id", p + ".");
      if (c.id.empty()) throw BadRequest{p + ".call_id is required", p + ".call_id"};
      c.name = get_string(it, "name", p + ".");
      if (c.name.empty()) throw BadRequest{p + ".name is required", p + ".name"};
      c.arguments = present(it, "arguments") ? get_string(it, "arguments", p + ".") : "{}";
      const json args = mixtral::parse_ordered_json(c.arguments);
      if (args.is_discarded() || !args.is_object())
        throw BadRequest{p + ".arguments must be the JSON text of an object", p + ".arguments"};
      if (!assistant_open) msgs.push_back({"assistant", "", {}, "", ""});
      msgs.back().tool_calls.push_back(std::move(c));
      assistant_open = true;
    } else if (type == "function_call_output") {
      check_fields(it, {"type", "call_id", "output", "id", "status"}, p + ".");
      ChatMessage m;
      m.role = "tool";
      m.tool_call_id = get_string(it, "call_id", p + ".");
      if (m.tool_call_id.empty()) throw BadRequest{p + ".call_id is required", p + ".call_id"};
      if (!present(it, "output")) throw BadRequest{p + ".output is required", p + ".output"};
      m.content = content_text(it["output"], p + ".output", {"input_text", "output_text", "text"});
      msgs.push_back(std::move(m));
      assistant_open = false;
    } else if (type == "item_reference") {
      throw BadRequest{p + ": item references need stored items; this server stores nothing", p + ".type"};
    } else {
      throw BadRequest{p + ".type must be message, function_call or function_call_output", p + ".type"};
    }
  }
  return msgs;
}

ResponsesRequest parse_responses_request(const json& b, int64_t ctx) {
  if (!b.is_object()) throw BadRequest{"the request body must be a JSON object", ""};
  if (present(b, "previous_response_id"))
    throw BadRequest{
        "'previous_response_id' is not supported: this server is stateless and keeps no "
        "responses (send the whole conversation as 'input')",
        "previous_response_id"};
  if (present(b, "reasoning"))
    throw BadRequest{"'reasoning' is not supported (no reasoning model here)", "reasoning"};
  check_fields(b, kResponsesFields, "");
  ResponsesRequest rr;
  GenRequest& r = rr.gen;
  r.chat = true;
  r.model = get_string(b, "model");
  for (const char* k : {"user", "prompt_cache_key", "safety_identifier"}) get_string(b, k);
  if (present(b, "metadata") && !b["metadata"].is_object())
    throw BadRequest{"'metadata' must be an object", "metadata"};
  get_bool(b, "store", true);  // accepted either way; nothing is stored
  if (get_bool(b, "background", false)) throw BadRequest{"'background' is not supported", "background"};
  if (present(b, "service_tier") && b["service_tier"] != "auto" && b["service_tier"] != "default")
    throw BadRequest{"'service_tier' must be \"auto\" or \"default\" (one tier here)", "service_tier"};
  if (present(b, "truncation") && b["truncation"] != "disabled")
    throw BadRequest{"'truncation' must be \"disabled\" (a prompt that does not fit is refused)",
                     "truncation"};
  if (present(b, "include")) {
    const json& inc = b["include"];
    if (!inc.is_array()) throw BadRequest{"'include' must be an array", "include"};
    for (const auto& x : inc)
      if (x != "reasoning.encrypted_content")
        throw BadRequest{"'include' may only name reasoning.encrypted_content (there is nothing else to add)",
                         "include"};
  }
  const std::string instructions = get_string(b, "instructions");
  if (!present(b, "input")) throw BadRequest{"'input' is required", "input"};
  r.messages = responses_messages(b["input"], instructions);
  if (present(b, "max_output_tokens")) {
    r.max_tokens = get_int(b, "max_output_tokens", 1, INT64_MAX, 0);
    r.max_tokens_param = "max_output_tokens";
    if (*r.max_tokens >= ctx)
      throw BadRequest{
          "the maximum number of tokens is " + std::to_string(ctx) + " (--ctx-size) including the prompt",
          "max_output_tokens"};
  }
  parse_sampling(b, r.params);
  r.params.top_logprobs = -1;
  r.stream = get_bool(b, "stream", false);
  if (present(b, "stream_options")) {
    if (!r.stream) throw BadRequest{"'stream_options' is only allowed with 'stream': true", "stream_options"};
    check_fields(b["stream_options"], {"include_obfuscation"}, "stream_options.");
    get_bool(b["stream_options"], "include_obfuscation", false, "stream_options.");
  }
  r.format = parse_text_format(b);
  r.tools = parse_tools(b, ToolLayout::kResponses);
  if (present(b, "tool_choice")) r.tool_choice = parse_tool_choice(b["tool_choice"], r.tools);
  r.parallel_tool_calls = get_bool(b, "parallel_tool_calls", true);
  check_format_and_tools(r);

  json& e = rr.echo;
  e["instructions"] = instructions.empty() ? json(nullptr) : json(instructions);
  e["max_output_tokens"] = r.max_tokens ? json(*r.max_tokens) : json(nullptr);
  e["parallel_tool_calls"] = r.parallel_tool_calls;
  e["store"] = false;  // what happened, whatever was asked: nothing is kept
  e["temperature"] = r.params.temperature;
  e["top_p"] = r.params.top_p;
  e["metadata"] = present(b, "metadata") ? b["metadata"] : json::object();
  e["user"] = present(b, "user") ? b["user"] : json(nullptr);
  e["tool_choice"] = present(b, "tool_choice") ? b["tool_choice"] : json("auto");
  json tools = json::array();
  for (const Tool& t : r.tools)
    tools.push_back({{"type", "function"},
                     {"name", t.spec.name},
                     {"description", t.spec.description.empty() ? json(nullptr) : json(t.spec.description)},
                     {"parameters", t.schema},
                     {"strict", t.strict}});
  e["tools"] = tools;
  e["text"] = {{"format", present(b, "text") && present(b["text"], "format") ? b["text"]["format"]
                                                                             : json{{"type", "text"}}}};
  return rr;
}

ResponseBuilder::ResponseBuilder(const ResponsesRequest& r, std::string id, int64_t created_at,
                                 std::string model)
    : r_(r), id_(std::move(id)), model_(std::move(model)), created_at_(created_at) {}

std::string ResponseBuilder::item_id(const char* prefix) {
  return std::string(prefix) + random_hex(24);
}

json ResponseBuilder::response(const std::string& status) const {
  json o{{"id", id_},
         {"object", "response"},
         {"created_at", created_at_},
         {"status", status},
         {"background", false},
         {"error", nullptr},
         {"incomplete_details", incomplete_},
         {"model", model_},
         {"output", output_},
         {"previous_response_id", nullptr},
         {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
         {"service_tier", "default"},
         {"truncation", "disabled"},
         {"usage", usage_}};
  for (const auto& [k, v] : r_.echo.items()) o[k] = v;
  return o;
}

namespace {

json message_item(const std::string& id, const std::string& status, const std::string& text, bool with_part) {
  json content = json::array();
  if (with_part) content.push_back({{"type", "output_text"}, {"text", text}, {"annotations", json::array()}});
  return json{
      {"type", "message"}, {"id", id}, {"status", status}, {"role", "assistant"}, {"content", content}};
}

json call_item(const std::string& id, const ToolCall& c, const std::string& status) {
  return json{{"type", "function_call"},  {"id", id},        {"call_id", c.id}, {"name", c.name},
              {"arguments", c.arguments}, {"status", status}};
}

json usage_json(const ResponseUsage& u) {
  return json{{"input_tokens", u.input_tokens},
              {"input_tokens_details", {{"cached_tokens", u.cached_tokens}}},
              {"output_tokens", u.output_tokens},
              {"output_tokens_details", {{"reasoning_tokens", 0}}},
              {"total_tokens", u.input_tokens + u.output_tokens}};
}

}  // namespace

void ResponseBuilder::set_output(const ReplyReader::Final& f) {
  output_ = json::array();
  if (f.content || f.calls.empty())
    output_.push_back(message_item(item_id("msg_"), "completed", f.content.value_or(""), true));
  for (const ToolCall& c : f.calls) output_.push_back(call_item(item_id("fc_"), c, "completed"));
}

void ResponseBuilder::set_finish(const std::string& finish_reason, const ResponseUsage& u) {
  usage_ = usage_json(u);
  if (finish_reason == "length") {
    status_ = "incomplete";
    incomplete_ = {{"reason", "max_output_tokens"}};
    for (auto& it : output_) it["status"] = "incomplete";
  } else {
    status_ = "completed";
  }
}

json ResponseBuilder::event(const char* type, json fields) {
  fields["type"] = type;
  fields["sequence_number"] = seq_++;
  return fields;
}

std::vector<json> ResponseBuilder::start() {
  std::vector<json> out;
  out.push_back(event("response.created", {{"response", response("in_progress")}}));
  out.push_back(event("response.in_progress", {{"response", response("in_progress")}}));
  return out;
}

void ResponseBuilder::close_open(std::vector<json>& out) {
  if (!open_) return;
  open_ = false;
  json& it = output_.back();
  const int idx = static_cast<int>(output_.size()) - 1;
  it["status"] = "completed";
  if (it["type"] == "message") {
    const json part = it["content"][0];
    out.push_back(event("response.output_text.done", {{"item_id", it["id"]},
                                                      {"output_index", idx},
                                                      {"content_index", 0},
                                                      {"text", part["text"]},
                                                      {"logprobs", json::array()}}));
    out.push_back(
        event("response.content_part.done",
              {{"item_id", it["id"]}, {"output_index", idx}, {"content_index", 0}, {"part", part}}));
  } else {
    out.push_back(event("response.function_call_arguments.done", {{"item_id", it["id"]},
                                                                  {"output_index", idx},
                                                                  {"name", it["name"]},
                                                                  {"arguments", it["arguments"]}}));
  }
  out.push_back(event("response.output_item.done", {{"output_index", idx}, {"item", it}}));
}

std::vector<json> ResponseBuilder::on(const ReplyEvent& ev) {
  std::vector<json> out;
  switch (ev.kind) {
    case ReplyEvent::Kind::kText: {
      if (!open_ || output_.back()["type"] != "message") {
        close_open(out);
        output_.push_back(message_item(item_id("msg_"), "in_progress", "", false));
        open_ = true;
        const int idx = static_cast<int>(output_.size()) - 1;
        out.push_back(event("response.output_item.added", {{"output_index", idx}, {"item", output_.back()}}));
        const json part{{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}};
        out.push_back(event("response.content_part.added", {{"item_id", output_.back()["id"]},
                                                            {"output_index", idx},
                                                            {"content_index", 0},
                                                            {"part", part}}));
        output_.back()["content"].push_back(part);
      }
      json& it = output_.back();
      it["content"][0]["text"] = it["content"][0]["text"].get<std::string>() + ev.text;
      out.push_back(
          event("response.output_text.delta", {{"item_id", it["id"]},
                                               {"output_index", static_cast<int>(output_.size()) - 1},
                                               {"content_index", 0},
                                               {"delta", ev.text},
                                               {"logprobs", json::array()}}));
      break;
    }
    case ReplyEvent::Kind::kCallStart: {
      close_open(out);
      output_.push_back(call_item(item_id("fc_"), ToolCall{ev.id, ev.name, ""}, "in_progress"));
      open_ = true;
      out.push_back(
          event("response.output_item.added",
                {{"output_index", static_cast<int>(output_.size()) - 1}, {"item", output_.back()}}));
      break;
    }
    case ReplyEvent::Kind::kCallArgs: {
      if (!open_ || output_.back()["type"] != "function_call") break;
      json& it = output_.back();
      it["arguments"] = it["arguments"].get<std::string>() + ev.text;
      out.push_back(event("response.function_call_arguments.delta",
                          {{"item_id", it["id"]},
                           {"output_index", static_cast<int>(output_.size()) - 1},
                           {"delta", ev.text}}));
      break;
    }
  }
  return out;
}

std::vector<json> ResponseBuilder::fail(const std::string& code, const std::string& message) {
  std::vector<json> out;
  close_open(out);
  out.push_back(event("error", {{"code", code}, {"message", message}, {"param", nullptr}}));
  json r = response("failed");
  r["error"] = {{"code", code}, {"message", message}};
  out.push_back(event("response.failed", {{"response", r}}));
  return out;
}

std::vector<json> ResponseBuilder::finish(const std::string& finish_reason, const ResponseUsage& u) {
  std::vector<json> out;
  if (output_.empty()) {  // nothing said: one empty message, as a reply with no text has
    for (auto& e : on(ReplyEvent{ReplyEvent::Kind::kText, 0, "", "", ""})) out.push_back(std::move(e));
    out.pop_back();  // no empty delta
    --seq_;
  }
  close_open(out);
  set_finish(finish_reason, u);
  out.push_back(event(status_ == "completed" ? "response.completed" : "response.incomplete",
                      {{"response", response(status_)}}));
  return out;
}

}  // namespace mixtral::server
