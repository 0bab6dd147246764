// Chat prompts: Mistral v1/v3 by mistral-common's rules (its validator, InstructRequestNormalizer and
// InstructTokenizerV1 / V3), the generic tool format of docs/agents.md for vocabularies without Mistral's
// tool control tokens, and the Jinja path for other templates.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "io/ordered_json.h"
#include "io/quote.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer_impl.h"

namespace mixtral {
namespace {

using Json = nlohmann::ordered_json;  // keeps key order, as Python dicts do

// --- JSON spelled as Python's json.dumps(x, ensure_ascii=False) spells it ---------------------------
// Separators ", " and ": ", non-ASCII kept as UTF-8, floats as Python's repr.

void py_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

// repr(float): the shortest round-trip digits, positional when -4 < decimal point <= 16, else d.ddde+XX.
void py_float(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v < 0 ? "-Infinity" : "Infinity";
    return;
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string_view s(buf, static_cast<size_t>(r.ptr - buf));  // [-]d[.ddd]e(+|-)XX
  if (s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const size_t e = s.find('e');
  std::string digits;
  for (const char c : s.substr(0, e))
    if (c != '.') digits += c;
  const int exp = std::atoi(std::string(s.substr(e + 1)).c_str());
  const int point = exp + 1;  // digits before the decimal point
  const int n = static_cast<int>(digits.size());
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out += "0.";
      out.append(static_cast<size_t>(-point), '0');
      out += digits;
    } else if (point >= n) {
      out += digits;
      out.append(static_cast<size_t>(point - n), '0');
      out += ".0";
    } else {
      out.append(digits, 0, static_cast<size_t>(point));
      out += '.';
      out.append(digits, static_cast<size_t>(point));
    }
  } else {
    out += digits[0];
    if (n > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += exp < 0 ? "e-" : "e+";
    const int a = std::abs(exp);
    if (a < 10) out += '0';
    out += std::to_string(a);
  }
}

void py_dumps(std::string& out, const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      out += "null";
      break;
    case Json::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
      out += std::to_string(j.get<int64_t>());
      break;
    case Json::value_t::number_unsigned:
      out += std::to_string(j.get<uint64_t>());
      break;
    case Json::value_t::number_float:
      py_float(out, j.get<double>());
      break;
    case Json::value_t::string:
      py_string(out, j.get_ref<const std::string&>());
      break;
    case Json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& x : j) {
        if (!first) out += ", ";
        first = false;
        py_dumps(out, x);
      }
      out += ']';
      break;
    }
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [k, x] : j.items()) {
        if (!first) out += ", ";
        first = false;
        py_string(out, k);
        out += ": ";
        py_dumps(out, x);
      }
      out += '}';
      break;
    }
    default:  // binary, discarded: never built here
      out += "null";
  }
}

std::string py_dumps(const Json& j) {
  std::string s;
  py_dumps(s, j);
  return s;
}

// Tool-call arguments and tool results as mistral-common reads them (_normalize_json_content, then
// _parse_json_content): empty text is {}, JSON text is its value, anything else stays a string.
Json json_or_string(const std::string& text) {
  if (text.empty()) return Json::object();
  Json j = parse_ordered_json(text);
  if (j.is_discarded()) return Json(text);
  return j;
}

// --- validation: what mistral-common's MistralRequestValidator (V3 for v3) rejects -------------------

std::string role_of(const ChatMessage& m) {
  return m.role == "developer" ? "system" : m.role;
}

std::string at(size_t i) {
  return "messages[" + std::to_string(i) + "]";
}

