// Tokenizer tests against Debian's SentencePiece library (the reference implementation), run in-process on
// fixtures built from the npm vocabularies (tools/tokenizer/make_fixtures.py): encoding of random and
// adversarial strings, decoding and streaming decoding of random ids, special tokens, chat prompts, the
// Jinja renderer, and bad inputs.
#include "mixtral/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/jinja.h"
#include "tokenizer/model_spec.h"
#include "tokenizer/utf8.h"

#ifndef MIXTRAL_TOK_FIXTURES
#error "MIXTRAL_TOK_FIXTURES must name the directory make_fixtures.py writes"
#endif

namespace mixtral {
namespace {

const std::string kFixtures = MIXTRAL_TOK_FIXTURES;
const std::string kV1Model = kFixtures + "/v1/tokenizer.model";
const std::string kV3Model = kFixtures + "/v3/tokenizer.model.v3";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::unique_ptr<Tokenizer> load(const std::string& path, TokenizerBackend b = TokenizerBackend::kAuto) {
  auto t = Tokenizer::load(path, {b});
  if (!t.ok()) {
    ADD_FAILURE() << t.error().message << " (fixtures are built by tools/tokenizer/make_fixtures.py)";
    return nullptr;
  }
  return std::move(t).value();
}

std::unique_ptr<sentencepiece::SentencePieceProcessor> load_spm(const std::string& path) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = sp->Load(path);
  if (!st.ok()) {
    ADD_FAILURE() << path << ": " << st.ToString();
    return nullptr;
  }
  return sp;
}

std::vector<int32_t> spm_encode(const sentencepiece::SentencePieceProcessor& sp, std::string_view text) {
  std::vector<int> ids;
  EXPECT_TRUE(sp.Encode(text, &ids).ok());
  return {ids.begin(), ids.end()};
}

// Random strings built from fragments that stress every rule: whitespace runs, CRLF, tabs, scripts,
// emoji/ZWJ, combining marks, control characters and NUL, literal "▁", special-token look-alikes and
// invalid UTF-8 (stray continuation bytes, truncated sequences, overlong forms, surrogates, F5..FF).
std::string random_text(std::mt19937& rng, size_t max_parts) {
  static const std::vector<std::string> kFrags = {"the",
                                                  " ",
                                                  "  ",
                                                  "   ",
                                                  "    ",
                                                  "\n",
                                                  "\n\n",
                                                  "\r\n",
                                                  "\t",
                                                  "\t\t",
                                                  " \n",
                                                  "Hello",
                                                  ",",
                                                  ".",
                                                  "!",
                                                  "?",
                                                  "world",
                                                  "grabbed",
                                                  "1234567890",
                                                  "3.14",
                                                  "é",
                                                  "e\xCC\x81",
                                                  "Straße",
                                                  "Привет",
                                                  "мир",
                                                  "日本語",
                                                  "中文",
                                                  "한국어",
                                                  "العربية",
                                                  "עברית",
                                                  "हिन्दी",
                                                  "ไทย",
                                                  "🦙",
                                                  "👍",
                                                  "👩\u200d👩\u200d👧",
                                                  "🏳️\u200d🌈",
                                                  "🇫🇷",
                                                  "\u200b",
                                                  "\ufeff",
                                                  "\u00a0",
                                                  "\u3000",
                                                  "\xE2\x96\x81",
                                                  "\xE2\x96\x81\xE2\x96\x81",
                                                  "<s>",
                                                  "</s>",
                                                  "<unk>",
                                                  "[INST]",
                                                  "[/INST]",
                                                  "<0x41>",
                                                  "{\"a\": [1, 2]}",
                                                  "def f(x):",
                                                  "    return x",
                                                  "#include <x>",
                                                  std::string(1, '\0'),
                                                  "\x01",
                                                  "\x1b[0m",
                                                  "\x7f",
                                                  "\xC2\x80",
                                                  "\x80",
                                                  "\xBF",
                                                  "\xFF",
                                                  "\xFE",
                                                  "\xC0\xAF",
                                                  "\xE0\x80\xAF",
                                                  "\xED\xA0\x80",
                                                  "\xF4\x90\x80\x80",
                                                  "\xE2\x82",
                                                  "\xF0\x9F\x98",
                                                  "\xF0\x9F",
                                                  "\xC3",
                                                  "\xEF\xBF\xBD",
                                                  "\xF8\x88\x80\x80\x80",
                                                  "a",
                                                  "b",
                                                  "xyz",
                                                  "ing",
                                                  "tion",
                                                  "▁a"};
  std::uniform_int_distribution<size_t> n_parts(0, max_parts), pick(0, kFrags.size() - 1);
  std::uniform_int_distribution<int> coin(0, 9), byte(0, 255), cp(0x20, 0x2FFF);
  std::string s;
  for (size_t n = n_parts(rng), i = 0; i < n; ++i) {
    const int c = coin(rng);
    if (c < 7) {
      s += kFrags[pick(rng)];
    } else if (c < 8) {
      s += static_cast<char>(byte(rng));  // any byte at all
    } else {
      tok::append_utf8(s, static_cast<uint32_t>(cp(rng)));
    }
  }
  return s;
}

std::string describe(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    char buf[8];
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

// Encodes n random strings with ours and with the library; returns the number that differ.
int compare_encode(const Tokenizer& tok, const sentencepiece::SentencePieceProcessor& sp, int n,
                   uint32_t seed, size_t max_parts) {
  std::mt19937 rng(seed);
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const std::string s = random_text(rng, max_parts);
    auto ours = tok.encode(s, false, false);
    EXPECT_TRUE(ours.ok());
    const auto ref = spm_encode(sp, s);
    if (!ours.ok() || *ours != ref) {
      if (++bad <= 5) ADD_FAILURE() << "encode mismatch for \"" << describe(s) << "\"";
    }
  }
  return bad;
}

TEST(Tokenizer, V1BuiltinEncoderMatchesSentencePiece) {
  auto tok = load(kV1Model);
  auto sp = load_spm(kV1Model);
  ASSERT_TRUE(tok && sp);
  EXPECT_FALSE(tok->uses_sentencepiece_library());
  EXPECT_EQ(tok->n_vocab(), 32000);
  EXPECT_EQ(compare_encode(*tok, *sp, 20000, 1, 12), 0);
  EXPECT_EQ(compare_encode(*tok, *sp, 300, 2, 2000), 0);  // long inputs
  // Fixed strings the references agree on (SentencePiece and npm mistral-tokenizer-js).
  EXPECT_EQ(*tok->encode("Hello world!", true), (std::vector<int32_t>{1, 22557, 1526, 28808}));
  EXPECT_EQ(*tok->encode("           grabbed", true), (std::vector<int32_t>{1, 17422, 13300}));
  EXPECT_EQ(*tok->encode("\n", false), (std::vector<int32_t>{28705, 13}));
  EXPECT_EQ(*tok->encode("🦙", false), (std::vector<int32_t>{28705, 243, 162, 169, 156}));
  EXPECT_EQ(*tok->encode("", true), (std::vector<int32_t>{1}));
  EXPECT_TRUE(tok->encode("", false)->empty());
}

TEST(Tokenizer, V3BuiltinEncoderMatchesSentencePiece) {
  auto tok = load(kV3Model);
  auto sp = load_spm(kV3Model);
  ASSERT_TRUE(tok && sp);
  EXPECT_EQ(tok->n_vocab(), 32768);
  EXPECT_EQ(compare_encode(*tok, *sp, 10000, 3, 12), 0);
  // v3 ids of normal pieces are v1's shifted by the 768 control tokens.
  EXPECT_EQ(*tok->encode("Hello world", true), (std::vector<int32_t>{1, 23325, 2294}));
}

TEST(Tokenizer, GgufAndTokenizerJsonVocabulariesMatchSentencePiece) {
  auto sp1 = load_spm(kV1Model);
  auto sp3 = load_spm(kV3Model);
  ASSERT_TRUE(sp1 && sp3);
  auto g1 = load(kFixtures + "/v1.gguf");
  auto g3 = load(kFixtures + "/v3.gguf");
  auto hf = load(kFixtures + "/v1-hf");  // tokenizer.json + tokenizer_config.json, no tokenizer.model
  ASSERT_TRUE(g1 && g3 && hf);
  EXPECT_EQ(compare_encode(*g1, *sp1, 5000, 4, 12), 0);
  EXPECT_EQ(compare_encode(*g3, *sp3, 5000, 5, 12), 0);
  EXPECT_EQ(compare_encode(*hf, *sp1, 5000, 6, 12), 0);
  EXPECT_FALSE(g1->chat_template().empty());
  EXPECT_FALSE(hf->chat_template().empty());
}

TEST(Tokenizer, SentencePieceBackendBuiltFromGgufVocabulary) {
  // The library backend loads a ModelProto we serialize from GGUF pieces/scores/types.
  auto lib = load(kFixtures + "/v1.gguf", TokenizerBackend::kSentencePiece);
  auto sp = load_spm(kV1Model);
  ASSERT_TRUE(lib && sp);
  EXPECT_TRUE(lib->uses_sentencepiece_library());
  EXPECT_EQ(compare_encode(*lib, *sp, 2000, 7, 12), 0);
}

// The vocabulary `mixtral make-test-model` writes into its GGUFs: <unk>, <s>, </s>, bytes, then "▁a".."z"...
TEST(Tokenizer, SyntheticTestModelVocabulary) {
  Tokenizer::Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.pieces.push_back(buf);
    v.types.push_back(TokenType::kByte);
  }
  for (int k = 0; v.pieces.size() < 320; ++k) {
    int x = k / 2 + 1;
    std::string w;
    while (x > 0) {
      --x;
      w.insert(w.begin(), static_cast<char>('a' + x % 26));
      x /= 26;
    }
    v.pieces.push_back((k % 2 == 0 ? "\xE2\x96\x81" : "") + w);
    v.types.push_back(TokenType::kNormal);
  }
  for (size_t i = 0; i < v.pieces.size(); ++i)
    v.scores.push_back(i < 259 ? 0.0f : -static_cast<float>(i - 259));
  // Written to a GGUF the way make-test-model writes it, then loaded like a model file.
  GgufWriter w;
  std::vector<int32_t> types;
  for (auto t : v.types) types.push_back(static_cast<int32_t>(t));
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", v.pieces);
  w.set_f32_array("tokenizer.ggml.scores", v.scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  const std::string path = testing::TempDir() + "synthetic_vocab.gguf";
  ASSERT_TRUE(w.write(path).ok());
  auto tok = load(path);
  auto lib = load(path, TokenizerBackend::kSentencePiece);
  ASSERT_TRUE(tok && lib);
  std::mt19937 rng(8);
  for (int i = 0; i < 3000; ++i) {
    const std::string s = random_text(rng, 10);
    ASSERT_EQ(*tok->encode(s, true), *lib->encode(s, true)) << describe(s);
  }
  EXPECT_EQ(*tok->encode("ab a", false), (std::vector<int32_t>{tok->piece_to_id("\xE2\x96\x81"
                                                                                "ab"),
                                                               tok->piece_to_id("\xE2\x96\x81"
                                                                                "a")}));
  EXPECT_EQ(*tok->decode(*tok->encode("ab a z!", true)), "ab a z!");
}

// Random small vocabularies exercise every rule against the library, which loads the very same ModelProto:
// ties between equal scores, user-defined pieces (matched whole), unused pieces (split back), control
// pieces, pieces with "▁" inside (no cutting at spaces), models with and without byte fallback (runs of
// <unk> collapse), without the dummy prefix, and with extra-whitespace removal; encoding and decoding.
TEST(Tokenizer, RandomVocabulariesMatchSentencePiece) {
  static const std::vector<std::string> kAlphabet = {
      "a", "b", "c", "\xE2\x96\x81", "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\xA6\x99", "x"};
  std::mt19937 rng(12);
  int bad_encode = 0, bad_decode = 0;
  for (int round = 0; round < 240; ++round) {
    tok::ModelSpec spec;
    spec.source = "random";
    spec.pieces = {"<unk>", "<s>", "</s>"};
    spec.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
    spec.unk_id = 0;
    spec.bos_id = 1;
    spec.eos_id = 2;
    spec.byte_fallback = round % 2 == 0;
    spec.add_dummy_prefix = round % 5 != 1;
    spec.remove_extra_whitespaces = round % 7 == 3;
    if (spec.byte_fallback)
      for (int b = 0; b < 256; ++b) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        spec.pieces.push_back(buf);
        spec.types.push_back(TokenType::kByte);
      }
    std::set<std::string> seen(spec.pieces.begin(), spec.pieces.end());
    std::uniform_int_distribution<size_t> letter(0, kAlphabet.size() - 1);
    const size_t n_pieces = spec.pieces.size() + 20 + rng() % 200;
    for (int tries = 0; spec.pieces.size() < n_pieces && tries < 10000; ++tries) {
      std::string p;
      for (size_t k = 1 + rng() % 4; k > 0; --k) p += kAlphabet[letter(rng)];
      if (round % 3 == 0 && p.find("\xE2\x96\x81", 1) != std::string::npos)
        continue;  // keep space cutting on
      if (!seen.insert(p).second) continue;
      spec.pieces.push_back(p);
      const unsigned r = rng() % 100;
      // (A one-character control piece makes the library fail with "all normalized characters are not
      // consumed" on text holding that character, so control pieces here are longer.)
      const bool one_char = tok::valid_char_len(p) == p.size();
      spec.types.push_back(r < 4                 ? TokenType::kUserDefined
                           : r < 10              ? TokenType::kUnused
                           : r < 12 && !one_char ? TokenType::kControl
                                                 : TokenType::kNormal);
    }
    for (size_t i = 0; i < spec.pieces.size(); ++i)
      spec.scores.push_back(spec.types[i] == TokenType::kNormal ? -static_cast<float>(rng() % 12) : 0.0f);
    const std::string proto = tok::serialize_model_proto(spec);
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.LoadFromSerializedProto(proto).ok());
    auto ours = Tokenizer::from_sentencepiece(proto, "random");
    ASSERT_TRUE(ours.ok()) << ours.error().message;
    ASSERT_FALSE((*ours)->uses_sentencepiece_library());
    for (int i = 0; i < 250; ++i) {
      std::string s;
      for (size_t k = rng() % 16; k > 0; --k) {
        const unsigned r = rng() % 10;
        s += r < 6   ? kAlphabet[letter(rng)]
             : r < 8 ? std::string(rng() % 2 ? " " : "  ")
             : r < 9 ? std::string("z")
                     : std::string(1, static_cast<char>(rng()));
      }
      auto ids = (*ours)->encode(s, false);
      ASSERT_TRUE(ids.ok()) << ids.error().message;
      if (*ids != spm_encode(sp, s) && ++bad_encode <= 5)
        ADD_FAILURE() << "round " << round << " encode: \"" << describe(s) << "\"";
      // Decoding random ids (every piece type) as the library does.
      std::vector<int> rnd;
      for (size_t k = rng() % 10; k > 0; --k) rnd.push_back(static_cast<int>(rng() % spec.pieces.size()));
      std::string ref;
      ASSERT_TRUE(sp.Decode(rnd, &ref).ok());
      auto text = (*ours)->decode(std::vector<int32_t>(rnd.begin(), rnd.end()));
      ASSERT_TRUE(text.ok());
      if (*text != ref && ++bad_decode <= 5)
        ADD_FAILURE() << "round " << round << " decode: \"" << describe(*text) << "\" vs \"" << describe(ref)
                      << "\"";
    }
  }
  EXPECT_EQ(bad_encode, 0);
  EXPECT_EQ(bad_decode, 0);
}

