// GBNF reader: text -> Grammar (grammar_impl.h). One pass builds rules of elements (groups and
// repetitions become synthetic rules), then names are resolved and the grammar is checked: undefined
// rules, the root, left recursion (refused: a matcher of stacks would loop), and rules that match nothing
// (their alternatives are dropped so every reachable matcher state can still complete).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <unordered_map>

#include "grammar/grammar_impl.h"
#include "tokenizer/utf8.h"

namespace mixtral::grammar {

namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr int kMaxRepeat = 1000;
constexpr size_t kMaxElems = size_t{1} << 22;

std::atomic<uint64_t> g_serial{1};

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h * 0xFF51AFD7ED558CCDull;
}

enum class RuleKind : uint8_t { kUser, kGroup, kRepeat };

struct RuleDef {
  std::string name;
  std::vector<std::vector<Elem>> alts;
  RuleKind kind = RuleKind::kUser;
  bool defined = false;
  size_t def_off = 0;           // where it is defined (synthetic: the group or the repetition operator)
  size_t first_ref = SIZE_MAX;  // first reference (undefined-rule errors)
  std::string base;             // synthetic: the rule written in the text it came from
};

class Parser {
 public:
  Parser(std::string_view text, const GbnfOptions& opts) : t_(text), o_(opts) {}

  Result<GrammarPtr> run();

 private:
  std::string_view t_;
  const GbnfOptions& o_;
  size_t p_ = 0;
  bool failed_ = false;
  std::string msg_;
  size_t err_off_ = 0;
  std::vector<RuleDef> rules_;
  std::unordered_map<std::string, uint32_t> ids_;
  std::vector<CodeClass> classes_;
  std::unordered_map<uint64_t, std::vector<uint32_t>> class_ids_;  // hash -> class ids
  size_t n_elems_ = 0;