// ^[a-zA-Z0-9_-]{1,64}$ (function names) and ^[a-zA-Z0-9]{9}$ (v3 call ids).
bool is_function_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (const char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  return true;
}
bool is_call_id(std::string_view s) {
  if (s.size() != 9) return false;
  for (const char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
  return true;
}

// Which roles may follow which (validator._validate_message_order).
bool may_follow(const std::string& prev, const std::string& cur) {
  if (prev == "system" || prev == "user") return cur != "tool";
  return cur != "system";  // after assistant or tool
}

// Tools: function names as mistral-common's validator wants them, parameters a JSON object.
Status validate_tools(const ChatOptions& opts) {
  for (size_t k = 0; k < opts.tools.size(); ++k) {
    const ToolSpec& t = opts.tools[k];
    const std::string tat = "tools[" + std::to_string(k) + "].function";
    if (!is_function_name(t.name))
      return Error::data(tat + ".name: " + quote_name(t.name) +
                         " is not a function name (1 to 64 of a-z, A-Z, 0-9, _ and -)");
    const Json p = parse_ordered_json(t.parameters);
    if (p.is_discarded() || !p.is_object())
      return Error::data(tat + ".parameters: not a JSON object (a JSON Schema)");
  }
  return {};
}

// tool_tokens: v3 rules (call ids, content XOR tool_calls); otherwise the generic format's (an assistant
// message may carry text before its calls).
Status validate(const std::vector<ChatMessage>& msgs, const ChatOptions& opts, bool tool_tokens) {
  if (msgs.empty()) return Error::data("messages: the conversation is empty");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string r = role_of(msgs[i]);
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      return Error::data(at(i) + ".role: " + quote_name(msgs[i].role) +
                         " is not a role (system, developer, user, assistant, tool)");
  }
  if (msgs.size() == 1 && role_of(msgs[0]) != "user" && role_of(msgs[0]) != "system")
    return Error::data(at(0) +
                       ".role: a conversation of one message must start with a user or system "
                       "message, not " +
                       quote_name(msgs[0].role));
  for (size_t i = 1; i < msgs.size(); ++i) {
    const std::string prev = role_of(msgs[i - 1]), cur = role_of(msgs[i]);
    if (!may_follow(prev, cur))
      return Error::data(at(i) + ".role: " + quote_name(msgs[i].role) + " cannot follow " +
                         quote_name(msgs[i - 1].role) +
                         (cur == "tool" ? " (a tool message answers an assistant message's tool_calls)"
                                        : " (a system message may not follow an assistant or tool message)"));
  }
  // Each assistant message's calls are answered by as many tool messages before the next assistant
  // message (_validate_tool_calls_followed_by_tool_messages; like it, the first message is not counted).
  size_t calls = 0, results = 0, caller = 0;
  for (size_t i = 1; i < msgs.size(); ++i) {
    const std::string r = role_of(msgs[i]);
    if (r == "tool") {
      ++results;
    } else if (r == "assistant") {
      if (results != calls)
        return Error::data(at(i) + ": " + std::to_string(calls) + " tool call(s) of " + at(caller) +
                           " are answered by " + std::to_string(results) +
                           " tool message(s); each call needs one tool message before the next assistant "
                           "message");
      calls = msgs[i].tool_calls.size();
      results = 0;
      caller = i;
    }
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const std::string r = role_of(m);
    if (r == "assistant") {
      if (m.content.empty() && m.tool_calls.empty())
        return Error::data(at(i) + ".content: an assistant message needs content or tool_calls");
      if (tool_tokens && !m.content.empty() && !m.tool_calls.empty())
        return Error::data(at(i) +
                           ".content: with Mistral v3 tool tokens an assistant message has content "
                           "or tool_calls, not both (mistral-common's rule)");
      for (size_t j = 0; j < m.tool_calls.size(); ++j) {
        const ToolCall& c = m.tool_calls[j];
        const std::string cat = at(i) + ".tool_calls[" + std::to_string(j) + "]";
        if (!is_function_name(c.name))
          return Error::data(cat + ".function.name: " + quote_name(c.name) +
                             " is not a function name (1 to 64 of a-z, A-Z, 0-9, _ and -)");
        if (tool_tokens && !c.id.empty() && c.id != "null" && !is_call_id(c.id))
          return Error::data(cat + ".id: " + quote_name(c.id) +
                             " is not a Mistral v3 call id (9 characters of a-z, A-Z, 0-9)");
      }
    } else if (r == "tool") {
      if (!m.name.empty() && !is_function_name(m.name))
        return Error::data(at(i) + ".name: " + quote_name(m.name) +
                           " is not a function name (1 to 64 of a-z, A-Z, 0-9, _ and -)");
      if (m.tool_call_id.empty())
        return Error::data(at(i) + ".tool_call_id: a tool message needs the id of the call it answers");
      if (tool_tokens && !is_call_id(m.tool_call_id))
        return Error::data(at(i) + ".tool_call_id: " + quote_name(m.tool_call_id) +
                           " is not a Mistral v3 call id (9 characters of a-z, A-Z, 0-9)");
    }
  }
  // The normaliser merges consecutive assistant messages; v3 refuses the merge of text and calls.
  for (size_t i = 0; tool_tokens && i < msgs.size(); ++i) {
    if (role_of(msgs[i]) != "assistant" || msgs[i].tool_calls.empty()) continue;
    for (size_t k = i; k > 0 && role_of(msgs[k - 1]) == "assistant"; --k)
      if (!msgs[k - 1].content.empty())
        return Error::data(at(i) +
                           ".tool_calls: with Mistral v3 tool tokens the calls cannot be merged with "
                           "the text of the assistant message " +
                           at(k - 1) + " before it");
    for (size_t k = i + 1; k < msgs.size() && role_of(msgs[k]) == "assistant"; ++k)
      if (!msgs[k].content.empty())
        return Error::data(at(k) +
                           ".content: with Mistral v3 tool tokens this text cannot be merged with "
                           "the calls of the assistant message " +
                           at(i) + " before it");
  }
  return validate_tools(opts);
}

