// Token masks: the vocabulary's byte strings as a trie, walked with the matcher's stack set (a branch is
// dropped as soon as no stack survives its bytes), plus shortcuts:
//  - Class runs. When every stack that can take a character of some broad code-point class C sits on C
//    (or on a class containing C), and taking any character of C leads back to the very same stack set
//    (string content such as
//    [^"\\]* in JSON: the stacks loop), a token is allowed iff its bytes after its longest prefix of whole
//    C characters are. So tokens made only of C characters are allowed at once (a precomputed bitset per
//    class) and only the remainders of the others are walked (a second, much smaller trie per class).
//  - Counted runs. The same, when a character of C moves the set on instead of back (a bounded repetition
//    such as a string's {0,100}: a counter moves): the sets after 0, 1, ... p characters are computed up to
//    the longest token, and a token starting with exactly p whole C characters is decided by S_p (all-C
//    tokens by a bitset per p; remainders walked in a trie per p).
//  - A cache of masks per (grammar, stack set), LRU, exact (stacks are compared, not only hashed).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <unordered_map>

#include "core/check.h"
#include "grammar/grammar_impl.h"
#include "tokenizer/utf8.h"

namespace mixtral::grammar {

namespace {

// Byte strings with token ids; children of a node are contiguous, sorted by byte.
struct Trie {
  struct NodeInfo {
    uint32_t child_begin = 0, child_count = 0;
    uint32_t tok_begin = 0, tok_count = 0;  // tokens ending here: toks[tok_begin, +tok_count)
    uint32_t sub_end = 0;                   // tokens in the subtree: toks[tok_begin, sub_end)
  };
  std::vector<NodeInfo> nodes;       // [0]: the root (empty string)
  std::vector<uint8_t> child_byte;   // [n_edges]
  std::vector<uint32_t> child_node;  // [n_edges]
  std::vector<int32_t> toks;
  std::vector<uint32_t>
      toks_len;  // [toks] length of the string the trie holds for it (a suffix of its bytes)

  void build(std::vector<std::pair<std::string_view, int32_t>> entries) {
    std::sort(entries.begin(), entries.end());
    nodes.clear();
    child_byte.clear();
    child_node.clear();
    toks.clear();
    toks_len.clear();
    nodes.emplace_back();
    build_node(0, entries, 0, entries.size(), 0);
  }

