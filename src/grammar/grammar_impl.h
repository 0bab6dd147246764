// The compiled grammar (byte level) and the matcher's stacks. Private to src/grammar.
//
// A Grammar is a flat array of elements; each rule is a list of alternatives, each alternative a run of
// elements ending with kEnd. Repetitions and groups were rewritten into rules by the parser (X* as
// R ::= X R | ε, right-recursive so the stacks stay flat). Terminals:
//   kByte  one byte (literals are UTF-8 bytes),
//   kClass one code point of a class (ranges of code points; matched byte by byte through UTF-8, the stack
//          top remembering the partial character),
//   kToken one special token id.
// A matcher state is a set of stacks; a stack is a chain of Nodes (top first): the top holds the position
// of a terminal, every node below the position where its rule continues. Nodes are immutable and shared.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grammar/grammar.h"

namespace mixtral::grammar {

enum class ElemKind : uint8_t { kEnd, kByte, kClass, kRule, kToken };

struct Elem {
  ElemKind kind = ElemKind::kEnd;
  uint32_t arg = 0;  // byte value, class id, rule id or token id
};

// A set of code points as sorted disjoint inclusive ranges (surrogates removed), plus the bytes that can
// start one of its characters (ASCII members and live UTF-8 lead bytes).
struct CodeClass {
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  std::array<uint64_t, 4> first{};  // 256-bit set
  uint64_t hash = 0;                // of ranges (identifies the class across grammars)

  bool contains(uint32_t cp) const;
  // Some member lies in [lo, hi].
  bool intersects(uint32_t lo, uint32_t hi) const;
  bool first_has(uint8_t b) const { return (first[b >> 6] >> (b & 63)) & 1; }
};

struct Rule {
  std::string name;
  std::vector<uint32_t> alts;  // start positions in Grammar::elems
};

struct Grammar {
  std::vector<Elem> elems;
  std::vector<Rule> rules;
  std::vector<CodeClass> classes;
  uint32_t start_rule = 0;
  uint64_t serial = 0;  // unique per compiled grammar (cache keys)
};

// One stack frame. partial (tops on a kClass only): 0, or the character begun so far:
// value << 6 | total_len << 3 | remaining.
struct Node {
  uint32_t pos = 0;
  uint32_t partial = 0;
  uint64_t hash = 0;  // of (pos, partial) and the parent's hash: equal stacks have equal hashes
  const Node* parent = nullptr;
  uint32_t depth = 1;
  bool arena = false;                     // scratch node of one computation (not reference counted)
  mutable std::atomic<uint32_t> refs{0};  // persistent nodes: holders (children, matchers, caches)
};

void node_ref(const Node* n);
void node_unref(const Node* n);

// An owning reference to a persistent node.
class NodeRef {
 public:
  NodeRef() = default;
  explicit NodeRef(const Node* n) : n_(n) { node_ref(n_); }
  NodeRef(const NodeRef& o) : n_(o.n_) { node_ref(n_); }
  NodeRef(NodeRef&& o) noexcept : n_(o.n_) { o.n_ = nullptr; }
  NodeRef& operator=(NodeRef o) noexcept {
    std::swap(n_, o.n_);
    return *this;
  }
  ~NodeRef() { node_unref(n_); }
  const Node* get() const { return n_; }

 private:
  const Node* n_ = nullptr;
};

bool same_stack(const Node* a, const Node* b);

// UTF-8: a lead byte's length (2..4) and value bits; false for ASCII, continuation and invalid bytes.
inline bool utf8_lead(uint8_t b, uint32_t& len, uint32_t& value) {
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2, value = b & 0x1Fu;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3, value = b & 0x0Fu;
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4, value = b & 0x07u;
  } else {
    return false;
  }
  return true;
}
// The code points a character of `len` bytes can still become with `value` read and `remaining`
// continuation bytes to come: [lo, hi] (lo > hi: none, e.g. an overlong form).
inline void utf8_span(uint32_t value, uint32_t len, uint32_t remaining, uint32_t& lo, uint32_t& hi) {
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  static constexpr uint32_t kMax[5] = {0, 0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  lo = value << (6 * remaining);
  hi = lo | ((1u << (6 * remaining)) - 1);
  if (lo < kMin[len]) lo = kMin[len];
  if (hi > kMax[len]) hi = kMax[len];
}

// Stack-like scratch allocator for Nodes: mark() / release(mark) free everything allocated after the mark.
class NodeArena {
 public:
  Node* make(uint32_t pos, uint32_t partial, const Node* parent);
  size_t mark() const { return used_; }
  void release(size_t mark) { used_ = mark; }

 private:
  static constexpr size_t kChunk = 4096;
  std::vector<std::unique_ptr<Node[]>> chunks_;
  size_t used_ = 0;
};

// A set of stacks: tops, sorted by hash, without duplicates; accepting: the empty stack (the grammar can
// end here) is a member.
struct StackSet {
  std::vector<const Node*> tops;
  bool accepting = false;
  bool empty() const { return tops.empty() && !accepting; }
};
bool same_set(const StackSet& a, const StackSet& b);
void canonicalize(StackSet& s);

// The stepping functions (matcher.cpp), over scratch or persistent nodes; results are arena nodes
// chained onto the inputs' nodes.
struct Stepper {
  // Past this many stacks an advance fails (hostile ambiguous grammars; e.g. x ::= "a" x "b" | "a" x "c"
  // doubles its stacks per byte). Ordinary grammars stay in the tens.
  static constexpr size_t kMaxStacks = 4096;
  const Grammar& g;
  NodeArena& arena;
  // Expansions done in the current step, (pos, parent): the same pair expands to the same stacks, so it is
  // expanded once (keeps nested alternatives such as x1 ::= x2 | x2, x2 ::= x3 | x3 ... linear).
  std::vector<std::pair<uint32_t, const Node*>> seen{};
  void begin_step() { seen.clear(); }
  // The stacks reached from a frame at `pos` (any element) with `parent` below it, added to out.
  void expand(uint32_t pos, const Node* parent, StackSet& out);
  // out := stacks of `in` advanced by byte b (canonical).
  void advance_byte(const StackSet& in, uint8_t b, StackSet& out);
  void advance_token(const StackSet& in, int32_t token, StackSet& out);
  // The 256-bit set of bytes some top may accept (a superset; exact for whole bytes of kByte tops).
  void first_bytes(const StackSet& s, std::array<uint64_t, 4>& bits) const;
};

uint64_t hash_mix(uint64_t h, uint64_t v);
NodeArena& scratch_arena();  // per thread

struct Matcher::State {
  GrammarPtr g;
  std::vector<NodeRef> holds;            // owning refs of set.tops
  StackSet set;                          // canonical, persistent nodes
  uint64_t key = 0;                      // hash of the set (mask cache key)
  void assign(const StackSet& scratch);  // persists scratch nodes and takes the set
  // Token t: its bytes (when try_bytes) or a token terminal naming it; false leaves the state unchanged.
  bool advance(int32_t token, std::string_view bytes, bool try_bytes);
};

}  // namespace mixtral::grammar
