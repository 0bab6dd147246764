// Token masks against brute force (for every token: copy the matcher and try its bytes / its id), along
// random valid generations, over a small synthetic vocabulary and over a SentencePiece-style one built
// with Tokenizer::from_vocab; EOS rules; the cache (same masks with and without); vocabulary_of; apply_mask.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "grammar/grammar.h"
#include "mixtral/tokenizer.h"

namespace mixtral::grammar {
namespace {

bool bit(const std::vector<uint32_t>& m, int32_t t) {
  return (m[static_cast<size_t>(t) / 32] >> (t % 32)) & 1u;
}

// What the mask must be, token by token, from the public Matcher alone.
std::vector<uint32_t> brute_mask(const Vocabulary& v, const Matcher& m) {
  std::vector<uint32_t> out((v.bytes.size() + 31) / 32, 0);
  for (size_t t = 0; t < v.bytes.size(); ++t) {
    bool ok;
    if (static_cast<int32_t>(t) == v.eos) {
      ok = m.can_end();
    } else {
      Matcher a = m, b = m;
      ok = b.advance_special(static_cast<int32_t>(t));
      if (!v.special[t] && !v.bytes[t].empty()) ok = ok || a.advance_bytes(v.bytes[t]);
    }
    if (ok) out[t / 32] |= 1u << (t % 32);
  }
  return out;
}

std::string describe_diff(const Vocabulary& v, const std::vector<uint32_t>& got,
                          const std::vector<uint32_t>& want) {
  std::string s;
  int shown = 0;
  for (size_t t = 0; t < v.bytes.size() && shown < 8; ++t) {
    const auto id = static_cast<int32_t>(t);
    if (bit(got, id) != bit(want, id)) {
      s += " [" + std::to_string(t) + " '" + v.bytes[t] + "' got " + std::to_string(bit(got, id)) + "]";
      ++shown;
    }
  }
  return s;
}

uint64_t class_runs_seen = 0;    // masks the shortcut computed, over all walks so far
uint64_t counted_runs_seen = 0;  // the same for the counted-run shortcut

// Random walks through the grammar: at each step the mask (cached and uncached) equals brute force, then
// a random allowed token is accepted. Returns the number of steps checked.
int check_walks(const std::string& gbnf, const Vocabulary& v, int walks, int steps, uint32_t seed,
                const GbnfOptions& o = {}) {
  SCOPED_TRACE(gbnf);
  auto g = parse_gbnf(gbnf, o);
  EXPECT_TRUE(g.ok()) << (g.ok() ? "" : g.error().message);
  if (!g.ok()) return 0;
  TokenMasker cached(v), uncached(v, MaskerOptions{0});
  std::mt19937 rng(seed);
  int checked = 0;
  for (int w = 0; w < walks; ++w) {
    Matcher m(*g);
    std::string text;
    for (int s = 0; s < steps; ++s) {
      std::vector<uint32_t> a, b;
      cached.fill_mask(m, a);
      uncached.fill_mask(m, b);
      const auto want = brute_mask(v, m);
      EXPECT_EQ(a, want) << "after '" << text << "':" << describe_diff(v, a, want);
      EXPECT_EQ(b, want) << "after '" << text << "' (uncached)";
      ++checked;
      std::vector<int32_t> allowed;
      for (int32_t t = 0; t < static_cast<int32_t>(v.bytes.size()); ++t)
        if (bit(want, t) && t != v.eos) allowed.push_back(t);
      if (allowed.empty()) {
        EXPECT_TRUE(m.can_end()) << "dead end after '" << text << "'";
        break;
      }
      // Prefer ending sometimes once possible.
      if (m.can_end() && rng() % 8 == 0) break;
      const int32_t t = allowed[rng() % allowed.size()];
      EXPECT_TRUE(cached.accept(m, t));
      if (v.special[static_cast<size_t>(t)]) {
        text.append(1, '<').append(std::to_string(t)).append(1, '>');
      } else {
        text += v.bytes[static_cast<size_t>(t)];
      }
    }
    EXPECT_FALSE(cached.accept(m, -1));
  }
  const auto st = cached.stats();
  EXPECT_EQ(st.hits + st.misses, static_cast<uint64_t>(checked));
  class_runs_seen += uncached.stats().class_runs;
  counted_runs_seen += uncached.stats().counted_runs;
  return checked;
}

// A small vocabulary: every string of 1-2 bytes over a JSON-ish alphabet, multi-byte characters whole and
// split, a few longer pieces, and three control tokens (BOS 0, EOS 1, a tool token 2).
Vocabulary small_vocab() {
  Vocabulary v;
  auto add = [&](std::string b, bool special = false) {
    v.bytes.push_back(std::move(b));
    v.special.push_back(special);
  };
  add("", true);
  add("", true);
  add("", true);
  v.eos = 1;
  const std::string alpha = "ab\"\\ {}[]:,01-.eE\n";
  for (char c : alpha) add(std::string(1, c));
  for (char c : alpha)
    for (char d : alpha) add(std::string(1, c) + d);
  for (char c = 0x20; c < 0x7F; ++c) add(std::string(1, c));  // every ASCII character can be spelled
  for (const char* s :
       {"\xC3\xA9", "\xC3",     "\xA9",  "\xE2\x82\xAC", "\xE2\x82", "\xAC", "\xF0\x9F\x98\x80",
        "\xF0\x9F", "\x98\x80", "a\xC3", "\xA9\"",       "\"name",   "\": ", "true",
        "false",    "null",     "12",    "345",          "\\u00",    "e9",   "\xFF",
        "\xC0\xAF"})
    add(s);
  return v;
}

const char* kJsonish =
    R"(root ::= "{" ws "\"name\"" ws ":" ws str ws "," ws "\"n\"" ws ":" ws num ws "," ws "\"k\"" ws ":" ws ("true" | "false" | "null") ws "}"
str ::= "\"" ( [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
num ::= "-"? ([0-9] | [1-9] [0-9]{0,5}) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
ws ::= [ \n]{0,2}
)";

const char* kFreeJson = R"(root ::= value
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\/bfnrtu] )* "\""
number ::= "-"? [0-9]+ ("." [0-9]+)?
ws ::= [ \n]?
)";

TEST(Mask, SmallVocabularyMatchesBruteForce) {
  const Vocabulary v = small_vocab();
  int n = 0;
  n += check_walks(kJsonish, v, 8, 60, 1);
  n += check_walks(kFreeJson, v, 8, 60, 2);
  n += check_walks(R"(root ::= [^"]* "\"")", v, 8, 30, 3);  // a class run, then its end
  n += check_walks(R"(root ::= [a\u00e9\u20ac]* ("\"" | [a-b]* "e"))", v, 8, 30, 4);  // overlapping paths
  n += check_walks(R"(root ::= (<[2]> "[" [01]+ "]") | "a"+)", v, 8, 20, 5);          // a token terminal
  n += check_walks(R"(root ::= .* "\n")", v, 8, 30, 6);
  EXPECT_GT(class_runs_seen, 50u);  // the class-run shortcut was among what brute force checked
  GbnfOptions lead;
  lead.optional_leading_space = true;
  n += check_walks(R"(root ::= "{" [ab]* "}")", v, 8, 20, 7, lead);
  EXPECT_GT(n, 250);
}

