// GBNF reader: what it accepts (checked through the matcher) and the exact one-line errors it gives.
#include <gtest/gtest.h>

#include <string>

#include "grammar/grammar.h"

namespace mixtral::grammar {
namespace {

bool matches(const GrammarPtr& g, std::string_view s) {
  Matcher m(g);
  return m.advance_bytes(s) && m.can_end();
}

GrammarPtr parse_ok(std::string_view text, const GbnfOptions& o = {}) {
  auto r = parse_gbnf(text, o);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : nullptr;
}

std::string parse_err(std::string_view text, const GbnfOptions& o = {}) {
  auto r = parse_gbnf(text, o);
  if (r.ok()) return "(parsed)";
  EXPECT_EQ(r.error().kind, ErrorKind::kData);
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  return r.error().message;
}

TEST(Gbnf, EveryConstruct) {
  const char* text = R"(# a comment line
root   ::= greeting ws (name | "you") punct? tail{0,2} digits  # trailing comment
greeting ::= "hello" | "hi"
ws     ::= [ \t\n]+
name   ::= [A-Z] [a-z]*
punct  ::= [!?.]
tail   ::= "\x41" | "\u00e9" | "\U0001F600" | "\"" | "\\" | "\n"
digits ::= [0-9]{2} [0-9]{1,}
)";
  auto g = parse_ok(text);
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "hello Bob!12345"));
  EXPECT_TRUE(matches(g, "hi\t\nyou123"));
  EXPECT_TRUE(matches(g,
                      "hi Al"
                      "A\xC3\xA9"
                      "123"));
  EXPECT_TRUE(matches(g, "hi Al\xF0\x9F\x98\x80\"123"));
  EXPECT_TRUE(matches(g, "hi Al\\\n123"));
  EXPECT_FALSE(matches(g, "hi Al12"));          // digits{2} then 1+ more: 3 needed
  EXPECT_FALSE(matches(g, "hi AlAAA123"));      // tail{0,2}
  EXPECT_FALSE(matches(g, "hello bob!12345"));  // name starts upper case
  EXPECT_FALSE(matches(g, "hellobob!12345"));   // ws+
}

TEST(Gbnf, ClassesRangesNegationDot) {
  auto g = parse_ok(R"(root ::= [^a-c\]] [\x30-\x32\-] . [α-γ])");
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "d0xβ"));
  EXPECT_FALSE(matches(g, "]-\xE2\x82\xAC\xCE\xB1"));            // ']' is excluded
  EXPECT_TRUE(matches(g, "\xE2\x82\xAC-\xE2\x82\xAC\xCE\xB3"));  // € - € γ
  EXPECT_FALSE(matches(g, "a0xβ"));
  EXPECT_FALSE(matches(g, "d3xβ"));
  EXPECT_FALSE(matches(g, "d0xδ"));
  EXPECT_FALSE(matches(g, "d0β"));
}

TEST(Gbnf, AlternativesAcrossLinesAndGroups) {
  auto g = parse_ok("root ::= \"a\"\n  | \"b\" (\n \"c\"\n | \"d\" )\n");
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "a"));
  EXPECT_TRUE(matches(g, "bc"));
  EXPECT_TRUE(matches(g, "bd"));
  EXPECT_FALSE(matches(g, "b"));
}

TEST(Gbnf, RepetitionCounts) {
  auto g = parse_ok(R"(root ::= "ab"{2,3} "c"{2,} "d"{0,1} "e"{1})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "ababcce"));
  EXPECT_TRUE(matches(g, "abababccccde"));
  EXPECT_FALSE(matches(g, "abcce"));
  EXPECT_FALSE(matches(g, "abababababcce"));
  EXPECT_FALSE(matches(g, "ababce"));
  EXPECT_FALSE(matches(g, "ababccdde"));
  EXPECT_TRUE(parse_gbnf(R"(root ::= "a"{1000})").ok());
}

TEST(Gbnf, TokenTerminals) {
  GbnfOptions o;
  o.token_id = [](std::string_view p) { return p == "[TOOL_CALLS]" ? 5 : -1; };
  auto g = parse_ok(R"(root ::= <[TOOL_CALLS]> "[" <[7]> "]")", o);
  ASSERT_TRUE(g);
  Matcher m(g);
  EXPECT_FALSE(m.advance_special(7));
  EXPECT_FALSE(m.advance_bytes("["));
  EXPECT_TRUE(m.advance_special(5));
  EXPECT_TRUE(m.advance_bytes("["));
  EXPECT_TRUE(m.advance_special(7));
  EXPECT_TRUE(m.advance_bytes("]"));
  EXPECT_TRUE(m.must_end());
  EXPECT_EQ(parse_err(R"(root ::= <[TOOL_CALLS]>)"), "grammar line 1 col 10: unknown token '<[TOOL_CALLS]>'");
  EXPECT_EQ(parse_err(R"(root ::= "a" <think>)", o), "grammar line 1 col 14: unknown token '<think>'");
}

TEST(Gbnf, OptionalLeadingSpace) {
  GbnfOptions o;
  o.optional_leading_space = true;
  auto g = parse_ok(R"(root ::= "{" "}")", o);
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "{}"));
  EXPECT_TRUE(matches(g, " {}"));
  EXPECT_FALSE(matches(g, "  {}"));
  auto plain = parse_ok(R"(root ::= "{" "}")");
  EXPECT_FALSE(matches(plain, " {}"));
}