// --- normalisation (InstructRequestNormalizer, v1-v3) ----------------------------------------------

struct Turn {
  enum class Kind { kUser, kAssistant, kTool };
  Kind kind = Kind::kUser;
  std::string content;
  std::vector<ToolCall> calls;  // assistant
  std::string call_id;          // tool
};

// [{"type": "function", "function": {"name", "description", "parameters"}}, ...]: Tool.model_dump()
// without `strict`, in its field order.
Json tools_json(const std::vector<ToolSpec>& tools) {
  Json list = Json::array();
  for (const ToolSpec& t : tools) {
    Json fn = Json::object();
    fn["name"] = t.name;
    fn["description"] = t.description;
    fn["parameters"] = parse_ordered_json(t.parameters);  // validated: an object
    Json tool = Json::object();
    tool["type"] = "function";
    tool["function"] = std::move(fn);
    list.push_back(std::move(tool));
  }
  return list;
}

// The generic format (docs/agents.md "Chat prompts and tools").
std::string generic_tools_block(const std::vector<ToolSpec>& tools) {
  return "You can call these tools (their parameters are JSON Schema):\n" + py_dumps(tools_json(tools)) +
         "\n\nTo call tools, answer with only a JSON object of this form and nothing else: "
         "{\"tool_calls\": [{\"name\": \"<tool name>\", \"arguments\": {<arguments>}}]}. "
         "Tool results come back in the next user turn as "
         "{\"tool_results\": [{\"name\": \"<tool name>\", \"content\": <result>}]}. "
         "Otherwise answer in plain text.";
}

std::string generic_calls(const std::vector<ToolCall>& calls) {
  Json list = Json::array();
  for (const ToolCall& c : calls) {
    Json call = Json::object();
    call["name"] = c.name;
    call["arguments"] = json_or_string(c.arguments);
    list.push_back(std::move(call));
  }
  Json env = Json::object();
  env["tool_calls"] = std::move(list);
  return py_dumps(env);
}

// Joins non-empty texts with "\n\n" (the normaliser's _aggregate_content_chunks on strings).
void join_into(std::string& acc, const std::string& text) {
  if (text.empty()) return;
  if (!acc.empty()) acc += "\n\n";
  acc += text;
}

struct Normalized {
  std::string system;       // every system message's content, joined
  std::vector<Turn> turns;  // begins with a user turn
};