TEST(Mask, EosOnlyWhereTheGrammarCanEnd) {
  const Vocabulary v = small_vocab();
  TokenMasker tm(v);
  auto g = parse_gbnf(R"(root ::= "a" "b"?)");
  ASSERT_TRUE(g.ok());
  Matcher m(*g);
  std::vector<uint32_t> mask;
  tm.fill_mask(m, mask);
  EXPECT_FALSE(bit(mask, v.eos));
  EXPECT_FALSE(tm.accept(m, v.eos));
  EXPECT_FALSE(bit(mask, 0));  // BOS: a control token no terminal names
  EXPECT_FALSE(tm.accept(m, 0));
  ASSERT_TRUE(tm.accept(m, 3));  // "a"
  tm.fill_mask(m, mask);
  EXPECT_TRUE(bit(mask, v.eos));
  EXPECT_TRUE(tm.accept(m, v.eos));
  ASSERT_TRUE(tm.accept(m, 4));  // "b"
  tm.fill_mask(m, mask);
  int allowed = 0;
  for (int32_t t = 0; t < tm.n_vocab(); ++t) allowed += bit(mask, t);
  EXPECT_EQ(allowed, 1);  // only EOS
  EXPECT_TRUE(bit(mask, v.eos));
  EXPECT_FALSE(tm.accept(m, 3));
}

