// Chat prompts: Mistral v1/v3 by mistral-common's rules (InstructTokenizerV1 / V3), and the Jinja path for
// other templates.
#include <string>

#include "io/quote.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer_impl.h"

namespace mixtral {
namespace {

// Roles must be: [system], user, assistant, user, ..., user.
Status validate_roles(const std::vector<ChatMessage>& msgs) {
  if (msgs.empty()) return Error::data("messages: the conversation is empty");
  size_t first = 0;
  if (msgs[0].role == "system") first = 1;
  if (first == msgs.size()) return Error::data("messages: there is no user message after the system message");
  for (size_t i = first; i < msgs.size(); ++i) {
    const std::string& r = msgs[i].role;
    const std::string at = "messages[" + std::to_string(i) + "].role";
    if (r != "user" && r != "assistant" && r != "system")
      return Error::data(at + ": " + quote_name(r) + " is not supported (system, user, assistant)");
    if (r == "system") return Error::data(at + ": a system message may only come first");
    const char* want = (i - first) % 2 == 0 ? "user" : "assistant";
    if (r != want)
      return Error::data(
          at + ": roles must alternate user/assistant after an optional system message; expected '" + want +
          "', got " + quote_name(r));
  }
  if (msgs.back().role != "user")
    return Error::data(
        "messages[" + std::to_string(msgs.size() - 1) +
        "].role: the last message must be the user's (the prompt is for the assistant's answer)");
  return {};
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

Result<std::string> Tokenizer::render_chat_template(const std::vector<ChatMessage>& messages,
                                                    bool add_generation_prompt) const {
  if (chat_template().empty())
    return Error::data(source() + ": the tokenizer has no chat_template to render");
  MX_ASSIGN_OR_RETURN(tok::jinja::Template tmpl, tok::jinja::Template::parse(chat_template(), source()));
  using tok::jinja::Value;
  Value ctx = Value::new_dict();
  Value list = Value::new_list();
  for (const auto& m : messages) {
    Value msg = Value::new_dict();
    msg.set("role", Value::string(m.role));
    msg.set("content", Value::string(m.content));
    list.list->push_back(std::move(msg));
  }
  ctx.set("messages", std::move(list));
  ctx.set("bos_token", Value::string(piece(bos_id())));
  ctx.set("eos_token", Value::string(piece(eos_id())));
  ctx.set("unk_token", Value::string(piece(unk_id())));
  ctx.set("add_generation_prompt", Value::boolean(add_generation_prompt));
  return tmpl.render(ctx);
}

bool Tokenizer::has_tool_tokens() const {
  for (const char* p : {"[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]"}) {
    const int32_t id = piece_to_id(p);
    if (id < 0 || type(id) != TokenType::kControl) return false;
  }
  return true;
}

Result<std::vector<int32_t>> Tokenizer::apply_chat(const std::vector<ChatMessage>& msgs, ChatFormat format,
                                                   const ChatOptions& opts) const {
  (void)opts;  // tools: being written
  if (format == ChatFormat::kJinja) {
    MX_ASSIGN_OR_RETURN(std::string text, render_chat_template(msgs, true));
    return encode(text, false, true);  // the template spells bos_token etc. as text
  }
  MX_TRY_STATUS(validate_roles(msgs));
  const bool has_system = msgs[0].role == "system";
  const std::string system = has_system ? msgs[0].content : std::string();
  std::vector<int32_t> ids;
  if (bos_id() >= 0) ids.push_back(bos_id());
  auto append = [&](const std::string& text) -> Status {
    MX_ASSIGN_OR_RETURN(auto t, encode(text, false, false));
    ids.insert(ids.end(), t.begin(), t.end());
    return {};
  };
  size_t last_user = 0;
  for (size_t i = 0; i < msgs.size(); ++i)
    if (msgs[i].role == "user") last_user = i;
  int32_t inst = -1, end_inst = -1;
  if (format == ChatFormat::kMistralV3) {
    inst = piece_to_id("[INST]");
    end_inst = piece_to_id("[/INST]");
    if (inst < 0 || end_inst < 0 || type(inst) != TokenType::kControl ||
        type(end_inst) != TokenType::kControl)
      return Error::data(source() +
                         ": mistral-v3 chat needs [INST] and [/INST] control tokens, which this "
                         "vocabulary lacks (use mistral-v1)");
  }
  bool first_user = true;
  for (size_t i = has_system ? 1 : 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "user") {
      // v1 joins the system prompt to the first user message, v3 to the last one.
      const bool join = !system.empty() && (format == ChatFormat::kMistralV1 ? first_user : i == last_user);
      const std::string content = join ? system + "\n\n" + m.content : m.content;
      if (format == ChatFormat::kMistralV1) {
        MX_TRY_STATUS(append("[INST] " + content + " [/INST]"));
      } else {
        ids.push_back(inst);
        MX_TRY_STATUS(append(content));
        ids.push_back(end_inst);
      }
      first_user = false;
    } else {  // assistant
      if (m.content.empty())
        return Error::data("messages[" + std::to_string(i) + "].content: an assistant message needs content");
      MX_TRY_STATUS(append(m.content));
      if (eos_id() >= 0) ids.push_back(eos_id());
    }
  }
  return ids;
}

}  // namespace mixtral