// Random ids drawn to hit byte runs (valid and broken UTF-8), control pieces, <unk> and "▁" pieces.
std::vector<int32_t> random_ids(std::mt19937& rng, const Tokenizer& tok, size_t n) {
  std::uniform_int_distribution<int> kind(0, 9), any(0, tok.n_vocab() - 1), len(0, static_cast<int>(n));
  const int first_byte = tok.piece_to_id("<0x00>");
  static const int kUtf8[] = {0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0xA6, 0x99, 0xC3,
                              0xA9, 0x80, 0xFF, 0xED, 0xA0, 0x41, 0x20};
  std::uniform_int_distribution<size_t> utf(0, std::size(kUtf8) - 1);
  std::vector<int32_t> ids;
  for (int i = 0, m = len(rng); i < m; ++i) {
    const int k = kind(rng);
    if (k < 4) {
      ids.push_back(first_byte + kUtf8[utf(rng)]);
    } else if (k < 5) {
      ids.push_back(std::uniform_int_distribution<int>(0, 2)(rng));  // <unk>, <s>, </s>
    } else if (k < 6) {
      ids.push_back(tok.piece_to_id("\xE2\x96\x81"));
    } else {
      ids.push_back(any(rng));
    }
  }
  return ids;
}

void check_decoding(const std::string& model, uint32_t seed) {
  auto tok = load(model);
  auto sp = load_spm(model);
  ASSERT_TRUE(tok && sp);
  std::mt19937 rng(seed);
  int bad = 0;
  for (int i = 0; i < 5000; ++i) {
    const auto ids = random_ids(rng, *tok, 24);
    std::string ref;
    ASSERT_TRUE(sp->Decode(std::vector<int>(ids.begin(), ids.end()), &ref).ok());
    auto ours = tok->decode(ids);
    ASSERT_TRUE(ours.ok());
    // Streaming: pieces concatenate to the whole-sequence decoding and are each valid UTF-8.
    StreamingDecoder d(*tok);
    std::string streamed;
    for (int32_t id : ids) {
      auto part = d.push(id);
      ASSERT_TRUE(part.ok());
      EXPECT_TRUE(tok::is_valid_utf8(*part)) << describe(*part);
      streamed += *part;
    }
    const std::string tail = d.finish();
    EXPECT_TRUE(tok::is_valid_utf8(tail));
    streamed += tail;
    if (*ours != ref || streamed != ref) {
      if (++bad <= 5)
        ADD_FAILURE() << "decode mismatch: ours \"" << describe(*ours) << "\" streamed \""
                      << describe(streamed) << "\" SentencePiece \"" << describe(ref) << "\"";
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(Tokenizer, DecodeAndStreamingMatchSentencePiece) {
  check_decoding(kV1Model, 9);
  check_decoding(kV3Model, 10);
}

TEST(Tokenizer, DecodeRoundTripsAndDummyPrefix) {
  auto tok = load(kV1Model);
  ASSERT_TRUE(tok);
  for (const char* s : {"Hello world", "  two leading", "tab\there", "日本語 🦙 text\r\n", ""})
    EXPECT_EQ(*tok->decode(*tok->encode(s, true)), s);
  // Only the sequence start loses the dummy-prefix space; a continuation keeps it.
  const int32_t hello = tok->piece_to_id("\xE2\x96\x81Hello");
  EXPECT_EQ(*tok->decode({hello, hello}), "Hello Hello");
  StreamingDecoder cont(*tok, false);
  EXPECT_EQ(*cont.push(hello), " Hello");
  // Partial UTF-8 from byte pieces is held until the character completes.
  StreamingDecoder d(*tok);
  const int32_t b0 = tok->piece_to_id("<0x00>");
  EXPECT_EQ(*d.push(b0 + 0xF0), "");
  EXPECT_EQ(*d.push(b0 + 0x9F), "");
  EXPECT_EQ(*d.push(b0 + 0xA6), "");
  EXPECT_EQ(*d.push(b0 + 0x99), "🦙");
  EXPECT_EQ(*d.push(b0 + 0xE2), "");
  EXPECT_EQ(d.finish(), "\xEF\xBF\xBD");  // an unfinished character becomes U+FFFD
  // Ids out of range are errors, not crashes.
  EXPECT_FALSE(tok->decode({5, 32000}).ok());
  EXPECT_FALSE(tok->decode({-1}).ok());
  EXPECT_NE(tok->decode({32000}).error().message.find("32000"), std::string::npos);
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeSentencePiece) {
  auto tok = load(kV1Model);
  auto sp = load_spm(kV1Model);
  ASSERT_TRUE(tok && sp);
  for (const char* s : {"a\x80"
                        "b",
                        "\xFF", "\xE2\x82", "x\xF0\x9F\x98y", "\xC0\xAF", "\xED\xA0\x80"}) {
    EXPECT_EQ(*tok->encode(s, false), spm_encode(*sp, s)) << describe(s);
    // Each invalid byte became U+FFFD, a piece of its own in this vocabulary.
    EXPECT_NE(tok->decode(*tok->encode(s, false))->find("\xEF\xBF\xBD"), std::string::npos);
  }
}

TEST(Tokenizer, SpecialTokensOnlyWhenAsked) {
  auto v1 = load(kV1Model);
  auto v3 = load(kV3Model);
  ASSERT_TRUE(v1 && v3);
  const int32_t inst = v3->piece_to_id("[INST]"), end_inst = v3->piece_to_id("[/INST]");
  EXPECT_EQ(inst, 3);
  EXPECT_EQ(end_inst, 4);
  EXPECT_EQ(v3->type(inst), TokenType::kControl);
  // Plain text never yields control tokens.
  for (const char* s : {"[INST] hi [/INST]", "<s>", "</s>", "[TOOL_CALLS][AVAILABLE_TOOLS]"}) {
    const auto ids3 = *v3->encode(s, false), ids1 = *v1->encode(s, false);
    for (int32_t id : ids3) EXPECT_NE(v3->type(id), TokenType::kControl) << s;
    for (int32_t id : ids1) EXPECT_NE(v1->type(id), TokenType::kControl) << s;
  }
  // With parse_special they are matched, and each text fragment is encoded with its dummy prefix.
  const auto ids = *v3->encode("[INST]Hello[/INST]", true, true);
  auto hello = *v3->encode("Hello", false);
  std::vector<int32_t> want = {1, inst};
  want.insert(want.end(), hello.begin(), hello.end());
  want.push_back(end_inst);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(*v1->encode("<s>a</s>", false, true), (std::vector<int32_t>{1,
                                                                        v1->piece_to_id("\xE2\x96\x81"
                                                                                        "a"),
                                                                        2}));
  EXPECT_EQ(*v1->encode("<unk>", false, true), (std::vector<int32_t>{0}));
  // Byte-piece spellings are not special.
  EXPECT_EQ(*v1->encode("<0x41>", false, true), *v1->encode("<0x41>", false, false));
}

// mistral-common's rules, spelled out with the reference library's encode().
std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(Tokenizer, MistralChatFormats) {
  auto v1 = load(kV1Model);
  auto v3 = load(kV3Model);
  auto sp1 = load_spm(kV1Model);
  auto sp3 = load_spm(kV3Model);
  ASSERT_TRUE(v1 && v3 && sp1 && sp3);
  EXPECT_EQ(v1->default_chat_format(), ChatFormat::kMistralV1);
  EXPECT_EQ(v3->default_chat_format(), ChatFormat::kMistralV3);
  const std::vector<ChatMessage> multi = {{"system", "Be brief."},
                                          {"user", "Bonjour, ça va ? 🦙"},
                                          {"assistant", "Oui, très bien."},
                                          {"user", "Et toi?"}};
  auto e1 = [&](const std::string& s) { return spm_encode(*sp1, s); };
  auto e3 = [&](const std::string& s) { return spm_encode(*sp3, s); };
  EXPECT_EQ(*v1->apply_chat({{"user", "Hi"}}, ChatFormat::kMistralV1),
            concat({{1}, e1("[INST] Hi [/INST]")}));
  EXPECT_EQ(*v1->apply_chat(multi, ChatFormat::kMistralV1),
            concat({{1},
                    e1("[INST] Be brief.\n\nBonjour, ça va ? 🦙 [/INST]"),
                    e1("Oui, très bien."),
                    {2},
                    e1("[INST] Et toi? [/INST]")}));
  EXPECT_EQ(*v3->apply_chat({{"user", "Hi"}}, ChatFormat::kMistralV3), concat({{1, 3}, e3("Hi"), {4}}));
  EXPECT_EQ(*v3->apply_chat(multi, ChatFormat::kMistralV3), concat({{1, 3},
                                                                    e3("Bonjour, ça va ? 🦙"),
                                                                    {4},
                                                                    e3("Oui, très bien."),
                                                                    {2, 3},
                                                                    e3("Be brief.\n\nEt toi?"),
                                                                    {4}}));
  // mistral-common's normaliser accepts what an alternation rule would refuse (tests/tokenizer/chat_test.cpp
  // checks each rule): consecutive user messages are merged, a system message may come later, a final
  // assistant message is continued without </s>.
  EXPECT_EQ(*v1->apply_chat({{"user", "a"}, {"user", "b"}}, ChatFormat::kMistralV1),
            concat({{1}, e1("[INST] a\n\nb [/INST]")}));
  EXPECT_EQ(*v1->apply_chat({{"user", "a"}, {"system", "b"}}, ChatFormat::kMistralV1),
            concat({{1}, e1("[INST] b\n\na [/INST]")}));
  EXPECT_EQ(*v1->apply_chat({{"user", "a"}, {"assistant", "b"}}, ChatFormat::kMistralV1),
            concat({{1}, e1("[INST] a [/INST]"), e1("b")}));
  // What its validator refuses: a clear error naming the message.
  auto bad = v1->apply_chat({{"assistant", "a"}}, ChatFormat::kMistralV1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("messages[0].role"), std::string::npos) << bad.error().message;
  bad = v1->apply_chat({{"user", "a"}, {"tool", "b"}}, ChatFormat::kMistralV1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("messages[1].role"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(v1->apply_chat({}, ChatFormat::kMistralV1).ok());
  EXPECT_FALSE(v1->apply_chat({{"tool", "a"}}, ChatFormat::kMistralV1).ok());
  EXPECT_FALSE(v1->apply_chat({{"user", "a"}}, ChatFormat::kMistralV3).ok());  // no [INST] control token
}

TEST(Tokenizer, JinjaMixtralTemplate) {
  auto gg = load(kFixtures + "/v1.gguf");
  ASSERT_TRUE(gg);
  const std::vector<ChatMessage> msgs = {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "How are you?"}};
  EXPECT_EQ(*gg->render_chat_template(msgs), "<s>[INST] Hi [/INST]Hello!</s>[INST] How are you? [/INST]");
  // Rendered text is tokenized with special tokens parsed: <s> and </s> become ids.
  const auto ids = *gg->apply_chat(msgs, ChatFormat::kJinja);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  EXPECT_EQ(*gg->apply_chat({{"user", "Hi"}}, ChatFormat::kJinja),
            *gg->apply_chat({{"user", "Hi"}}, ChatFormat::kMistralV1));
  auto bad = gg->apply_chat({{"assistant", "x"}}, ChatFormat::kJinja);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("must alternate"), std::string::npos) << bad.error().message;
}

std::string render(const std::string& tmpl, const std::vector<ChatMessage>& msgs, bool gen = true) {
  using tok::jinja::Value;
  auto t = tok::jinja::Template::parse(tmpl, "test");
  if (!t.ok()) return "PARSE ERROR: " + t.error().message;
  Value ctx = Value::new_dict(), list = Value::new_list();
  for (const auto& m : msgs) {
    Value d = Value::new_dict();
    d.set("role", Value::string(m.role));
    d.set("content", Value::string(m.content));
    list.list->push_back(d);
  }
  ctx.set("messages", list);
  ctx.set("bos_token", Value::string("<s>"));
  ctx.set("eos_token", Value::string("</s>"));
  ctx.set("add_generation_prompt", Value::boolean(gen));
  auto r = t->render(ctx);
  return r.ok() ? *r : "RENDER ERROR: " + r.error().message;
}

TEST(Jinja, Subset) {
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", " u1 "}, {"assistant", "a1"}, {"user", "u2"}};
  EXPECT_EQ(render("{% for x in messages %}{{ loop.index0 }}{{ loop.first }}{{ loop.last }},{% endfor %}", m),
            "0TrueFalse,1FalseFalse,2FalseFalse,3FalseTrue,");
  EXPECT_EQ(render("{{ messages|length }} {{ messages[1].content|trim }}|{{ 'a' ~ (1 + 2) }}", m), "4 u1|a3");
  EXPECT_EQ(render("{% if messages[0]['role'] == 'system' %}{% set s = messages[0].content %}{% set rest = "
                   "messages[1:] %}{% else %}{% set rest = messages %}{% endif %}{{ s }}{{ rest|length }}",
                   m),
            "S3");
  EXPECT_EQ(render("{% if 1 > 2 %}a{% elif 2 >= 2 and not false %}b{% else %}c{% endif %}", m), "b");
  EXPECT_EQ(render("{{ 7 % 3 }}{{ 7 // 2 }}{{ -7 // 2 }}{{ 'x' if none is none else 'y' }}", m), "13-4x");
  EXPECT_EQ(
      render("{% set ns = namespace(n=0) %}{% for x in messages if x.role == 'user' %}{% set ns.n = ns.n + 1 "
             "%}{% endfor %}{{ ns.n }}",
             m),
      "2");
  EXPECT_EQ(render("{{ 'ab' in 'cabd' }}{{ 3 in [1, 2] }}{{ x is defined }}{{ messages is defined }}", m),
            "TrueFalseFalseTrue");
  EXPECT_EQ(render("{{ bos_token }}{% if add_generation_prompt %}G{% endif %}", m, false), "<s>");
  // trim_blocks / lstrip_blocks and "-" whitespace control, as transformers renders.
  EXPECT_EQ(render("{% for x in messages %}\n  {{- x.role }}\n{% endfor %}", m),
            "system\nuser\nassistant\nuser\n");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}  c", m), "ab  c");
  EXPECT_EQ(render("  {% if true %}\nx\n  {% endif %}\ny", m), "x\ny");
  EXPECT_EQ(
      render("{# comment #}{{ \"q\\\"\" }}{{ [1,2,3][-1] }}{{ 'abc'[::-1] }}{{ 'A b'|lower|upper }}", m),
      "q\"3cbaA B");
  EXPECT_EQ(render("{{ raise_exception('no ' + 'way') }}", m),
            "RENDER ERROR: test: the chat template rejected the messages: no way");
  EXPECT_NE(render("{% for x in y %}", m).find("PARSE ERROR"), std::string::npos);
  EXPECT_NE(render("{{ 1 +* 2 }}", m).find("PARSE ERROR"), std::string::npos);
  EXPECT_NE(render("{% macro x() %}{% endmacro %}", m).find("unsupported tag"), std::string::npos);
  EXPECT_NE(render("{{ 1 / 0 }}", m).find("division by zero"), std::string::npos);
  // Work limits: rendering always finishes, deep nesting is refused, a self-referencing namespace is copied.
  EXPECT_NE(
      render("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", m).find("steps"),
      std::string::npos);
  EXPECT_NE(
      render(
          "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
          m)
          .find("longer than"),
      std::string::npos);
  EXPECT_NE(
      render("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}", m).find("nesting deeper"),
      std::string::npos);
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns.b.a }}", m), "1");
}