TEST(Mask, CacheEvictionKeepsMasksRight) {
  const Vocabulary v = small_vocab();
  TokenMasker tiny(v, MaskerOptions{2});
  auto g = parse_gbnf(kFreeJson);
  ASSERT_TRUE(g.ok());
  Matcher m(*g);
  std::vector<uint32_t> mask;
  // "[1,22,[3]]" token by token, every mask twice (the second from the cache) and equal to brute force.
  for (const char* piece : {"[", "1", ",", "2", "2", ",", "[", "1", "]", "]"}) {
    for (int k = 0; k < 2; ++k) {
      tiny.fill_mask(m, mask);
      EXPECT_EQ(mask, brute_mask(v, m)) << piece;
    }
    ASSERT_TRUE(m.advance_bytes(piece));
  }
  EXPECT_GE(tiny.stats().hits, 10u);
  // Two grammars with identical stack layouts do not share masks.
  auto g1 = parse_gbnf(R"(root ::= [a]*)");
  auto g2 = parse_gbnf(R"(root ::= [b]*)");
  ASSERT_TRUE(g1.ok() && g2.ok());
  std::vector<uint32_t> m1, m2;
  tiny.fill_mask(Matcher(*g1), m1);
  tiny.fill_mask(Matcher(*g2), m2);
  EXPECT_TRUE(bit(m1, 3) && !bit(m1, 4));
  EXPECT_TRUE(bit(m2, 4) && !bit(m2, 3));
  tiny.clear_cache();
  tiny.fill_mask(Matcher(*g1), m2);
  EXPECT_EQ(m1, m2);
}

// A SentencePiece-style vocabulary through Tokenizer::from_vocab and vocabulary_of: <unk> <s> </s>, the
// 256 byte pieces, and a few thousand word, punctuation, digit and multi-byte pieces with "▁" spaces.
std::unique_ptr<Tokenizer> sp_style_tokenizer() {
  Tokenizer::Vocab tv;
  std::set<std::string> seen;
  auto add = [&](std::string p, TokenType t = TokenType::kNormal) {
    if (!seen.insert(p).second) return;
    tv.pieces.push_back(std::move(p));
    tv.scores.push_back(-static_cast<float>(tv.pieces.size()));
    tv.types.push_back(t);
  };
  add("<unk>", TokenType::kUnknown);
  add("<s>", TokenType::kControl);
  add("</s>", TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, TokenType::kByte);
  }
  const std::string sp = "\xE2\x96\x81";
  const std::vector<std::string> words = {"the",   "name", "age",  "items", "true", "false", "null", "id",
                                          "value", "caf",  "café", "na",    "me",   "ag",    "e",    "t",
                                          "r",     "u",    "a",    "n",     "é",    "€",     "日本", "語",
                                          "😀",     "x",    "y",    "z",     "tags"};
  const std::vector<std::string> punct = {
      "\"",   "{",   "}",   "[",    "]",   ":",   ",",     "\\",
      "\":",  "\",", "{\"", "\"}",  "\"]", "[\"", "\\\"",  "\\n",
      "\\u",  ".",   "-",   "+",    "e",   "E",   "\":\"", "},{",
      "\"\n", "\n",  "\t",  "\":[", "}}",  "]}",  "0.",    "\xE2\x96\x81\""};
  for (const auto& w : words) {
    add(w);
    add(sp + w);
    add("\"" + w);
    add(w + "\"");
    add(sp + "\"" + w + "\":");
  }
  for (const auto& p : punct) {
    add(p);
    add(sp + p);
  }
  add(sp);
  add(sp + sp);
  for (int d = 0; d < 10; ++d) add(std::to_string(d));
  for (int d = 10; d < 300; ++d) add(std::to_string(d));
  for (int i = 0; i < 26; ++i)
    for (int j = 0; j < 26; ++j) add(std::string{static_cast<char>('a' + i), static_cast<char>('a' + j)});
  auto tok = Tokenizer::from_vocab(std::move(tv), "sp-style");
  EXPECT_TRUE(tok.ok()) << (tok.ok() ? "" : tok.error().message);
  return tok.ok() ? std::move(*tok) : nullptr;
}

// States where the class-run shortcut applies at the root and below it (after an escape's letter the
// string goes on: the subtree of tokens starting with 'n' is run without walking it).
TEST(Mask, ClassRunsBelowTheRoot) {
  auto tok = sp_style_tokenizer();
  ASSERT_TRUE(tok);
  const Vocabulary v = vocabulary_of(*tok);
  TokenMasker tm(v, MaskerOptions{0});
  auto g = parse_gbnf(R"(root ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\/bfnrt] )* "\"" ","?)");
  ASSERT_TRUE(g.ok()) << g.error().message;
  for (const char* prefix : {"\"", "\"ab", "\"\\", "\"x\\", "\"caf\xC3", "\"\\n", "\"a\"", "\"a\","}) {
    Matcher m(*g);
    ASSERT_TRUE(m.advance_bytes(prefix)) << prefix;
    std::vector<uint32_t> mask;
    tm.fill_mask(m, mask);
    EXPECT_EQ(mask, brute_mask(v, m)) << prefix << describe_diff(v, mask, brute_mask(v, m));
  }
  EXPECT_GE(tm.stats().class_runs, 3u);
  EXPECT_GE(tm.stats().subtree_runs, 1u);
}

