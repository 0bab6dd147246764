// Constrained replies: a request's response_format / json_schema / grammar / tools / tool_choice as one
// GBNF grammar, and the model's reply read back as text or tool calls (incrementally, for streaming).
//
// Tool-call layouts (docs/agents.md "Server API"):
//   v3 vocabularies (Tokenizer::has_tool_tokens): the control token [TOOL_CALLS], then a JSON array
//     [{"name": "<fn>", "arguments": {...}}, ...]  (mistral-common's layout; " " before "[" optional)
//   other vocabularies (generic): {"tool_calls": [{"name": "<fn>", "arguments": {...}}, ...]}
// tool_choice auto: text or calls. In the generic layout the text may not begin with "{" or white space,
// so the first byte of the reply tells which it is; in v3 the control token does.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "request.h"

namespace mixtral::server {

enum class ToolFormat { kV3, kGeneric };

struct GrammarPlan {
  std::string gbnf;   // the whole grammar; empty: the reply is free text
  std::string param;  // the field a grammar error names
  bool calls_possible = false;
  bool text_possible = true;
};

// Compiles the request's output constraint. Throws BadRequest naming the field (a schema error names
// e.g. "tools[1].function.parameters" with the message "<pointer>: <what>").
GrammarPlan build_grammar(const GenRequest& r, ToolFormat fmt);

// A fresh call id: 9 characters [a-zA-Z0-9] (what mistral-common's v3 requires).
std::string make_call_id();

// A piece of a reply as the client is sent it.
struct ReplyEvent {
  enum class Kind { kText, kCallStart, kCallArgs } kind = Kind::kText;
  int index = 0;         // call index (kCallStart, kCallArgs)
  std::string text;      // kText: text; kCallArgs: the next piece of the arguments' JSON text
  std::string id, name;  // kCallStart
};

// Reads the reply as it is generated: text passes through; once the reply is known to be calls, each
// call is announced (kCallStart, with its id and name) when its arguments begin, and the arguments' JSON
// text follows in pieces. Until the form is known (nothing but an empty text yet) nothing is released.
class ReplyReader {
 public:
  ReplyReader(ToolFormat fmt, bool calls_possible, std::function<std::string()> make_id = make_call_id);
  // The next client-visible text.
  std::vector<ReplyEvent> push(std::string_view text);
  // At the end of the reply: white space still held (a reply of nothing else) is released as text.
  std::vector<ReplyEvent> flush();
  // The v3 [TOOL_CALLS] control token was generated.
  void push_tool_calls_token();
  bool in_calls() const { return mode_ == Mode::kCalls; }

  struct Final {
    std::optional<std::string> content;  // null when the reply is calls (also when cut short)
    std::vector<ToolCall> calls;         // the calls that are whole (a call cut short is left out)
    bool calls_complete = false;         // calls, and the whole structure closed
  };
  Final finish() const;

 private:
  enum class Mode { kUndecided, kText, kCalls };
  void scan(std::string_view s, std::vector<ReplyEvent>& out);

  ToolFormat fmt_;
  bool calls_possible_;
  std::function<std::string()> make_id_;
  Mode mode_ = Mode::kUndecided;
  std::string text_;  // everything pushed (text mode: the content; calls mode: the calls' JSON text)

  // The calls scanner: JSON nesting over the calls text.
  int call_depth_;  // nesting depth inside one call object: v3 2 ([ {), generic 3 ({ [ {)
  int depth_ = 0;
  bool in_string_ = false, escape_ = false;
  bool expect_key_ = false;  // at call depth: the next string is a key
  bool expect_value_ = false;
  bool capture_ = false;  // capturing a key or the name's string at call depth
  std::string str_, key_;
  bool in_args_ = false;
  bool closed_ = false;  // the outermost structure closed
  std::vector<ToolCall> calls_;
  std::vector<bool> args_done_;
};

}  // namespace mixtral::server
