// The incremental matcher: a deduplicated set of stacks of grammar positions (grammar_impl.h). Stacks share
// their tails (immutable reference-counted nodes), so a copy is a vector of pointers and an advance
// allocates only the frames it changes. Scratch work happens in a per-thread arena; the result is made
// persistent once per accepted token.
#include <algorithm>
#include <unordered_map>

#include "core/check.h"
#include "grammar/grammar_impl.h"

namespace mixtral::grammar {

uint64_t hash_mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 32);
}

void node_ref(const Node* n) {
  if (n && !n->arena) n->refs.fetch_add(1, std::memory_order_relaxed);
}

void node_unref(const Node* n) {
  while (n && !n->arena) {
    if (n->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    const Node* parent = n->parent;
    delete n;
    n = parent;
  }
}

bool same_stack(const Node* a, const Node* b) {
  while (a != b) {
    if (!a || !b || a->hash != b->hash || a->pos != b->pos || a->partial != b->partial ||
        a->depth != b->depth)
      return false;
    a = a->parent;
    b = b->parent;
  }
  return true;
}

Node* NodeArena::make(uint32_t pos, uint32_t partial, const Node* parent) {
  const size_t chunk = used_ / kChunk;
  if (chunk == chunks_.size()) chunks_.push_back(std::make_unique<Node[]>(kChunk));
  Node* n = &chunks_[chunk][used_ % kChunk];
  ++used_;
  n->pos = pos;
  n->partial = partial;
  n->parent = parent;
  n->depth = parent ? parent->depth + 1 : 1;
  n->hash = hash_mix(hash_mix(parent ? parent->hash : 0x51ED, pos), partial);
  n->arena = true;
  return n;
}

NodeArena& scratch_arena() {
  thread_local NodeArena arena;
  return arena;
}

void canonicalize(StackSet& s) {
  auto& v = s.tops;
  if (v.size() < 2) return;
  std::sort(v.begin(), v.end(), [](const Node* a, const Node* b) { return a->hash < b->hash; });
  size_t out = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    bool dup = false;
    for (size_t j = out; j > 0 && v[j - 1]->hash == v[i]->hash; --j) {
      if (same_stack(v[j - 1], v[i])) {
        dup = true;
        break;
      }
    }
    if (!dup) v[out++] = v[i];
  }
  v.resize(out);
}

bool same_set(const StackSet& a, const StackSet& b) {
  if (a.accepting != b.accepting || a.tops.size() != b.tops.size()) return false;
  bool pairwise = true;
  for (size_t i = 0; i < a.tops.size() && pairwise; ++i) pairwise = same_stack(a.tops[i], b.tops[i]);
  if (pairwise) return true;
  // Equal hashes may sort in either order: fall back to membership.
  for (const Node* x : a.tops) {
    bool found = false;
    for (const Node* y : b.tops) found = found || (x->hash == y->hash && same_stack(x, y));
    if (!found) return false;
  }
  return true;
}

void Stepper::expand(uint32_t pos, const Node* parent, StackSet& out) {
  for (const auto& [p, n] : seen)
    if (p == pos && (n == parent || (n && parent && n->hash == parent->hash && same_stack(n, parent))))
      return;
  seen.emplace_back(pos, parent);
  const Elem e = g.elems[pos];
  switch (e.kind) {
    case ElemKind::kEnd:
      if (!parent) {
        out.accepting = true;
      } else {
        expand(parent->pos, parent->parent, out);
      }
      return;
    case ElemKind::kByte:
    case ElemKind::kClass:
    case ElemKind::kToken:
      out.tops.push_back(arena.make(pos, 0, parent));
      return;
    case ElemKind::kRule: {
      // The frame to return to; none when the rule ends the alternative (a tail call).
      const Node* ret = g.elems[pos + 1].kind == ElemKind::kEnd ? parent : arena.make(pos + 1, 0, parent);
      for (uint32_t a : g.rules[e.arg].alts) expand(a, ret, out);
      return;
    }
  }
}

void Stepper::advance_byte(const StackSet& in, uint8_t b, StackSet& out) {
  out.tops.clear();
  out.accepting = false;
  begin_step();
  for (const Node* n : in.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind == ElemKind::kByte) {
      if (e.arg == b) expand(n->pos + 1, n->parent, out);
    } else if (e.kind == ElemKind::kClass) {
      const CodeClass& c = g.classes[e.arg];
      if (n->partial == 0) {
        if (!c.first_has(b)) continue;
        uint32_t len, v;
        if (b < 0x80) {
          expand(n->pos + 1, n->parent, out);
        } else if (utf8_lead(b, len, v)) {
          out.tops.push_back(arena.make(n->pos, v << 6 | len << 3 | (len - 1), n->parent));
        }
      } else {
        if ((b & 0xC0) != 0x80) continue;
        const uint32_t len = (n->partial >> 3) & 7, rem = (n->partial & 7) - 1;
        const uint32_t v = (n->partial >> 6) << 6 | (b & 0x3Fu);
        uint32_t lo, hi;
        utf8_span(v, len, rem, lo, hi);
        if (lo > hi || !c.intersects(lo, hi)) continue;
        if (rem == 0) {
          expand(n->pos + 1, n->parent, out);
        } else {
          out.tops.push_back(arena.make(n->pos, v << 6 | len << 3 | rem, n->parent));
        }
      }
    }
  }
  canonicalize(out);
  if (out.tops.size() > kMaxStacks) out = {};
}