// Bounded repetitions of a class (counted runs: a string's maxLength, {m,n} in patterns, digit counts):
// masks equal brute force along random generations, and at the boundaries: no character left, one left
// (tokens of two characters refused, é counting as one), the minimum not reached yet.
TEST(Mask, CountedRunsMatchBruteForce) {
  const Vocabulary v = small_vocab();
  const uint64_t before = counted_runs_seen;
  int n = 0;
  n += check_walks(R"(root ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\/bfnrt] ){0,5} "\"")", v, 8, 12, 31);
  n += check_walks(R"(root ::= "\"" [^"]{3} [^"]{0,3} "\"")", v, 8, 12, 32);
  n += check_walks(R"(root ::= [a-z\u00e9]{2,4} "x"?)", v, 8, 8, 33);
  n += check_walks(R"(root ::= [0-9]{1,3} "." [0-9]{2})", v, 8, 10, 34);
  n += check_walks(R"(root ::= [a-z]{0,3} [a-z]* "\"")", v, 8, 10, 35);  // two runs of one class in a row
  n += check_walks(R"(root ::= ([a-e]{1,2} "-"){2} | [a-b]{3})", v, 8, 8, 36);
  n += check_walks(R"(root ::= [^"]{0,2} "\"" | .{1,4})", v, 8, 8, 37);  // not uniform: walked whole
  // Tokens longer than 16 characters (kept in lists, not bitsets), around a maximum of 20.
  Vocabulary lv = v;
  for (const char* t :
       {"aaaaaaaaaaaaaaaaaa", "abababababababababab", "aaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbb\""}) {
    lv.bytes.push_back(t);
    lv.special.push_back(0);
  }
  n += check_walks(R"(root ::= "\"" [^"\\]{0,20} "\"")", lv, 8, 10, 38);
  EXPECT_GT(n, 200);
  EXPECT_GT(counted_runs_seen - before, 30u);  // (narrow classes count with many tokens only: see below)

  TokenMasker tm(v, MaskerOptions{0});
  auto g = parse_gbnf(R"(root ::= "\"" [^"\\]{0,3} "\"")");
  ASSERT_TRUE(g.ok()) << g.error().message;
  auto id = [&](const std::string& b) {
    for (size_t t = 0; t < v.bytes.size(); ++t)
      if (!v.special[t] && v.bytes[t] == b) return static_cast<int32_t>(t);
    ADD_FAILURE() << "no token " << b;
    return int32_t{0};
  };
  struct Case {
    const char* prefix;
    std::vector<std::string> allowed, refused;
  };
  const std::vector<Case> cases = {
      {"\"", {"ab", "\xC3\xA9", "a\xC3", "\"", "12"}, {"\\"}},
      {"\"ab", {"a", "\xC3\xA9", "\xC3", "a\"", "\""}, {"ab", "12", "a\xC3"}},  // one left
      {"\"a\xC3\xA9", {"a", "\xC3", "\"", "a\""}, {"ab", "a\xC3"}},             // é is one character
      {"\"abc", {"\""}, {"a", "\xC3", "\xC3\xA9", "ab"}},                       // none left
      {"\"a\xC3", {"\xA9", "\xA9\""}, {"a", "\""}},                             // inside a character
  };
  for (const auto& c : cases) {
    Matcher m(*g);
    ASSERT_TRUE(m.advance_bytes(c.prefix)) << c.prefix;
    std::vector<uint32_t> mask;
    tm.fill_mask(m, mask);
    const auto want = brute_mask(v, m);
    EXPECT_EQ(mask, want) << c.prefix << describe_diff(v, mask, want);
    for (const auto& a : c.allowed) EXPECT_TRUE(bit(mask, id(a))) << c.prefix << " + " << a;
    for (const auto& r : c.refused) EXPECT_FALSE(bit(mask, id(r))) << c.prefix << " + " << r;
  }
  EXPECT_GE(tm.stats().counted_runs, 3u);
}

TEST(Mask, VocabularyOf) {
  auto tok = sp_style_tokenizer();
  ASSERT_TRUE(tok);
  const Vocabulary v = vocabulary_of(*tok);
  ASSERT_EQ(v.bytes.size(), static_cast<size_t>(tok->n_vocab()));
  EXPECT_EQ(v.eos, 2);
  EXPECT_TRUE(v.special[0] && v.special[1] && v.special[2]);
  EXPECT_EQ(v.bytes[3 + 0x41], "A");
  EXPECT_EQ(v.bytes[3 + 0xE2], "\xE2");
  EXPECT_FALSE(v.special[3 + 0xE2]);
  const int32_t the = tok->piece_to_id("\xE2\x96\x81the");
  ASSERT_GE(the, 0);
  EXPECT_EQ(v.bytes[static_cast<size_t>(the)], " the");
  const int32_t two = tok->piece_to_id("\xE2\x96\x81\xE2\x96\x81");
  ASSERT_GE(two, 0);
  EXPECT_EQ(v.bytes[static_cast<size_t>(two)], "  ");
}

TEST(Mask, SentencePieceVocabularyMatchesBruteForce) {
  auto tok = sp_style_tokenizer();
  ASSERT_TRUE(tok);
  const Vocabulary v = vocabulary_of(*tok);
  GbnfOptions lead;
  lead.optional_leading_space = true;
  int n = 0;
  n += check_walks(kJsonish, v, 4, 40, 11, lead);
  n += check_walks(kFreeJson, v, 4, 40, 12, lead);
  n += check_walks(R"(root ::= [^\n]* "\n" [日本語]+)", v, 4, 30, 13);
  n += check_walks(R"(root ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\/bfnrt] ){2,6} "\"" [ \n]{0,3} "}")", v, 6,
                   12,
                   14);  // counted runs with pieces longer than what is left
  const uint64_t before = counted_runs_seen;
  n += check_walks(R"(root ::= "\"" [a-z]{2,5} "\"" | [0-9]{1,3})", v, 6, 8,
                   15);  // narrow classes, many tokens
  EXPECT_GT(counted_runs_seen - before, 6u);
  EXPECT_GT(n, 100);
}

