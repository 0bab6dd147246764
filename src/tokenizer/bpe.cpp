// SentencePiece-exact BPE; see bpe.h for the algorithm and the reference it follows.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "tokenizer/utf8.h"

namespace mixtral::tok {

void PieceMap::build(const std::vector<Entry>& entries) {
  size_t cap = 16;
  while (cap < entries.size() * 2 + 1) cap <<= 1;  // load factor <= 0.5
  slots_.assign(cap, Entry{});
  mask_ = cap - 1;
  for (const Entry& e : entries) {
    for (size_t i = hash(e.key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].id < 0) {
        slots_[i] = e;
        break;
      }
      if (slots_[i].key == e.key) break;  // a repeated spelling: the first id wins
    }
  }
}

bool BpeEncoder::supports(const ModelSpec& spec, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  if (spec.model_type != ModelType::kBpe) return no("not a BPE model");
  if (!spec.precompiled_charsmap.empty()) return no("the normalizer has precompiled rules");
  if (!spec.escape_whitespaces) return no("escape_whitespaces is off");
  if (spec.treat_whitespace_as_suffix) return no("treat_whitespace_as_suffix is on");
  return true;
}

void BpeEncoder::init(const ModelSpec& spec) {
  spec_ = &spec;
  std::vector<PieceMap::Entry> mergeable, reserved;
  for (size_t i = 0; i < spec.pieces.size(); ++i) {
    const TokenType t = spec.types[i];
    PieceMap::Entry e{spec.pieces[i], static_cast<int32_t>(i), static_cast<int32_t>(i), spec.scores[i]};
    if (t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUnused) {
      mergeable.push_back(e);
      if (t == TokenType::kUserDefined) user_defined_.push_back(spec.pieces[i]);
      if (t == TokenType::kUnused) has_unused_ = true;
    } else {
      reserved.push_back(e);
    }
  }
  reserved_.build(reserved);
  // PieceToId looks in the reserved pieces first: a spelling that is both maps to the reserved id.
  for (auto& e : mergeable)
    if (const auto* r = reserved_.find(e.key)) e.out_id = r->id;
  mergeable_.build(mergeable);
  byte_ids_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (const auto* r = reserved_.find(name)) {
      byte_ids_[static_cast<size_t>(b)] = r->id;
    } else if (const auto* m = mergeable_.find(name)) {
      byte_ids_[static_cast<size_t>(b)] = m->out_id;
    } else {
      byte_ids_[static_cast<size_t>(b)] = spec.unk_id;
    }
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  // Cutting before a "▁" that follows another character is exact when no mergeable piece contains such a
  // boundary: then no merge can cross it.
  split_on_space_ = true;
  for (const auto& e : mergeable) {
    const std::string_view p = e.key;
    for (size_t pos = p.find(kSpaceSymbol, 1); pos != std::string_view::npos;
         pos = p.find(kSpaceSymbol, pos + 1))
      if (pos < 3 || p.substr(pos - 3, 3) != kSpaceSymbol) split_on_space_ = false;
  }
}

void BpeEncoder::normalize(std::string_view text, std::string& out) const {
  out.clear();
  const bool remove_extra = spec_->remove_extra_whitespaces;
  if (remove_extra)
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  if (text.empty()) return;
  out.reserve(text.size() + text.size() / 2 + 3);
  if (spec_->add_dummy_prefix) out.append(kSpaceSymbol);
  bool prev_space = remove_extra;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<uint8_t>(text[i]);
    if (c < 0x80) {  // ASCII fast path
      if (c == ' ') {
        if (!prev_space) out.append(kSpaceSymbol);
        prev_space = remove_extra;
      } else {
        out += static_cast<char>(c);
        prev_space = false;
      }
      ++i;
      continue;
    }
    const size_t len = valid_char_len(text.substr(i));
    if (len == 0) {  // a malformed byte: U+FFFD, consuming one byte
      out.append(kReplacement);
      ++i;
    } else {
      out.append(text.substr(i, len));
      i += len;
    }
    prev_space = false;
  }
  if (remove_extra)
    while (out.size() >= 3 && std::string_view(out).substr(out.size() - 3) == kSpaceSymbol)
      out.resize(out.size() - 3);
}

size_t BpeEncoder::user_defined_match(std::string_view s) const {
  for (const auto& u : user_defined_)  // longest first
    if (s.substr(0, u.size()) == u) return u.size();
  return 0;
}