 private:
  void build_node(uint32_t id, const std::vector<std::pair<std::string_view, int32_t>>& e, size_t lo,
                  size_t hi, size_t depth) {
    size_t i = lo;
    nodes[id].tok_begin = static_cast<uint32_t>(toks.size());
    while (i < hi && e[i].first.size() == depth) {
      toks_len.push_back(static_cast<uint32_t>(depth));
      toks.push_back(e[i++].second);
    }
    nodes[id].tok_count = static_cast<uint32_t>(toks.size()) - nodes[id].tok_begin;
    // Groups by the byte at `depth`.
    std::vector<std::pair<size_t, size_t>> groups;
    for (size_t j = i; j < hi;) {
      size_t k = j;
      while (k < hi && e[k].first[depth] == e[j].first[depth]) ++k;
      groups.push_back({j, k});
      j = k;
    }
    nodes[id].child_begin = static_cast<uint32_t>(child_byte.size());
    nodes[id].child_count = static_cast<uint32_t>(groups.size());
    for (auto [a, b] : groups) {
      child_byte.push_back(static_cast<uint8_t>(e[a].first[depth]));
      child_node.push_back(static_cast<uint32_t>(nodes.size()));
      nodes.emplace_back();
    }
    for (size_t gi = 0; gi < groups.size(); ++gi)
      build_node(child_node[nodes[id].child_begin + gi], e, groups[gi].first, groups[gi].second, depth + 1);
    nodes[id].sub_end = static_cast<uint32_t>(toks.size());
  }
};

// Bytes at the start of b that are whole UTF-8 characters of c.
size_t class_prefix(const CodeClass& c, std::string_view b) {
  size_t i = 0;
  while (i < b.size()) {
    const auto b0 = static_cast<uint8_t>(b[i]);
    uint32_t cp, len, val;
    if (b0 < 0x80) {
      cp = b0, len = 1;
    } else {
      if (!utf8_lead(b0, len, val) || i + len > b.size()) break;
      bool ok = true;
      for (uint32_t k = 1; k < len; ++k) {
        const auto bk = static_cast<uint8_t>(b[i + k]);
        ok = ok && (bk & 0xC0) == 0x80;
        val = val << 6 | (bk & 0x3Fu);
      }
      uint32_t lo, hi;
      utf8_span(val, len, 0, lo, hi);
      if (!ok || lo > hi) break;
      cp = val;
    }
    if (!c.contains(cp)) break;
    i += len;
  }
  return i;
}

// Per code-point class C, the tokens whose first byte can start a C character (the others are walked in
// the vocabulary's trie, skipping those first bytes), by p, the number of whole C characters they start with:
// those made only of C characters, and the remainders of the others past their p characters.
struct ClassData {
  std::vector<uint32_t> all_in;  // [words] mask bits
  Trie rest;                     // remainders, any p; with rest_whole also the tokens not starting in C
  bool rest_whole = false;       // broad classes: a loop walks rest alone (one trie walk, no skipping)
  // [p][words]: tokens made only of C characters, at most p of them (p = 0..min(max_chars, kUptoCap)).
  std::vector<std::vector<uint32_t>> all_in_upto;
  std::vector<std::vector<int32_t>> all_in_long;  // [p]: tokens made only of p > kUptoCap C characters
  std::vector<Trie> rest_at;  // [p]: remainders of the others starting with exactly p C characters
};

// Class-run shortcuts consider classes of at least kBroadClass first bytes; below kBroadLoop only where at
// least kRunTokens tokens start with them; below the root, only classes of kBroadLoop first bytes.
constexpr int kBroadClass = 8;
constexpr int kBroadLoop = 64;
constexpr uint32_t kRunTokens = 256;
constexpr size_t kUptoCap = 16;       // counted runs: a bitset per p up to this many characters, lists beyond
constexpr uint32_t kSubtreeRun = 24;  // trie subtrees this big are checked for a class run below the root

int popcount4(const std::array<uint64_t, 4>& a) {
  return __builtin_popcountll(a[0]) + __builtin_popcountll(a[1]) + __builtin_popcountll(a[2]) +
         __builtin_popcountll(a[3]);
}

struct CacheEntry {
  uint64_t serial = 0, key = 0;
  bool accepting = false;
  std::vector<NodeRef> holds;     // keeps the key's stacks alive
  std::vector<const Node*> tops;  // the key's stacks (canonical)
  std::vector<uint32_t> mask;     // [words]
};

}  // namespace

struct TokenMasker::Impl {
  Vocabulary v;
  MaskerOptions opts;
  size_t words = 0;
  Trie trie;
  size_t max_len = 0;                       // longest token, bytes (walk depth)
  size_t max_chars = 0;                     // longest token, UTF-8 characters (lead and ASCII bytes)
  std::array<uint32_t, 256> first_count{};  // tokens (with bytes) per first byte

  mutable std::mutex mu;              // guards everything below
  mutable std::list<CacheEntry> lru;  // most recent first
  mutable std::unordered_multimap<uint64_t, std::list<CacheEntry>::iterator> index;
  mutable std::unordered_map<uint64_t, std::shared_ptr<const ClassData>> class_data;  // by class hash
  mutable std::atomic<uint64_t> hits{0}, misses{0}, class_runs{0}, subtree_runs{0}, counted_runs{0};

