#include "tools.h"

#include <random>

#include "grammar/json_schema.h"

namespace mixtral::server {

using json = nlohmann::ordered_json;
using grammar::GbnfBuilder;

namespace {

// A schema compiler error "<pointer>: <what>" as a 400 naming the field that holds the schema.
std::string add_schema(GbnfBuilder& b, const json& schema, const std::string& prefix, bool strict,
                       const std::string& param) {
  grammar::SchemaOptions so;
  so.strict = strict;
  auto rule = b.add_schema(schema, prefix, so);
  if (!rule) throw BadRequest{"'" + param + "': " + rule.error().message, param};
  return *rule;
}

}  // namespace

GrammarPlan build_grammar(const GenRequest& r, ToolFormat fmt) {
  GrammarPlan plan;
  using K = OutputFormat::Kind;
  const bool has_tools = !r.tools.empty() && r.tool_choice.kind != ToolChoice::Kind::kNone;
  plan.calls_possible = has_tools;
  plan.text_possible = !has_tools || r.tool_choice.kind == ToolChoice::Kind::kAuto;
  if (r.format.kind == K::kGrammar) {  // (check_format_and_tools refused it beside tools)
    plan.gbnf = r.format.gbnf;
    plan.param = "grammar";
    return plan;
  }
  if (!has_tools && r.format.kind == K::kText) return plan;  // free text

  GbnfBuilder b;
  std::string text_rule;  // the text alternative; empty: free text
  if (plan.text_possible) {
    plan.param = r.format.param;
    if (r.format.kind == K::kJsonObject) {
      text_rule = b.any_object();
    } else if (r.format.kind == K::kJsonSchema) {
      text_rule = add_schema(b, r.format.schema, "fmt-", r.format.strict, r.format.param);
    }
    if (has_tools && fmt == ToolFormat::kGeneric && !text_rule.empty())
      throw BadRequest{
          "a JSON 'response_format' beside 'tools' with 'tool_choice' \"auto\" needs a model with "
          "tool tokens (v3): the generic call layout is JSON too; use tool_choice \"none\", "
          "\"required\" or a named function",
          "response_format"};
  }
  if (!has_tools) {
    plan.gbnf = b.gbnf(text_rule);
    return plan;
  }
  std::string calls_alts;
  for (size_t i = 0; i < r.tools.size(); ++i) {
    const Tool& t = r.tools[i];
    if (r.tool_choice.kind == ToolChoice::Kind::kNamed && t.spec.name != r.tool_choice.name) continue;
    const std::string args = add_schema(b, t.schema, "t" + std::to_string(i) + "-", t.strict, t.schema_param);
    const std::string call =
        b.add_rule("call-" + std::to_string(i),
                   GbnfBuilder::literal("{\"name\": " + json(t.spec.name).dump() + ", \"arguments\": ") +
                       " " + args + " " + GbnfBuilder::literal("}"));
    calls_alts += (calls_alts.empty() ? "" : " | ") + call;
  }
  const std::string call = b.add_rule("call", calls_alts);
  const std::string calls = b.add_rule(
      "calls", r.parallel_tool_calls ? call + " (" + GbnfBuilder::literal(", ") + " " + call + ")*" : call);
  std::string calls_form;
  if (fmt == ToolFormat::kV3)
    calls_form = b.add_rule("calls-form", "<[TOOL_CALLS]> \" \"? \"[\" " + calls + " \"]\"");
  else
    calls_form = b.add_rule("calls-form", GbnfBuilder::literal("{\"tool_calls\": [") + " " + calls + " " +
                                              GbnfBuilder::literal("]}"));
  if (!plan.text_possible) {
    plan.gbnf = b.gbnf(calls_form);
  } else {
    if (text_rule.empty())  // free text that cannot be taken for the calls
      text_rule = b.add_rule("text", fmt == ToolFormat::kV3 ? ".*" : "([^{ \\t\\r\\n] .*)?");
    plan.gbnf = b.gbnf(calls_form + " | " + text_rule);
  }
  if (plan.param.empty()) plan.param = "tools";
  return plan;
}

std::string make_call_id() {
  static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id(9, 'a');
  for (char& c : id) c = kAlnum[rng() % 62];
  return id;
}

ReplyReader::ReplyReader(ToolFormat fmt, bool calls_possible, std::function<std::string()> make_id)
    : fmt_(fmt),
      calls_possible_(calls_possible),
      make_id_(std::move(make_id)),
      call_depth_(fmt == ToolFormat::kV3 ? 2 : 3) {
  if (!calls_possible_) mode_ = Mode::kText;
}

void ReplyReader::push_tool_calls_token() {
  if (mode_ == Mode::kUndecided && calls_possible_ && fmt_ == ToolFormat::kV3) mode_ = Mode::kCalls;
}

std::vector<ReplyEvent> ReplyReader::push(std::string_view s) {
  std::vector<ReplyEvent> out;
  if (s.empty()) return out;
  const size_t from = text_.size();
  text_ += s;
  if (mode_ == Mode::kUndecided) {
    // White space first (a byte-fallback space the decoder keeps) is held: the first other byte tells.
    const size_t first = text_.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return out;
    mode_ = fmt_ == ToolFormat::kGeneric && text_[first] == '{' ? Mode::kCalls : Mode::kText;
    if (mode_ == Mode::kText) {
      out.push_back({ReplyEvent::Kind::kText, 0, text_, "", ""});
    } else {
      scan(text_, out);
    }
    return out;
  }
  if (mode_ == Mode::kText)
    out.push_back({ReplyEvent::Kind::kText, 0, text_.substr(from), "", ""});
  else
    scan(std::string_view(text_).substr(from), out);
  return out;
}

std::vector<ReplyEvent> ReplyReader::flush() {
  std::vector<ReplyEvent> out;
  if (mode_ == Mode::kUndecided && !text_.empty()) {
    mode_ = Mode::kText;
    out.push_back({ReplyEvent::Kind::kText, 0, text_, "", ""});
  }
  return out;
}

void ReplyReader::scan(std::string_view s, std::vector<ReplyEvent>& out) {
  std::string args_piece;  // arguments text of the current call in this push
  auto flush = [&] {
    if (!args_piece.empty() && !calls_.empty())
      out.push_back({ReplyEvent::Kind::kCallArgs, static_cast<int>(calls_.size()) - 1, args_piece, "", ""});
    args_piece.clear();
  };
  for (char c : s) {
    if (closed_) break;
    if (!in_args_ && depth_ == call_depth_ && expect_value_ && key_ == "arguments" && c != ' ' && c != '\t' &&
        c != '\n' && c != '\r' && c != ':') {
      flush();
      in_args_ = true;  // the arguments' value begins
      expect_value_ = false;
      if (!calls_.empty()) {
        ToolCall& call = calls_.back();
        call.id = make_id_();
        out.push_back(
            {ReplyEvent::Kind::kCallStart, static_cast<int>(calls_.size()) - 1, "", call.id, call.name});
      }
    }
    if (in_args_) {
      args_piece += c;
      if (!calls_.empty()) calls_.back().arguments += c;
    }
    if (in_string_) {
      if (capture_) str_ += c;
      if (escape_) {
        escape_ = false;
      } else if (c == '\\') {
        escape_ = true;
      } else if (c == '"') {
        in_string_ = false;
        if (capture_) {
          capture_ = false;
          str_.pop_back();  // the closing quote
          const json decoded = json::parse("\"" + str_ + "\"", nullptr, false);
          const std::string v = decoded.is_string() ? decoded.get<std::string>() : str_;
          if (expect_key_) {
            key_ = v;
            expect_key_ = false;
          } else if (expect_value_ && key_ == "name" && !calls_.empty()) {
            calls_.back().name = v;
            expect_value_ = false;
          }
        }
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string_ = true;
        capture_ = !in_args_ && depth_ == call_depth_;
        str_.clear();
        break;
      case '{':
      case '[':
        ++depth_;
        if (depth_ == call_depth_ && c == '{' && !in_args_) {  // a call begins
          calls_.push_back({});
          args_done_.push_back(false);
          expect_key_ = true;
          expect_value_ = false;
          key_.clear();
        }
        break;
      case '}':
      case ']':
        --depth_;
        if (in_args_ && depth_ == call_depth_) {  // the arguments' object closed
          in_args_ = false;
          if (!args_done_.empty()) args_done_.back() = true;
          flush();
        }
        if (depth_ == 0) closed_ = true;
        if (depth_ < 0) closed_ = true;
        break;
      case ':':
        if (!in_args_ && depth_ == call_depth_) expect_value_ = true;
        break;
      case ',':
        if (!in_args_ && depth_ == call_depth_) {
          expect_key_ = true;
          expect_value_ = false;
        }
        break;
      default:
        break;
    }
  }
  flush();
}

ReplyReader::Final ReplyReader::finish() const {
  Final f;
  if (mode_ != Mode::kCalls) {
    f.content = text_;
    return f;
  }
  // Calls: never shown as text, even when cut short (max_tokens); only the calls that are whole.
  for (size_t i = 0; i < calls_.size(); ++i)
    if (args_done_[i] && !calls_[i].name.empty() &&
        !json::parse(calls_[i].arguments, nullptr, false).is_discarded())
      f.calls.push_back(calls_[i]);
  f.calls_complete = closed_ && !calls_.empty() && f.calls.size() == calls_.size();
  return f;
}

}  // namespace mixtral::server