// tool_tokens: tool messages stay one turn each and calls stay structured (v3). Otherwise (generic):
// a run of tool messages becomes a {"tool_results": [...]} text inside the user turn it opens, and an
// assistant's calls become {"tool_calls": [...]} text after its content.
Normalized normalize(const std::vector<ChatMessage>& msgs, bool tool_tokens) {
  Normalized n;
  for (const auto& m : msgs)
    if (role_of(m) == "system") join_into(n.system, m.content);
  std::map<std::string, std::string> call_names;  // call id -> function name (generic results)
  auto group_of = [&](const ChatMessage& m) {
    const std::string r = role_of(m);
    return !tool_tokens && r == "tool" ? std::string("user") : r;
  };
  for (size_t i = 0; i < msgs.size();) {
    const std::string g = group_of(msgs[i]);
    size_t end = i;
    while (end < msgs.size() && group_of(msgs[end]) == g) ++end;
    if (g == "user") {
      Turn t;
      for (size_t k = i; k < end;) {
        if (role_of(msgs[k]) == "user") {
          join_into(t.content, msgs[k].content);
          ++k;
          continue;
        }
        Json results = Json::array();
        for (; k < end && role_of(msgs[k]) == "tool"; ++k) {
          const ChatMessage& m = msgs[k];
          Json r = Json::object();
          const auto it = call_names.find(m.tool_call_id);
          r["name"] = !m.name.empty() ? m.name : it != call_names.end() ? it->second : std::string();
          r["content"] = json_or_string(m.content);
          results.push_back(std::move(r));
        }
        Json block = Json::object();
        block["tool_results"] = std::move(results);
        join_into(t.content, py_dumps(block));
      }
      n.turns.push_back(std::move(t));
    } else if (g == "assistant") {
      Turn t;
      t.kind = Turn::Kind::kAssistant;
      for (size_t k = i; k < end; ++k) {
        join_into(t.content, msgs[k].content);
        for (const ToolCall& c : msgs[k].tool_calls) {
          t.calls.push_back(c);
          call_names[c.id] = c.name;
        }
      }
      if (!tool_tokens && !t.calls.empty()) {
        join_into(t.content, generic_calls(t.calls));
        t.calls.clear();
      }
      n.turns.push_back(std::move(t));
    } else if (g == "tool") {  // v3: one turn per result
      for (size_t k = i; k < end; ++k) {
        Turn t;
        t.kind = Turn::Kind::kTool;
        t.content = msgs[k].content;
        t.call_id = msgs[k].tool_call_id;
        n.turns.push_back(std::move(t));
      }
    }  // system runs only feed n.system
    i = end;
  }
  if (n.turns.empty() || n.turns.front().kind != Turn::Kind::kUser) n.turns.insert(n.turns.begin(), Turn{});
  return n;
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::kMistralV1:
      return "mistral-v1";
    case ChatFormat::kMistralV3:
      return "mistral-v3";
    case ChatFormat::kJinja:
      return "jinja";
  }
  return "?";
}

Result<ChatFormat> parse_chat_format(std::string_view name, const char* flag) {
  if (name == "mistral-v1") return ChatFormat::kMistralV1;
  if (name == "mistral-v3") return ChatFormat::kMistralV3;
  if (name == "jinja") return ChatFormat::kJinja;
  return Error::usage(std::string(flag) + ": " + quote_name(name) +
                      " is not a chat format (auto, mistral-v1, mistral-v3, jinja)");
}

ChatFormat Tokenizer::default_chat_format() const {
  const int32_t inst = piece_to_id("[INST]");
  const bool v3 = inst >= 0 && type(inst) == TokenType::kControl;
  const std::string& t = chat_template();
  if (t.empty() || (t.find("[INST]") != std::string::npos && t.find("<<SYS>>") == std::string::npos))
    return v3 ? ChatFormat::kMistralV3 : ChatFormat::kMistralV1;
  return ChatFormat::kJinja;
}

