// libFuzzer target: the GBNF reader on arbitrary text; when it parses, a matcher runs over bytes and token
// masks over a tiny vocabulary are checked against brute force. Input: grammar text, then optionally a NUL
// byte and the bytes to feed the matcher (else a fixed probe set).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "grammar/grammar.h"

namespace {

using namespace mixtral::grammar;

const Vocabulary& tiny_vocab() {
  static const Vocabulary v = [] {
    Vocabulary t;
    auto add = [&](std::string b, bool special) {
      t.bytes.push_back(std::move(b));
      t.special.push_back(special);
    };
    add("", true);  // 0 BOS
    add("", true);  // 1 EOS
    add("", true);  // 2 a tool token
    t.eos = 1;
    for (const char* s : {"a",
                          "b",
                          "ab",
                          "\"",
                          "{",
                          "}",
                          "[",
                          "]",
                          ",",
                          ":",
                          " ",
                          "\n",
                          "0",
                          "1",
                          "12",
                          "\\",
                          "\xC3\xA9",
                          "\xC3",
                          "\xA9",
                          "\xE2\x82\xAC",
                          "\xE2",
                          "\x82\xAC",
                          "\xF0\x9F\x98\x80",
                          "\xFF",
                          "a\"",
                          "\": ",
                          "true",
                          "null",
                          "-",
                          ".",
                          "e",
                          "x"})
      add(s, false);
    return t;
  }();
  return v;
}

bool bit(const std::vector<uint32_t>& m, size_t t) {
  return (m[t / 32] >> (t % 32)) & 1u;
}

void check_mask(const TokenMasker& tm, const Matcher& m) {
  const Vocabulary& v = tm.vocabulary();
  std::vector<uint32_t> mask;
  tm.fill_mask(m, mask);
  for (size_t t = 0; t < v.bytes.size(); ++t) {
    bool want;
    if (static_cast<int32_t>(t) == v.eos) {
      want = m.can_end();
    } else {
      Matcher a = m, b = m;
      want = b.advance_special(static_cast<int32_t>(t));
      if (!v.special[t] && !v.bytes[t].empty()) want = want || a.advance_bytes(v.bytes[t]);
    }
    mixtral::fuzz::require(bit(mask, t) == want, "mask differs from brute force");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t nul = all.find('\0');
  const std::string_view text = all.substr(0, nul);
  GbnfOptions o;
  o.max_rules = 2000;
  o.token_id = [](std::string_view p) { return p == "[T]" ? 2 : -1; };
  o.optional_leading_space = size % 2 == 1;
  auto g = parse_gbnf(text, o);
  if (!g.ok()) {
    const auto& e = g.error();
    mixtral::fuzz::require(e.message.rfind("grammar line ", 0) == 0,
                           "error does not start with 'grammar line '");
    mixtral::fuzz::require(e.message.find('\n') == std::string::npos, "multi-line error message");
    mixtral::fuzz::require(e.kind == mixtral::ErrorKind::kData, "parse error is not a data error");
    return 0;
  }
  static const TokenMasker tm(tiny_vocab());
  std::string feed = nul == std::string_view::npos ? std::string("{\"a\": [1, \"\xC3\xA9\"]}ab")
                                                   : std::string(all.substr(nul + 1));
  if (feed.size() > 64) feed.resize(64);
  Matcher m(*g);
  check_mask(tm, m);
  for (size_t i = 0; i < feed.size(); ++i) {
    Matcher before = m;
    const bool ok = m.advance_bytes(feed.substr(i, 1));
    if (!ok) {
      mixtral::fuzz::require(m.can_end() == before.can_end(), "a refused byte changed the matcher");
      continue;
    }
    if (i % 8 == 0) check_mask(tm, m);
    if (m.must_end()) mixtral::fuzz::require(m.can_end(), "must_end without can_end");
  }
  m.advance_special(2);
  check_mask(tm, m);
  return 0;
}
