// JSON Schema -> GBNF (llama.cpp's syntax, read by parse_gbnf). See docs/agents.md, "JSON Schema".
//
// What the emitted grammar accepts: the JSON texts whose value is valid against the schema, written in
// this layout (a model writes natural JSON; nothing can repeat forever except what the schema allows):
//  * Whitespace: none before or after the top value; between any two tokens (after [ { , : and before
//    ] } , :) the rule `ws`: nothing, one space, or one newline followed by at most 32 spaces/tabs.
//  * Object members: the properties named in `properties` come in the schema's order (then required keys
//    not named there, in `required`'s order), required ones mandatory and optional ones optional, then any
//    additional members (whose keys differ from the listed ones as written text). No duplicate listed key can
//    be written.
//  * Numbers: JSON syntax, at most 16 integer digits and 16 fraction digits, an optional exponent of at
//    most 3 digits; no "-0". Integers (type integer) are written without fraction or exponent. A number
//    with bounds (minimum/maximum/exclusive*) is written without exponent and checked exactly: the
//    grammar is a digit-prefix automaton of the decimal interval.
//  * Strings: any JSON escape (\" \\ \/ \b \f \n \r \t, \uXXXX with surrogate pairs as one code
//    point); minLength/maxLength count code points. Strings constrained by enum, const, pattern or
//    format are written canonically: characters that need no escape raw, `"` and `\` as \" and \\,
//    controls as \b \f \n \r \t or \u00xx (what JSON.stringify and nlohmann::json write).
//  * enum/const values are written canonically (object members in the schema's order, numbers in shortest
//  form, integral numbers
//    without fraction), with `ws` between tokens.
// Refusals: a constraining keyword the grammar does not enforce is an error
//   "<pointer>/<kw>: keyword '<kw>' is not supported[: why]"
// so a caller never gets output that silently ignores part of a schema. Keywords that are not JSON
// Schema vocabulary are ignored, as the spec says; unknown `format` values are annotations (2020-12's
// default format-annotation vocabulary) and ignored; known formats are enforced.
#include "grammar/json_schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <unordered_map>
#include <vector>

#include "tokenizer/utf8.h"

namespace mixtral::grammar {

// Schemas are read as ordered_json: object members keep the schema's order (properties are written in
// that order). Value equality goes through same_value (ordered_json's == compares members in order).
using json = nlohmann::ordered_json;

namespace {

constexpr int kIntDigits = 16;
constexpr int kFracDigits = 16;

// Internal error channel; converted to Error::data at add_schema.
struct Refusal {
  std::string message;
};

// Equality of JSON values as JSON defines it: object members unordered, 1 == 1.0.
bool same_value(const json& a, const json& b) {
  if (a.is_object() && b.is_object()) {
    if (a.size() != b.size()) return false;
    if (a.size() > 16) {  // (ordered_json's find is linear)
      std::unordered_map<std::string_view, const json*> in_b;
      for (auto it = b.begin(); it != b.end(); ++it) in_b.emplace(it.key(), &it.value());
      for (auto it = a.begin(); it != a.end(); ++it) {
        auto j = in_b.find(it.key());
        if (j == in_b.end() || !same_value(it.value(), *j->second)) return false;
      }
      return true;
    }
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto j = b.find(it.key());
      if (j == b.end() || !same_value(it.value(), *j)) return false;
    }
    return true;
  }
  if (a.is_array() && b.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_value(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}
bool has_value(const json& arr, const json& v) {
  return std::any_of(arr.begin(), arr.end(), [&](const json& e) { return same_value(e, v); });
}

// `ptr` is a JSON pointer into the schema; the root ("") is written "/" in messages.
[[noreturn]] void refuse(const std::string& ptr, const std::string& what) {
  throw Refusal{(ptr.empty() ? "/" : ptr) + ": " + what};
}
[[noreturn]] void unsupported(const std::string& ptr, const std::string& kw, const std::string& why = "") {
  throw Refusal{ptr + "/" + kw + ": keyword '" + kw + "' is not supported" + (why.empty() ? "" : ": " + why)};
}

std::string escape_pointer_token(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string hex(uint32_t v, int width) {
  static const char* d = "0123456789abcdef";
  std::string s(static_cast<size_t>(width), '0');
  for (int i = width - 1; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = d[v & 15];
  return s;
}

// One code point inside a GBNF [class].
std::string class_char(uint32_t c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
    return std::string(1, char(c));
  if (c < 0x80) return "\\x" + hex(c, 2);
  if (c < 0x10000) return "\\u" + hex(c, 4);
  return "\\U" + hex(c, 8);
}

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive code-point ranges

Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (auto [a, b] : r) {
    if (!out.empty() && a <= out.back().second + 1)
      out.back().second = std::max(out.back().second, b);
    else
      out.push_back({a, b});
  }
  return out;
}

Ranges complement(const Ranges& r) {
  Ranges out;
  uint32_t next = 0;
  for (auto [a, b] : normalize(r)) {
    if (a > next) out.push_back({next, a - 1});
    next = b + 1;
  }
  if (next <= 0x10FFFF) out.push_back({next, 0x10FFFF});
  return out;
}

Ranges intersect(const Ranges& x, const Ranges& y) {
  Ranges out;
  for (auto [a, b] : x)
    for (auto [c, d] : y) {
      const uint32_t lo = std::max(a, c), hi = std::min(b, d);
      if (lo <= hi) out.push_back({lo, hi});
    }
  return normalize(out);
}

// The canonical JSON escape of a character that must be escaped in a string.
std::string canonical_escape(uint32_t c) {
  switch (c) {
    case '"':
      return "\\\"";
    case '\\':
      return "\\\\";
    case '\b':
      return "\\b";
    case '\f':
      return "\\f";
    case '\n':
      return "\\n";
    case '\r':
      return "\\r";
    case '\t':
      return "\\t";
    default:
      return "\\u" + hex(c, 4);
  }
}

// Decodes UTF-8; false on malformed input.
bool decode_utf8(std::string_view s, std::vector<uint32_t>& out) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t c;
    if (b < 0x80) {
      n = 0, c = b;
    } else if ((b >> 5) == 6) {
      n = 1, c = b & 0x1Fu;
    } else if ((b >> 4) == 14) {
      n = 2, c = b & 0x0Fu;
    } else if ((b >> 3) == 30) {
      n = 3, c = b & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i < n + 1) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t & 0xC0) != 0x80) return false;
      c = (c << 6) | (t & 0x3Fu);
    }
    out.push_back(c);
    i += n + 1;
  }
  return true;
}

// A set of decoded characters -> GBNF over their canonical JSON spelling. nullopt: the empty set.
std::optional<std::string> json_char_set(const Ranges& set) {
  const Ranges raw_ok = complement({{0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}});
  const Ranges raw = intersect(set, raw_ok);
  std::vector<std::string> alts;
  if (!raw.empty()) {
    if (raw.size() == 1 && raw[0].first == raw[0].second) {
      std::string lit;
      tok::append_utf8(lit, raw[0].first);
      alts.push_back(GbnfBuilder::literal(lit));
    } else {
      std::string cls = "[";
      for (auto [a, b] : raw) cls += a == b ? class_char(a) : class_char(a) + "-" + class_char(b);
      alts.push_back(cls + "]");
    }
  }
  for (auto [a, b] : intersect(set, {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}}))
    for (uint32_t c = a; c <= b; ++c) alts.push_back(GbnfBuilder::literal(canonical_escape(c)));
  if (alts.empty()) return std::nullopt;
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

// The canonical JSON text of a string's content (no quotes).
std::string canonical_string_body(const std::string& s, const std::string& ptr) {
  std::vector<uint32_t> cps;
  if (!decode_utf8(s, cps)) refuse(ptr, "string is not valid UTF-8");
  std::string out;
  for (uint32_t c : cps) {
    if (c < 0x20 || c == '"' || c == '\\')
      out += canonical_escape(c);
    else
      tok::append_utf8(out, c);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Decimal numbers as digit strings.

struct Decimal {
  bool neg = false;
  std::string ip = "0";  // integer digits, no leading zeros ("0" for zero)
  std::string fp;        // fraction digits, no trailing zeros
};

// Parses a JSON number's text (e.g. "-1.25e-3") into a Decimal.
Decimal parse_decimal(const std::string& text) {
  Decimal d;
  size_t i = 0;
  if (i < text.size() && text[i] == '-') d.neg = true, ++i;
  std::string digits;
  long point = -1;
  for (; i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'); ++i) {
    if (text[i] == '.')
      point = static_cast<long>(digits.size());
    else
      digits += text[i];
  }
  if (point < 0) point = static_cast<long>(digits.size());
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) point += std::stol(text.substr(i + 1));
  // digits with the decimal point at `point`
  std::string ip, fp;
  if (point <= 0) {
    ip = "0";
    fp = std::string(static_cast<size_t>(-point), '0') + digits;
  } else if (point >= static_cast<long>(digits.size())) {
    ip = digits + std::string(static_cast<size_t>(point) - digits.size(), '0');
  } else {
    ip = digits.substr(0, static_cast<size_t>(point));
    fp = digits.substr(static_cast<size_t>(point));
  }
  ip.erase(0, std::min(ip.find_first_not_of('0'), ip.size() - 1));
  if (ip.empty()) ip = "0";
  while (!fp.empty() && fp.back() == '0') fp.pop_back();
  d.ip = ip;
  d.fp = fp;
  if (d.ip == "0" && d.fp.empty()) d.neg = false;
  return d;
}

// The shortest text of a JSON number.
std::string number_text(const json& v) {
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v.get<double>());
  return std::string(buf, r.ptr);
}

// Canonical spelling: integral values without fraction, no exponent where it fits the digit policy.
std::optional<std::string> canonical_number(const json& v) {
  if (v.is_number_float() && !std::isfinite(v.get<double>())) return std::nullopt;
  const Decimal d = parse_decimal(number_text(v));
  if (d.ip.size() > static_cast<size_t>(kIntDigits) || d.fp.size() > static_cast<size_t>(kFracDigits))
    return std::nullopt;
  return (d.neg ? "-" : "") + d.ip + (d.fp.empty() ? "" : "." + d.fp);
}

int cmp_decimal(const Decimal& a, const Decimal& b) {
  if (a.neg != b.neg) return a.neg ? -1 : 1;
  int c = 0;
  if (a.ip.size() != b.ip.size())
    c = a.ip.size() < b.ip.size() ? -1 : 1;
  else if (a.ip != b.ip)
    c = a.ip < b.ip ? -1 : 1;
  else if (a.fp != b.fp)
    c = a.fp < b.fp ? -1 : 1;
  return a.neg ? -c : c;
}

// ---------------------------------------------------------------------------------------------------
// Regular expressions (the documented subset of ECMA-262, code-point semantics).

struct Re {
  enum Kind { kSet, kSeq, kAlt, kRep } kind = kSeq;
  Ranges set;
  std::vector<Re> kids;
  int min = 0, max = -1;  // kRep; max -1: unbounded