namespace {

tok::jinja::Value to_value(const Json& j) {
  using tok::jinja::Value;
  switch (j.type()) {
    case Json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case Json::value_t::number_integer:
      return Value::integer(j.get<int64_t>());
    case Json::value_t::number_unsigned:
      return Value::integer(static_cast<int64_t>(j.get<uint64_t>()));
    case Json::value_t::number_float:
      return Value::number(j.get<double>());
    case Json::value_t::string:
      return Value::string(j.get<std::string>());
    case Json::value_t::array: {
      Value v = Value::new_list();
      for (const auto& x : j) v.list->push_back(to_value(x));
      return v;
    }
    case Json::value_t::object: {
      Value v = Value::new_dict();
      for (const auto& [k, x] : j.items()) v.set(k, to_value(x));
      return v;
    }
    default:
      return Value::none();
  }
}

}  // namespace

Result<std::string> Tokenizer::render_chat_template(const std::vector<ChatMessage>& messages,
                                                    bool add_generation_prompt,
                                                    const ChatOptions& opts) const {
  if (chat_template().empty())
    return Error::data(source() + ": the tokenizer has no chat_template to render");
  MX_ASSIGN_OR_RETURN(tok::jinja::Template tmpl, tok::jinja::Template::parse(chat_template(), source()));
  using tok::jinja::Value;
  Value ctx = Value::new_dict();
  Value list = Value::new_list();
  // Messages as transformers passes them: tool_calls as [{"id", "type": "function", "function": {"name",
  // "arguments"}}] with the arguments a parsed object (a string when not JSON), only where there are calls;
  // tool_call_id and name on tool messages.
  for (const auto& m : messages) {
    Value msg = Value::new_dict();
    msg.set("role", Value::string(m.role));
    msg.set("content", Value::string(m.content));
    if (!m.tool_calls.empty()) {
      Value calls = Value::new_list();
      for (const ToolCall& c : m.tool_calls) {
        Value fn = Value::new_dict();
        fn.set("name", Value::string(c.name));
        fn.set("arguments", to_value(json_or_string(c.arguments)));
        Value call = Value::new_dict();
        call.set("id", Value::string(c.id));
        call.set("type", Value::string("function"));
        call.set("function", std::move(fn));
        calls.list->push_back(std::move(call));
      }
      msg.set("tool_calls", std::move(calls));
    }
    if (!m.tool_call_id.empty()) msg.set("tool_call_id", Value::string(m.tool_call_id));
    if (!m.name.empty()) msg.set("name", Value::string(m.name));
    list.list->push_back(std::move(msg));
  }
  ctx.set("messages", std::move(list));
  // tools: [{"type": "function", "function": {...}}] or none, as transformers passes tools=None.
  ctx.set("tools", opts.tools.empty() ? Value::none() : to_value(tools_json(opts.tools)));
  ctx.set("bos_token", Value::string(piece(bos_id())));
  ctx.set("eos_token", Value::string(piece(eos_id())));
  ctx.set("unk_token", Value::string(piece(unk_id())));
  ctx.set("add_generation_prompt", Value::boolean(add_generation_prompt));
  return tmpl.render(ctx);
}

bool Tokenizer::has_tool_tokens() const {
  for (const char* p :
       {"[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"}) {
    const int32_t id = piece_to_id(p);
    if (id < 0 || type(id) != TokenType::kControl) return false;
  }
  return true;
}