  std::shared_ptr<const ClassData> class_data_for(const CodeClass& c) const;
  void compute(const Matcher::State& s, std::vector<uint32_t>& mask) const;
  bool counted_run(Stepper& st, const StackSet& set, uint32_t cls, std::vector<StackSet>& pool,
                   uint32_t* mask) const;
  // skip: first bytes not walked from the root (nullptr: none).
  void walk(Stepper& st, const Trie& t, uint32_t node, const StackSet& s, std::vector<StackSet>& pool,
            size_t depth, uint32_t* mask, const std::array<uint64_t, 4>* skip = nullptr) const;
};

std::shared_ptr<const ClassData> TokenMasker::Impl::class_data_for(const CodeClass& c) const {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = class_data.find(c.hash); it != class_data.end()) return it->second;
  }
  auto d = std::make_shared<ClassData>();
  d->all_in.assign(words, 0);
  d->rest_whole = popcount4(c.first) >= kBroadLoop;
  const size_t cap = std::min(max_chars, kUptoCap);
  d->all_in_upto.assign(cap + 1, std::vector<uint32_t>(words, 0));
  d->all_in_long.resize(max_chars + 1);
  std::vector<std::pair<std::string_view, int32_t>> rest;
  std::vector<std::vector<std::pair<std::string_view, int32_t>>> rest_at(max_chars + 1);
  for (size_t t = 0; t < v.bytes.size(); ++t) {
    if (v.special[t] || v.bytes[t].empty()) continue;
    const std::string_view b = v.bytes[t];
    if (!c.first_has(static_cast<uint8_t>(b[0]))) {
      if (d->rest_whole) rest.push_back({b, static_cast<int32_t>(t)});
      continue;
    }
    const size_t i = class_prefix(c, b);
    size_t p = 0;  // whole characters in b[0, i)
    for (size_t k = 0; k < i; ++k) p += (static_cast<uint8_t>(b[k]) & 0xC0) != 0x80;
    if (i == b.size()) {
      d->all_in[t / 32] |= 1u << (t % 32);
      if (p <= cap) {
        d->all_in_upto[p][t / 32] |= 1u << (t % 32);  // made cumulative below
      } else {
        d->all_in_long[p].push_back(static_cast<int32_t>(t));
      }
    } else {
      rest.push_back({b.substr(i), static_cast<int32_t>(t)});
      rest_at[p].push_back({b.substr(i), static_cast<int32_t>(t)});
    }
  }
  for (size_t q = 1; q <= cap; ++q)
    for (size_t w = 0; w < words; ++w) d->all_in_upto[q][w] |= d->all_in_upto[q - 1][w];
  d->rest.build(std::move(rest));
  d->rest_at.resize(max_chars + 1);
  for (size_t p = 0; p <= max_chars; ++p) d->rest_at[p].build(std::move(rest_at[p]));
  std::lock_guard<std::mutex> lock(mu);
  if (class_data.size() >= 64) class_data.clear();  // bounded: broad classes are few in practice
  class_data.emplace(c.hash, d);
  return d;
}

// Every member of d is in c (both sorted disjoint ranges; a false "no" only costs the shortcut).
static bool covers(const CodeClass& d, const CodeClass& c) {
  for (const auto& [lo, hi] : c.ranges) {
    auto it =
        std::lower_bound(d.ranges.begin(), d.ranges.end(), lo,
                         [](const std::pair<uint32_t, uint32_t>& r, uint32_t v) { return r.second < v; });
    if (it == d.ranges.end() || it->first > lo || it->second < hi) return false;
  }
  return true;
}

// Every character of class cls advances `set` alike: each top either sits on a class containing all of cls
// with no partial character (it takes any member the same way: on to the element after it) or cannot start
// a character of cls (its first bytes are not cls's).
static bool uniform(const Grammar& g, const StackSet& set, uint32_t cls) {
  const CodeClass& c = g.classes[cls];
  for (const Node* n : set.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind == ElemKind::kByte) {
      if (e.arg < 256 && c.first_has(static_cast<uint8_t>(e.arg))) return false;
    } else if (e.kind == ElemKind::kClass && n->partial == 0) {  // partial tops take continuation bytes only
      const CodeClass& d = g.classes[e.arg];
      if (e.arg == cls || covers(d, c)) continue;
      for (int i = 0; i < 4; ++i)
        if (d.first[i] & c.first[i]) return false;
    }
  }
  return true;
}

