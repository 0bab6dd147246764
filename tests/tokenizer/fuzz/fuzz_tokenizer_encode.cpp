// libFuzzer target, differential: arbitrary bytes encoded by the built-in BPE and by Debian's SentencePiece
// library over the same small vocabulary (user-defined, unused and control pieces, byte fallback) must give
// the same ids; the ids must decode, and stream-decode, to the same text.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "../../fuzz/fuzz_check.h"
#include "mixtral/tokenizer.h"

namespace mixtral {
namespace {

Tokenizer::Vocab make_vocab() {
  Tokenizer::Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "[INST]"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.pieces.push_back(buf);
    v.types.push_back(TokenType::kByte);
  }
  const char* normal[] = {"\xE2\x96\x81",
                          "\xE2\x96\x81\xE2\x96\x81",
                          "a",
                          "b",
                          "ab",
                          "\xE2\x96\x81"
                          "a",
                          "\xE2\x96\x81"
                          "ab",
                          "ba",
                          "aba",
                          "\xC3\xA9",
                          "\xE2\x96\x81\xC3\xA9",
                          "\n",
                          "<",
                          "s",
                          ">",
                          "<s",
                          "\xEF\xBF\xBD",
                          "abab"};
  for (const char* p : normal) {
    v.pieces.push_back(p);
    v.types.push_back(TokenType::kNormal);
  }
  v.pieces.push_back("bb");  // unused: split back into b, b
  v.types.push_back(TokenType::kUnused);
  v.pieces.push_back("@@");  // user-defined: always one piece
  v.types.push_back(TokenType::kUserDefined);
  for (size_t i = 0; i < v.pieces.size(); ++i)
    v.scores.push_back(v.types[i] == TokenType::kNormal || v.types[i] == TokenType::kUnused
                           ? -static_cast<float>(i % 5)
                           : 0.0f);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto builtin = std::move(Tokenizer::from_vocab(make_vocab(), "fuzz")).value();
  static const auto library =
      std::move(Tokenizer::from_vocab(make_vocab(), "fuzz", {TokenizerBackend::kSentencePiece})).value();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool special : {false, true}) {
    auto a = builtin->encode(text, true, special);
    auto b = library->encode(text, true, special);
    fuzz::require(a.ok() && b.ok(), "encode failed");
    fuzz::require(*a == *b, "built-in encoder differs from the SentencePiece library");
    auto whole = builtin->decode(*a);
    fuzz::require(whole.ok(), "decode failed");
    StreamingDecoder d(*builtin);
    std::string streamed;
    for (int32_t id : *a) streamed += *d.push(id);
    streamed += d.finish();
    fuzz::require(streamed == *whole, "streaming decode differs from decode");
  }
  return 0;
}

}  // namespace mixtral
