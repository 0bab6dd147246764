// Token-mask time per generated token (Google Benchmark) while "generating" valid JSON for three hand-written
// schema-like GBNF grammars (an object with string/integer/enum/array/number fields, a recursive tree, free
// JSON), one thread, over a 32000-piece vocabulary: the v1 tokenizer when given by path, else a synthetic
// SentencePiece-like one. Generation is greedy longest-match of pre-made documents under the mask (every
// token is one the mask allows). Counters: median and p99 of fill_mask per token in µs, tokens per document
// run, cache hit rate; cases: cache on (warm across rounds of new documents, hits and misses as in serving),
// no cache (every mask computed; each timed as the fastest of 3 runs).
// Also the grammar compile time.
//
//   mixtral_bench_grammar [--benchmark_... flags] [TOKENIZER]   (e.g. tokenizer-fixtures/v1/tokenizer.model)
//   mixtral_bench_grammar --print-gbnf=N                         (prints case N's grammar)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "grammar/grammar.h"
#include "grammar/json_schema.h"
#include "mixtral/tokenizer.h"

namespace {

using namespace mixtral;
using namespace mixtral::grammar;

const char* kObjectGbnf =
    R"(root ::= "{" ws "\"name\"" ws ":" ws string ws "," ws "\"age\"" ws ":" ws integer ws "," ws "\"role\"" ws ":" ws role ws "," ws "\"tags\"" ws ":" ws tags ws "," ws "\"score\"" ws ":" ws number ws "}"
role ::= "\"admin\"" | "\"user\"" | "\"guest\""
tags ::= "[" ws ( string ws ( "," ws string ws )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
number ::= integer ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws ::= [ \t\n]{0,8}
)";

const char* kTreeGbnf = R"(root ::= node
node ::= "{" ws "\"value\"" ws ":" ws number ws "," ws "\"label\"" ws ":" ws string ws "," ws "\"children\"" ws ":" ws "[" ws ( node ws ( "," ws node ws )* )? "]" ws "}"
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )?
ws ::= [ \t\n]{0,8}
)";

const char* kFreeJsonGbnf = R"(root ::= value
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws ::= [ \t\n]{0,8}
)";

const char* kWords[] = {"alpha",
                        "Beta",
                        "the quick brown fox",
                        "café",
                        "naïve",
                        "日本語",
                        "données",
                        "x",
                        "hello world",
                        "line\\nbreak",
                        "quote \\\" inside",
                        "tab\\tsep",
                        "München",
                        "emoji 🎉",
                        "résumé",
                        "São Paulo",
                        "a_b-c",
                        "CamelCase",
                        "snake_case_name",
                        "42 is the answer"};

std::string word(std::mt19937& rng) {
  return kWords[rng() % std::size(kWords)];
}
std::string num(std::mt19937& rng) {
  std::string s = std::to_string(static_cast<int>(rng() % 100000) - 5000);
  if (rng() % 2) s += "." + std::to_string(rng() % 1000);
  return s;
}

std::string object_doc(std::mt19937& rng) {
  static const char* roles[] = {"admin", "user", "guest"};
  std::string s = "{\"name\": \"" + word(rng) + " " + word(rng) +
                  "\", \"age\": " + std::to_string(rng() % 100) + ", \"role\": \"" + roles[rng() % 3] +
                  "\", \"tags\": [";
  const int n = static_cast<int>(rng() % 5);
  for (int i = 0; i < n; ++i) s += (i ? ", \"" : "\"") + word(rng) + "\"";
  return s + "], \"score\": " + num(rng) + "}";
}

// The object schema through json_schema_to_gbnf (properties come out in sorted order).
const char* kObjectSchema =
    R"({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
  "role": {"enum": ["admin", "user", "guest"]}, "tags": {"type": "array", "items": {"type": "string"}},
  "score": {"type": "number"}}, "required": ["name", "age", "role", "tags", "score"], "additionalProperties": false})";