// mistral-common's encode_chat_completion: validate, normalise, then InstructTokenizerV1 (kMistralV1) or
// V3 (kMistralV3) encoding. A final assistant message is continued (continue_final_message: no EOS).
Result<std::vector<int32_t>> Tokenizer::apply_chat(const std::vector<ChatMessage>& msgs, ChatFormat format,
                                                   const ChatOptions& opts) const {
  if (format == ChatFormat::kJinja) {
    MX_TRY_STATUS(validate_tools(opts));
    MX_ASSIGN_OR_RETURN(std::string text, render_chat_template(msgs, true, opts));
    return encode(text, false, true);  // the template spells bos_token etc. as text
  }
  const bool v3 = format == ChatFormat::kMistralV3;
  int32_t inst = -1, end_inst = -1;
  if (v3) {
    inst = piece_to_id("[INST]");
    end_inst = piece_to_id("[/INST]");
    if (inst < 0 || end_inst < 0 || type(inst) != TokenType::kControl ||
        type(end_inst) != TokenType::kControl)
      return Error::data(source() +
                         ": mistral-v3 chat needs [INST] and [/INST] control tokens, which this "
                         "vocabulary lacks (use mistral-v1)");
  }
  const bool tool_tokens = v3 && has_tool_tokens();
  MX_TRY_STATUS(validate(msgs, opts, tool_tokens));
  Normalized n = normalize(msgs, tool_tokens);
  if (!tool_tokens && !opts.tools.empty()) {
    std::string sys = n.system;
    join_into(sys, generic_tools_block(opts.tools));
    n.system = std::move(sys);
  }
  const bool continue_final = role_of(msgs.back()) == "assistant";

  std::vector<int32_t> ids;
  if (bos_id() >= 0) ids.push_back(bos_id());
  auto append = [&](const std::string& text) -> Status {
    MX_ASSIGN_OR_RETURN(auto t, encode(text, false, false));
    ids.insert(ids.end(), t.begin(), t.end());
    return {};
  };
  size_t first_user = n.turns.size(), last_user = 0;
  for (size_t i = 0; i < n.turns.size(); ++i) {
    if (n.turns[i].kind != Turn::Kind::kUser) continue;
    if (first_user == n.turns.size()) first_user = i;
    last_user = i;
  }
  for (size_t i = 0; i < n.turns.size(); ++i) {
    const Turn& t = n.turns[i];
    switch (t.kind) {
      case Turn::Kind::kUser: {
        // v1 joins the system prompt to the first user message, v3 to the last one.
        const bool join = !n.system.empty() && i == (v3 ? last_user : first_user);
        const std::string content = join ? n.system + "\n\n" + t.content : t.content;
        if (!v3) {
          MX_TRY_STATUS(append("[INST] " + content + " [/INST]"));
          break;
        }
        if (tool_tokens && i == last_user && !opts.tools.empty()) {
          ids.push_back(piece_to_id("[AVAILABLE_TOOLS]"));
          MX_TRY_STATUS(append(py_dumps(tools_json(opts.tools))));
          ids.push_back(piece_to_id("[/AVAILABLE_TOOLS]"));
        }
        ids.push_back(inst);
        MX_TRY_STATUS(append(content));
        ids.push_back(end_inst);
        break;
      }
      case Turn::Kind::kAssistant: {
        if (!t.calls.empty()) {  // tool_tokens: [TOOL_CALLS] [{"name", "arguments", "id"}, ...]
          Json list = Json::array();
          for (const ToolCall& c : t.calls) {
            Json call = Json::object();
            call["name"] = c.name;
            call["arguments"] = json_or_string(c.arguments);
            if (!c.id.empty() && c.id != "null") call["id"] = c.id;
            list.push_back(std::move(call));
          }
          ids.push_back(piece_to_id("[TOOL_CALLS]"));
          MX_TRY_STATUS(append(py_dumps(list)));
        } else if (v3) {  // InstructTokenizerV2+ strip trailing spaces of the answer
          const size_t keep = t.content.find_last_not_of(' ');
          MX_TRY_STATUS(append(keep == std::string::npos ? std::string() : t.content.substr(0, keep + 1)));
        } else {
          MX_TRY_STATUS(append(t.content));
        }
        if (!(continue_final && i + 1 == n.turns.size()) && eos_id() >= 0) ids.push_back(eos_id());
        break;
      }
      case Turn::Kind::kTool: {  // tool_tokens: [TOOL_RESULTS] {"content", "call_id"} [/TOOL_RESULTS]
        Json r = Json::object();
        r["content"] = json_or_string(t.content);
        r["call_id"] = t.call_id;
        ids.push_back(piece_to_id("[TOOL_RESULTS]"));
        MX_TRY_STATUS(append(py_dumps(r)));
        ids.push_back(piece_to_id("[/TOOL_RESULTS]"));
        break;
      }
    }
  }
  return ids;
}

}  // namespace mixtral
