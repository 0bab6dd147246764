// Constrained decoding: grammars compiled to byte level, an incremental matcher per sequence, and a token
// mask over the vocabulary applied to the logits before sampling.
//
//   GBNF text (llama.cpp's syntax) --parse_gbnf--> Grammar (immutable, shared by every sequence using it)
//   JSON Schema --json_schema.h--> GBNF text --parse_gbnf--> Grammar
//   Matcher: where one sequence stands in a Grammar; advanced by the bytes of each sampled token
//   TokenMasker: the vocabulary as a byte trie (built once per model); mask(matcher) -> allowed token ids
//
// Terminals are bytes: a code-point class such as [^"\\] or [α-ω] is compiled into byte-range sequences
// (UTF-8), so tokens that end inside a multi-byte character (byte-fallback pieces, partial characters)
// are matched as they come. A terminal may also be one special token id (GBNF `<[ID]>`, or `<PIECE>` for a
// control piece such as `<[TOOL_CALLS]>`... see parse_gbnf): control tokens are allowed only there.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mixtral/result.h"

namespace mixtral {
class Tokenizer;
}

namespace mixtral::grammar {

struct Grammar;  // compiled rules (grammar_impl.h)
using GrammarPtr = std::shared_ptr<const Grammar>;

struct GbnfOptions {
  std::string root = "root";  // the start rule
  // Resolves `<PIECE>` token references (e.g. "[TOOL_CALLS]") to ids; -1 or absent: an error naming it.
  std::function<int32_t(std::string_view)> token_id;
  // The client sees the text with one leading space dropped (SentencePiece's dummy prefix at the start of
  // a chat answer): accept an optional " " before the root.
  bool optional_leading_space = false;
  // Limits against hostile input (each breach is an error naming the limit).
  size_t max_text_bytes = 1u << 20;
  size_t max_rules = 20000;
  int max_nesting = 64;  // nested ( ) groups
};

// llama.cpp's GBNF: `name ::= alternatives` rules (names [a-zA-Z0-9-]+), "literals" and [classes] with
// escapes \n \r \t \\ \" \] \xHH \uHHHH \UHHHHHHHH, [^negated] classes, `.` (any code point), ( groups ),
// postfix * + ? {m} {m,} {m,n}, `|`, comments from # to the end of the line; plus token terminals
// `<[ID]>` (a token id) and `<PIECE>` (resolved by opts.token_id). Errors name line and column:
//   "grammar line 3 col 14: undefined rule 'valu'"
Result<GrammarPtr> parse_gbnf(std::string_view text, const GbnfOptions& opts = {});

// Where one sequence stands. Cheap to copy (choices of one request fork a copy).
class Matcher {
 public:
  explicit Matcher(GrammarPtr g);
  Matcher(const Matcher&);
  Matcher& operator=(const Matcher&);
  Matcher(Matcher&&) noexcept;
  Matcher& operator=(Matcher&&) noexcept;
  ~Matcher();

  // Consumes bytes (all or nothing): false leaves the matcher unchanged.
  bool advance_bytes(std::string_view bytes);
  // Consumes one special-token terminal; false leaves the matcher unchanged.
  bool advance_special(int32_t token);
  bool can_end() const;   // what was consumed is a complete sentence of the grammar
  bool must_end() const;  // complete, and no byte or token can follow
  const Grammar& grammar() const;

  struct State;  // matcher_impl

 private:
  friend class TokenMasker;
  std::unique_ptr<State> s_;
};

// The vocabulary as the client sees each token: its bytes after detokenization ("▁" as " ", <0xHH> as
// the byte). Control tokens (BOS, EOS, [INST], [TOOL_CALLS], ...) have no bytes: they are allowed only
// where a token terminal names them (and EOS where the grammar can end).
struct Vocabulary {
  std::vector<std::string> bytes;  // [n_vocab]
  std::vector<uint8_t> special;    // [n_vocab] 1: control token (never matched by bytes)
  int32_t eos = -1;
};

// The tokenizer's vocabulary in that form (vocab.cpp).
Vocabulary vocabulary_of(const Tokenizer& tok);

struct MaskerOptions {
  size_t cache_entries = 1024;  // masks kept per matcher state (LRU; 0: no cache); n_vocab/8 bytes each
};

class TokenMasker {
 public:
  explicit TokenMasker(Vocabulary v);  // builds the byte trie once
  TokenMasker(Vocabulary v, MaskerOptions opts);
  ~TokenMasker();
  int32_t n_vocab() const;
  const Vocabulary& vocabulary() const;

  // mask[t / 32] bit (t % 32) set iff token t may follow: its bytes advance the matcher, or it is a
  // special token a terminal allows here, or it is EOS and m.can_end(). mask is resized to words().
  // Thread-safe (masks are cached per matcher state where it pays).
  void fill_mask(const Matcher& m, std::vector<uint32_t>& mask) const;
  size_t words() const { return (static_cast<size_t>(n_vocab()) + 31) / 32; }
  // Advances m by token t; false (m unchanged) when t is not allowed. EOS: true iff m.can_end().
  bool accept(Matcher& m, int32_t t) const;

  // Counters since construction (benchmarks, logs).
  struct Stats {
    uint64_t hits = 0;          // masks served from the cache
    uint64_t misses = 0;        // masks computed
    uint64_t class_runs = 0;    // of those, computed with the class-run shortcut (token_mask.cpp)
    uint64_t subtree_runs = 0;  // trie subtrees below the root done by the same shortcut
    uint64_t counted_runs = 0;  // masks computed with the counted-run shortcut (bounded repetitions)
  };
  Stats stats() const;
  void clear_cache() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Sets logits[t] = -inf for every token the mask leaves out.
void apply_mask(const std::vector<uint32_t>& mask, float* logits, int64_t n_vocab);

}  // namespace mixtral::grammar