// The first character of class c, UTF-8 (1..4 bytes).
static size_t first_char(const CodeClass& c, char* ch) {
  std::string tmp;
  tok::append_utf8(tmp, c.ranges.front().first);
  std::memcpy(ch, tmp.data(), tmp.size());
  return tmp.size();
}

// out := in advanced by the bytes ch[0, nch).
static void advance_bytes(Stepper& st, const StackSet& in, const char* ch, size_t nch, StackSet& out) {
  thread_local StackSet tmp;
  st.advance_byte(in, static_cast<uint8_t>(ch[0]), out);
  for (size_t i = 1; i < nch && !out.empty(); ++i) {
    st.advance_byte(out, static_cast<uint8_t>(ch[i]), tmp);
    std::swap(out, tmp);
  }
}

// A class run at `set`: a broad class C (at least kBroadClass first bytes) on some top with no partial
// character, and every character of C advancing `set` alike (uniform), so the set after a token's longest
// prefix of whole C characters depends only on how many there are. loops: one character of C leads back to
// `set` itself (string content [^"\\]*: then every prefix does); else a counted run (e.g. the {0,100} of a
// bounded string: each character moves a counter on).
struct Run {
  uint32_t cls = UINT32_MAX;
  bool loops = false;
};

// first_count (nullable): [256] tokens per first byte; with it a class of fewer than kBroadLoop first bytes
// counts only when at least kRunTokens tokens start with them (else walking them costs less).
static Run class_run(Stepper& st, const StackSet& set, int min_first, const uint32_t* first_count = nullptr) {
  const Grammar& g = st.g;
  int best = min_first - 1;
  uint32_t cls = UINT32_MAX;
  for (const Node* n : set.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind != ElemKind::kClass || n->partial != 0) continue;
    const CodeClass& c = g.classes[e.arg];
    const int pc = popcount4(c.first);
    if (pc <= best) continue;
    if (first_count && pc < kBroadLoop) {
      uint32_t toks = 0;
      for (int b = 0; b < 256; ++b) toks += c.first_has(static_cast<uint8_t>(b)) ? first_count[b] : 0;
      if (toks < kRunTokens) continue;
    }
    best = pc, cls = e.arg;
  }
  if (cls == UINT32_MAX || !uniform(g, set, cls)) return {};
  char ch[4];
  const size_t nch = first_char(g.classes[cls], ch);
  const size_t mark = st.arena.mark();
  thread_local StackSet a;
  advance_bytes(st, set, ch, nch, a);
  const bool loops = same_set(a, set);
  st.arena.release(mark);
  return {cls, loops};
}

// Below a trie node whose set is a class run: each token's bytes past the node, after their longest run of
// whole class characters, are run from the set directly (no trie walk of the subtree).
static void run_subtree(Stepper& st, const Trie& t, const Vocabulary& v, const Trie::NodeInfo& ni,
                        size_t depth, const StackSet& set, const CodeClass& c, uint32_t* mask) {
  thread_local StackSet a, b;
  for (uint32_t k = ni.tok_begin + ni.tok_count; k < ni.sub_end; ++k) {
    const auto id = static_cast<uint32_t>(t.toks[k]);
    const std::string_view bytes = v.bytes[id];
    const size_t off = bytes.size() - t.toks_len[k] + depth;  // where the node's string ends in the token
    const size_t p = off + class_prefix(c, bytes.substr(off));
    bool ok = true;
    if (p < bytes.size()) {
      const size_t mark = st.arena.mark();
      a = set;
      for (size_t i = p; i < bytes.size() && ok; ++i) {
        st.advance_byte(a, static_cast<uint8_t>(bytes[i]), b);
        std::swap(a, b);
        ok = !a.empty();
      }
      st.arena.release(mark);
    }
    if (ok) mask[id / 32] |= 1u << (id % 32);
  }
}

