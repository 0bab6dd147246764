// Matcher: accepts exactly the sentences of small grammars, checked against an independent recognizer
// (grammar trees built here, matched by backtracking over sets of end positions) on every string up to
// a length over a small alphabet; UTF-8 classes fed byte by byte across chunk boundaries; token
// terminals; end states; copies.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "grammar/grammar.h"

namespace mixtral::grammar {
namespace {

// --- the reference: a grammar tree and a backtracking recognizer -------------------------------------
struct Ref;
using RefP = std::shared_ptr<const Ref>;
struct Ref {
  enum Kind { kLit, kChars, kSeq, kAlt, kRep, kRule } kind;
  std::string text;        // kLit: the bytes; kChars: the member bytes (single-byte alphabet)
  std::vector<RefP> kids;  // kSeq, kAlt, kRep (one kid)
  int lo = 0, hi = -1;     // kRep
  const std::map<std::string, RefP>* rules = nullptr;  // kRule
};
RefP lit(std::string s) {
  return std::make_shared<Ref>(Ref{Ref::kLit, std::move(s), {}});
}
RefP chars(std::string s) {
  return std::make_shared<Ref>(Ref{Ref::kChars, std::move(s), {}});
}
RefP seq(std::vector<RefP> k) {
  return std::make_shared<Ref>(Ref{Ref::kSeq, "", std::move(k)});
}
RefP alt(std::vector<RefP> k) {
  return std::make_shared<Ref>(Ref{Ref::kAlt, "", std::move(k)});
}
RefP rep(RefP k, int lo, int hi) {
  return std::make_shared<Ref>(Ref{Ref::kRep, "", {std::move(k)}, lo, hi});
}
RefP rule(std::string name, const std::map<std::string, RefP>* rules) {
  return std::make_shared<Ref>(Ref{Ref::kRule, std::move(name), {}, 0, -1, rules});
}

// End positions of r matched from pos in s.
std::set<size_t> ends(const RefP& r, const std::string& s, size_t pos) {
  switch (r->kind) {
    case Ref::kLit:
      if (s.compare(pos, r->text.size(), r->text) == 0) return {pos + r->text.size()};
      return {};
    case Ref::kChars:
      if (pos < s.size() && r->text.find(s[pos]) != std::string::npos) return {pos + 1};
      return {};
    case Ref::kSeq: {
      std::set<size_t> cur{pos};
      for (const auto& k : r->kids) {
        std::set<size_t> next;
        for (size_t p : cur)
          for (size_t e : ends(k, s, p)) next.insert(e);
        cur = std::move(next);
      }
      return cur;
    }
    case Ref::kAlt: {
      std::set<size_t> out;
      for (const auto& k : r->kids)
        for (size_t e : ends(k, s, pos)) out.insert(e);
      return out;
    }
    case Ref::kRep: {
      std::set<size_t> out, cur{pos};
      if (r->lo == 0) out.insert(pos);
      for (int n = 1; !cur.empty() && (r->hi < 0 || n <= r->hi); ++n) {
        std::set<size_t> next;
        for (size_t p : cur)
          for (size_t e : ends(r->kids[0], s, p))
            if (e > p || r->hi >= 0) next.insert(e);
        if (r->hi < 0 && n > static_cast<int>(s.size()) + r->lo + 1) break;
        if (n >= r->lo) out.insert(next.begin(), next.end());
        cur = std::move(next);
      }
      return out;
    }
    case Ref::kRule:
      return ends(r->rules->at(r->text), s, pos);
  }
  return {};
}

bool ref_accepts(const RefP& root, const std::string& s) {
  return ends(root, s, 0).count(s.size()) > 0;
}

void all_strings(const std::string& alphabet, size_t max_len,
                 const std::function<void(const std::string&)>& f) {
  std::vector<std::string> level{""};
  f("");
  for (size_t len = 1; len <= max_len; ++len) {
    std::vector<std::string> next;
    for (const auto& s : level)
      for (char c : alphabet) next.push_back(s + c);
    for (const auto& s : next) f(s);
    level = std::move(next);
  }
}

GrammarPtr parse(std::string_view text) {
  auto r = parse_gbnf(text);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : nullptr;
}

// Every string up to max_len: fed byte by byte, the matcher accepts it iff the reference does; once a
// byte is refused, no extension is in the language (checked against the reference as well).
void check_exact(const std::string& gbnf, const RefP& ref, const std::string& alphabet, size_t max_len) {
  SCOPED_TRACE(gbnf);
  auto g = parse(gbnf);
  ASSERT_TRUE(g);
  std::set<std::string> dead;  // prefixes the matcher refused
  int in_language = 0;
  all_strings(alphabet, max_len, [&](const std::string& s) {
    const bool want = ref_accepts(ref, s);
    in_language += want;
    Matcher m(g);
    bool alive = true;
    for (size_t i = 0; i < s.size() && alive; ++i) {
      Matcher before = m;
      alive = m.advance_bytes(s.substr(i, 1));
      if (!alive) {
        // all or nothing: the refused byte left the state unchanged
        EXPECT_EQ(m.can_end(), before.can_end());
        EXPECT_TRUE(m.advance_bytes(std::string(1, s[i])) == false);
      }
    }
    const bool got = alive && m.can_end();
    EXPECT_EQ(got, want) << "string '" << s << "'";
    if (want) {
      // also in one piece
      Matcher whole(g);
      EXPECT_TRUE(whole.advance_bytes(s) && whole.can_end()) << s;
    }
  });
  EXPECT_GT(in_language, 0);
}

TEST(Matcher, ExactOnSmallGrammars) {
  std::map<std::string, RefP> rules;
  // 1: strings over {a,b} ending in a
  check_exact(R"(root ::= ("a" | "b")* "a")", seq({rep(alt({lit("a"), lit("b")}), 0, -1), lit("a")}), "ab(",
              6);
  // 2: balanced parentheses
  rules["r2"] = rep(seq({lit("("), rule("r2", &rules), lit(")")}), 0, -1);
  check_exact(R"g(root ::= ( "(" root ")" )*)g", rule("r2", &rules), "()a", 8);
  // 3: counted repetitions and an option
  check_exact(R"(root ::= "a"{2,4} "b"?)", seq({rep(lit("a"), 2, 4), rep(lit("b"), 0, 1)}), "ab", 7);
  // 4: an ambiguous split
  check_exact("root ::= x y\nx ::= \"a\"*\ny ::= \"a\" \"b\" | \"b\"\n",
              seq({rep(lit("a"), 0, -1), alt({seq({lit("a"), lit("b")}), lit("b")})}), "ab", 7);
  // 5: a^n b^n
  rules["r5"] = alt({seq({lit("a"), rule("r5", &rules), lit("b")}), lit("")});
  check_exact("root ::= \"a\" root \"b\" | \"\"\n", rule("r5", &rules), "ab", 8);
  // 6: overlapping alternatives under a star
  check_exact(R"(root ::= ("ab" | "a")* "b"?)",
              seq({rep(alt({lit("ab"), lit("a")}), 0, -1), rep(lit("b"), 0, 1)}), "abc", 6);
  // 7: at least two, then at most two
  check_exact(R"(root ::= "a"{2,} "b"{0,2})", seq({rep(lit("a"), 2, -1), rep(lit("b"), 0, 2)}), "ab", 7);
  // 8: classes, negation and the any-character dot over ASCII
  check_exact(R"(root ::= [^b] . [a-b]+ | "c")",
              alt({seq({chars("ac"), chars("abc"), rep(chars("ab"), 1, -1)}), lit("c")}), "abc", 5);
  // 9: nullable rules in the middle and at the end
  check_exact("root ::= o \"a\" o o\no ::= \"b\"?\n",
              seq({rep(lit("b"), 0, 1), lit("a"), rep(lit("b"), 0, 1), rep(lit("b"), 0, 1)}), "ab", 6);
  // 10: a JSON-ish list
  rules["r10"] =
      seq({lit("["), rep(seq({rule("v", &rules), rep(seq({lit(","), rule("v", &rules)}), 0, -1)}), 0, 1),
           lit("]")});
  rules["v"] = alt({lit("1"), rule("r10", &rules)});
  check_exact("root ::= \"[\" (v (\",\" v)*)? \"]\"\nv ::= \"1\" | root\n", rule("r10", &rules), "[],1", 7);
}

// --- UTF-8 -------------------------------------------------------------------------------------------

// Accepts s when fed in the given chunk sizes.
bool feed(const GrammarPtr& g, const std::string& s, const std::vector<size_t>& cuts) {
  Matcher m(g);
  size_t at = 0;
  for (size_t c : cuts) {
    if (!m.advance_bytes(s.substr(at, c - at))) return false;
    at = c;
  }
  return m.advance_bytes(s.substr(at)) && m.can_end();
}

TEST(Matcher, Utf8ClassesAcrossChunks) {
  auto g = parse(R"(root ::= "\"" [^"\\]* "\"" [α-ω]+)");
  ASSERT_TRUE(g);
  const std::string good = "\"a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"\xCE\xB1\xCF\x89";  // "aé€😀"αω
  for (size_t i = 0; i <= good.size(); ++i) {
    for (size_t j = i; j <= good.size(); ++j) {
      EXPECT_TRUE(feed(g, good, {i, j})) << i << "," << j;
    }
  }
  // Every byte alone.
  std::vector<size_t> each;
  for (size_t i = 1; i < good.size(); ++i) each.push_back(i);
  EXPECT_TRUE(feed(g, good, each));

  Matcher m(g);
  ASSERT_TRUE(m.advance_bytes("\"\xE2"));
  EXPECT_FALSE(m.advance_bytes("a"));         // a continuation byte is due
  EXPECT_FALSE(m.advance_bytes("\xE2\x82"));  // a lead byte is not a continuation
  EXPECT_TRUE(m.advance_bytes("\x82\xAC\""));
  EXPECT_FALSE(m.advance_bytes("\xCE\xB0"));  // U+03B0 < α
  EXPECT_FALSE(m.advance_bytes("\xCF\x8A"));  // U+03CA > ω
  EXPECT_TRUE(m.advance_bytes("\xCE"));
  EXPECT_FALSE(m.can_end());  // mid-character
  EXPECT_TRUE(m.advance_bytes("\xB2"));
  EXPECT_TRUE(m.can_end());

  // Invalid UTF-8 never matches a class: overlong forms, surrogates, stray continuation bytes, > U+10FFFF.
  auto any = parse("root ::= .*");
  ASSERT_TRUE(any);
  for (const char* bad : {"\xC0\xAF", "\xC1\xBF", "\xE0\x80\xAF", "\xED\xA0\x80", "\x80", "\xF4\x90\x80\x80",
                          "\xF5\x80\x80\x80", "\xFF"}) {
    Matcher a(any);
    EXPECT_FALSE(a.advance_bytes(bad)) << bad;
  }
  Matcher a(any);
  EXPECT_TRUE(a.advance_bytes("\xED\x9F\xBF\xEE\x80\x80\xF4\x8F\xBF\xBF"));  // U+D7FF U+E000 U+10FFFF
  // A partial character is refused early when no member of the class can complete it.
  auto ascii_or_cyr = parse("root ::= [a-z\\u0400-\\u04FF]*");
  Matcher c(ascii_or_cyr);
  EXPECT_TRUE(c.advance_bytes("\xD0"));   // U+0400..U+043F
  EXPECT_FALSE(c.advance_bytes("\xC3"));  // still mid-character
  Matcher d(ascii_or_cyr);
  EXPECT_FALSE(d.advance_bytes("\xC3"));  // U+00C0..U+00FF: none in the class
  EXPECT_FALSE(d.advance_bytes("\xE2"));
}

TEST(Matcher, LiteralsWithMultibyteCharacters) {
  auto g = parse(R"(root ::= "café" | "caf\u00e9s")");
  ASSERT_TRUE(g);
  EXPECT_TRUE(feed(g, "caf\xC3\xA9", {4}));
  EXPECT_TRUE(feed(g, "caf\xC3\xA9s", {4, 5}));
  Matcher m(g);
  EXPECT_FALSE(m.advance_bytes("cafe"));
}

TEST(Matcher, TokenTerminalsAndEnds) {
  auto g = parse(R"(root ::= <[9]> "{" "}" | "x" "y"?)");
  ASSERT_TRUE(g);
  Matcher m(g);
  EXPECT_FALSE(m.can_end());
  EXPECT_FALSE(m.advance_special(8));
  Matcher t = m;
  EXPECT_TRUE(t.advance_special(9));
  EXPECT_FALSE(t.advance_special(9));
  EXPECT_TRUE(t.advance_bytes("{}"));
  EXPECT_TRUE(t.can_end());
  EXPECT_TRUE(t.must_end());
  EXPECT_FALSE(t.advance_bytes(" "));
  EXPECT_TRUE(m.advance_bytes("x"));
  EXPECT_TRUE(m.can_end());
  EXPECT_FALSE(m.must_end());
  EXPECT_TRUE(m.advance_bytes("y"));
  EXPECT_TRUE(m.must_end());
}

TEST(Matcher, AllOrNothingAndCopies) {
  auto g = parse(R"(root ::= "abc" "d"*)");
  ASSERT_TRUE(g);
  Matcher m(g);
  EXPECT_TRUE(m.advance_bytes("ab"));
  EXPECT_FALSE(m.advance_bytes("cx"));  // 'c' fits, 'x' does not: nothing consumed
  Matcher copy = m;
  EXPECT_TRUE(copy.advance_bytes("cdd"));
  EXPECT_TRUE(copy.can_end());
  EXPECT_FALSE(m.can_end());  // the original did not move
  EXPECT_TRUE(m.advance_bytes("c"));
  EXPECT_TRUE(m.can_end());
  Matcher moved = std::move(copy);
  EXPECT_TRUE(moved.advance_bytes("d"));
  copy = moved;
  EXPECT_TRUE(copy.can_end());
  EXPECT_TRUE(m.advance_bytes(""));
}

TEST(Matcher, DeepNestingStaysCheap) {
  // Right recursion through a repetition: stacks stay flat however long the run.
  auto g = parse(R"(root ::= "[" ( [0-9] | "," )* "]")");
  ASSERT_TRUE(g);
  Matcher m(g);
  ASSERT_TRUE(m.advance_bytes("["));
  for (int i = 0; i < 20000; ++i) ASSERT_TRUE(m.advance_bytes(i % 2 ? "," : "7"));
  EXPECT_TRUE(m.advance_bytes("]"));
  EXPECT_TRUE(m.must_end());
  // Real nesting: 500 levels of brackets.
  auto n = parse("root ::= \"[\" root? \"]\"\n");
  Matcher k(n);
  ASSERT_TRUE(k.advance_bytes(std::string(500, '[')));
  ASSERT_TRUE(k.advance_bytes(std::string(499, ']')));
  EXPECT_FALSE(k.can_end());
  EXPECT_TRUE(k.advance_bytes("]"));
  EXPECT_TRUE(k.must_end());
}

TEST(Matcher, HostileGrammarsStayBounded) {
  // 40 levels of doubled alternatives: 2^40 derivations of one string, expanded once each.
  std::string text = "root ::= x0\n";
  for (int i = 0; i < 40; ++i) {
    const std::string a = std::to_string(i), b = std::to_string(i + 1);
    text.append("x").append(a).append(" ::= x").append(b).append(" | x").append(b).append("\n");
  }
  text += "x40 ::= \"a\"+\n";
  auto g = parse(text);
  ASSERT_TRUE(g);
  Matcher m(g);
  EXPECT_TRUE(m.advance_bytes("aaaa"));
  EXPECT_TRUE(m.can_end());
  // Stacks that double per byte: refused once past the bound instead of growing without end.
  auto d = parse("root ::= \"a\" root \"b\" | \"a\" root \"c\" | \"\"\n");
  ASSERT_TRUE(d);
  Matcher k(d);
  EXPECT_TRUE(k.advance_bytes("aaaaaaaa"));  // 256 stacks
  EXPECT_TRUE(k.advance_bytes("bcbcbcbc"));
  EXPECT_TRUE(k.can_end());
  Matcher big(d);
  EXPECT_FALSE(big.advance_bytes(std::string(13, 'a')));  // 8192 stacks
}

}  // namespace
}  // namespace mixtral::grammar