std::string schema_doc(std::mt19937& rng) {
  static const char* roles[] = {"admin", "user", "guest"};
  std::string s = "{\"age\": " + std::to_string(rng() % 100) + ", \"name\": \"" + word(rng) + " " +
                  word(rng) + "\", \"role\": \"" + roles[rng() % 3] + "\", \"score\": " + num(rng) +
                  ", \"tags\": [";
  const int n = static_cast<int>(rng() % 5);
  for (int i = 0; i < n; ++i) s += (i ? ", \"" : "\"") + word(rng) + "\"";
  return s + "]}";
}

std::string tree_doc(std::mt19937& rng, int depth) {
  std::string s = "{\"value\": " + num(rng) + ", \"label\": \"" + word(rng) + "\", \"children\": [";
  const int n = depth >= 3 ? 0 : static_cast<int>(rng() % 3);
  for (int i = 0; i < n; ++i) s += (i ? ", " : "") + tree_doc(rng, depth + 1);
  return s + "]}";
}

std::string json_value(std::mt19937& rng, int depth) {
  switch (depth >= 3 ? rng() % 3 : rng() % 5) {
    case 0:
      return "\"" + word(rng) + "\"";
    case 1:
      return num(rng);
    case 2:
      return rng() % 2 ? "true" : "null";
    case 3: {
      std::string s = "[";
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) s += (i ? ", " : "") + json_value(rng, depth + 1);
      return s + "]";
    }
    default: {
      std::string s = "{";
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) s += (i ? ", \"" : "\"") + word(rng) + "\": " + json_value(rng, depth + 1);
      return s + "}";
    }
  }
}

// A SentencePiece-like 32000-piece vocabulary: control and byte pieces, then words, fragments and
// punctuation runs with "▁" spaces.
Vocabulary synthetic_vocab() {
  Vocabulary v;
  auto add = [&](std::string b, bool special) {
    v.bytes.push_back(std::move(b));
    v.special.push_back(special);
  };
  add("", true), add("", true), add("", true);
  v.eos = 2;
  for (int b = 0; b < 256; ++b) add(std::string(1, static_cast<char>(b)), false);
  std::mt19937 rng(7);
  const std::string letters = "etaoinshrdlcumwfgypbvkjxqz";
  const char* punct[] = {"\"", "{", "}", "[", "]", ":", ",", "\\", ".", "-", "_", "(", ")", "'", "\n", "\t"};
  std::unordered_map<std::string, int> seen;
  while (v.bytes.size() < 32000) {
    std::string s;
    const auto kind = rng() % 10;
    if (kind < 6) {
      const int len = 1 + static_cast<int>(rng() % 8);
      for (int i = 0; i < len; ++i) s += letters[std::min<size_t>(rng() % 26, rng() % 26)];
      if (rng() % 2) s = " " + s;
      if (rng() % 8 == 0) s[s.size() - 1] = static_cast<char>(std::toupper(s.back()));
    } else if (kind < 8) {
      const int len = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < len; ++i) s += punct[rng() % std::size(punct)];
      if (rng() % 3 == 0) s = " " + s;
    } else if (kind < 9) {
      s = std::to_string(rng() % 10);
    } else {
      static const char* mb[] = {"é", "ü", "ñ", "日", "本", "語", "д", "ж", "€", "🎉", "ï", "ã"};
      s = mb[rng() % std::size(mb)];
      if (rng() % 2) s += letters[rng() % 26];
    }
    if (seen.emplace(s, 1).second) add(s, false);
  }
  return v;
}

struct Setup {
  Vocabulary vocab;
  std::string source;
  std::unordered_map<std::string, std::vector<int32_t>> by_bytes;
  size_t max_len = 0;
};

Setup* g_setup = nullptr;

