// Public: the tokenizer (SentencePiece BPE with byte fallback, id-exact with SentencePiece), chat prompts
// (Mistral v1/v3 by mistral-common's rules, or a file's Jinja chat template) and streaming detokenization.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixtral/result.h"

namespace mixtral {

// Piece types, numbered as SentencePiece's ModelProto and GGUF's tokenizer.ggml.token_type number them.
enum class TokenType : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <s>, </s>, v3's [INST]...: never produced from plain text
  kUserDefined = 4,  // always matched in text as a whole
  kUnused = 5,
  kByte = 6,  // <0x00>..<0xFF>, byte fallback
};

enum class ChatFormat {
  kMistralV1,  // <s> ▁[INST]▁user▁[/INST] ▁answer</s> ...   (system joined to the first user turn)
  kMistralV3,  // <s>[INST] ▁user [/INST] ▁answer</s> ...    (system joined to the last user turn)
  kJinja,      // the file's chat_template, rendered and tokenized with special tokens parsed
};
const char* chat_format_name(ChatFormat f);
// "mistral-v1", "mistral-v3", "jinja" -> format; an Error naming `flag` otherwise.
Result<ChatFormat> parse_chat_format(std::string_view name, const char* flag = "--chat-template");

// One function call of an assistant turn.
struct ToolCall {
  std::string id;         // the call's id (echoed by the tool message that answers it)
  std::string name;       // the function's name
  std::string arguments;  // the arguments: JSON text of an object
};

struct ChatMessage {
  ChatMessage() = default;
  // {"user", "text"} and the like, without -Wmissing-field-initializers for the tool fields.
  ChatMessage(std::string role_, std::string content_, std::vector<ToolCall> tool_calls_ = {},
              std::string tool_call_id_ = {}, std::string name_ = {})
      : role(std::move(role_)),
        content(std::move(content_)),
        tool_calls(std::move(tool_calls_)),
        tool_call_id(std::move(tool_call_id_)),
        name(std::move(name_)) {}
  std::string role;  // "system" ("developer" is read as system), "user", "assistant", "tool"
  std::string content;
  std::vector<ToolCall> tool_calls;  // assistant: calls it made (content may then be empty)
  std::string tool_call_id;          // tool: the call this result answers
  std::string name;                  // tool: the function's name (optional)
};

// A function the model may call (OpenAI's tools[].function).
struct ToolSpec {
  std::string name;
  std::string description;
  std::string parameters = "{}";  // JSON Schema of the arguments, as JSON text
};

struct ChatOptions {
  std::vector<ToolSpec> tools;  // offered to the model (v3: [AVAILABLE_TOOLS]; else the generic format)
};

// Which encoder runs. kAuto: the built-in SentencePiece-exact BPE when the model allows it (BPE with an
// identity normalizer: every Mistral tokenizer), otherwise Debian's SentencePiece library.
// kSentencePiece: always the library (the reference implementation), built from the same pieces.
enum class TokenizerBackend { kAuto, kSentencePiece };

struct TokenizerOptions {
  TokenizerBackend backend = TokenizerBackend::kAuto;
};

class Tokenizer {
 public:
  // Loads from a model path or a tokenizer file:
  //   *.gguf                       tokenizer.ggml.* metadata (model "llama": SentencePiece)
  //   directory (HF/consolidated)  tokenizer.model.v3, tokenizer.model, or tokenizer.json (+
  //   tokenizer_config.json) tokenizer.model[.v3]         SentencePiece ModelProto tokenizer.json Hugging
  //   Face BPE (+ tokenizer_config.json beside it)
  // Every error names the file and the field.
  static Result<std::unique_ptr<Tokenizer>> load(const std::string& path, const TokenizerOptions& opts = {});
  // A vocabulary given directly (GGUF-style): pieces, scores and types of the same length.
  struct Vocab {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<TokenType> types;  // empty: inferred (<unk>, <s>, </s>, <0xXX>, else normal)
    int32_t unk_id = 0, bos_id = 1, eos_id = 2;
    bool add_bos = true, add_eos = false, add_dummy_prefix = true;
    std::string chat_template;
  };
  static Result<std::unique_ptr<Tokenizer>> from_vocab(Vocab vocab, const std::string& name,
                                                       const TokenizerOptions& opts = {});
  // A serialized SentencePiece ModelProto (the bytes of a tokenizer.model).
  static Result<std::unique_ptr<Tokenizer>> from_sentencepiece(std::string_view proto,
                                                               const std::string& name,
                                                               const TokenizerOptions& opts = {});
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> ids, exactly as SentencePiece: dummy-prefix space, spaces as "▁", byte fallback. Invalid UTF-8
  // is not rejected: each invalid byte is replaced by U+FFFD, as SentencePiece's normalizer does.
  // parse_special: control/unknown/user-defined pieces written in the text ("<s>", v3's "[INST]") become
  // their ids; the text between them is encoded fragment by fragment (each with its dummy prefix, as
  // llama.cpp and mistral-common's per-segment encoding do). Without it, plain text never yields them.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_bos, bool parse_special = false) const;
  // Ids -> text, exactly as SentencePiece's Decode: control pieces vanish, <unk> is " ⁇ ", byte runs are
  // UTF-8 with U+FFFD per invalid byte, and the dummy-prefix space is dropped at sequence start only.
  // An id outside [0, n_vocab) is an error naming it.
  Result<std::string> decode(const std::vector<int32_t>& ids) const;