  Re() = default;
  explicit Re(Kind k) : kind(k) {}
  Re(Kind k, Ranges r) : kind(k), set(std::move(r)) {}
};

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{9, 13},          {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680},
                       {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                       {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
const Ranges kDot = complement({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}});
const Ranges kAny = {{0, 0x10FFFF}};

class RegexParser {
 public:
  RegexParser(const std::vector<uint32_t>& p, std::string ptr) : p_(p), ptr_(std::move(ptr)) {}

  // The whole pattern, unanchored parts widened with .* (JSON Schema patterns search).
  Re parse_top() {
    Re top{Re::kAlt};
    for (;;) {
      bool start = false, end = false;
      if (peek() == '^') ++i_, start = true;
      Re seq = parse_seq(&end);
      Re any_rep{Re::kRep};
      any_rep.kids.push_back(Re{Re::kSet, kAny});
      Re full{Re::kSeq};
      if (!start) full.kids.push_back(any_rep);
      full.kids.push_back(std::move(seq));
      if (!end) full.kids.push_back(any_rep);
      top.kids.push_back(std::move(full));
      if (i_ >= p_.size()) break;
      if (peek() != '|') fail("unbalanced ')'");
      ++i_;
    }
    return top;
  }

 private:
  [[noreturn]] void fail(const std::string& why) { unsupported(ptr_, "pattern", why); }
  uint32_t peek() const { return i_ < p_.size() ? p_[i_] : 0xFFFFFFFF; }

  Re parse_alt() {
    Re alt{Re::kAlt};
    for (;;) {
      alt.kids.push_back(parse_seq(nullptr));
      if (peek() != '|') break;
      ++i_;
    }
    return alt;
  }

  // end: where the caller allows a final `$` (top level); set when one was seen.
  Re parse_seq(bool* end) {
    Re seq{Re::kSeq};
    while (i_ < p_.size() && peek() != '|' && peek() != ')') {
      if (peek() == '$') {
        ++i_;
        if (end && (i_ >= p_.size() || peek() == '|')) {
          *end = true;
          break;
        }
        fail("'$' only at the end of the pattern or of a top-level alternative");
      }
      if (peek() == '^') fail("'^' only at the start of the pattern or of a top-level alternative");
      Re atom = parse_atom();
      parse_quantifier(atom);
      seq.kids.push_back(std::move(atom));
    }
    return seq;
  }

  bool read_int(int& v) {
    size_t start = i_;
    long long x = 0;
    while (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') {
      x = x * 10 + (p_[i_] - '0');
      if (x > 100000) fail("repetition count too large");
      ++i_;
    }
    v = static_cast<int>(x);
    return i_ > start;
  }

  void parse_quantifier(Re& atom) {
    int mn = -1, mx = -1;
    const uint32_t c = peek();
    if (c == '*') {
      mn = 0, mx = -1, ++i_;
    } else if (c == '+') {
      mn = 1, mx = -1, ++i_;
    } else if (c == '?') {
      mn = 0, mx = 1, ++i_;
    } else if (c == '{') {
      const size_t save = i_;
      ++i_;
      int a = 0, b = -1;
      if (read_int(a)) {
        if (peek() == '}') {
          b = a, ++i_;
        } else if (peek() == ',') {
          ++i_;
          if (!read_int(b)) b = -1;
          if (peek() != '}') {
            i_ = save;
            return;  // Annex B: a literal '{'
          }
          ++i_;
        } else {
          i_ = save;
          return;
        }
        if (b >= 0 && b < a) fail("repetition {m,n} with n < m");
        mn = a, mx = b;
      } else {
        i_ = save;
        return;
      }
    } else {
      return;
    }
    if (peek() == '?') ++i_;  // lazy: the same language
    if (peek() == '*' || peek() == '+' || peek() == '?' ||
        (peek() == '{' && i_ + 1 < p_.size() && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9'))
      fail("nothing to repeat");
    Re rep{Re::kRep};
    rep.min = mn, rep.max = mx;
    rep.kids.push_back(std::move(atom));
    atom = std::move(rep);
  }

  uint32_t hex_digits(int n) {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      const uint32_t c = peek();
      int d = c >= '0' && c <= '9'   ? int(c - '0')
              : c >= 'a' && c <= 'f' ? int(c - 'a' + 10)
              : c >= 'A' && c <= 'F' ? int(c - 'A' + 10)
                                     : -1;
      if (d < 0) fail("bad hex escape");
      v = v * 16 + static_cast<uint32_t>(d);
      ++i_;
    }
    return v;
  }

  // After a backslash: a class escape (\d ...) into `set`, or one character.
  Ranges parse_escape(bool in_class) {
    if (i_ >= p_.size()) fail("trailing backslash");
    const uint32_t c = p_[i_++];
    switch (c) {
      case 'd':
        return kDigit;
      case 'D':
        return complement(kDigit);
      case 'w':
        return kWord;
      case 'W':
        return complement(kWord);
      case 's':
        return kSpace;
      case 'S':
        return complement(kSpace);
      case 't':
        return {{'\t', '\t'}};
      case 'n':
        return {{'\n', '\n'}};
      case 'r':
        return {{'\r', '\r'}};
      case 'f':
        return {{'\f', '\f'}};
      case 'v':
        return {{'\v', '\v'}};
      case '0':
        if (peek() >= '0' && peek() <= '9') fail("octal escapes");
        return {{0, 0}};
      case 'x': {
        const uint32_t v = hex_digits(2);
        return {{v, v}};
      }
      case 'u': {
        uint32_t v;
        if (peek() == '{') {
          ++i_;
          v = 0;
          int n = 0;
          while (peek() != '}' && n < 7) v = v * 16 + hex_digits(1), ++n;
          if (peek() != '}' || v > 0x10FFFF) fail("bad \\u{...} escape");
          ++i_;
        } else {
          v = hex_digits(4);
          if (v >= 0xD800 && v <= 0xDBFF && peek() == '\\' && i_ + 1 < p_.size() && p_[i_ + 1] == 'u') {
            const size_t save = i_;
            i_ += 2;
            const uint32_t lo = hex_digits(4);
            if (lo >= 0xDC00 && lo <= 0xDFFF)
              v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            else
              i_ = save;
          }
        }
        return {{v, v}};
      }
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        fail("word boundaries (\\b)");
      case 'B':
        fail("word boundaries (\\B)");
      case 'c':
        fail("control escapes (\\c)");
      case 'p':
      case 'P':
        fail("Unicode property classes (\\p)");
      case 'k':
        fail("named back-references (\\k)");
      default:
        if (c >= '1' && c <= '9') fail("back-references");
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
          fail(std::string("unknown escape \\") + char(c));
        return {{c, c}};
    }
  }

  Re parse_class() {
    // after '['
    bool neg = false;
    if (peek() == '^') neg = true, ++i_;
    Ranges set;
    while (i_ < p_.size() && peek() != ']') {
      Ranges lo_set;
      uint32_t c = p_[i_++];
      if (c == '\\')
        lo_set = parse_escape(true);
      else
        lo_set = {{c, c}};
      if (peek() == '-' && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        uint32_t d = p_[i_++];
        Ranges hi_set = d == '\\' ? parse_escape(true) : Ranges{{d, d}};
        if (lo_set.size() != 1 || lo_set[0].first != lo_set[0].second || hi_set.size() != 1 ||
            hi_set[0].first != hi_set[0].second)
          fail("a class escape as a range end");
        if (hi_set[0].first < lo_set[0].first) fail("class range out of order");
        set.push_back({lo_set[0].first, hi_set[0].first});
      } else {
        set.insert(set.end(), lo_set.begin(), lo_set.end());
      }
    }
    if (peek() != ']') fail("unterminated character class");
    ++i_;
    set = normalize(set);
    return Re{Re::kSet, neg ? complement(set) : set};
  }

  Re parse_atom() {
    const uint32_t c = p_[i_++];
    switch (c) {
      case '(': {
        if (peek() == '?') {
          ++i_;
          if (peek() == ':') {
            ++i_;
          } else if (peek() == '<' && i_ + 1 < p_.size() && p_[i_ + 1] != '=' && p_[i_ + 1] != '!') {
            while (i_ < p_.size() && p_[i_] != '>') ++i_;  // named group: a group
            if (i_ >= p_.size()) fail("unterminated group name");
            ++i_;
          } else {
            fail("lookaround assertions");
          }
        }
        Re inner = parse_alt();
        if (peek() != ')') fail("unbalanced '('");
        ++i_;
        return inner;
      }
      case '[':
        return parse_class();
      case '.':
        return Re{Re::kSet, kDot};
      case '\\':
        return Re{Re::kSet, parse_escape(false)};
      case '*':
      case '+':
      case '?':
        fail("nothing to repeat");
      case ')':
        fail("unbalanced ')'");
      default:
        return Re(Re::kSet, Ranges{{c, c}});
    }
  }

  const std::vector<uint32_t>& p_;
  size_t i_ = 0;
  std::string ptr_;
};

// min/max length in code points (max -1: unbounded).
std::pair<long, long> re_length(const Re& r) {
  switch (r.kind) {
    case Re::kSet:
      return {1, 1};
    case Re::kSeq: {
      long a = 0, b = 0;
      for (const auto& k : r.kids) {
        auto [x, y] = re_length(k);
        a += x;
        b = (b < 0 || y < 0) ? -1 : b + y;
      }
      return {a, b};
    }
    case Re::kAlt: {
      long a = -1, b = 0;
      for (const auto& k : r.kids) {
        auto [x, y] = re_length(k);
        a = a < 0 ? x : std::min(a, x);
        b = (b < 0 || y < 0) ? -1 : std::max(b, y);
      }
      return {std::max(a, 0L), b};
    }
    case Re::kRep: {
      auto [x, y] = re_length(r.kids[0]);
      return {x * r.min, (r.max < 0 || y < 0) ? (y == 0 ? 0 : -1) : y * r.max};
    }
  }
  return {0, 0};
}

bool re_nullable(const Re& r) {
  switch (r.kind) {
    case Re::kSet:
      return false;
    case Re::kSeq:
      for (const auto& k : r.kids)
        if (!re_nullable(k)) return false;
      return true;
    case Re::kAlt:
      for (const auto& k : r.kids)
        if (re_nullable(k)) return true;
      return false;
    case Re::kRep:
      return r.min == 0 || re_nullable(r.kids[0]);
  }
  return false;
}

// The same language without the empty string (parse_gbnf refuses repeating what can match nothing).
Re re_nonempty(const Re& r) {
  switch (r.kind) {
    case Re::kSet:
      return r;
    case Re::kAlt: {
      Re out(Re::kAlt);
      for (const auto& k : r.kids) out.kids.push_back(re_nonempty(k));
      return out;
    }
    case Re::kSeq: {
      // the first element that writes something is element i; those before it write nothing
      Re out(Re::kAlt);
      for (size_t i = 0; i < r.kids.size(); ++i) {
        Re alt(Re::kSeq);
        alt.kids.push_back(re_nonempty(r.kids[i]));
        for (size_t j = i + 1; j < r.kids.size(); ++j) alt.kids.push_back(r.kids[j]);
        out.kids.push_back(std::move(alt));
        if (!re_nullable(r.kids[i])) break;
      }
      return out;
    }
    case Re::kRep: {
      // X{m,n} without the empty string: X' X'{0,n-1} where X' = X without the empty string (when X can
      // match nothing, any of the m copies may, so the lower count drops to one)
      const Re& x = r.kids[0];
      const bool null_x = re_nullable(x);
      Re xp = null_x ? re_nonempty(x) : x;
      if (r.max == 0) return Re(Re::kAlt);  // the empty language
      Re out(Re::kSeq);
      out.kids.push_back(xp);
      Re more(Re::kRep);
      more.min = null_x ? 0 : std::max(r.min - 1, 0);
      more.max = r.max < 0 ? -1 : r.max - 1;
      more.kids.push_back(xp);
      out.kids.push_back(std::move(more));
      return out;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Integer ranges as digit grammars.

std::string pow10_str(int n) {
  std::string s(static_cast<size_t>(n) + 1, '0');
  s[0] = '1';
  return s;
}

// Same-length digit strings lo <= hi: alternatives for every string between them.
std::string same_len_range(const std::string& lo, const std::string& hi) {
  const size_t n = lo.size();
  if (n == 0) return "\"\"";
  size_t p = 0;
  while (p < n && lo[p] == hi[p]) ++p;
  std::string prefix = p ? GbnfBuilder::literal(lo.substr(0, p)) : "";
  if (p == n) return prefix;
  const std::string a = lo.substr(p + 1), b = hi.substr(p + 1);
  const char x = lo[p], y = hi[p];
  const size_t rest = n - p - 1;
  auto any = [&](size_t k) {
    return k == 0 ? std::string() : k == 1 ? " [0-9]" : " [0-9]{" + std::to_string(k) + "}";
  };
  auto cls = [](char u, char v) {
    return u == v ? std::string("\"") + u + "\"" : std::string("[") + u + "-" + v + "]";
  };
  std::vector<std::string> alts;
  const bool a_min = a.find_first_not_of('0') == std::string::npos;
  const bool b_max = b.find_first_not_of('9') == std::string::npos;
  char from = x, to = y;
  if (!a_min) {
    alts.push_back(std::string("\"") + x + "\" (" + same_len_range(a, std::string(rest, '9')) + ")");
    from = char(x + 1);
  }
  if (!b_max) to = char(y - 1);
  if (from <= to) alts.push_back(cls(from, to) + any(rest));
  if (!b_max)
    alts.push_back(std::string("\"") + y + "\" (" + same_len_range(std::string(rest, '0'), b) + ")");
  std::string out;
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return prefix.empty() ? "(" + out + ")" : prefix + " (" + out + ")";
}

// Non-negative integers in [lo, hi] (decimal strings without leading zeros, lo <= hi).
std::string uint_range(const std::string& lo, const std::string& hi) {
  std::vector<std::string> alts;
  for (size_t len = lo.size(); len <= hi.size(); ++len) {
    std::string a = len == lo.size() ? lo : (len == 1 ? "0" : pow10_str(static_cast<int>(len) - 1));
    std::string b = len == hi.size() ? hi : std::string(len, '9');
    alts.push_back(same_len_range(a, b));
  }
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

bool dec_less(const std::string& a, const std::string& b) {  // digit strings without leading zeros
  return a.size() != b.size() ? a.size() < b.size() : a < b;
}
std::string dec_add(std::string a, int delta) {  // delta +-1, result >= 0
  if (delta > 0) {
    int i = static_cast<int>(a.size()) - 1;
    while (i >= 0 && a[static_cast<size_t>(i)] == '9') a[static_cast<size_t>(i--)] = '0';
    if (i < 0)
      a.insert(a.begin(), '1');
    else
      ++a[static_cast<size_t>(i)];
  } else {
    int i = static_cast<int>(a.size()) - 1;
    while (i >= 0 && a[static_cast<size_t>(i)] == '0') a[static_cast<size_t>(i--)] = '9';
    --a[static_cast<size_t>(i)];
    if (a.size() > 1 && a[0] == '0') a.erase(0, 1);
  }
  return a;
}

// An interval end: the value, and whether it is included. nullopt: unbounded.
struct Bound {
  Decimal v;
  bool incl = true;
};

// ---------------------------------------------------------------------------------------------------
// The rule table behind GbnfBuilder.

struct RuleTable {
  std::vector<std::pair<std::string, std::string>> rules;  // name, body (in definition order)
  std::unordered_map<std::string, size_t> index;           // name -> rules[]
  std::unordered_map<std::string, std::string> by_body;    // body -> name (defined rules, for sharing)
  std::unordered_map<std::string, int> next_suffix;        // base -> the first "-N" not yet tried

  std::string unique(std::string_view base) {
    std::string clean;
    for (char c : base) clean += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '-';
    if (clean.empty()) clean = "r";
    std::string name = clean;
    if (!index.count(name)) return name;
    int& n =
        next_suffix.try_emplace(clean, 2).first->second;  // (from 2 each time: quadratic in a base's uses)
    do name = clean + "-" + std::to_string(n++);
    while (index.count(name));
    return name;
  }
  std::string reserve(std::string_view base) {
    std::string name = unique(base);
    index[name] = rules.size();
    rules.push_back({name, ""});
    return name;
  }
  void define(const std::string& name, std::string body) {
    by_body.emplace(body, name);
    rules[index.at(name)].second = std::move(body);
  }
  std::string add(std::string_view base, std::string body) {
    if (auto it = by_body.find(body); it != by_body.end()) return it->second;
    std::string name = reserve(base);
    define(name, std::move(body));
    return name;
  }
  // A shared rule with a fixed name (defined once).
  std::string fixed(const std::string& name, const std::string& body) {
    if (!index.count(name)) {
      index[name] = rules.size();
      rules.push_back({name, body});
    }
    return name;
  }

  std::string ws() { return fixed("ws", "( \" \" | \"\\n\" [ \\t]{0,32} )?"); }
  std::string hex4() { return fixed("json-hex", "[0-9a-fA-F]"); }
  // One string character (a code point): raw, a short escape, \uXXXX (not a surrogate), or a pair.
  std::string chr() {
    hex4();
    return fixed(
        "json-char",
        "[^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-CeEfF] json-hex{3} | [dD] "
        "[0-7] json-hex{2} | [dD] [89abAB] json-hex{2} \"\\\\u\" [dD] [c-fC-F] json-hex{2} ) )");
  }
  std::string string() {
    chr();
    return fixed("json-string", "\"\\\"\" json-char* \"\\\"\"");
  }
  std::string integer() { return fixed("json-integer", "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} )"); }
  std::string number() {
    return fixed("json-number",
                 "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?");
  }
  std::string value() {
    if (!index.count("json-value")) {
      fixed("json-value", "");
      const std::string w = ws();
      string();
      number();
      fixed("json-array",
            "\"[\" " + w + " ( json-value ( " + w + " \",\" " + w + " json-value )* " + w + " )? \"]\"");
      fixed("json-object", "\"{\" " + w + " ( json-string " + w + " \":\" " + w + " json-value ( " + w +
                               " \",\" " + w + " json-string " + w + " \":\" " + w + " json-value )* " + w +
                               " )? \"}\"");
      rules[index["json-value"]].second =
          "json-object | json-array | json-string | json-number | \"true\" | \"false\" | \"null\"";
    }
    return "json-value";
  }
};

}  // namespace

struct GbnfBuilder::Impl : RuleTable {};

GbnfBuilder::GbnfBuilder() : impl_(std::make_unique<Impl>()) {}
GbnfBuilder::~GbnfBuilder() = default;

std::string GbnfBuilder::any_value() {
  return impl_->value();
}
std::string GbnfBuilder::any_object() {
  impl_->value();
  return "json-object";
}
std::string GbnfBuilder::add_rule(std::string_view name, std::string_view body) {
  std::string n = impl_->reserve(name);
  impl_->define(n, std::string(body));
  return n;
}

std::string GbnfBuilder::literal(std::string_view bytes) {
  std::string out = "\"";
  for (unsigned char c : bytes) {
    if (c == '"')
      out += "\\\"";
    else if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7F)
      out += "\\x" + hex(c, 2);
    else
      out += static_cast<char>(c);
  }
  return out + "\"";
}

std::string GbnfBuilder::gbnf(std::string_view root_body) const {
  std::string out = "root ::= " + std::string(root_body) + "\n";
  for (const auto& [name, body] : impl_->rules) out += name + " ::= " + body + "\n";
  return out;
}

namespace {

// Keywords that only annotate (accepted, no effect on the grammar).
const std::set<std::string> kAnnotations = {"title",
                                            "description",
                                            "default",
                                            "examples",
                                            "$schema",
                                            "$id",
                                            "$comment",
                                            "deprecated",
                                            "readOnly",
                                            "writeOnly",
                                            "contentMediaType",
                                            "contentEncoding",
                                            "contentSchema",
                                            "$anchor",
                                            "$dynamicAnchor",
                                            "$vocabulary",
                                            "$defs",
                                            "definitions",
                                            "discriminator",
                                            "example",
                                            "externalDocs",
                                            "xml",
                                            "format"};

// Constraining keywords the compiler does not enforce (refused when they constrain).
const std::set<std::string> kUnsupported = {"not",
                                            "if",
                                            "contains",
                                            "minContains",
                                            "maxContains",
                                            "dependentRequired",
                                            "dependentSchemas",
                                            "dependencies",
                                            "patternProperties",
                                            "propertyNames",
                                            "unevaluatedItems",
                                            "unevaluatedProperties",
                                            "multipleOf",
                                            "minProperties",
                                            "maxProperties",
                                            "uniqueItems",
                                            "$dynamicRef",
                                            "$recursiveRef",
                                            "$recursiveAnchor"};

const std::vector<std::string> kTypes = {"null", "boolean", "object", "array", "string", "number", "integer"};

class Compiler {
 public:
  Compiler(RuleTable& b, const json& root, std::string prefix, const SchemaOptions& opts)
      : b_(b), root_(root), prefix_(std::move(prefix)), opts_(opts) {
    draft7_ = false;
    if (root.is_object()) {
      if (auto it = root.find("$schema"); it != root.end() && it->is_string()) {
        const auto& s = it->get_ref<const std::string&>();
        draft7_ = s.find("draft-0") != std::string::npos;
        // Another meta-schema may drop or add vocabularies: its meaning is unknown here.
        if (s.find("json-schema.org/") == std::string::npos)
          schema_error_ = "/$schema: keyword '$schema' is not supported: unknown meta-schema '" + s + "'";
      }
    }
  }

  std::string compile_root() {
    if (!schema_error_.empty()) throw Refusal{schema_error_};
    auto r = compile(root_, "", 0);
    if (!r) refuse("", "the schema admits no value");
    while (!pending_.empty()) {
      const Pending p = pending_.back();
      pending_.pop_back();
      ref_nesting_ = 0;
      auto body = compile(*p.target, p.ptr, 0);
      b_.define(p.name, body ? *body : std::string(kNothing));
    }
    return *r;
  }

 private:
  // --- limits -------------------------------------------------------------------------------------
  void check_depth(int depth, const std::string& ptr) {
    if (depth > opts_.max_depth)
      refuse(ptr, "schema nesting exceeds max_depth (" + std::to_string(opts_.max_depth) + ")");
  }
  // Refuses when `more` rules would take the grammar past max_rules; the pointer is that of the
  // subschema being compiled.
  void check_rules(size_t more = 0) {
    if (b_.rules.size() - base_rules_ + more > opts_.max_rules)
      refuse(at_ ? *at_ : "", "schema too large: the grammar exceeds max_rules (" +
                                  std::to_string(opts_.max_rules) + " rules)");
  }
  std::string rule(const std::string& base, std::string body) {
    check_rules();
    return b_.add(prefix_ + "-" + base, std::move(body));
  }

  // --- references -----------------------------------------------------------------------------
  const json* resolve_pointer(const json& doc, const std::string& frag, std::string& out_ptr) {
    if (frag.empty()) {
      out_ptr = "";
      return &doc;
    }
    if (frag[0] != '/') {  // an anchor name
      const json* found = nullptr;
      std::string where;
      find_anchor(doc, frag, "", found, where);
      out_ptr = where;
      return found;
    }
    // percent-decoding of the fragment (URI form)
    std::string dec;
    for (size_t i = 0; i < frag.size(); ++i) {
      if (frag[i] == '%' && i + 2 < frag.size() + 0 &&
          std::isxdigit(static_cast<unsigned char>(frag[i + 1])) &&
          std::isxdigit(static_cast<unsigned char>(frag[i + 2]))) {
        dec += static_cast<char>(std::stoi(frag.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        dec += frag[i];
      }
    }
    const json* cur = &doc;
    size_t pos = 1;
    while (pos <= dec.size()) {
      size_t next = dec.find('/', pos);
      if (next == std::string::npos) next = dec.size();
      std::string tok = dec.substr(pos, next - pos);
      std::string t;
      for (size_t i = 0; i < tok.size(); ++i) {
        if (tok[i] == '~' && i + 1 < tok.size() && tok[i + 1] == '1')
          t += '/', ++i;
        else if (tok[i] == '~' && i + 1 < tok.size() && tok[i + 1] == '0')
          t += '~', ++i;
        else
          t += tok[i];
      }
      if (cur->is_object()) {
        auto it = cur->find(t);
        if (it == cur->end()) return nullptr;
        cur = &*it;
      } else if (cur->is_array()) {
        if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos) return nullptr;
        const size_t k = std::stoul(t);
        if (k >= cur->size()) return nullptr;
        cur = &(*cur)[k];
      } else {
        return nullptr;
      }
      pos = next + 1;
    }
    out_ptr = dec;
    return cur;
  }
  void find_anchor(const json& s, const std::string& name, const std::string& ptr, const json*& found,
                   std::string& where) {
    if (found) return;
    if (s.is_object()) {
      auto anchor = s.find("$anchor");
      if (anchor == s.end()) anchor = s.find("$dynamicAnchor");
      auto id = s.find("$id");  // draft-07 spells an anchor as "$id": "#name"
      if ((anchor != s.end() && anchor->is_string() && *anchor == name) ||
          (id != s.end() && id->is_string() && *id == "#" + name)) {
        found = &s;
        where = ptr;
        return;
      }
      for (auto it = s.begin(); it != s.end(); ++it)
        if (it.key() != "enum" && it.key() != "const")
          find_anchor(it.value(), name, ptr + "/" + escape_pointer_token(it.key()), found, where);
    } else if (s.is_array()) {
      for (size_t i = 0; i < s.size(); ++i)
        find_anchor(s[i], name, ptr + "/" + std::to_string(i), found, where);
    }
  }

  // The target of a "$ref" (only references inside this document: "#", "#/json/pointer", "#anchor").
  const json& ref_target(const json& s, const std::string& ptr, std::string& target_ptr) {
    const json& r = s["$ref"];
    if (!r.is_string()) refuse(ptr + "/$ref", "must be a string");
    const auto& ref = r.get_ref<const std::string&>();
    const size_t hash = ref.find('#');
    std::string base = hash == std::string::npos ? ref : ref.substr(0, hash);
    if (!base.empty()) {
      // A reference by the document's own $id is a reference into this document.
      const auto id = root_.is_object() && root_.contains("$id") && root_["$id"].is_string()
                          ? root_["$id"].get<std::string>()
                          : std::string();
      if (id.empty() || (base != id && base + "#" != id))
        unsupported(ptr, "$ref",
                    "only references inside the schema ('#...') are supported, not '" + ref + "'");
    }
    const std::string frag = hash == std::string::npos ? "" : ref.substr(hash + 1);
    const json* t = resolve_pointer(root_, frag, target_ptr);
    if (!t) refuse(ptr + "/$ref", "unresolved reference '" + ref + "'");
    return *t;
  }

  // --- schema normalization ----------------------------------------------------------------------
  static bool constraining_key(const std::string& k) {
    return !kAnnotations.count(k) && k.rfind("x-", 0) != 0;
  }

  // Does this schema carry any key other than annotations (and `except`)?
  static bool has_constraints(const json& s, const std::set<std::string>& except) {
    for (auto it = s.begin(); it != s.end(); ++it)
      if ((constraining_key(it.key()) || (it.key() == "format" && is_known_format(*it))) &&
          !except.count(it.key()))
        return true;
    return false;
  }

  json& keep(json j) {
    store_.push_back(std::move(j));
    return store_.back();
  }

  // Inlines $ref (with its siblings) and allOf into one schema object (or a boolean).
  json flatten(const json& s, const std::string& ptr, int depth) {
    check_depth(depth, ptr);
    if (s.is_boolean()) return s;
    if (!s.is_object()) refuse(ptr.empty() ? "/" : ptr, "a schema must be an object or a boolean");
    json out = s;
    if (s.contains("$ref")) {
      std::string tptr;
      const json& t = ref_target(s, ptr, tptr);
      json target = flatten(t, tptr, depth + 1);
      out.erase("$ref");
      if (draft7_ || !has_constraints(out, {})) return target;
      out = merge(target, flatten(out, ptr, depth + 1), ptr);
    }
    if (out.is_object() && out.contains("allOf")) {
      const json& all = out["allOf"];
      if (!all.is_array() || all.empty()) refuse(ptr + "/allOf", "must be a non-empty array");
      json rest = out;
      rest.erase("allOf");
      json acc = flatten(rest, ptr, depth + 1);
      for (size_t i = 0; i < all.size(); ++i)
        acc = merge(acc, flatten(all[i], ptr + "/allOf/" + std::to_string(i), depth + 1), ptr + "/allOf");
      return acc;
    }
    return out;
  }

  static std::set<std::string> type_set(const json& s) {
    std::set<std::string> t;
    if (!s.contains("type")) return {kTypes.begin(), kTypes.end()};
    const json& ty = s["type"];
    if (ty.is_string()) t.insert(ty.get<std::string>());
    if (ty.is_array())
      for (const auto& x : ty)
        if (x.is_string()) t.insert(x.get<std::string>());
    if (t.count("number")) t.insert("integer");
    return t;
  }

  // The schema that applies to member `key` of objects valid against s (nullptr: none, unconstrained).
  const json* member_schema(const json& s, const std::string& key) {
    if (auto p = s.find("properties"); p != s.end() && p->is_object() && p->contains(key)) return &(*p)[key];
    if (auto a = s.find("additionalProperties"); a != s.end()) return &*a;
    if (opts_.strict && (s.contains("properties") || s.value("type", json()) == "object")) return &kFalse;
    return nullptr;
  }

  // allOf of two flattened schemas as one schema.
  json merge(const json& a, const json& b, const std::string& ptr) {
    if (a.is_boolean()) return a.get<bool>() ? b : a;
    if (b.is_boolean()) return b.get<bool>() ? a : b;
    json out = json::object();
    std::set<std::string> keys;
    for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
    for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
    // Object members: each key gets every branch's applicable schema.
    if (a.contains("properties") || b.contains("properties") || a.contains("additionalProperties") ||
        b.contains("additionalProperties")) {
      std::vector<std::string> names;  // a's properties in order, then b's others
      for (const json* s : {&a, &b})
        if (auto p = s->find("properties"); p != s->end() && p->is_object())
          for (auto it = p->begin(); it != p->end(); ++it)
            if (std::find(names.begin(), names.end(), it.key()) == names.end()) names.push_back(it.key());
      json props = json::object();
      for (const auto& n : names) {
        json parts = json::array();
        for (const json* s : {&a, &b})
          if (const json* m = member_schema(*s, n)) parts.push_back(*m);
        props[n] = parts.size() == 1 ? parts[0] : json{{"allOf", parts}};
      }
      if (!names.empty()) out["properties"] = props;
      json addl = json::array();
      for (const json* s : {&a, &b}) {
        auto it = s->find("additionalProperties");
        if (it != s->end())
          addl.push_back(*it);
        else if (opts_.strict && (s->contains("properties") || s->value("type", json()) == "object"))
          addl.push_back(false);
      }
      if (!addl.empty()) out["additionalProperties"] = addl.size() == 1 ? addl[0] : json{{"allOf", addl}};
    }
    // Array elements: element i gets every branch's applicable schema (its prefix entry, else its items).
    const bool a_tuple = a.contains("prefixItems") || (a.contains("items") && a["items"].is_array());
    const bool b_tuple = b.contains("prefixItems") || (b.contains("items") && b["items"].is_array());
    const bool tuple = a_tuple || b_tuple;
    if (tuple) {
      auto [pa, ra] = array_parts(a, ptr);
      auto [pb, rb] = array_parts(b, ptr);
      json prefix = json::array();
      for (size_t i = 0; i < std::max(pa.size(), pb.size()); ++i) {
        json parts = json::array();
        if (const json* x = i < pa.size() ? pa[i] : ra) parts.push_back(*x);
        if (const json* y = i < pb.size() ? pb[i] : rb) parts.push_back(*y);
        prefix.push_back(parts.empty() ? json(true) : parts.size() == 1 ? parts[0] : json{{"allOf", parts}});
      }
      out["prefixItems"] = prefix;
      json rest = json::array();
      if (ra) rest.push_back(*ra);
      if (rb) rest.push_back(*rb);
      if (!rest.empty()) out["items"] = rest.size() == 1 ? rest[0] : json{{"allOf", rest}};
    }
    for (const auto& k : keys) {
      if (k == "properties" || k == "additionalProperties") continue;
      if (tuple && (k == "prefixItems" || k == "items" || k == "additionalItems")) continue;
      const bool ina = a.contains(k), inb = b.contains(k);
      if (!ina || !inb) {
        out[k] = ina ? a[k] : b[k];
        continue;
      }
      const json &x = a[k], &y = b[k];
      if (k == "format" && x != y && is_known_format(x) && is_known_format(y)) {
        unsupported(ptr, "allOf", "cannot combine two different formats");
      } else if (same_value(x, y) || !constraining_key(k)) {
        out[k] = x;
      } else if (k == "type") {
        std::set<std::string> tx = type_set(a), ty = type_set(b);
        json t = json::array();
        for (const auto& n : kTypes)
          if (tx.count(n) && ty.count(n)) t.push_back(n);
        if (t.size() == 2 && t[0] == "number" && t[1] == "integer") t = json::array({"integer"});
        if (t.empty()) return false;
        out[k] = t;
      } else if (k == "required") {
        std::set<std::string> r;
        for (const json* s : {&x, &y})
          if (s->is_array())
            for (const auto& e : *s)
              if (e.is_string()) r.insert(e.get<std::string>());
        out[k] = r;
      } else if (k == "enum") {
        if (!x.is_array() || !y.is_array()) refuse(ptr, "enum must be an array");
        json e = json::array();
        for (const auto& v : x)
          if (has_value(y, v)) e.push_back(v);
        out[k] = e;
      } else if (k == "const") {
        return false;  // x != y
      } else if ((k == "minimum" || k == "minLength" || k == "minItems" || k == "minProperties" ||
                  k == "exclusiveMinimum") &&
                 x.is_number() && y.is_number()) {
        out[k] = x.get<double>() >= y.get<double>() ? x : y;
      } else if ((k == "maximum" || k == "maxLength" || k == "maxItems" || k == "maxProperties" ||
                  k == "exclusiveMaximum") &&
                 x.is_number() && y.is_number()) {
        out[k] = x.get<double>() <= y.get<double>() ? x : y;
      } else if (k == "items" && !x.is_array() && !y.is_array()) {
        out[k] = json{{"allOf", {x, y}}};
      } else if (k == "additionalItems") {
        out[k] = json{{"allOf", {x, y}}};
      } else if (k == "nullable") {
        out[k] = x.is_boolean() && y.is_boolean() && x.get<bool>() && y.get<bool>();
      } else if (k == "anyOf" && x.is_array() && y.is_array()) {
        json cross = json::array();
        if (x.size() * y.size() > 64)
          unsupported(ptr, "allOf", "more than 64 combinations of anyOf branches");
        for (const auto& p : x)
          for (const auto& q : y) cross.push_back(json{{"allOf", {p, q}}});
        out[k] = cross;
      } else if (k == "uniqueItems" && x.is_boolean() && y.is_boolean()) {
        out[k] = x.get<bool>() || y.get<bool>();
      } else {
        if (kUnsupported.count(k)) unsupported(ptr, k);
        unsupported(ptr, "allOf", "cannot combine two different '" + k + "' keywords");
      }
    }
    return out;
  }

  // --- validation of concrete values (enum/const members against their sibling keywords) ---------
  bool valid(const json& v, const json& s0, const std::string& ptr, int depth) {
    check_depth(depth, ptr);
    const json s = flatten(s0, ptr, depth);
    if (s.is_boolean()) return s.get<bool>();
    check_keywords(s, ptr);
    if (s.contains("anyOf") || s.contains("oneOf")) {
      const bool one = s.contains("oneOf");
      const json& br = one ? s["oneOf"] : s["anyOf"];
      json rest = s;
      rest.erase(one ? "oneOf" : "anyOf");
      if (!valid(v, rest, ptr, depth + 1)) return false;
      int n = 0;
      for (size_t i = 0; i < br.size(); ++i) n += valid(v, br[i], ptr, depth + 1);
      return one ? n == 1 : n >= 1;
    }
    const bool is_null_ok = s.value("nullable", false) == true && v.is_null();
    if (is_null_ok) return true;
    if (auto e = s.find("enum"); e != s.end() && !has_value(*e, v)) return false;
    if (auto c = s.find("const"); c != s.end() && !same_value(*c, v)) return false;
    const auto excluded = excluded_types(s, ptr, depth);
    if (excluded.count(
            v.is_null()      ? "null"
            : v.is_boolean() ? "boolean"
            : v.is_object()  ? "object"
            : v.is_array()   ? "array"
            : v.is_string()  ? "string"
            : v.is_number_integer() || v.is_number_unsigned() ||
                    (std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()))
                ? "integer"
                : "number"))
      return false;
    const auto types = type_set(s);
    std::string t = v.is_null()      ? "null"
                    : v.is_boolean() ? "boolean"
                    : v.is_object()  ? "object"
                    : v.is_array()   ? "array"
                    : v.is_string()  ? "string"
                                     : "number";
    if (t == "number") {
      const bool integral =
          v.is_number_integer() || v.is_number_unsigned() ||
          (std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()));
      if (!types.count("number") && !(integral && types.count("integer"))) return false;
      const auto c = canonical_number(v);
      if (!c) return false;
      if (auto m = s.find("multipleOf"); m != s.end()) {
        const long k = multiple_of(s, ptr);
        const Decimal d = parse_decimal(*c);
        if (!d.fp.empty()) return false;
        long r = 0;
        for (char ch : d.ip) r = (r * 10 + (ch - '0')) % k;
        if (r != 0) return false;
      }
      const Decimal d = parse_decimal(*c);
      auto [lo, hi] = bounds(s, ptr);
      if (lo && (cmp_decimal(d, lo->v) < 0 || (!lo->incl && cmp_decimal(d, lo->v) == 0))) return false;
      if (hi && (cmp_decimal(d, hi->v) > 0 || (!hi->incl && cmp_decimal(d, hi->v) == 0))) return false;
      return true;
    }
    if (!types.count(t)) return false;
    if (t == "string") {
      std::vector<uint32_t> cps;
      decode_utf8(v.get_ref<const std::string&>(), cps);
      if (auto m = s.find("minLength");
          m != s.end() && m->is_number() && double(cps.size()) < m->get<double>())
        return false;
      if (auto m = s.find("maxLength");
          m != s.end() && m->is_number() && double(cps.size()) > m->get<double>())
        return false;
      if (s.contains("pattern") || (s.contains("format") && is_known_format(s["format"])))
        unsupported(ptr, s.contains("pattern") ? "pattern" : "format", "together with enum or const");
      return true;
    }
    if (t == "array") {
      auto [prefix, items] = array_parts(s, ptr);
      if (s.value("uniqueItems", false) == true)
        for (size_t i = 0; i < v.size(); ++i)
          for (size_t j = i + 1; j < v.size(); ++j)
            if (same_value(v[i], v[j])) return false;
      if (auto m = s.find("minItems"); m != s.end() && m->is_number() && double(v.size()) < m->get<double>())
        return false;
      if (auto m = s.find("maxItems"); m != s.end() && m->is_number() && double(v.size()) > m->get<double>())
        return false;
      for (size_t i = 0; i < v.size(); ++i) {
        const json* sch = i < prefix.size() ? prefix[i] : items;
        if (sch && !valid(v[i], *sch, ptr, depth + 1)) return false;
      }
      return true;
    }
    if (t == "object") {
      if (auto r = s.find("required"); r != s.end() && r->is_array())
        for (const auto& k : *r)
          if (k.is_string() && !v.contains(k.get<std::string>())) return false;
      for (auto it = v.begin(); it != v.end(); ++it) {
        const json* m = member_schema(s, it.key());
        if (m && !valid(it.value(), *m, ptr, depth + 1)) return false;
      }
      return true;
    }
    return true;
  }

  // The types a `not` excludes: `not` of a schema that only names types (or of true/{}: everything).
  std::set<std::string> excluded_types(const json& s, const std::string& ptr, int depth) {
    auto it = s.find("not");
    if (it == s.end()) return {};
    const json n = flatten(*it, ptr + "/not", depth + 1);
    if (n == false) return {};
    if (n == true || !has_constraints(n, {})) return {kTypes.begin(), kTypes.end()};
    if (!has_constraints(n, {"type"})) {
      if (!n["type"].is_string() && !n["type"].is_array())
        refuse(ptr + "/not/type", "must be a string or an array");
      return type_set(n);
    }
    unsupported(ptr, "not", "only 'not' of types");
  }

  static bool is_known_format(const json& f) {
    static const std::set<std::string> known = {"date", "time", "date-time", "uuid", "email", "ipv4"};
    return f.is_string() && known.count(f.get<std::string>());
  }

  // Refuses unsupported constraining keywords (those that constrain: e.g. uniqueItems false is fine).
  void check_keywords(const json& s, const std::string& ptr) {
    for (auto it = s.begin(); it != s.end(); ++it) {
      const std::string& k = it.key();
      if (!kUnsupported.count(k)) continue;
      const json& v = it.value();
      if (k == "uniqueItems") continue;  // enforced in compile_array where it can be, refused there if not
      if ((k == "minProperties" || k == "minContains") && v.is_number() && v.get<double>() <= 0) continue;
      if (k == "minProperties" && v.is_number() && s.contains("required") && s["required"].is_array() &&
          v.get<double>() <= double(s["required"].size())) {
        std::set<std::string> r;
        for (const auto& e : s["required"]) r.insert(e.dump());
        if (v.get<double>() <= double(r.size())) continue;
      }
      if ((k == "patternProperties" || k == "dependentRequired" || k == "dependentSchemas" ||
           k == "dependencies") &&
          v.is_object() && v.empty())
        continue;
      if ((k == "propertyNames" || k == "unevaluatedProperties" || k == "unevaluatedItems") && v == true)
        continue;
      if (k == "not") continue;  // excluded_types() enforces it or refuses
      if (k == "if" && !s.contains("then") && !s.contains("else")) continue;
      if (k == "maxProperties" && v.is_number() && s.contains("additionalProperties") &&
          s["additionalProperties"] == false) {
        size_t n = 0;
        if (auto p = s.find("properties"); p != s.end() && p->is_object()) n = p->size();
        if (double(n) <= v.get<double>()) continue;
      }
      if (k == "multipleOf") continue;  // compile_number enforces it or refuses
      unsupported(ptr, k);
    }
  }

  // prefixItems (2020-12) or array-form items (draft-07), and the schema for the rest (nullptr: any).
  std::pair<std::vector<const json*>, const json*> array_parts(const json& s, const std::string& ptr) {
    std::vector<const json*> prefix;
    const json* rest = nullptr;
    auto items = s.find("items");
    if (auto p = s.find("prefixItems"); p != s.end()) {
      if (!p->is_array()) refuse(ptr + "/prefixItems", "must be an array");
      for (const auto& x : *p) prefix.push_back(&x);
      if (items != s.end()) rest = &*items;
    } else if (items != s.end() && items->is_array()) {
      for (const auto& x : *items) prefix.push_back(&x);
      if (auto a = s.find("additionalItems"); a != s.end()) rest = &*a;
    } else if (items != s.end()) {
      rest = &*items;
    }
    return {prefix, rest};
  }

  // Numeric bounds (draft-04 boolean exclusive* and 2020-12 numeric ones).
  std::pair<std::optional<Bound>, std::optional<Bound>> bounds(const json& s, const std::string& ptr) {
    std::optional<Bound> lo, hi;
    auto tighten = [&](std::optional<Bound>& cur, const json& v, bool incl, bool is_lo, const char* kw) {
      if (!v.is_number()) refuse(ptr + "/" + kw, "must be a number");
      const auto txt = number_text(v);
      if (v.is_number_float() && !std::isfinite(v.get<double>())) refuse(ptr + "/" + kw, "must be finite");
      Bound b{parse_decimal(txt), incl};
      if (!cur) {
        cur = b;
        return;
      }
      const int c = cmp_decimal(b.v, cur->v);
      if ((is_lo && c > 0) || (!is_lo && c < 0) || (c == 0 && !incl)) cur = b;
    };
    const bool old_lo = s.contains("exclusiveMinimum") && s["exclusiveMinimum"].is_boolean();
    const bool old_hi = s.contains("exclusiveMaximum") && s["exclusiveMaximum"].is_boolean();
    if (s.contains("minimum"))
      tighten(lo, s["minimum"], !(old_lo && s["exclusiveMinimum"].get<bool>()), true, "minimum");
    if (s.contains("maximum"))
      tighten(hi, s["maximum"], !(old_hi && s["exclusiveMaximum"].get<bool>()), false, "maximum");
    if (s.contains("exclusiveMinimum") && !old_lo)
      tighten(lo, s["exclusiveMinimum"], false, true, "exclusiveMinimum");
    if (s.contains("exclusiveMaximum") && !old_hi)
      tighten(hi, s["exclusiveMaximum"], false, false, "exclusiveMaximum");
    return {lo, hi};
  }

  // --- grammar generation --------------------------------------------------------------------------
  // Returns a GBNF expression for the values valid against s, nullopt when none is.
  std::optional<std::string> compile(const json& s, const std::string& ptr, int depth) {
    struct At {  // at_ = ptr while this subschema compiles
      const std::string*& at;
      const std::string* saved;
      ~At() { at = saved; }
    } at{at_, at_};
    at_ = &ptr;
    check_depth(depth, ptr);
    if (s.is_boolean()) return s.get<bool>() ? std::optional<std::string>(b_.value()) : std::nullopt;
    if (!s.is_object()) refuse(ptr.empty() ? "/" : ptr, "a schema must be an object or a boolean");
    // A bare reference: one rule per target, so recursion works.
    if (s.contains("$ref") && (draft7_ || !has_constraints(s, {"$ref"}))) {
      std::string tptr;
      const json& t = ref_target(s, ptr, tptr);
      auto it = ref_rules_.find(tptr);
      if (it != ref_rules_.end()) {
        if (!it->second) return std::nullopt;
        return *it->second;
      }
      check_rules();
      const std::string name = b_.reserve(prefix_ + "-ref" + tptr);
      ref_rules_[tptr] = name;
      if (ref_nesting_ >= kEagerRefs) {
        // Deep chains of references are compiled from a work list (bounded stack); their emptiness is
        // then not propagated (an empty target becomes a rule that matches nothing).
        pending_.push_back({&t, tptr, name});
        return name;
      }
      ++ref_nesting_;
      auto body = compile(t, tptr, 0);
      --ref_nesting_;
      if (!body) {
        ref_rules_[tptr] = std::nullopt;
        b_.define(name, kNothing);
        return std::nullopt;
      }
      b_.define(name, *body);
      return name;
    }
    if (!has_constraints(s, {})) return b_.value();
    const json f = flatten(s, ptr, depth);
    if (f.is_boolean()) return compile(f, ptr, depth + 1);
    return compile_flat(f, ptr, depth);
  }

  std::optional<std::string> compile_flat(const json& s, const std::string& ptr, int depth) {
    check_keywords(s, ptr);
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      const json& br = s[k];
      if (!br.is_array() || br.empty()) refuse(ptr + "/" + k, "must be a non-empty array");
      json rest = s;
      rest.erase(k);
      std::vector<json> branches;
      for (size_t i = 0; i < br.size(); ++i) {
        const std::string bptr = ptr + "/" + k + "/" + std::to_string(i);
        json m = has_constraints(rest, {})
                     ? merge(flatten(rest, ptr, depth + 1), flatten(br[i], bptr, depth + 1), ptr)
                     : br[i];
        branches.push_back(std::move(m));
      }
      if (std::string(k) == "oneOf" && !provably_exclusive(branches, ptr, depth))
        unsupported(ptr, "oneOf", "branches not provably exclusive (use anyOf)");
      std::vector<std::string> alts;
      for (size_t i = 0; i < branches.size(); ++i) {
        auto a = compile(keep(branches[i]), ptr + "/" + k + "/" + std::to_string(i), depth + 1);
        if (a) alts.push_back(*a);
      }
      if (alts.empty()) return std::nullopt;
      return alts.size() == 1 ? alts[0] : rule("alt", join(alts, " | "));
    }
    if (s.contains("enum") || s.contains("const")) {
      std::vector<json> values;
      if (s.contains("const")) values.push_back(s["const"]);
      if (s.contains("enum")) {
        if (!s["enum"].is_array()) refuse(ptr + "/enum", "must be an array");
        for (const auto& v : s["enum"])
          if (!s.contains("const") || same_value(v, s["const"])) values.push_back(v);
        if (s.contains("const") && !values.empty()) values.erase(values.begin());
      }
      json rest = s;
      rest.erase("enum");
      rest.erase("const");
      std::vector<std::string> alts;  // objects and arrays (ws between their tokens)
      std::set<std::string> seen;
      std::vector<std::string> scalars;  // canonical texts of the other values
      for (const auto& v : values) {
        if (!valid(v, rest, ptr, depth + 1)) continue;
        if (v.is_structured()) {
          auto lit = value_literal(v, ptr);
          if (lit && seen.insert(*lit).second) alts.push_back(*lit);
        } else if (auto t = scalar_text(v, ptr); t && seen.insert(*t).second) {
          scalars.push_back(*t);
        }
      }
      if (!scalars.empty()) alts.push_back(trie_alternatives(scalars));
      if (alts.empty()) return std::nullopt;
      return rule("enum", join(alts, " | "));
    }
    auto types = type_set(s);
    if (s.contains("type")) {
      const json& t = s["type"];
      if (!t.is_string() && !t.is_array()) refuse(ptr + "/type", "must be a string or an array of strings");
      for (const auto& n : types)
        if (std::find(kTypes.begin(), kTypes.end(), n) == kTypes.end())
          refuse(ptr + "/type", "unknown type '" + n + "'");
    }
    if (s.value("nullable", false) == true) types.insert("null");
    const auto excluded = excluded_types(s, ptr, depth);
    if (excluded.count("integer") && !excluded.count("number") && types.count("number"))
      unsupported(ptr, "not", "excluding integers from numbers");
    for (const auto& t : excluded) types.erase(t);
    std::vector<std::string> alts;
    auto add = [&](std::optional<std::string> a) {
      if (a) alts.push_back(*a);
    };
    if (types.count("null")) alts.push_back("\"null\"");
    if (types.count("boolean")) alts.push_back("( \"true\" | \"false\" )");
    if (types.count("object")) add(compile_object(s, ptr, depth));
    if (types.count("array")) add(compile_array(s, ptr, depth));
    if (types.count("string")) add(compile_string(s, ptr));
    if (types.count("number"))
      add(compile_number(s, ptr, false));
    else if (types.count("integer"))
      add(compile_number(s, ptr, true));
    if (alts.empty()) return std::nullopt;
    if (alts.size() == 1) return alts[0];
    return rule("value", join(alts, " | "));
  }

  // x repeated between mn and mx times (mx -1: unbounded) with counts within parse_gbnf's limit of 1000
  // per {m,n}: larger counts are built from blocks of 1000 (exact, up to 10^6).
  std::string repeat(const std::string& x, long mn, long mx) {
    constexpr long kMax = 1000;
    const std::string unit = x;  // a rule name or a parenthesized group
    auto exact = [&](long m) -> std::string {
      if (m == 0) return "";
      if (m <= kMax) return m == 1 ? unit : unit + "{" + std::to_string(m) + "}";
      const std::string block = rule("rep", unit + "{" + std::to_string(kMax) + "}");
      const long q = m / kMax, r = m % kMax;
      return block + (q == 1 ? "" : "{" + std::to_string(q) + "}") +
             (r ? " " + unit + "{" + std::to_string(r) + "}" : "");
    };
    auto upto = [&](long k) -> std::string {  // 0..k more
      if (k == 0) return "";
      if (k == 1) return unit + "?";
      if (k <= kMax) return unit + "{0," + std::to_string(k) + "}";
      const std::string block = rule("rep", unit + "{" + std::to_string(kMax) + "}");
      const long q = k / kMax, r = k % kMax;
      const std::string low =
          (q - 1 >= 1 ? block + "{0," + std::to_string(q - 1) + "} " : "") + unit + "{0,999}";
      const std::string high = block + (q == 1 ? "" : "{" + std::to_string(q) + "}") +
                               (r ? " " + unit + "{0," + std::to_string(r) + "}" : "");
      return "( " + low + " | " + high + " )";
    };
    std::string a = exact(mn);
    std::string b;
    if (mx < 0)
      b = unit + "*";
    else
      b = upto(mx - mn);
    if (a.empty() && b.empty()) return "\"\"";
    return a.empty() ? b : b.empty() ? a : a + " " + b;
  }

  static std::string join(const std::vector<std::string>& v, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
    return out;
  }

  // Canonical text of a concrete value as GBNF (ws between tokens).
  std::optional<std::string> value_literal(const json& v, const std::string& ptr) {
    const std::string w = b_.ws();
    if (v.is_null()) return "\"null\"";
    if (v.is_boolean()) return v.get<bool>() ? "\"true\"" : "\"false\"";
    if (v.is_number()) {
      auto c = canonical_number(v);
      if (!c) return std::nullopt;  // outside the number policy: cannot be written
      return GbnfBuilder::literal(*c);
    }
    if (v.is_string())
      return GbnfBuilder::literal("\"" + canonical_string_body(v.get_ref<const std::string&>(), ptr) + "\"");
    if (v.is_array()) {
      std::string out = "\"[\" " + w;
      for (size_t i = 0; i < v.size(); ++i) {
        auto e = value_literal(v[i], ptr);
        if (!e) return std::nullopt;
        out += (i ? " " + w + " \",\" " + w + " " : " ") + *e;
      }
      return out + (v.empty() ? "" : " " + w) + " \"]\"";
    }
    std::string out = "\"{\" " + w;
    size_t i = 0;
    for (auto it = v.begin(); it != v.end(); ++it, ++i) {
      auto e = value_literal(it.value(), ptr);
      if (!e) return std::nullopt;
      out += (i ? " " + w + " \",\" " + w + " " : " ") +
             GbnfBuilder::literal("\"" + canonical_string_body(it.key(), ptr) + "\"") + " " + w + " \":\" " +
             w + " " + *e;
    }
    return out + (v.empty() ? "" : " " + w) + " \"}\"";
  }

  // The canonical text of a scalar value (null, boolean, number, string); nullopt: cannot be written.
  static std::optional<std::string> scalar_text(const json& v, const std::string& ptr) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    if (v.is_number()) return canonical_number(v);
    return "\"" + canonical_string_body(v.get_ref<const std::string&>(), ptr) + "\"";
  }

  // GBNF of "any one of `texts`" as a prefix trie: alternatives that share a prefix share its bytes, so
  // the matcher holds about one parse stack per distinct next code point (not one per value): a big enum
  // stays far under the matcher's bound on stacks. Edges are cut at code point boundaries; every 16
  // levels of branching a node becomes a named rule (bounded group nesting).
  std::string trie_alternatives(std::vector<std::string> texts) {
    std::sort(texts.begin(), texts.end());
    texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
    // The length of the code point starting at byte i of t.
    auto cp_len = [](const std::string& t, size_t i) {
      const auto c = static_cast<unsigned char>(t[i]);
      const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      return std::min(n, t.size() - i);
    };
    // texts[lo, hi) share their first `at` bytes (sorted, distinct).
    std::function<std::string(size_t, size_t, size_t, int)> node = [&](size_t lo, size_t hi, size_t at,
                                                                       int level) -> std::string {
      const bool ends_here = texts[lo].size() == at;  // sorted: the shortest (a prefix of the rest) first
      if (ends_here) ++lo;
      std::vector<std::string> alts;
      for (size_t i = lo; i < hi;) {
        // The group of texts with the same next code point; their longest common prefix from `at`.
        const size_t n = cp_len(texts[i], at);
        const std::string_view first(texts[i].data() + at, n);
        size_t j = i + 1;
        while (j < hi && std::string_view(texts[j]).substr(at, n) == first) ++j;
        size_t common = at + n;  // the edge: [at, common)
        while (common < texts[i].size()) {
          const size_t m = cp_len(texts[i], common);
          const std::string_view next(texts[i].data() + common, m);
          bool all = true;
          for (size_t k = i + 1; k < j && all; ++k)
            all = texts[k].size() >= common + m && std::string_view(texts[k]).substr(common, m) == next;
          if (!all) break;
          common += m;
        }
        std::string alt = GbnfBuilder::literal(texts[i].substr(at, common - at));
        if (j - i > 1 || texts[i].size() > common) {
          alt += ' ';
          alt += node(i, j, common, level + 1);
        }
        alts.push_back(std::move(alt));
        i = j;
      }
      std::string body = join(alts, " | ");
      if (level > 0 && level % 16 == 0) {
        std::string r = rule("enum-trie", ends_here ? "( " + body + " )?" : body);
        return r;
      }
      return ends_here ? "( " + body + " )?" : alts.size() == 1 ? body : "( " + body + " )";
    };
    return node(0, texts.size(), 0, 0);
  }

  // oneOf as anyOf: true when no value can satisfy two branches (by types, or by finite value sets, or
  // by a required property whose finite value sets differ — a discriminator).
  bool provably_exclusive(const std::vector<json>& br, const std::string& ptr, int depth) {
    for (size_t i = 0; i < br.size(); ++i)
      for (size_t j = i + 1; j < br.size(); ++j)
        if (!disjoint(br[i], br[j], ptr, depth)) return false;
    return true;
  }
  std::optional<std::vector<json>> finite_values(const json& s) {
    if (!s.is_object()) return std::nullopt;
    if (s.contains("const")) return std::vector<json>{s["const"]};
    if (s.contains("enum") && s["enum"].is_array())
      return std::vector<json>(s["enum"].begin(), s["enum"].end());
    return std::nullopt;
  }
  bool disjoint(const json& a0, const json& b0, const std::string& ptr, int depth) {
    const json a = flatten(a0, ptr, depth + 1), b = flatten(b0, ptr, depth + 1);
    if (a == false || b == false) return true;
    if (a.is_boolean() || b.is_boolean()) return false;
    if (a.contains("anyOf") || a.contains("oneOf") || b.contains("anyOf") || b.contains("oneOf"))
      return false;
    auto ta = type_set(a), tb = type_set(b);
    if (a.value("nullable", false) == true) ta.insert("null");
    if (b.value("nullable", false) == true) tb.insert("null");
    // "integer" in both sets via "number": overlap
    bool overlap = false;
    for (const auto& t : ta)
      if (tb.count(t)) overlap = true;
    if (!overlap) return true;
    auto va = finite_values(a), vb = finite_values(b);
    if (va || vb) {
      const auto& vals = va ? *va : *vb;
      const json& other = va ? b : a;
      for (const auto& v : vals)
        if (valid(v, va ? a : b, ptr, depth + 1) && valid(v, other, ptr, depth + 1)) return false;
      return true;
    }
    // Objects only, told apart by a property both require with disjoint values.
    if (ta.size() == 1 && tb.size() == 1 && ta.count("object") && tb.count("object")) {
      auto req = [](const json& s) {
        std::set<std::string> r;
        if (auto it = s.find("required"); it != s.end() && it->is_array())
          for (const auto& e : *it)
            if (e.is_string()) r.insert(e.get<std::string>());
        return r;
      };
      const auto ra = req(a), rb = req(b);
      for (const auto& k : ra) {
        if (!rb.count(k)) continue;
        const json* ma = member_schema(a, k);
        const json* mb = member_schema(b, k);
        if (ma && mb && disjoint(*ma, *mb, ptr, depth + 1)) return true;
      }
    }
    return false;
  }

  std::optional<std::string> compile_object(const json& s, const std::string& ptr, int depth) {
    const std::string w = b_.ws();
    std::set<std::string> required;
    std::vector<std::string> required_order;  // as listed in `required`
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array()) refuse(ptr + "/required", "must be an array of strings");
      for (const auto& e : *r) {
        if (!e.is_string()) refuse(ptr + "/required", "must be an array of strings");
        if (required.insert(e.get<std::string>()).second) required_order.push_back(e.get<std::string>());
      }
    }
    struct Member {
      std::string key;
      bool req;
      std::string body;  // key ws ":" ws value
    };
    std::vector<Member> members;
    std::set<std::string> listed;
    const json* props = nullptr;
    if (auto p = s.find("properties"); p != s.end()) {
      if (!p->is_object()) refuse(ptr + "/properties", "must be an object");
      props = &*p;
    }
    // additional members
    std::optional<std::string> addl;
    bool addl_allowed = !opts_.strict;
    if (auto a = s.find("additionalProperties"); a != s.end()) {
      addl = compile(*a, ptr + "/additionalProperties", depth + 1);
      addl_allowed = addl.has_value();
    } else if (addl_allowed) {
      addl = b_.value();
    }
    // Members in the schema's order: the properties as listed, then required keys not listed in
    // properties (constrained by additionalProperties) in `required`'s order.
    std::vector<std::string> all_keys;
    std::unordered_map<std::string, const json*> prop_schema;  // (ordered_json's find is linear)
    if (props)
      for (auto it = props->begin(); it != props->end(); ++it)
        if (listed.insert(it.key()).second) {
          all_keys.push_back(it.key());
          prop_schema[it.key()] = &it.value();
        }
    for (const auto& r : required_order)
      if (!listed.count(r)) all_keys.push_back(r);
    check_rules(2 * all_keys.size());  // two rules a member (below): refuse before compiling any
    for (const auto& k : all_keys) {
      std::optional<std::string> v;
      const std::string kptr = ptr + "/properties/" + escape_pointer_token(k);
      if (auto p = prop_schema.find(k); p != prop_schema.end())
        v = compile(*p->second, kptr, depth + 1);
      else
        v = addl_allowed ? addl : std::nullopt;
      const bool req = required.count(k) > 0;
      if (!v) {
        if (req) return std::nullopt;
        continue;
      }
      members.push_back({k, req,
                         GbnfBuilder::literal("\"" + canonical_string_body(k, kptr) + "\"") + " " + w +
                             " \":\" " + w + " " + *v});
    }
    std::string extra;  // one additional member
    if (addl_allowed) {
      std::set<std::string> excluded;
      for (const auto& k : all_keys) excluded.insert(canonical_string_body(k, ptr));
      const std::string key = excluded.empty() ? b_.string() : key_not_in(excluded);
      extra = rule("extra", key + " " + w + " \":\" " + w + " " + *addl);
    }
    // Rest(i): members i.. after at least one member was written; first(i): none written yet.
    const size_t n = members.size();
    std::vector<std::string> rest(n + 1);
    rest[n] = extra.empty() ? "" : "( " + w + " \",\" " + w + " " + extra + " )*";
    for (size_t i = n; i-- > 0;) {
      const std::string m = w + " \",\" " + w + " " + members[i].body;
      std::string body = members[i].req ? m : "( " + m + " )?";
      if (!rest[i + 1].empty()) body += " " + rest[i + 1];
      rest[i] = rule("obj-rest", body);
    }
    // first(i): members i.. with none written yet (may write nothing unless a required one follows).
    std::string first = extra.empty() ? "" : "( " + extra + (rest[n].empty() ? "" : " " + rest[n]) + " )?";
    for (size_t i = n; i-- > 0;) {
      const std::string with = members[i].body + (rest[i + 1].empty() ? "" : " " + rest[i + 1]);
      if (members[i].req)
        first = rule("obj-first", with);
      else if (first.empty())
        first = rule("obj-first", "( " + with + " )?");
      else
        first = rule("obj-first", with + " | " + first);
    }
    std::string body = "\"{\" " + w + (first.empty() ? "" : " " + first + " " + w) + " \"}\"";
    return rule("obj", body);
  }

  // A JSON string (with quotes) whose content text is none of `excluded` (canonical spellings).
  std::string key_not_in(const std::set<std::string>& excluded) {
    b_.chr();
    // A trie over units: one raw code point, or one escape sequence as written.
    struct Node {
      std::map<std::string, int> kids;
      bool end = false;
    };
    std::vector<Node> nodes(1);
    for (const auto& k : excluded) {
      int cur = 0;
      for (size_t i = 0; i < k.size();) {
        size_t len;
        if (k[i] == '\\')
          len = k[i + 1] == 'u' ? 6 : 2;
        else {
          const auto c = static_cast<unsigned char>(k[i]);
          len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
        }
        const std::string unit = k.substr(i, len);
        i += len;
        auto it = nodes[static_cast<size_t>(cur)].kids.find(unit);
        if (it == nodes[static_cast<size_t>(cur)].kids.end()) {
          nodes.push_back({});
          const int id = static_cast<int>(nodes.size()) - 1;
          nodes[static_cast<size_t>(cur)].kids[unit] = id;
          cur = id;
        } else {
          cur = it->second;
        }
      }
      nodes[static_cast<size_t>(cur)].end = true;
    }
    const std::string tail = "json-char* \"\\\"\"";
    std::function<std::string(int)> build = [&](int id) -> std::string {
      const Node& nd = nodes[static_cast<size_t>(id)];
      std::vector<std::string> alts;
      if (!nd.end) alts.push_back("\"\\\"\"");
      // a unit that is no child: a raw character not among the raw children, or an escape whose
      // letter is not among the escape children's letters.
      Ranges raw_kids;
      std::set<char> esc_kids;
      for (const auto& [u, _] : nd.kids) {
        if (u[0] == '\\') {
          esc_kids.insert(u[1]);
        } else {
          std::vector<uint32_t> cp;
          decode_utf8(u, cp);
          raw_kids.push_back({cp[0], cp[0]});
        }
      }
      Ranges raw = intersect(complement(raw_kids),
                             complement({{0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}}));
      if (!raw.empty()) {
        std::string cls = "[";
        for (auto [a, b] : raw) cls += a == b ? class_char(a) : class_char(a) + "-" + class_char(b);
        alts.push_back(cls + "] " + tail);
      }
      std::string letters;
      for (char c : std::string("\"\\/bfnrt"))
        if (!esc_kids.count(c)) letters += c == '"' ? "\\\"" : c == '\\' ? "\\\\" : std::string(1, c);
      if (!letters.empty()) alts.push_back("\"\\\\\" [" + letters + "] " + tail);
      if (!esc_kids.count('u'))
        alts.push_back("\"\\\\u\" json-hex{4} " + tail);  // (surrogates: loose here, as the key is an extra)
      for (const auto& [u, kid] : nd.kids) alts.push_back(GbnfBuilder::literal(u) + " " + build(kid));
      return rule("key", join(alts, " | "));
    };
    return rule("key-x", "\"\\\"\" " + build(0));
  }

  // uniqueItems over items with a small finite set of values (an enum, const, boolean or null): one rule
  // per set of values already written, so no value repeats.
  std::optional<std::string> unique_array(const json* items, long mn, long mx, const std::string& ptr,
                                          int depth) {
    constexpr size_t kMaxValues = 8;
    const std::string why = "only for items with at most 8 possible values (enum, const, boolean, null)";
    if (!items) unsupported(ptr, "uniqueItems", why);
    const json f = flatten(*items, ptr + "/items", depth + 1);
    std::vector<json> cands;
    if (f.is_object() && (f.contains("enum") || f.contains("const"))) {
      if (f.contains("const")) cands.push_back(f["const"]);
      if (f.contains("enum") && f["enum"].is_array())
        for (const auto& v : f["enum"]) cands.push_back(v);
    } else if (f.is_object() && f.contains("type") &&
               f.size() <= size_t{2} + (f.contains("nullable") ? 1 : 0)) {
      const auto t = type_set(f);
      if (t.size() <= 2 && !t.count("number") && !t.count("integer") && !t.count("string") &&
          !t.count("object") && !t.count("array")) {
        if (t.count("boolean")) cands.insert(cands.end(), {json(true), json(false)});
        if (t.count("null")) cands.push_back(nullptr);
      }
    }
    if (cands.empty() && !(f.is_boolean() && !f.get<bool>())) unsupported(ptr, "uniqueItems", why);
    std::vector<std::string> lits;
    std::set<std::string> seen;
    for (const auto& v : cands) {
      if (!valid(v, *items, ptr + "/items", depth + 1)) continue;
      auto lit = value_literal(v, ptr);
      if (lit && seen.insert(*lit).second) lits.push_back(*lit);
    }
    if (lits.size() > kMaxValues) unsupported(ptr, "uniqueItems", why);
    const std::string w = b_.ws();
    const size_t n = lits.size();
    // after(mask): the rest of the array once the values in mask were written (at least one)
    std::vector<std::string> after(size_t{1} << n);
    for (size_t mask = (size_t{1} << n) - 1; mask > 0; --mask) {
      const long count = __builtin_popcountll(mask);
      std::vector<std::string> alts;
      if (mx < 0 || count < mx)
        for (size_t i = 0; i < n; ++i)
          if (!(mask & (size_t{1} << i)) && !after[mask | (size_t{1} << i)].empty())
            alts.push_back(w + " \",\" " + w + " " + lits[i] + " " + after[mask | (size_t{1} << i)]);
      const bool can_stop = count >= mn;
      if (alts.empty() && !can_stop) continue;  // dead end: after[mask] stays empty
      after[mask] = rule("uniq", alts.empty() ? "\"\"" : join(alts, " | ") + (can_stop ? " | \"\"" : ""));
    }
    std::vector<std::string> alts;
    for (size_t i = 0; i < n; ++i)
      if (!after[size_t{1} << i].empty())
        alts.push_back("\"[\" " + w + " " + lits[i] + " " + after[size_t{1} << i] + " " + w + " \"]\"");
    if (mn == 0) alts.push_back("\"[\" " + w + " \"]\"");
    if (alts.empty()) return std::nullopt;
    return rule("arr", join(alts, " | "));
  }

  std::optional<std::string> compile_array(const json& s, const std::string& ptr, int depth) {
    const std::string w = b_.ws();
    auto [prefix, rest_schema] = array_parts(s, ptr);
    long mn = 0, mx = -1;
    if (auto m = s.find("minItems"); m != s.end()) {
      if (!m->is_number() || m->get<double>() < 0)
        refuse(ptr + "/minItems", "must be a non-negative integer");
      mn = static_cast<long>(std::ceil(std::min(m->get<double>(), 1e9)));
    }
    if (auto m = s.find("maxItems"); m != s.end()) {
      if (!m->is_number() || m->get<double>() < 0)
        refuse(ptr + "/maxItems", "must be a non-negative integer");
      mx = static_cast<long>(std::floor(std::min(m->get<double>(), 1e9)));
    }
    if (mx >= 0 && mn > mx) return std::nullopt;
    if (mn > 100000 || mx > 100000)
      unsupported(ptr, mn > 100000 ? "minItems" : "maxItems", "more than 100000 items");
    if (s.value("uniqueItems", false) == true && !(mx >= 0 && mx <= 1))
      return unique_array(prefix.empty() ? rest_schema : nullptr, mn, mx, ptr, depth);
    std::vector<std::optional<std::string>> pre;
    for (size_t i = 0; i < prefix.size(); ++i)
      pre.push_back(compile(*prefix[i], ptr + "/prefixItems/" + std::to_string(i), depth + 1));
    std::optional<std::string> item = rest_schema ? compile(*rest_schema, ptr + "/items", depth + 1)
                                                  : std::optional<std::string>(b_.value());
    // tail(i): the elements from position i on, i elements already written (i >= 1: each after a comma).
    const long k = static_cast<long>(pre.size());
    auto elem = [&](long i) -> std::optional<std::string> {
      return i < k ? pre[static_cast<size_t>(i)] : item;
    };
    // Beyond the prefix: between lo and hi more items.
    auto repeat_tail = [&](long written) -> std::optional<std::string> {
      const long lo = std::max(0L, mn - written);
      const long hi = mx < 0 ? -1 : mx - written;
      if (hi == 0 || (!item && lo == 0)) return std::string();
      if (!item) return std::nullopt;
      const std::string unit = "( " + w + " \",\" " + w + " " + *item + " )";
      return repeat(unit, lo, hi);
    };
    // tail(i) for i in [1, k]
    std::vector<std::optional<std::string>> tail(static_cast<size_t>(k) + 2);
    const long top = std::max(k, 1L);
    tail[static_cast<size_t>(top)] = repeat_tail(top);
    for (long i = top - 1; i >= 1; --i) {
      // i written; next is element i (a prefix element since i < k)
      std::vector<std::string> alts;
      const bool can_stop = i >= mn;
      if (mx >= 0 && i >= mx) {
        tail[static_cast<size_t>(i)] = can_stop ? std::optional<std::string>("") : std::nullopt;
        continue;
      }
      auto e = elem(i);
      auto t = tail[static_cast<size_t>(i + 1)];
      std::optional<std::string> more;
      if (e && t) more = w + " \",\" " + w + " " + *e + (t->empty() ? "" : " " + *t);
      if (more && can_stop)
        tail[static_cast<size_t>(i)] = rule("arr-tail", "( " + *more + " )?");
      else if (more)
        tail[static_cast<size_t>(i)] = rule("arr-tail", *more);
      else
        tail[static_cast<size_t>(i)] = can_stop ? std::optional<std::string>("") : std::nullopt;
    }
    // The first element.
    std::optional<std::string> nonempty;
    if (mx != 0) {
      auto e0 = elem(0);
      auto t1 = tail[1];
      if (e0 && t1) nonempty = *e0 + (t1->empty() ? "" : " " + *t1);
    }
    std::vector<std::string> alts;
    if (nonempty) alts.push_back("\"[\" " + w + " " + *nonempty + " " + w + " \"]\"");
    if (mn == 0) alts.push_back("\"[\" " + w + " \"]\"");
    if (alts.empty()) return std::nullopt;
    return rule("arr", join(alts, " | "));
  }

  std::optional<std::string> compile_string(const json& s, const std::string& ptr) {
    long mn = 0, mx = -1;
    if (auto m = s.find("minLength"); m != s.end()) {
      if (!m->is_number() || m->get<double>() < 0)
        refuse(ptr + "/minLength", "must be a non-negative integer");
      mn = static_cast<long>(std::ceil(std::min(m->get<double>(), 1e9)));
    }
    if (auto m = s.find("maxLength"); m != s.end()) {
      if (!m->is_number() || m->get<double>() < 0)
        refuse(ptr + "/maxLength", "must be a non-negative integer");
      mx = static_cast<long>(std::floor(std::min(m->get<double>(), 1e9)));
    }
    if (mx >= 0 && mn > mx) return std::nullopt;
    if (mn > 100000 || mx > 100000)
      unsupported(ptr, mn > 100000 ? "minLength" : "maxLength", "more than 100000");
    const bool fmt = s.contains("format") && is_known_format(s["format"]);
    if (s.contains("pattern") || fmt) {
      if (s.contains("pattern") && fmt) unsupported(ptr, "format", "together with 'pattern'");
      Re re;
      std::string kw = s.contains("pattern") ? "pattern" : "format";
      if (s.contains("pattern")) {
        if (!s["pattern"].is_string()) refuse(ptr + "/pattern", "must be a string");
        std::vector<uint32_t> cps;
        if (!decode_utf8(s["pattern"].get_ref<const std::string&>(), cps))
          refuse(ptr + "/pattern", "is not valid UTF-8");
        RegexParser p(cps, ptr);
        re = p.parse_top();
      }
      // Length keywords must already be implied by the pattern/format.
      std::pair<long, long> len = fmt ? format_length(s["format"].get<std::string>()) : re_length(re);
      if (mn > len.first) unsupported(ptr, "minLength", "together with '" + kw + "' when not implied by it");
      if (mx >= 0 && (len.second < 0 || len.second > mx))
        unsupported(ptr, "maxLength", "together with '" + kw + "' when not implied by it");
      std::optional<std::string> body =
          fmt ? std::optional<std::string>(format_rule(s["format"].get<std::string>())) : regex_gbnf(re);
      if (!body) return std::nullopt;
      return rule(kw, "\"\\\"\" " + *body + " \"\\\"\"");
    }
    b_.string();
    if (mn == 0 && mx < 0) return "json-string";
    return rule("str", "\"\\\"\" " + repeat("json-char", mn, mx) + " \"\\\"\"");
  }

  std::optional<std::string> regex_gbnf(const Re& r) {
    switch (r.kind) {
      case Re::kSet:
        return json_char_set(r.set);
      case Re::kSeq: {
        std::string out;
        for (const auto& k : r.kids) {
          auto e = regex_gbnf(k);
          if (!e) return std::nullopt;
          if (*e != "\"\"") out += (out.empty() ? "" : " ") + *e;
        }
        return out.empty() ? "\"\"" : "( " + out + " )";
      }
      case Re::kAlt: {
        std::vector<std::string> alts;
        for (const auto& k : r.kids)
          if (auto e = regex_gbnf(k)) alts.push_back(*e);
        if (alts.empty()) return std::nullopt;
        return "( " + join(alts, " | ") + " )";
      }
      case Re::kRep: {
        if (re_nullable(r.kids[0])) {
          // X nullable: X{m,n} = X'{0,n} with X' = X without the empty string
          Re rep(Re::kRep);
          rep.min = 0;
          rep.max = r.max;
          rep.kids.push_back(re_nonempty(r.kids[0]));
          return regex_gbnf(rep);
        }
        auto e = regex_gbnf(r.kids[0]);
        if (!e) return r.min == 0 ? std::optional<std::string>("\"\"") : std::nullopt;
        std::string inner = rule("re", *e);
        if (r.min == 1 && r.max < 0) return inner + "+";
        return "( " + repeat(inner, r.min, r.max) + " )";
      }
    }
    return std::nullopt;
  }

  // Formats (RFC 3339 date/time, RFC 4122 uuid, dotted-quad ipv4, a simple email) over the string body.
  static std::pair<long, long> format_length(const std::string& f) {
    if (f == "date") return {10, 10};
    if (f == "uuid") return {36, 36};
    if (f == "ipv4") return {7, 15};
    return {f == "time" ? 9 : f == "date-time" ? 20 : 3, -1};
  }
  std::string format_rule(const std::string& f) {
    auto fixed = [&](const std::string& name, const std::string& body) { return b_.fixed(name, body); };
    auto date = [&] {
      fixed("fmt-leap",
            "[0-9] [0-9] ( \"0\" [48] | [2468] [048] | [13579] [26] ) | ( \"0\" [48] | [2468] [048] | "
            "[13579] [26] ) \"00\"");
      return fixed(
          "fmt-date",
          "[0-9]{4} \"-\" ( ( \"0\" [13578] | \"1\" [02] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] ) | "
          "( \"0\" [469] | \"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"30\" ) | \"02-\" ( \"0\" [1-9] | "
          "\"1\" "
          "[0-9] | \"2\" [0-8] ) ) | fmt-leap \"-02-29\"");
    };
    auto time = [&] {
      // hh:mm:ss with an optional fraction and a zone; second 60 only as a leap second at 23:59 UTC.
      return fixed(
          "fmt-time",
          "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]+ )? ( [zZ] | [-+] "
          "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] ) | \"23:59:60\" ( \".\" [0-9]+ )? ( [zZ] | "
          "\"+00:00\" | \"-00:00\" )");
    };
    if (f == "date") return date();
    if (f == "time") return time();
    if (f == "date-time") {
      date();
      time();
      return fixed("fmt-date-time", "fmt-date [tT] fmt-time");
    }
    if (f == "uuid") {
      return fixed("fmt-uuid",
                   "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" "
                   "[0-9a-fA-F]{12}");
    }
    if (f == "ipv4") {
      fixed("fmt-octet", "\"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9] [0-9] | [0-9]");
      return fixed("fmt-ipv4", "fmt-octet \".\" fmt-octet \".\" fmt-octet \".\" fmt-octet");
    }
    // email: dot-atom local part @ a dotted domain of letters, digits and hyphens
    fixed("fmt-atom", "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+");
    fixed("fmt-label", "[a-zA-Z0-9] ( [a-zA-Z0-9-]* [a-zA-Z0-9] )?");
    return fixed("fmt-email", "fmt-atom ( \".\" fmt-atom )* \"@\" fmt-label ( \".\" fmt-label )+");
  }

  // --- numbers ----------------------------------------------------------------------------------
  // multipleOf: a positive integer up to 64 (else refused).
  static long multiple_of(const json& s, const std::string& ptr) {
    const json& m = s["multipleOf"];
    if (!m.is_number() || m.get<double>() <= 0) refuse(ptr + "/multipleOf", "must be a number above 0");
    const double k = m.get<double>();
    if (k != std::floor(k) || k > 64)
      unsupported(ptr, "multipleOf", "only integer divisors up to 64 (integers written without fraction)");
    return static_cast<long>(k);
  }

  // Integers that are multiples of k (at most 16 digits, no bounds): one rule per (remainder, digits left).
  std::string multiples(long k) {
    // m[r][n]: the rest of a number whose prefix has remainder r, with at most n more digits
    std::map<std::pair<long, int>, std::string> memo;
    std::function<std::string(long, int)> rest = [&](long r, int n) -> std::string {
      if (auto it = memo.find({r, n}); it != memo.end()) return it->second;
      std::vector<std::string> alts;
      if (n > 0) {
        std::map<long, std::string> by_next;  // next remainder -> digits
        for (int d = 0; d <= 9; ++d) by_next[(r * 10 + d) % k] += char('0' + d);
        for (const auto& [next, digits] : by_next) {
          const std::string sub = rest(next, n - 1);
          if (sub.empty()) continue;
          alts.push_back("[" + digits + "] " + sub);
        }
      }
      std::string body = join(alts, " | ");
      if (r == 0) body = alts.empty() ? "\"\"" : "( " + body + " )?";
      const std::string name = alts.empty() && r != 0 ? "" : rule("mult", body);
      memo[{r, n}] = name;
      return name;
    };
    std::vector<std::string> alts;
    std::map<long, std::string> first;
    for (int d = 1; d <= 9; ++d) first[d % k] += char('0' + d);
    for (const auto& [r, digits] : first) {
      const std::string sub = rest(r, kIntDigits - 1);
      if (!sub.empty()) alts.push_back("[" + digits + "] " + sub);
    }
    const std::string pos = rule("mult-pos", join(alts, " | "));
    return rule("mult-int", "\"0\" | \"-\"? " + pos);
  }

  std::optional<std::string> compile_number(const json& s, const std::string& ptr, bool integer) {
    auto [lo, hi] = bounds(s, ptr);
    if (s.contains("multipleOf")) {
      const long k = multiple_of(s, ptr);
      if (lo || hi) unsupported(ptr, "multipleOf", "together with minimum/maximum");
      return k == 1 ? b_.integer() : multiples(k);
    }
    if (!lo && !hi) return integer ? b_.integer() : b_.number();
    if (lo && hi) {
      const int c = cmp_decimal(lo->v, hi->v);
      if (c > 0 || (c == 0 && !(lo->incl && hi->incl))) return std::nullopt;
    }
    std::vector<std::string> alts;
    // x >= 0 part: [max(lo, 0), hi]
    {
      std::optional<Bound> l = lo, h = hi;
      const Decimal zero;
      if (!l || l->v.neg) l = Bound{zero, true};
      if (!h || !h->v.neg) {
        if (auto e = nonneg(l, h, integer)) alts.push_back(*e);
      }
    }
    // x < 0 part: "-" y with y = -x in (0, -lo] and y >= -hi
    if (!lo || lo->v.neg) {
      std::optional<Bound> yl, yh;
      if (lo) {
        yh = *lo;
        yh->v.neg = false;
      }
      if (hi && hi->v.neg) {
        yl = *hi;
        yl->v.neg = false;
      } else {
        yl = Bound{Decimal{}, false};
      }
      if (auto e = nonneg(yl, yh, integer)) alts.push_back("\"-\" " + *e);
    }
    if (alts.empty()) return std::nullopt;
    return rule(integer ? "int" : "num", join(alts, " | "));
  }

  // Non-negative decimals (no exponent, digit policy) in the interval; lo always set.
  std::optional<std::string> nonneg(std::optional<Bound> lo, std::optional<Bound> hi, bool integer) {
    const std::string cap(kIntDigits, '9');
    if (dec_less(cap, lo->v.ip)) return std::nullopt;
    if (hi && dec_less(cap, hi->v.ip)) hi.reset();
    if (hi) {
      const int c = cmp_decimal(lo->v, hi->v);
      if (c > 0 || (c == 0 && !(lo->incl && hi->incl))) return std::nullopt;
    }
    if (integer) {
      // integers in [ceil(lo), floor(hi)]
      std::string a = lo->v.ip;
      if (!lo->v.fp.empty() || !lo->incl) a = dec_add(a, 1);
      std::string b = hi ? hi->v.ip : cap;
      if (hi && hi->v.fp.empty() && !hi->incl) {
        if (b == "0") return std::nullopt;
        b = dec_add(b, -1);
      }
      if (dec_less(b, a)) return std::nullopt;
      return uint_range(a, b);
    }
    const std::string li = lo->v.ip, hi_i = hi ? hi->v.ip : cap;
    std::vector<std::string> alts;
    auto with_frac = [&](const std::string& ipart, const FracB& fl, const FracB& fh) {
      auto fr = frac(fl, fh, kFracDigits);
      std::string alt = GbnfBuilder::literal(ipart);
      std::vector<std::string> fa;
      if (fr.empty_ok) fa.push_back("");
      if (fr.expr) fa.push_back("\".\" " + *fr.expr);
      if (fa.empty()) return;
      if (fa.size() == 1)
        alt += fa[0].empty() ? "" : " " + fa[0];
      else
        alt += " ( " + fa[1] + " )?";
      alts.push_back(alt);
    };
    const FracB lfb{true, lo->v.fp, lo->incl};
    const FracB hfb = hi ? FracB{true, hi->v.fp, hi->incl} : FracB{};
    if (li == hi_i) {
      with_frac(li, lfb, hfb);
    } else {
      with_frac(li, lfb, FracB{});
      const std::string a = dec_add(li, 1);
      if (dec_less(a, hi_i) || a == hi_i) {
        if (a != hi_i)
          alts.push_back(uint_range(a, dec_add(hi_i, -1)) + " ( \".\" " +
                         b_.fixed("json-digits-16", "[0-9]{1,16}") + " )?");
      }
      with_frac(hi_i, FracB{}, hfb);
    }
    if (alts.empty()) return std::nullopt;
    return rule("nonneg", join(alts, " | "));
  }

  struct FracB {
    bool on = false;
    std::string digits;  // the bound's fraction digits (a suffix), no trailing zeros
    bool incl = true;
  };
  struct Frac {
    bool empty_ok = false;            // no (more) digits satisfies the bounds
    std::optional<std::string> expr;  // one or more digits satisfying them
  };

  // Fractions 0.d (d up to `budget` digits) within the bounds.
  Frac frac(const FracB& lo, const FracB& hi, int budget) {
    const std::string key = std::to_string(lo.on) + lo.digits + "/" + std::to_string(lo.incl) + "|" +
                            std::to_string(hi.on) + hi.digits + "/" + std::to_string(hi.incl) + "|" +
                            std::to_string(budget);
    if (auto it = frac_memo_.find(key); it != frac_memo_.end()) return it->second;
    if (lo.on && lo.digits.empty() && lo.incl) return frac(FracB{}, hi, budget);  // >= 0: no bound
    Frac out;
    // empty d: the value 0 here.
    const bool lo_ok = !lo.on || (lo.digits.empty() && lo.incl);
    const bool hi_ok = !hi.on || !hi.digits.empty() || hi.incl;
    out.empty_ok = lo_ok && hi_ok;
    if (budget > 0) {
      if (!lo.on && !hi.on) {
        out.expr =
            b_.fixed("json-digits-" + std::to_string(budget), "[0-9]{1," + std::to_string(budget) + "}");
      } else {
        const int lo_d = lo.on ? (lo.digits.empty() ? 0 : lo.digits[0] - '0') : -1;
        const int hi_d = hi.on ? (hi.digits.empty() ? 0 : hi.digits[0] - '0') : 10;
        std::vector<std::string> alts;
        auto rest_of = [&](const FracB& b) {
          FracB r = b;
          if (r.on && !r.digits.empty()) r.digits.erase(0, 1);
          return r;
        };
        auto emit = [&](int d0, int d1, const FracB& l, const FracB& h) {
          if (d0 > d1) return;
          Frac sub = frac(l, h, budget - 1);
          std::string cls = d0 == d1 ? "\"" + std::to_string(d0) + "\""
                                     : "[" + std::to_string(d0) + "-" + std::to_string(d1) + "]";
          if (sub.empty_ok && sub.expr)
            alts.push_back(cls + " ( " + *sub.expr + " )?");
          else if (sub.empty_ok)
            alts.push_back(cls);
          else if (sub.expr)
            alts.push_back(cls + " " + *sub.expr);
        };
        if (lo_d == hi_d) {
          emit(lo_d, lo_d, rest_of(lo), rest_of(hi));
        } else {
          const int first = std::max(lo_d, 0), last = std::min(hi_d, 9);
          if (lo.on) emit(lo_d, lo_d, rest_of(lo), FracB{});
          const int a = lo.on ? lo_d + 1 : first, b = hi.on ? hi_d - 1 : last;
          emit(a, b, FracB{}, FracB{});
          if (hi.on) emit(hi_d, hi_d, FracB{}, rest_of(hi));
        }
        if (!alts.empty())
          out.expr = alts.size() == 1 ? "( " + alts[0] + " )" : rule("frac", join(alts, " | "));
      }
    }
    frac_memo_[key] = out;
    return out;
  }

  static inline const json kFalse = false;
  static constexpr int kEagerRefs = 16;
  // The empty language: a rule nobody can use (kept, so the grammar stays well-formed).
  static constexpr const char* kNothing = "[^\\x00-\\U0010FFFF]";
  struct Pending {
    const json* target;
    std::string ptr, name;
  };
  std::vector<Pending> pending_;
  int ref_nesting_ = 0;
  RuleTable& b_;
  const json& root_;
  std::string prefix_;
  SchemaOptions opts_;
  bool draft7_ = false;
  std::string schema_error_;
  size_t base_rules_ = b_.rules.size();
  std::map<std::string, std::optional<std::string>> ref_rules_;
  std::map<std::string, Frac> frac_memo_;
  std::deque<json> store_;
  const std::string* at_ = nullptr;  // the pointer of the subschema being compiled (for messages)
};

}  // namespace

Result<std::string> GbnfBuilder::add_schema(const json& schema, std::string_view prefix,
                                            const SchemaOptions& opts) {
  const size_t before = impl_->rules.size();
  try {
    Compiler c(*impl_, schema, std::string(prefix.empty() ? "s" : prefix), opts);
    return c.compile_root();
  } catch (const Refusal& r) {
    // Drop the rules of the failed schema (shared primitives stay).
    for (size_t i = before; i < impl_->rules.size(); ++i) {
      impl_->index.erase(impl_->rules[i].first);
      if (auto it = impl_->by_body.find(impl_->rules[i].second);
          it != impl_->by_body.end() && it->second == impl_->rules[i].first)
        impl_->by_body.erase(it);
    }
    impl_->rules.resize(before);
    return Error::data(r.message);
  } catch (const json::exception& e) {
    impl_->rules.resize(before);
    return Error::data(std::string("schema: ") + e.what());
  }
}

Result<std::string> json_schema_to_gbnf(const json& schema, const SchemaOptions& opts) {
  GbnfBuilder b;
  auto root = b.add_schema(schema, "s", opts);
  if (!root) return root.error();
  return b.gbnf(*root);
}

}  // namespace mixtral::grammar