// Greedy longest-match tokenization of doc under the grammar; fills per-token mask times (ns).
size_t generate(const TokenMasker& tm, const GrammarPtr& g, const std::string& doc, bool repeats,
                std::vector<double>& ns) {
  Matcher m(g);
  std::vector<uint32_t> mask;
  size_t at = 0, tokens = 0;
  while (true) {
    // Without a cache a mask is a pure function of the state: the fastest of 3 runs drops the times other
    // processes took the core (the build machines are shared). With the cache, one run (a repeat would hit).
    double best = 1e30;
    for (int rep = 0; rep < (repeats ? 3 : 1); ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      tm.fill_mask(m, mask);
      best = std::min(
          best, std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    }
    ns.push_back(best);
    ++tokens;
    if (at == doc.size()) {
      if (!((mask[static_cast<size_t>(tm.vocabulary().eos) / 32] >> (tm.vocabulary().eos % 32)) & 1u)) {
        std::fprintf(stderr, "grammar_bench: EOS not allowed at the end of a document\n");
        std::abort();
      }
      return tokens;
    }
    int32_t pick = -1;
    for (size_t len = std::min(g_setup->max_len, doc.size() - at); len > 0 && pick < 0; --len) {
      auto it = g_setup->by_bytes.find(doc.substr(at, len));
      if (it == g_setup->by_bytes.end()) continue;
      for (int32_t t : it->second) {
        if ((mask[static_cast<size_t>(t) / 32] >> (t % 32)) & 1u) {
          pick = t;
          break;
        }
      }
    }
    if (pick < 0 || !tm.accept(m, pick)) {
      std::fprintf(stderr, "grammar_bench: no allowed token at byte %zu of %s\n", at, doc.c_str());
      std::abort();
    }
    at += tm.vocabulary().bytes[static_cast<size_t>(pick)].size();
  }
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Bounded repetitions (grammars 4..7): schemas through json_schema_to_gbnf.
const char* kBoundedSchemas[] = {
    R"({"type": "string", "maxLength": 100})",
    R"({"type": "string", "minLength": 5, "maxLength": 40})",
    R"({"type": "string", "pattern": "^[a-z]{3,30}$"})",
    R"({"type": "array", "items": {"type": "string"}, "maxItems": 20})",
};

// Text of whole words, cut to at most n code points (at least lo: padded with "x").
std::string text_of(std::mt19937& rng, size_t lo, size_t n) {
  std::string s;
  size_t cps = 0;
  auto count = [](const std::string& w) {
    size_t c = 0;
    for (char ch : w) c += (static_cast<uint8_t>(ch) & 0xC0) != 0x80;
    return c;
  };
  const size_t want = lo + rng() % (n - lo + 1);
  while (true) {
    std::string w = word(rng);
    if (w.find('\\') != std::string::npos) continue;  // escapes count as one character
    w = (s.empty() ? "" : " ") + w;
    if (cps + count(w) > want) break;
    s += w, cps += count(w);
  }
  while (cps < lo) s += 'x', ++cps;
  return s;
}

std::string bounded_doc(int which, std::mt19937& rng) {
  switch (which) {
    case 4:
      return "\"" + text_of(rng, 0, 100) + "\"";
    case 5:
      return "\"" + text_of(rng, 5, 40) + "\"";
    case 6: {
      std::string s = "\"";
      const size_t n = 3 + rng() % 28;
      for (size_t i = 0; i < n; ++i) s += static_cast<char>('a' + rng() % 26);
      return s + "\"";
    }
    default: {
      std::string s = "[";
      const size_t n = rng() % 21;
      for (size_t i = 0; i < n; ++i) s += (i ? ", \"" : "\"") + word(rng) + "\"";
      return s + "]";
    }
  }
}

std::vector<std::string> docs_for(int which, uint32_t round) {
  std::mt19937 rng(1234 + static_cast<uint32_t>(which) + 100 * round);
  std::vector<std::string> docs;
  for (int i = 0; i < 24; ++i) {
    if (which >= 4) docs.push_back(bounded_doc(which, rng));
    if (which == 0) docs.push_back(object_doc(rng));
    if (which == 1) docs.push_back(tree_doc(rng, 0));
    if (which == 2) docs.push_back(json_value(rng, 0));
    if (which == 3) docs.push_back(schema_doc(rng));
  }
  return docs;
}

std::string gbnf_for(int which) {
  if (which >= 3) {
    auto g =
        json_schema_to_gbnf(nlohmann::json::parse(which == 3 ? kObjectSchema : kBoundedSchemas[which - 4]));
    if (!g.ok()) {
      std::fprintf(stderr, "grammar_bench: %s\n", g.error().message.c_str());
      std::abort();
    }
    return *g;
  }
  return which == 0 ? kObjectGbnf : which == 1 ? kTreeGbnf : kFreeJsonGbnf;
}

// state.range(0): grammar (0 object, 1 tree, 2 free JSON, 3 the object schema via json_schema_to_gbnf;
// bounded repetitions via json_schema_to_gbnf: 4 string maxLength 100, 5 string minLength 5 maxLength 40, 6
// pattern
// ^[a-z]{3,30}$, 7 array of strings maxItems 20);
// range(1): 1 cache (warm across runs), 0 none.
void BM_MaskPerToken(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const bool cached = state.range(1) != 0;
  auto g = parse_gbnf(gbnf_for(which));
  if (!g.ok()) {
    state.SkipWithError(g.error().message.c_str());
    return;
  }
  TokenMasker tm(g_setup->vocab, MaskerOptions{cached ? size_t{1024} : size_t{0}});
  std::vector<double> ns;
  size_t tokens = 0;
  uint32_t round = 0;
  for (auto _ : state) {
    // New documents every round; the cache stays warm across rounds, as in a server reusing a schema.
    state.PauseTiming();
    const auto docs = docs_for(which, round++);
    state.ResumeTiming();
    for (const auto& d : docs) tokens += generate(tm, *g, d, !cached, ns);
  }
  const auto st = tm.stats();
  state.counters["median_us"] = percentile(ns, 0.5) / 1000.0;
  state.counters["p99_us"] = percentile(ns, 0.99) / 1000.0;
  state.counters["max_us"] = percentile(ns, 1.0) / 1000.0;
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["hit_rate"] =
      static_cast<double>(st.hits) / static_cast<double>(std::max<uint64_t>(1, st.hits + st.misses));
  state.counters["class_run_rate"] =
      static_cast<double>(st.class_runs) / static_cast<double>(std::max<uint64_t>(1, st.misses));
  state.SetItemsProcessed(static_cast<int64_t>(tokens));
}
BENCHMARK(BM_MaskPerToken)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {1, 0}})
    ->ArgNames({"grammar", "cache"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

void BM_Compile(benchmark::State& state) {
  const std::string text = gbnf_for(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    auto g = parse_gbnf(text);
    benchmark::DoNotOptimize(g);
  }
}
BENCHMARK(BM_Compile)->DenseRange(0, 7)->ArgName("grammar")->Unit(benchmark::kMicrosecond);

void BM_BuildMasker(benchmark::State& state) {
  for (auto _ : state) {
    TokenMasker tm(g_setup->vocab);
    benchmark::DoNotOptimize(tm.n_vocab());
  }
}
BENCHMARK(BM_BuildMasker)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (argc > 1 && std::string(argv[1]).rfind("--print-gbnf=", 0) == 0) {  // the grammar of one case
    std::fputs(gbnf_for(std::atoi(argv[1] + 13)).c_str(), stdout);
    return 0;
  }
  Setup setup;
  if (argc > 1) {
    auto tok = Tokenizer::load(argv[1]);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", tok.error().message.c_str());
      return 1;
    }
    setup.vocab = vocabulary_of(**tok);
    setup.source = argv[1];
  } else {
    setup.vocab = synthetic_vocab();
    setup.source = "synthetic";
  }
  for (size_t t = 0; t < setup.vocab.bytes.size(); ++t) {
    if (setup.vocab.special[t] || setup.vocab.bytes[t].empty()) continue;
    setup.by_bytes[setup.vocab.bytes[t]].push_back(static_cast<int32_t>(t));
    setup.max_len = std::max(setup.max_len, setup.vocab.bytes[t].size());
  }
  std::fprintf(stderr, "grammar_bench: vocabulary %s, %zu tokens\n", setup.source.c_str(),
               setup.vocab.bytes.size());
  g_setup = &setup;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