void Stepper::advance_token(const StackSet& in, int32_t token, StackSet& out) {
  out.tops.clear();
  out.accepting = false;
  begin_step();
  for (const Node* n : in.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind == ElemKind::kToken && static_cast<int32_t>(e.arg) == token)
      expand(n->pos + 1, n->parent, out);
  }
  canonicalize(out);
  if (out.tops.size() > kMaxStacks) out = {};
}

void Stepper::first_bytes(const StackSet& s, std::array<uint64_t, 4>& bits) const {
  bits = {};
  for (const Node* n : s.tops) {
    const Elem e = g.elems[n->pos];
    if (e.kind == ElemKind::kByte) {
      bits[e.arg >> 6] |= uint64_t{1} << (e.arg & 63);
    } else if (e.kind == ElemKind::kClass) {
      if (n->partial == 0) {
        const auto& f = g.classes[e.arg].first;
        for (int i = 0; i < 4; ++i) bits[i] |= f[i];
      } else {
        bits[2] |= ~uint64_t{0};  // 0x80..0xBF
      }
    }
  }
}

void Matcher::State::assign(const StackSet& scratch) {
  std::unordered_map<const Node*, const Node*> made;
  // Copies a chain's scratch frames into persistent nodes (its persistent tail is shared as it is).
  auto persist = [&](auto&& self, const Node* n) -> const Node* {
    if (!n || !n->arena) return n;
    if (auto it = made.find(n); it != made.end()) return it->second;
    const Node* parent = self(self, n->parent);
    auto* p = new Node;
    p->pos = n->pos;
    p->partial = n->partial;
    p->hash = n->hash;
    p->depth = n->depth;
    p->parent = parent;
    node_ref(parent);
    made.emplace(n, p);
    return p;
  };
  std::vector<NodeRef> h;
  StackSet s;
  s.accepting = scratch.accepting;
  uint64_t key = scratch.accepting ? 0xACCE97ull : 0x0;
  for (const Node* n : scratch.tops) {
    const Node* p = persist(persist, n);
    h.emplace_back(p);
    s.tops.push_back(p);
    key = hash_mix(key, p->hash);
  }
  holds = std::move(h);
  set = std::move(s);
  this->key = key;
}

bool Matcher::State::advance(int32_t token, std::string_view bytes, bool try_bytes) {
  NodeArena& arena = scratch_arena();
  const size_t mark = arena.mark();
  Stepper st{*g, arena};
  StackSet by_bytes, tmp;
  if (try_bytes && !bytes.empty()) {
    by_bytes = set;
    for (char c : bytes) {
      st.advance_byte(by_bytes, static_cast<uint8_t>(c), tmp);
      std::swap(by_bytes, tmp);
      if (by_bytes.empty()) break;
    }
  }
  if (token >= 0) {
    st.advance_token(set, token, tmp);
    by_bytes.tops.insert(by_bytes.tops.end(), tmp.tops.begin(), tmp.tops.end());
    by_bytes.accepting = by_bytes.accepting || tmp.accepting;
    canonicalize(by_bytes);
  }
  const bool ok = !by_bytes.empty();
  if (ok) assign(by_bytes);
  arena.release(mark);
  return ok;
}

Matcher::Matcher(GrammarPtr g) : s_(std::make_unique<State>()) {
  MX_CHECK(g != nullptr);
  s_->g = std::move(g);
  NodeArena& arena = scratch_arena();
  const size_t mark = arena.mark();
  Stepper st{*s_->g, arena};
  StackSet init;
  st.begin_step();
  for (uint32_t a : s_->g->rules[s_->g->start_rule].alts) st.expand(a, nullptr, init);
  canonicalize(init);
  s_->assign(init);
  arena.release(mark);
}

Matcher::Matcher(const Matcher& o) : s_(std::make_unique<State>(*o.s_)) {}
Matcher& Matcher::operator=(const Matcher& o) {
  if (this != &o) s_ = std::make_unique<State>(*o.s_);
  return *this;
}
Matcher::Matcher(Matcher&&) noexcept = default;
Matcher& Matcher::operator=(Matcher&&) noexcept = default;
Matcher::~Matcher() = default;

bool Matcher::advance_bytes(std::string_view bytes) {
  if (bytes.empty()) return true;
  return s_->advance(-1, bytes, true);
}

bool Matcher::advance_special(int32_t token) {
  return token >= 0 && s_->advance(token, {}, false);
}

bool Matcher::can_end() const {
  return s_->set.accepting;
}
bool Matcher::must_end() const {
  return s_->set.accepting && s_->set.tops.empty();
}
const Grammar& Matcher::grammar() const {
  return *s_->g;
}

}  // namespace mixtral::grammar
