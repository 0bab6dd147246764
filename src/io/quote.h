// Names taken from input files (tensor names, keys, dtype strings) as they appear in one-line
// error messages: quoted, control and non-ASCII bytes escaped as \xNN, long names shortened.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace mixtral {

inline std::string quote_name(std::string_view s, size_t max_len = 120) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > max_len) out += "...";
  return out + "'";
}

}  // namespace mixtral