void TokenMasker::Impl::walk(Stepper& st, const Trie& t, uint32_t node, const StackSet& s,
                             std::vector<StackSet>& pool, size_t depth, uint32_t* mask,
                             const std::array<uint64_t, 4>* skip) const {
  std::array<uint64_t, 4> fb;
  st.first_bytes(s, fb);
  if (skip)
    for (int i = 0; i < 4; ++i) fb[i] &= ~(*skip)[i];
  const Trie::NodeInfo& ni = t.nodes[node];
  for (uint32_t e = ni.child_begin; e < ni.child_begin + ni.child_count; ++e) {
    const uint8_t b = t.child_byte[e];
    if (!((fb[b >> 6] >> (b & 63)) & 1)) continue;
    const size_t mark = st.arena.mark();
    StackSet& next = pool[depth];
    st.advance_byte(s, b, next);
    if (!next.empty()) {
      const uint32_t c = t.child_node[e];
      const Trie::NodeInfo& ci = t.nodes[c];
      for (uint32_t k = ci.tok_begin; k < ci.tok_begin + ci.tok_count; ++k) {
        const auto id = static_cast<uint32_t>(t.toks[k]);
        mask[id / 32] |= 1u << (id % 32);
      }
      if (ci.child_count && !next.tops.empty()) {
        uint32_t cls = UINT32_MAX;
        if (ci.sub_end - ci.tok_begin - ci.tok_count >= kSubtreeRun) {
          const Run r = class_run(st, next, kBroadLoop);
          if (r.loops) cls = r.cls;
        }
        if (cls != UINT32_MAX) {
          subtree_runs.fetch_add(1, std::memory_order_relaxed);
          run_subtree(st, t, v, ci, depth + 1, next, st.g.classes[cls], mask);
        } else {
          // pool[depth] is reused by the deeper levels only at depth + 1 and beyond.
          walk(st, t, c, next, pool, depth + 1, mask);
        }
      }
    }
    st.arena.release(mark);
  }
}

// A counted class run at `set` (class_run, not a loop): S_p, the set after p characters of C, for p up to
// the longest token (in characters) or until it dies; then a token made only of C characters, p of them, is
// allowed iff S_p is not empty, and one starting with exactly p whole C characters iff its remainder walks
// from S_p. false (nothing written) when some S_p (p below the longest token) is not uniform for C: the
// caller walks the whole trie instead.
bool TokenMasker::Impl::counted_run(Stepper& st, const StackSet& set, uint32_t cls,
                                    std::vector<StackSet>& pool, uint32_t* mask) const {
  const CodeClass& c = st.g.classes[cls];
  char ch[4];
  const size_t nch = first_char(c, ch);
  thread_local std::vector<StackSet> seq;  // [p] S_p; live: [0, k)
  if (seq.size() < max_chars + 1) seq.resize(max_chars + 1);
  const size_t mark = st.arena.mark();
  seq[0] = set;
  size_t k = 1;  // S_p for p >= k is empty
  for (; k <= max_chars; ++k) {
    const StackSet& prev = seq[k - 1];
    if (prev.tops.empty()) break;
    if (k > 1 && !uniform(st.g, prev, cls)) {  // S_0 was checked by class_run
      st.arena.release(mark);
      return false;
    }
    advance_bytes(st, prev, ch, nch, seq[k]);
    if (seq[k].empty()) break;
  }
  const std::shared_ptr<const ClassData> cd = class_data_for(c);
  const std::vector<uint32_t>& upto = cd->all_in_upto[std::min(k - 1, kUptoCap)];
  for (size_t w = 0; w < words; ++w) mask[w] |= upto[w];
  for (size_t p = kUptoCap + 1; p < k; ++p)  // long all-C tokens (few)
    for (const int32_t t : cd->all_in_long[p]) {
      const auto u = static_cast<uint32_t>(t);
      mask[u / 32] |= 1u << (u % 32);
    }
  walk(st, trie, 0, set, pool, 0, mask, &c.first);
  for (size_t p = 0; p < k; ++p) {
    const Trie& t = cd->rest_at[p];
    if (!seq[p].tops.empty() && t.nodes[0].child_count) walk(st, t, 0, seq[p], pool, 0, mask);
  }
  st.arena.release(mark);
  return true;
}