TEST(Gbnf, OtherRootName) {
  GbnfOptions o;
  o.root = "start";
  auto g = parse_ok("start ::= \"x\"\n", o);
  ASSERT_TRUE(g);
  EXPECT_TRUE(matches(g, "x"));
}

TEST(Gbnf, Errors) {
  EXPECT_EQ(parse_err("root ::= \"a\" valu\n"), "grammar line 1 col 14: undefined rule 'valu'");
  EXPECT_EQ(parse_err("a ::= \"x\"\n"), "grammar line 2 col 1: no rule named 'root' (the root)");
  EXPECT_EQ(parse_err("root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]\n"),
            "grammar line 2 col 1: left recursion in rule 'expr'");
  EXPECT_EQ(parse_err("root ::= a\na ::= b \"x\"\nb ::= c a | \"y\"\nc ::= \"\" | \"z\"\n"),
            "grammar line 2 col 1: left recursion in rule 'a'");
  EXPECT_EQ(parse_err("root ::= (\"a\"?)*\n"),
            "grammar line 1 col 16: the repeated expression in rule 'root' can match the empty string");
  EXPECT_EQ(parse_err("root ::= \"abc\n"), "grammar line 1 col 10: unterminated string literal");
  EXPECT_EQ(parse_err("root ::= [a-"), "grammar line 1 col 10: unterminated character class");
  EXPECT_EQ(parse_err("root ::= [z-a]"), "grammar line 1 col 11: character range out of order");
  EXPECT_EQ(parse_err("root ::= \"a\"{1001}"), "grammar line 1 col 13: repetition count above 1000");
  EXPECT_EQ(parse_err("root ::= \"a\"{3,2}"), "grammar line 1 col 13: repetition {m,n} with n < m");
  EXPECT_EQ(parse_err("root ::= \"a\"{x}"), "grammar line 1 col 14: expected a number in '{...}'");
  EXPECT_EQ(parse_err("root ::= \"a\" \"b\"\n  \"c\"\n"),
            "grammar line 2 col 3: expected a rule name but found '\"'");
  EXPECT_EQ(parse_err("root = \"a\""), "grammar line 1 col 6: expected '::=' after rule name 'root'");
  EXPECT_EQ(parse_err("root ::= \"a\" )"), "grammar line 1 col 14: unexpected ')' in rule 'root'");
  EXPECT_EQ(parse_err("root ::= (\"a\" "), "grammar line 1 col 15: missing ')'");
  EXPECT_EQ(parse_err("root ::= \"\\q\""), "grammar line 1 col 11: unknown escape '\\q'");
  EXPECT_EQ(parse_err("root ::= \"\\x4\""), "grammar line 1 col 14: expected 2 hex digits after '\\x'");
  EXPECT_EQ(parse_err("root ::= \"\\U00110000\""), "grammar line 1 col 11: code point out of range");
  EXPECT_EQ(parse_err("root ::= \"a\"\nroot ::= \"b\"\n"), "grammar line 2 col 1: rule 'root' defined twice");
  EXPECT_EQ(parse_err("root ::= [^\\x00-\\U0010FFFF]\n"),
            "grammar line 1 col 1: rule 'root' matches no text");
  EXPECT_EQ(parse_err("root ::= x\nx ::= \"a\" x\n"), "grammar line 1 col 1: rule 'root' matches no text");
  EXPECT_EQ(parse_err("root ::= \"\xC3\x28\""), "grammar line 1 col 11: invalid UTF-8 in grammar text");
  EXPECT_EQ(parse_err("root ::= <>"), "grammar line 1 col 10: empty token reference '<>'");
  EXPECT_EQ(parse_err("root ::= <[99999999999]>"), "grammar line 1 col 10: token id out of range");
  // Columns count characters, not bytes.
  EXPECT_EQ(parse_err("root ::= \"é\" valu"), "grammar line 1 col 14: undefined rule 'valu'");
}

TEST(Gbnf, Limits) {
  GbnfOptions o;
  o.max_text_bytes = 10;
  EXPECT_EQ(parse_err("root ::= \"abc\"", o),
            "grammar line 1 col 1: grammar text of 14 bytes exceeds max_text_bytes (10)");
  o = {};
  o.max_rules = 2;
  EXPECT_EQ(parse_err("root ::= a b\na ::= \"x\"\nb ::= \"y\"\n", o),
            "grammar line 1 col 12: more than 2 rules (max_rules)");
  o = {};
  o.max_nesting = 3;
  EXPECT_TRUE(parse_gbnf("root ::= (((\"a\")))", o).ok());
  EXPECT_EQ(parse_err("root ::= ((((\"a\"))))", o),
            "grammar line 1 col 13: groups nested deeper than 3 (max_nesting)");
  // Nested repetitions share rules instead of copying: a billion "ab" in a few thousand elements.
  auto g = parse_gbnf("root ::= ((\"ab\"{1000}){1000}){1000}");
  ASSERT_TRUE(g.ok());
  Matcher m(*g);
  EXPECT_TRUE(m.advance_bytes("abababab"));
  EXPECT_FALSE(m.can_end());
  EXPECT_FALSE(m.advance_bytes("b"));
}

}  // namespace
}  // namespace mixtral::grammar