void BpeEncoder::encode(std::string_view text, std::vector<int32_t>& out) const {
  thread_local std::string norm;
  normalize(text, norm);
  if (norm.empty()) return;
  const std::string_view s = norm;
  bool prev_unk = false;
  if (!split_on_space_) {
    encode_chunk(s, out, prev_unk);
    return;
  }
  size_t start = 0;
  for (size_t pos = s.find(kSpaceSymbol, 1); pos != std::string_view::npos;
       pos = s.find(kSpaceSymbol, pos + 3)) {
    if (pos > start && (pos < 3 || s.substr(pos - 3, 3) != kSpaceSymbol)) {  // after another character
      encode_chunk(s.substr(start, pos - start), out, prev_unk);
      start = pos;
    }
  }
  encode_chunk(s.substr(start), out, prev_unk);
}

void BpeEncoder::encode_chunk(std::string_view chunk, std::vector<int32_t>& out, bool& prev_unk) const {
  thread_local std::vector<Symbol> syms;
  thread_local std::vector<Candidate> heap;
  thread_local std::vector<std::pair<std::string_view, std::pair<std::string_view, std::string_view>>> rev;
  syms.clear();
  heap.clear();
  rev.clear();

  // Initial symbols: user-defined pieces (frozen) or single characters.
  const auto n = static_cast<uint32_t>(chunk.size());
  for (uint32_t pos = 0; pos < n;) {
    uint32_t len = user_defined_.empty() ? 0 : static_cast<uint32_t>(user_defined_match(chunk.substr(pos)));
    const bool freeze = len > 0;
    if (!len)
      len =
          std::min<uint32_t>(static_cast<uint32_t>(one_char_len(static_cast<uint8_t>(chunk[pos]))), n - pos);
    const auto idx = static_cast<int32_t>(syms.size());
    syms.push_back({idx - 1, -1, pos, len, -1, freeze});
    if (idx > 0) syms[static_cast<size_t>(idx - 1)].next = idx;
    pos += len;
  }

  // Max-heap on score; among equal scores the leftmost pair first.
  auto less = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  auto add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const Symbol& a = syms[static_cast<size_t>(l)];
    const Symbol& b = syms[static_cast<size_t>(r)];
    if (a.freeze || b.freeze) return;
    const std::string_view piece = chunk.substr(a.begin, a.len + b.len);
    const PieceMap::Entry* e = mergeable_.find(piece);
    if (!e) return;
    heap.push_back({e->score, l, r, a.len + b.len, e});
    std::push_heap(heap.begin(), heap.end(), less);
    if (has_unused_ && spec_->types[static_cast<size_t>(e->id)] == TokenType::kUnused)
      rev.push_back({piece, {chunk.substr(a.begin, a.len), chunk.substr(b.begin, b.len)}});
  };
  for (size_t i = 1; i < syms.size(); ++i) add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), less);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& a = syms[static_cast<size_t>(top.left)];
    Symbol& b = syms[static_cast<size_t>(top.right)];
    if (a.len == 0 || b.len == 0 || a.len + b.len != top.size) continue;  // stale
    a.len += b.len;
    a.out_id = top.entry->out_id;
    a.next = b.next;
    if (b.next >= 0) syms[static_cast<size_t>(b.next)].prev = top.left;
    b.len = 0;
    add(a.prev, top.left);
    add(top.left, a.next);
  }

  for (int32_t i = 0; i >= 0; i = syms[static_cast<size_t>(i)].next) {
    const Symbol& sym = syms[static_cast<size_t>(i)];
    emit(chunk.substr(sym.begin, sym.len), sym.out_id, out, prev_unk, rev);
  }
}

void BpeEncoder::emit(
    std::string_view piece, int32_t out_id, std::vector<int32_t>& out, bool& prev_unk,
    const std::vector<std::pair<std::string_view, std::pair<std::string_view, std::string_view>>>& rev)
    const {
  if (out_id < 0) {  // PieceToId: reserved spellings first, then mergeable ones, else <unk>
    if (const auto* r = reserved_.find(piece)) {
      out_id = r->id;
    } else if (const auto* m = mergeable_.find(piece)) {
      out_id = m->out_id;
    }
  }
  const TokenType type = out_id >= 0 ? spec_->types[static_cast<size_t>(out_id)] : TokenType::kUnknown;
  if (type == TokenType::kUnused) {  // split an unused piece back into the pair that formed it
    for (auto it = rev.rbegin(); it != rev.rend(); ++it) {
      if (it->first == piece) {
        emit(it->second.first, -1, out, prev_unk, rev);
        emit(it->second.second, -1, out, prev_unk, rev);
        return;
      }
    }
  }
  const bool is_unk = type == TokenType::kUnknown;
  if (is_unk && spec_->byte_fallback) {
    for (unsigned char c : piece) out.push_back(byte_ids_[c]);
  } else if (!(is_unk && prev_unk)) {  // a run of unknown symbols is one <unk>
    out.push_back(is_unk && out_id < 0 ? spec_->unk_id : out_id);
  }
  prev_unk = is_unk;
}

}  // namespace mixtral::tok