  bool fail(size_t off, std::string m) {
    if (!failed_) {
      failed_ = true;
      err_off_ = off;
      msg_ = std::move(m);
    }
    return false;
  }
  Error error() const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < err_off_ && i < t_.size(); ++i) {
      if (t_[i] == '\n') {
        ++line, col = 1;
      } else if ((static_cast<uint8_t>(t_[i]) & 0xC0) != 0x80) {
        ++col;
      }
    }
    return Error::data("grammar line " + std::to_string(line) + " col " + std::to_string(col) + ": " + msg_);
  }
  bool at_end() const { return p_ >= t_.size(); }
  char peek(size_t k = 0) const { return p_ + k < t_.size() ? t_[p_ + k] : '\0'; }
  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  }
  static std::string shown(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", u);
      return buf;
    }
    return std::string(1, c);
  }

  void skip_space(bool newline_ok) {
    while (!at_end()) {
      const char c = peek();
      if (c == ' ' || c == '\t') {
        ++p_;
      } else if (c == '#') {
        while (!at_end() && peek() != '\n') ++p_;
      } else if ((c == '\n' || c == '\r') && newline_ok) {
        ++p_;
      } else {
        break;
      }
    }
  }

  uint32_t rule_id(const std::string& name) {
    auto [it, fresh] = ids_.try_emplace(name, static_cast<uint32_t>(rules_.size()));
    if (fresh) {
      rules_.emplace_back();
      rules_.back().name = name;
    }
    return it->second;
  }
  bool new_rule(RuleKind kind, const std::string& base, size_t off, uint32_t& id) {
    if (rules_.size() >= o_.max_rules)
      return fail(off, "more than " + std::to_string(o_.max_rules) + " rules (max_rules)");
    id = static_cast<uint32_t>(rules_.size());
    rules_.emplace_back();
    rules_.back().name = base + "-" + std::to_string(id);
    rules_.back().kind = kind;
    rules_.back().defined = true;
    rules_.back().def_off = off;
    rules_.back().base = base;
    return true;
  }
  bool count_elems(size_t n) {
    n_elems_ += n;
    if (n_elems_ > kMaxElems)
      return fail(p_, "grammar too large (more than " + std::to_string(kMaxElems) + " elements)");
    return true;
  }

  // One source character (an escape or a UTF-8 sequence) -> its code point.
  bool parse_char(uint32_t& cp) {
    const size_t at = p_;
    if (at_end()) return fail(at, "unexpected end of text");
    const auto c = static_cast<uint8_t>(peek());
    if (c == '\\') {
      ++p_;
      if (at_end()) return fail(at, "unfinished escape");
      const char e = peek();
      ++p_;
      int digits = 0;
      switch (e) {
        case 'n':
          cp = '\n';
          return true;
        case 'r':
          cp = '\r';
          return true;
        case 't':
          cp = '\t';
          return true;
        case '\\':
        case '"':
        case '[':
        case ']':
        case '-':
        case '^':
        case '/':
        case '\'':
          cp = static_cast<uint8_t>(e);
          return true;
        case 'x':
          digits = 2;
          break;
        case 'u':
          digits = 4;
          break;
        case 'U':
          digits = 8;
          break;
        default:
          return fail(at, "unknown escape '\\" + shown(e) + "'");
      }
      uint64_t v = 0;
      for (int i = 0; i < digits; ++i) {
        const char h = peek();
        int d;
        if (h >= '0' && h <= '9') {
          d = h - '0';
        } else if (h >= 'a' && h <= 'f') {
          d = h - 'a' + 10;
        } else if (h >= 'A' && h <= 'F') {
          d = h - 'A' + 10;
        } else {
          return fail(p_, "expected " + std::to_string(digits) + " hex digits after '\\" + shown(e) + "'");
        }
        v = v * 16 + static_cast<uint64_t>(d);
        ++p_;
      }
      if (v > kMaxCodePoint) return fail(at, "code point out of range");
      cp = static_cast<uint32_t>(v);
      return true;
    }
    if (c < 0x80) {
      cp = c;
      ++p_;
      return true;
    }
    uint32_t len = 0, v = 0;
    if (!utf8_lead(c, len, v)) return fail(at, "invalid UTF-8 in grammar text");
    for (uint32_t i = 1; i < len; ++i) {
      const auto b = static_cast<uint8_t>(peek(i));
      if ((b & 0xC0) != 0x80) return fail(at, "invalid UTF-8 in grammar text");
      v = (v << 6) | (b & 0x3Fu);
    }
    uint32_t lo, hi;
    utf8_span(v, len, 0, lo, hi);
    if (lo > hi || (v >= 0xD800 && v <= 0xDFFF)) return fail(at, "invalid UTF-8 in grammar text");
    p_ += len;
    cp = v;
    return true;
  }

  uint32_t class_id(std::vector<std::pair<uint32_t, uint32_t>> r) {
    CodeClass c;
    c.ranges = std::move(r);
    uint64_t h = 0x1234;
    for (auto [a, b] : c.ranges) h = mix(mix(h, a), b);
    c.hash = h;
    auto& bucket = class_ids_[h];
    for (uint32_t id : bucket)
      if (classes_[id].ranges == c.ranges) return id;
    for (uint32_t b = 0; b < 0x80; ++b)
      if (c.contains(b)) c.first[b >> 6] |= uint64_t{1} << (b & 63);
    for (uint32_t b = 0x80; b < 0x100; ++b) {
      uint32_t len, v, lo, hi;
      if (!utf8_lead(static_cast<uint8_t>(b), len, v)) continue;
      utf8_span(v, len, len - 1, lo, hi);
      if (lo <= hi && c.intersects(lo, hi)) c.first[b >> 6] |= uint64_t{1} << (b & 63);
    }
    const auto id = static_cast<uint32_t>(classes_.size());
    classes_.push_back(std::move(c));
    bucket.push_back(id);
    return id;
  }

  // Sorted, merged, optionally negated, surrogates removed.
  uint32_t make_class(std::vector<std::pair<uint32_t, uint32_t>> r, bool negate) {
    std::sort(r.begin(), r.end());
    std::vector<std::pair<uint32_t, uint32_t>> m;
    for (auto [a, b] : r) {
      if (!m.empty() && a <= m.back().second + 1) {
        m.back().second = std::max(m.back().second, b);
      } else {
        m.push_back({a, b});
      }
    }
    if (negate) {
      std::vector<std::pair<uint32_t, uint32_t>> n;
      uint32_t next = 0;
      for (auto [a, b] : m) {
        if (a > next) n.push_back({next, a - 1});
        next = b + 1;
      }
      if (next <= kMaxCodePoint) n.push_back({next, kMaxCodePoint});
      m = std::move(n);
    }
    std::vector<std::pair<uint32_t, uint32_t>> out;
    for (auto [a, b] : m) {
      if (b < 0xD800 || a > 0xDFFF) {
        out.push_back({a, b});
        continue;
      }
      if (a < 0xD800) out.push_back({a, 0xD7FF});
      if (b > 0xDFFF) out.push_back({0xE000, b});
    }
    return class_id(std::move(out));
  }

  bool parse_literal(std::vector<Elem>& seq) {
    const size_t at = p_;
    ++p_;  // "
    std::string bytes;
    while (true) {
      if (at_end() || peek() == '\n' || peek() == '\r') return fail(at, "unterminated string literal");
      if (peek() == '"') {
        ++p_;
        break;
      }
      uint32_t cp;
      if (!parse_char(cp)) return false;
      if (cp >= 0xD800 && cp <= 0xDFFF) return fail(at, "surrogate code point in a literal");
      tok::append_utf8(bytes, cp);
    }
    if (!count_elems(bytes.size())) return false;
    for (char b : bytes) seq.push_back({ElemKind::kByte, static_cast<uint8_t>(b)});
    return true;
  }

  bool parse_class(std::vector<Elem>& seq) {
    const size_t at = p_;
    ++p_;  // [
    bool negate = false;
    if (peek() == '^') {
      negate = true;
      ++p_;
    }
    std::vector<std::pair<uint32_t, uint32_t>> r;
    while (true) {
      if (at_end()) return fail(at, "unterminated character class");
      if (peek() == ']') {
        ++p_;
        break;
      }
      const size_t char_at = p_;
      uint32_t a;
      if (!parse_char(a)) return false;
      uint32_t b = a;
      if (peek() == '-' && peek(1) != ']' && p_ + 1 < t_.size()) {
        ++p_;
        if (!parse_char(b)) return false;
        if (b < a) return fail(char_at, "character range out of order");
      }
      r.push_back({a, b});
    }
    if (!count_elems(1)) return false;
    seq.push_back({ElemKind::kClass, make_class(std::move(r), negate)});
    return true;
  }

  bool parse_token(std::vector<Elem>& seq) {
    const size_t at = p_;
    ++p_;  // <
    const size_t start = p_;
    while (!at_end() && peek() != '>' && peek() != '\n' && peek() != ' ' && p_ - start < 256) ++p_;
    if (peek() != '>') return fail(at, "unterminated token reference '<...>'");
    const std::string_view body = t_.substr(start, p_ - start);
    ++p_;
    if (body.empty()) return fail(at, "empty token reference '<>'");
    int64_t id = -1;
    bool numeric = body.size() >= 3 && body.front() == '[' && body.back() == ']';
    for (size_t i = 1; numeric && i + 1 < body.size(); ++i) numeric = body[i] >= '0' && body[i] <= '9';
    if (numeric) {
      if (body.size() > 12) return fail(at, "token id out of range");
      id = std::stoll(std::string(body.substr(1, body.size() - 2)));
      if (id > INT32_MAX) return fail(at, "token id out of range");
    } else {
      if (o_.token_id) id = o_.token_id(body);
      if (id < 0) return fail(at, "unknown token '<" + std::string(body) + ">'");
    }
    if (!count_elems(1)) return false;
    seq.push_back({ElemKind::kToken, static_cast<uint32_t>(id)});
    return true;
  }

  bool parse_count(int& v) {
    if (!(peek() >= '0' && peek() <= '9')) return fail(p_, "expected a number in '{...}'");
    int64_t x = 0;
    while (peek() >= '0' && peek() <= '9') {
      x = x * 10 + (peek() - '0');
      if (x > 1000000) x = 1000000;
      ++p_;
    }
    v = static_cast<int>(x);
    return true;
  }

  // Replaces seq[item..] by its repetition {lo, hi} (hi -1: unbounded).
  bool repeat(std::vector<Elem>& seq, size_t item, int lo, int hi, size_t op_off, const std::string& base) {
    if (lo > kMaxRepeat || hi > kMaxRepeat)
      return fail(op_off, "repetition count above " + std::to_string(kMaxRepeat));
    if (hi >= 0 && hi < lo) return fail(op_off, "repetition {m,n} with n < m");
    if (item == seq.size()) return true;  // "" repeated: still the empty string
    Elem x;
    if (seq.size() - item == 1) {
      x = seq[item];
    } else {
      uint32_t w;
      if (!new_rule(RuleKind::kGroup, base, op_off, w)) return false;
      rules_[w].alts.emplace_back(seq.begin() + static_cast<ptrdiff_t>(item), seq.end());
      x = {ElemKind::kRule, w};
    }
    seq.resize(item);
    if (!count_elems(static_cast<size_t>(lo) + 4)) return false;
    for (int i = 0; i < lo; ++i) seq.push_back(x);
    if (hi < 0) {
      uint32_t r;
      if (!new_rule(RuleKind::kRepeat, base, op_off, r)) return false;
      rules_[r].alts.push_back({x, {ElemKind::kRule, r}});
      rules_[r].alts.push_back({});
      seq.push_back({ElemKind::kRule, r});
    } else if (hi > lo) {
      // O1 ::= X | ε ; Ok ::= X O(k-1) | ε
      uint32_t prev = 0;
      for (int k = 1; k <= hi - lo; ++k) {
        uint32_t o;
        if (!new_rule(RuleKind::kGroup, base, op_off, o)) return false;
        if (!count_elems(3)) return false;
        if (k == 1) {
          rules_[o].alts.push_back({x});
        } else {
          rules_[o].alts.push_back({x, {ElemKind::kRule, prev}});
        }
        rules_[o].alts.push_back({});
        prev = o;
      }
      seq.push_back({ElemKind::kRule, prev});
    }
    return true;
  }

  bool parse_sequence(std::vector<Elem>& seq, int depth, const std::string& base) {
    const bool nested = depth > 0;
    while (!at_end()) {
      const size_t item = seq.size();
      const char c = peek();
      if (c == '"') {
        if (!parse_literal(seq)) return false;
      } else if (c == '[') {
        if (!parse_class(seq)) return false;
      } else if (c == '.') {
        ++p_;
        if (!count_elems(1)) return false;
        seq.push_back({ElemKind::kClass, make_class({{0, kMaxCodePoint}}, false)});
      } else if (c == '<') {
        if (!parse_token(seq)) return false;
      } else if (name_char(c)) {
        const size_t at = p_;
        while (name_char(peek())) ++p_;
        const uint32_t id = rule_id(std::string(t_.substr(at, p_ - at)));
        if (rules_.size() > o_.max_rules)
          return fail(at, "more than " + std::to_string(o_.max_rules) + " rules (max_rules)");
        if (rules_[id].first_ref == SIZE_MAX) rules_[id].first_ref = at;
        if (!count_elems(1)) return false;
        seq.push_back({ElemKind::kRule, id});
      } else if (c == '(') {
        const size_t at = p_;
        if (depth + 1 > o_.max_nesting)
          return fail(at, "groups nested deeper than " + std::to_string(o_.max_nesting) + " (max_nesting)");
        ++p_;
        skip_space(true);
        std::vector<std::vector<Elem>> alts;
        if (!parse_alternates(alts, depth + 1, base)) return false;
        if (peek() != ')')
          return fail(p_, at_end() ? "missing ')'" : "expected ')' but found '" + shown(peek()) + "'");
        ++p_;
        if (alts.size() == 1) {
          seq.insert(seq.end(), alts[0].begin(), alts[0].end());
        } else {
          uint32_t g;
          if (!new_rule(RuleKind::kGroup, base, at, g)) return false;
          rules_[g].alts = std::move(alts);
          if (!count_elems(1)) return false;
          seq.push_back({ElemKind::kRule, g});
        }
      } else {
        break;
      }
      skip_space(nested);
      while (!at_end() && (peek() == '*' || peek() == '+' || peek() == '?' || peek() == '{')) {
        const size_t op = p_;
        const char o = peek();
        ++p_;
        int lo = 0, hi = -1;
        if (o == '+') {
          lo = 1;
        } else if (o == '?') {
          hi = 1;
        } else if (o == '{') {
          skip_space(true);
          if (!parse_count(lo)) return false;
          skip_space(true);
          if (peek() == ',') {
            ++p_;
            skip_space(true);
            if (peek() != '}' && !parse_count(hi)) return false;
          } else {
            hi = lo;
          }
          skip_space(true);
          if (peek() != '}') return fail(p_, "expected '}'");
          ++p_;
        }
        if (!repeat(seq, item, lo, hi, op, base)) return false;
        skip_space(nested);
      }
    }
    return true;
  }

  bool parse_alternates(std::vector<std::vector<Elem>>& alts, int depth, const std::string& base) {
    alts.emplace_back();
    if (!parse_sequence(alts.back(), depth, base)) return false;
    while (true) {
      if (depth == 0) {
        // A top-level rule goes on at a line that starts with '|'.
        const size_t save = p_;
        skip_space(true);
        if (peek() != '|') p_ = save;
      }
      if (peek() != '|') break;
      ++p_;
      skip_space(true);
      alts.emplace_back();
      if (!parse_sequence(alts.back(), depth, base)) return false;
    }
    return true;
  }

  bool parse_rule() {
    const size_t at = p_;
    while (name_char(peek())) ++p_;
    if (p_ == at) return fail(at, "expected a rule name but found '" + shown(peek()) + "'");
    const std::string name(t_.substr(at, p_ - at));
    skip_space(false);
    if (t_.substr(p_, 3) != "::=") return fail(p_, "expected '::=' after rule name '" + name + "'");
    p_ += 3;
    skip_space(true);
    const uint32_t id = rule_id(name);
    if (rules_.size() > o_.max_rules)
      return fail(at, "more than " + std::to_string(o_.max_rules) + " rules (max_rules)");
    if (rules_[id].defined) return fail(at, "rule '" + name + "' defined twice");
    rules_[id].defined = true;
    rules_[id].def_off = at;
    std::vector<std::vector<Elem>> alts;
    if (!parse_alternates(alts, 0, name)) return false;
    rules_[id].alts = std::move(alts);
    if (!at_end() && peek() != '\n' && peek() != '\r')
      return fail(p_, "unexpected '" + shown(peek()) + "' in rule '" + name + "'");
    return true;
  }

  bool check_and_build(Grammar& g);
};