  int32_t n_vocab() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  bool add_bos() const;                        // the file's add_bos_token (default true)
  bool add_eos() const;                        // the file's add_eos_token (default false)
  const std::string& piece(int32_t id) const;  // empty for an id out of range
  float score(int32_t id) const;
  TokenType type(int32_t id) const;
  int32_t piece_to_id(std::string_view piece) const;  // -1 when absent
  const std::string& chat_template() const;           // empty when the file has none
  const std::string& source() const;                  // the file it came from
  bool uses_sentencepiece_library() const;

  // The format `auto` chooses: the native Mistral builder when the file has no template or a Mistral
  // [INST] one (v3 when [INST] is a control piece, else v1), otherwise kJinja.
  ChatFormat default_chat_format() const;
  // Ids of the prompt ready for the assistant's answer, by mistral-common's rules for
  // kMistralV1/kMistralV3 (messages normalised as its normaliser does: system messages joined,
  // consecutive messages of one role merged, a final assistant message continued without its EOS), or by
  // rendering chat_template() for kJinja. Tools: v3 control tokens where the vocabulary has them, else the
  // generic format of docs/agents.md.
  Result<std::vector<int32_t>> apply_chat(const std::vector<ChatMessage>& messages, ChatFormat format,
                                          const ChatOptions& opts = {}) const;
  // True when the vocabulary has Mistral v3's tool control tokens ([AVAILABLE_TOOLS], [TOOL_CALLS],
  // [TOOL_RESULTS] as control pieces).
  bool has_tool_tokens() const;
  // The rendered text of chat_template() (kJinja path) for the messages, with the variables transformers
  // passes: messages (tool_calls as [{id, type, function: {name, arguments (parsed JSON)}}], tool_call_id,
  // name), tools ([{type: "function", function: {name, description, parameters}}] or none), bos_token,
  // eos_token, unk_token, add_generation_prompt.
  Result<std::string> render_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt = true,
                                           const ChatOptions& opts = {}) const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental ids -> text for streaming output. The concatenation of everything push() and finish()
// return equals Tokenizer::decode of the same ids, and every returned string is valid UTF-8: a partial
// multi-byte character spelled by byte pieces is held until it completes (or is known to be invalid).
class StreamingDecoder {
 public:
  // at_sequence_start: the ids begin a sequence, so a leading dummy-prefix space is dropped (as decode
  // does); false for a continuation of text already shown (e.g. generated tokens after a prompt).
  // `tok` must outlive the decoder.
  explicit StreamingDecoder(const Tokenizer& tok, bool at_sequence_start = true);
  // Text completed by this id (possibly empty). An id out of range is an error and changes nothing.
  Result<std::string> push(int32_t id);
  // Flushes held bytes (each byte of an unfinished character becomes U+FFFD, as decode does).
  std::string finish();
  void reset(bool at_sequence_start = true);

 private:
  std::string flush_bytes(bool run_ended);
  const Tokenizer* tok_;
  std::string pending_;    // bytes of byte pieces not yet emitted
  bool is_bos_ws_ = true;  // a leading "▁" may still be the dummy prefix
  bool bos_ws_seen_ = false;
  bool emitted_ = false;  // any text produced so far
};

}  // namespace mixtral
