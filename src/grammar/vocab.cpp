// The vocabulary as the client sees it: each piece's bytes after detokenization.
#include <string>

#include "grammar/grammar.h"
#include "mixtral/tokenizer.h"

namespace mixtral::grammar {

namespace {

// "<0xHH>" -> the byte; false for anything else.
bool byte_piece(const std::string& p, uint8_t& out) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return false;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = p[static_cast<size_t>(i)];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return false;
    }
    v = v * 16 + d;
  }
  out = static_cast<uint8_t>(v);
  return true;
}

}  // namespace

Vocabulary vocabulary_of(const Tokenizer& tok) {
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 "▁"
  Vocabulary v;
  const int32_t n = tok.n_vocab();
  v.bytes.resize(static_cast<size_t>(n));
  v.special.assign(static_cast<size_t>(n), 0);
  for (int32_t id = 0; id < n; ++id) {
    const auto i = static_cast<size_t>(id);
    const std::string& piece = tok.piece(id);
    switch (tok.type(id)) {
      case TokenType::kControl:
      case TokenType::kUnknown:
      case TokenType::kUnused:
        v.special[i] = 1;
        continue;
      case TokenType::kByte: {
        uint8_t b;
        if (byte_piece(piece, b)) {
          v.bytes[i] = std::string(1, static_cast<char>(b));
        } else {
          v.special[i] = 1;
        }
        continue;
      }
      case TokenType::kNormal:
      case TokenType::kUserDefined:
        break;
    }
    std::string out;
    out.reserve(piece.size());
    for (size_t k = 0; k < piece.size();) {
      if (piece.compare(k, kSpace.size(), kSpace) == 0) {
        out += ' ';
        k += kSpace.size();
      } else {
        out += piece[k++];
      }
    }
    v.bytes[i] = std::move(out);
  }
  v.eos = tok.eos_id();
  return v;
}

}  // namespace mixtral::grammar