bool Parser::check_and_build(Grammar& g) {
  const size_t n = rules_.size();
  for (size_t r = 0; r < n; ++r)
    if (!rules_[r].defined) return fail(rules_[r].first_ref, "undefined rule '" + rules_[r].name + "'");

  // Nullable rules, then the "may begin with" graph over them: a cycle is left recursion.
  std::vector<uint8_t> nullable(n, 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      for (const auto& a : rules_[r].alts) {
        bool all = true;
        for (const Elem& e : a) all = all && e.kind == ElemKind::kRule && nullable[e.arg];
        if (all) {
          nullable[r] = 1;
          changed = true;
          break;
        }
      }
    }
  }
  std::vector<std::vector<uint32_t>> left(n);
  for (size_t r = 0; r < n; ++r) {
    for (const auto& a : rules_[r].alts) {
      for (const Elem& e : a) {
        if (e.kind != ElemKind::kRule) break;
        left[r].push_back(e.arg);
        if (!nullable[e.arg]) break;
      }
    }
  }
  {
    std::vector<uint8_t> color(n, 0);  // 0 new, 1 on the path, 2 done
    std::vector<std::pair<uint32_t, size_t>> path;
    for (uint32_t s = 0; s < n; ++s) {
      if (color[s]) continue;
      path.push_back({s, 0});
      color[s] = 1;
      while (!path.empty()) {
        auto& [r, i] = path.back();
        if (i == left[r].size()) {
          color[r] = 2;
          path.pop_back();
          continue;
        }
        const uint32_t to = left[r][i++];
        if (color[to] == 0) {
          color[to] = 1;
          path.push_back({to, 0});
        } else if (color[to] == 1) {
          // The cycle is path[k..] where path[k] == to: name a rule the user wrote.
          size_t k = path.size();
          while (k > 0 && path[k - 1].first != to) --k;
          const RuleDef* user = nullptr;
          const RuleDef* rep = nullptr;
          for (size_t j = k - 1; j < path.size(); ++j) {
            const RuleDef& d = rules_[path[j].first];
            if (!user && d.kind == RuleKind::kUser) user = &d;
            if (!rep && d.kind == RuleKind::kRepeat) rep = &d;
          }
          if (rep)
            return fail(rep->def_off,
                        "the repeated expression in rule '" + rep->base + "' can match the empty string");
          const RuleDef& d = user ? *user : rules_[to];
          return fail(d.def_off, "left recursion in rule '" + d.name + "'");
        }
      }
    }
  }

  // Productive rules; alternatives using anything else are dropped.
  auto elem_ok = [&](const Elem& e, const std::vector<uint8_t>& prod) {
    if (e.kind == ElemKind::kRule) return prod[e.arg] != 0;
    if (e.kind == ElemKind::kClass) return !classes_[e.arg].ranges.empty();
    return true;
  };
  std::vector<uint8_t> prod(n, 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (prod[r]) continue;
      for (const auto& a : rules_[r].alts) {
        if (std::all_of(a.begin(), a.end(), [&](const Elem& e) { return elem_ok(e, prod); })) {
          prod[r] = 1;
          changed = true;
          break;
        }
      }
    }
  }
  const uint32_t root = ids_.at(o_.root);
  if (!prod[root]) return fail(rules_[root].def_off, "rule '" + o_.root + "' matches no text");

  g.rules.resize(n);
  for (size_t r = 0; r < n; ++r) {
    g.rules[r].name = rules_[r].name;
    for (const auto& a : rules_[r].alts) {
      if (!std::all_of(a.begin(), a.end(), [&](const Elem& e) { return elem_ok(e, prod); })) continue;
      g.rules[r].alts.push_back(static_cast<uint32_t>(g.elems.size()));
      g.elems.insert(g.elems.end(), a.begin(), a.end());
      g.elems.push_back({ElemKind::kEnd, 0});
    }
  }
  g.classes = std::move(classes_);
  g.start_rule = root;
  return true;
}

