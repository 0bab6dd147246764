// UTF-8 helpers with SentencePiece's exact rules (its string_util::DecodeUTF8 / OneCharLen), so that
// normalization of invalid input and decoding of byte pieces match the reference byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mixtral::tok {

inline constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"
inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the character a lead byte announces (1 for ASCII and stray continuation bytes, 4 for F0..FF).
inline size_t one_char_len(uint8_t lead) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[lead >> 4];
}

inline bool is_trail(uint8_t b) {
  return (b & 0xC0) == 0x80;
}

// Strict decode of one character at the start of s (non-empty): its byte length when s begins with a
// well-formed character (no overlong forms, no surrogates, <= U+10FFFF), 0 when it does not. Bytes past
// the end of s count as missing, exactly as SentencePiece treats the end of its input.
inline size_t valid_char_len(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  if (p[0] < 0x80) return 1;
  if (n >= 2 && (p[0] & 0xE0) == 0xC0) {
    const uint32_t cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    return is_trail(p[1]) && cp >= 0x80 ? 2 : 0;
  }
  if (n >= 3 && (p[0] & 0xF0) == 0xE0) {
    const uint32_t cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    return is_trail(p[1]) && is_trail(p[2]) && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF) ? 3 : 0;
  }
  if (n >= 4 && (p[0] & 0xF8) == 0xF0) {
    const uint32_t cp =
        ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    return is_trail(p[1]) && is_trail(p[2]) && is_trail(p[3]) && cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
  }
  return 0;
}

// True when all of s is well-formed UTF-8.
inline bool is_valid_utf8(std::string_view s) {
  while (!s.empty()) {
    const size_t n = valid_char_len(s);
    if (n == 0) return false;
    s.remove_prefix(n);
  }
  return true;
}

// Appends the UTF-8 of a code point (valid scalar values only).
inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace mixtral::tok