TEST(Tokenizer, BadInputsFailWithMessages) {
  const std::string good = read_file(kV1Model);
  ASSERT_GT(good.size(), 1000u);
  // Truncations at many lengths and corrupted bytes: an error or a valid model, never a crash.
  for (size_t cut : {size_t{0}, size_t{1}, size_t{2}, size_t{5}, size_t{17}, size_t{100}, good.size() / 3,
                     good.size() - 1}) {
    auto t = Tokenizer::from_sentencepiece(std::string_view(good).substr(0, cut), "cut.model");
    if (!t.ok()) {
      EXPECT_NE(t.error().message.find("cut.model"), std::string::npos) << t.error().message;
    }
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {
    std::string bad = good.substr(0, 4000);
    for (int k = 0; k < 8; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    auto t = Tokenizer::from_sentencepiece(bad, "flipped.model");
    if (t.ok()) (void)(*t)->encode("some text", true);
  }
  auto garbage = Tokenizer::from_sentencepiece("this is not a protobuf at all", "garbage.model");
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.error().message.find("garbage.model"), std::string::npos);
  // Length mismatches name the fields.
  Tokenizer::Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "a"};
  v.scores = {0, 0, 0};
  auto mismatch = Tokenizer::from_vocab(v, "vocab.gguf");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.error().message.find("scores has 3 entries"), std::string::npos)
      << mismatch.error().message;
  v.scores = {0, 0, 0, 0};
  v.types = {TokenType::kUnknown, TokenType::kControl};
  EXPECT_FALSE(Tokenizer::from_vocab(v, "vocab.gguf").ok());
  v.types.clear();
  v.bos_id = 9;
  EXPECT_FALSE(Tokenizer::from_vocab(v, "vocab.gguf").ok());
  // A GGUF whose arrays disagree names the file and the key.
  GgufWriter w;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
  w.set_f32_array("tokenizer.ggml.scores", {0, 0, 0});
  const std::string path = testing::TempDir() + "mismatch.gguf";
  ASSERT_TRUE(w.write(path).ok());
  auto g = Tokenizer::load(path);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.error().message.find(path), std::string::npos);
  EXPECT_NE(g.error().message.find("tokenizer.ggml.scores"), std::string::npos) << g.error().message;
  EXPECT_EQ(Tokenizer::load("/nonexistent/tokenizer.model").error().kind, ErrorKind::kIo);
}

}  // namespace
}  // namespace mixtral