Result<GrammarPtr> Parser::run() {
  if (t_.size() > o_.max_text_bytes) {
    fail(0, "grammar text of " + std::to_string(t_.size()) + " bytes exceeds max_text_bytes (" +
                std::to_string(o_.max_text_bytes) + ")");
    return error();
  }
  skip_space(true);
  while (!at_end()) {
    if (!parse_rule()) return error();
    skip_space(true);
  }
  if (ids_.find(o_.root) == ids_.end() || !rules_[ids_.at(o_.root)].defined) {
    fail(t_.size(), "no rule named '" + o_.root + "' (the root)");
    return error();
  }
  if (o_.optional_leading_space) {
    // start ::= " " root | root
    uint32_t s;
    if (!new_rule(RuleKind::kGroup, "start", 0, s)) return error();
    const uint32_t root = ids_.at(o_.root);
    rules_[s].alts.push_back({{ElemKind::kByte, ' '}, {ElemKind::kRule, root}});
    rules_[s].alts.push_back({{ElemKind::kRule, root}});
  }
  auto g = std::make_shared<Grammar>();
  if (!check_and_build(*g)) return error();
  if (o_.optional_leading_space) g->start_rule = static_cast<uint32_t>(g->rules.size() - 1);
  g->serial = g_serial.fetch_add(1);
  return GrammarPtr(std::move(g));
}

}  // namespace

bool CodeClass::contains(uint32_t cp) const {
  return intersects(cp, cp);
}

bool CodeClass::intersects(uint32_t lo, uint32_t hi) const {
  // First range ending at or after lo.
  auto it = std::lower_bound(ranges.begin(), ranges.end(), lo,
                             [](const std::pair<uint32_t, uint32_t>& r, uint32_t v) { return r.second < v; });
  return it != ranges.end() && it->first <= hi;
}

Result<GrammarPtr> parse_gbnf(std::string_view text, const GbnfOptions& opts) {
  Parser p(text, opts);
  return p.run();
}

}  // namespace mixtral::grammar