void TokenMasker::Impl::compute(const Matcher::State& s, std::vector<uint32_t>& mask) const {
  std::fill(mask.begin(), mask.end(), 0u);
  const Grammar& g = *s.g;
  const StackSet& set = s.set;
  NodeArena& arena = scratch_arena();
  const size_t mark = arena.mark();
  Stepper st{g, arena};
  thread_local std::vector<StackSet>
      pool;  // [depth] the set after the walk's bytes so far; never resized mid-walk
  if (pool.size() < max_len + 1) pool.resize(max_len + 1);

  // Special tokens (and any token) a token terminal names.
  for (const Node* n : set.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind == ElemKind::kToken && e.arg < v.bytes.size()) mask[e.arg / 32] |= 1u << (e.arg % 32);
  }

  // The class-run shortcuts, when they apply.
  const std::array<uint64_t, 4>* walk_skip = nullptr;  // first bytes class data covered
  std::shared_ptr<const ClassData> cd;
  const Run run = set.tops.empty() ? Run{} : class_run(st, set, kBroadClass, first_count.data());
  if (run.cls != UINT32_MAX && run.loops) {
    cd = class_data_for(g.classes[run.cls]);
    class_runs.fetch_add(1, std::memory_order_relaxed);
    for (size_t w = 0; w < words; ++w) mask[w] |= cd->all_in[w];
    walk(st, cd->rest, 0, set, pool, 0, mask.data());
    walk_skip = cd->rest_whole ? nullptr : &g.classes[run.cls].first;
  }
  if (run.cls != UINT32_MAX && !run.loops && counted_run(st, set, run.cls, pool, mask.data())) {
    counted_runs.fetch_add(1, std::memory_order_relaxed);
  } else if (!set.tops.empty() && !(cd && cd->rest_whole)) {
    walk(st, trie, 0, set, pool, 0, mask.data(), walk_skip);
  }
  arena.release(mark);

  // EOS exactly where the grammar can end.
  if (v.eos >= 0 && static_cast<size_t>(v.eos) < v.bytes.size()) {
    const auto e = static_cast<uint32_t>(v.eos);
    if (set.accepting) {
      mask[e / 32] |= 1u << (e % 32);
    } else {
      mask[e / 32] &= ~(1u << (e % 32));
    }
  }
}

TokenMasker::TokenMasker(Vocabulary v) : TokenMasker(std::move(v), MaskerOptions{}) {}

TokenMasker::TokenMasker(Vocabulary v, MaskerOptions opts) : impl_(std::make_unique<Impl>()) {
  MX_CHECK(v.bytes.size() == v.special.size(), "Vocabulary: bytes and special differ in length");
  impl_->v = std::move(v);
  impl_->opts = opts;
  impl_->words = words();
  std::vector<std::pair<std::string_view, int32_t>> entries;
  for (size_t t = 0; t < impl_->v.bytes.size(); ++t) {
    if (!impl_->v.special[t] && !impl_->v.bytes[t].empty()) {  // control tokens: only via token terminals
      entries.push_back({impl_->v.bytes[t], static_cast<int32_t>(t)});
      impl_->max_len = std::max(impl_->max_len, impl_->v.bytes[t].size());
      ++impl_->first_count[static_cast<uint8_t>(impl_->v.bytes[t][0])];
      size_t chars = 0;
      for (char ch : impl_->v.bytes[t]) chars += (static_cast<uint8_t>(ch) & 0xC0) != 0x80;
      impl_->max_chars = std::max(impl_->max_chars, chars);
    }
  }
  impl_->trie.build(std::move(entries));
}