// The 32000-piece v1 vocabulary (the fixture tests/tokenizer builds from the npm vocabularies): masks along
// generations equal brute force there too.
TEST(Mask, V1VocabularyMatchesBruteForce) {
  const std::string path = std::string(MIXTRAL_TOK_FIXTURES) + "/v1/tokenizer.model";
  auto tok = Tokenizer::load(path);
  ASSERT_TRUE(tok.ok()) << tok.error().message << " (built by the tokenizer_fixtures target)";
  const Vocabulary v = vocabulary_of(**tok);
  ASSERT_EQ(v.bytes.size(), 32000u);
  GbnfOptions lead;
  lead.optional_leading_space = true;
  int n = 0;
  n += check_walks(kJsonish, v, 1, 12, 21, lead);
  n += check_walks(kFreeJson, v, 1, 10, 22);
  n += check_walks(R"(root ::= "\"" ( [^"\\\x00-\x1F] | "\\" ["\\/bfnrt] ){0,12} "\"")", v, 1, 8,
                   23);  // maxLength
  EXPECT_GE(n, 14);
}

// fill_mask from several threads at once on one masker (shared cache and class data) gives the masks
// one thread gives.
TEST(Mask, ConcurrentFillMask) {
  const Vocabulary v = small_vocab();
  auto g = parse_gbnf(kFreeJson);
  ASSERT_TRUE(g.ok());
  const std::string doc = "{\"ab\": [1, \"a\xC3\xA9\", {\"b\": null}], \"a\": -0.1}";
  std::vector<std::vector<uint32_t>> want;
  {
    TokenMasker solo(v, MaskerOptions{0});
    Matcher m(*g);
    for (char c : doc) {
      want.emplace_back();
      solo.fill_mask(m, want.back());
      ASSERT_TRUE(m.advance_bytes(std::string(1, c)));
    }
  }
  TokenMasker shared(v, MaskerOptions{8});
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 5; ++round) {
        Matcher m(*g);
        std::vector<uint32_t> mask;
        for (size_t i = 0; i < doc.size(); ++i) {
          shared.fill_mask(m, mask);
          bad[static_cast<size_t>(k)] += mask != want[i];
          m.advance_bytes(doc.substr(i, 1));
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad, std::vector<int>(4, 0));
}

TEST(Mask, ApplyMask) {
  std::vector<uint32_t> mask = {0x5u, 0x80000000u};  // tokens 0, 2 and 63
  std::vector<float> logits(64, 1.5f);
  apply_mask(mask, logits.data(), 64);
  for (int t = 0; t < 64; ++t) {
    if (t == 0 || t == 2 || t == 63) {
      EXPECT_EQ(logits[static_cast<size_t>(t)], 1.5f);
    } else {
      EXPECT_TRUE(std::isinf(logits[static_cast<size_t>(t)]) && logits[static_cast<size_t>(t)] < 0) << t;
    }
  }
}

}  // namespace
}  // namespace mixtral::grammar