TokenMasker::~TokenMasker() = default;

int32_t TokenMasker::n_vocab() const {
  return static_cast<int32_t>(impl_->v.bytes.size());
}
const Vocabulary& TokenMasker::vocabulary() const {
  return impl_->v;
}

void TokenMasker::fill_mask(const Matcher& m, std::vector<uint32_t>& mask) const {
  Impl& I = *impl_;
  mask.resize(words());
  const Matcher::State& s = *m.s_;
  if (I.opts.cache_entries == 0) {
    I.misses.fetch_add(1, std::memory_order_relaxed);
    I.compute(s, mask);
    return;
  }
  const uint64_t key = hash_mix(s.g->serial, s.key);
  auto matches = [&](const CacheEntry& e) {
    if (e.serial != s.g->serial || e.accepting != s.set.accepting || e.tops.size() != s.set.tops.size())
      return false;
    StackSet a;
    a.tops = e.tops;
    a.accepting = e.accepting;
    return same_set(a, s.set);
  };
  {
    std::lock_guard<std::mutex> lock(I.mu);
    auto [lo, hi] = I.index.equal_range(key);
    for (auto it = lo; it != hi; ++it) {
      if (!matches(*it->second)) continue;
      I.lru.splice(I.lru.begin(), I.lru, it->second);
      std::memcpy(mask.data(), it->second->mask.data(), mask.size() * sizeof(uint32_t));
      I.hits.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  I.misses.fetch_add(1, std::memory_order_relaxed);
  I.compute(s, mask);
  CacheEntry e;
  e.serial = s.g->serial;
  e.key = key;
  e.accepting = s.set.accepting;
  e.holds = s.holds;
  e.tops = s.set.tops;
  e.mask = mask;
  std::list<CacheEntry> dropped;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(I.mu);
  I.lru.push_front(std::move(e));
  I.index.emplace(key, I.lru.begin());
  while (I.lru.size() > I.opts.cache_entries) {
    auto last = std::prev(I.lru.end());
    auto [lo, hi] = I.index.equal_range(last->key);
    for (auto it = lo; it != hi; ++it) {
      if (it->second == last) {
        I.index.erase(it);
        break;
      }
    }
    dropped.splice(dropped.begin(), I.lru, last);
  }
}

bool TokenMasker::accept(Matcher& m, int32_t t) const {
  const Vocabulary& v = impl_->v;
  if (t < 0 || static_cast<size_t>(t) >= v.bytes.size()) return false;
  if (t == v.eos) return m.can_end();
  const auto i = static_cast<size_t>(t);
  const bool bytes = !v.special[i] && !v.bytes[i].empty();
  return m.s_->advance(t, v.bytes[i], bytes);
}

TokenMasker::Stats TokenMasker::stats() const {
  return {impl_->hits.load(std::memory_order_relaxed), impl_->misses.load(std::memory_order_relaxed),
          impl_->class_runs.load(std::memory_order_relaxed),
          impl_->subtree_runs.load(std::memory_order_relaxed),
          impl_->counted_runs.load(std::memory_order_relaxed)};
}

void TokenMasker::clear_cache() const {
  std::list<CacheEntry> dropped;
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->index.clear();
  dropped.swap(impl_->lru);
}

void apply_mask(const std::vector<uint32_t>& mask, float* logits, int64_t n_vocab) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < n_vocab; ++t) {
    const auto w = static_cast<size_t>(t / 32);
    if (w >= mask.size() || !((mask[w] >> (t % 32)) & 1u)) logits[t] = ninf;
  }
}

}  // namespace mixtral::grammar
