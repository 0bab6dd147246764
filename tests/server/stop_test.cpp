// Stop strings over streamed text (apps/server/stop.h): what is sent, piece by piece, against the whole
// text cut at the first stop string (std::string::find over the joined text as the reference).
#include "stop.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace mixtral::server {
namespace {

// Feeds the pieces, taking what may be sent after each; returns what was sent, one entry per piece and a
// last one for the end of the generation (final).
std::vector<std::string> stream(StopText& st, const std::vector<std::string>& pieces) {
  std::vector<std::string> sent;
  for (const auto& p : pieces) {
    st.push(p);
    sent.push_back(st.take(false));
  }
  sent.push_back(st.take(true));
  return sent;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x;
  return s;
}

// The reference: text up to the earliest occurrence of any stop string.
std::string cut_at_stop(const std::string& text, const std::vector<std::string>& stop) {
  size_t cut = text.size();
  for (const auto& s : stop) cut = std::min(cut, text.find(s));
  return text.substr(0, cut);
}

// True if s is a whole number of UTF-8 characters (lead byte, then its continuation bytes).
bool whole_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

TEST(StopText, NoStopStringsPassEverythingAtOnce) {
  StopText st;
  EXPECT_EQ(stream(st, {"Hello", ", ", "world"}), (std::vector<std::string>{"Hello", ", ", "world", ""}));
  EXPECT_FALSE(st.stopped());
}

TEST(StopText, StopStringSplitAcrossPieces) {
  StopText st({"STOP"});
  const auto sent = stream(st, {"abc S", "T", "O", "Pxyz", "more"});
  // "S", "ST", "STO" may begin the stop string: held until it is known; then the text ends before it.
  EXPECT_EQ(sent, (std::vector<std::string>{"abc ", "", "", "", "", ""}));
  EXPECT_TRUE(st.stopped());
  EXPECT_EQ(st.text(), "abc ");
}

TEST(StopText, HeldPrefixIsReleasedWhenItDoesNotContinue) {
  StopText st({"STOP"});
  const auto sent = stream(st, {"ab ST", "ART"});
  EXPECT_EQ(sent, (std::vector<std::string>{"ab ", "START", ""}));
  EXPECT_FALSE(st.stopped());
}

TEST(StopText, HoldbackIsReleasedAtTheEnd) {
  StopText st({"</end>"});
  const auto sent = stream(st, {"x </e", "n"});
  EXPECT_EQ(sent, (std::vector<std::string>{"x ", "", "</en"}));
  EXPECT_EQ(st.text(), "x </en");
  EXPECT_FALSE(st.stopped());
}

TEST(StopText, SeveralStopStringsTheEarliestWins) {
  // "bb" completes first in time, "ab" begins earlier in the text: the text ends at the earlier start.
  StopText st({"xyz", "abb", "bb"});
  const auto sent = stream(st, {"1a", "bb", "xyz"});
  EXPECT_EQ(joined(sent), "1");
  EXPECT_EQ(st.text(), "1");
  // Holding: the longest suffix that begins any of them.
  StopText st2({"abcd", "cdX"});
  st2.push("..abc");
  EXPECT_EQ(st2.take(false), "..");  // "abc" begins "abcd" (and "c" begins "cdX")
  st2.push("d");                     // "abcd": stop
  EXPECT_TRUE(st2.stopped());
  EXPECT_EQ(st2.take(false), "");
  EXPECT_EQ(st2.text(), "..");
}

TEST(StopText, StopInsideOnePieceCutsTheRestOfIt) {
  StopText st({"\n\n"});
  const auto sent = stream(st, {"line one\n\nline two", "ignored"});
  EXPECT_EQ(sent, (std::vector<std::string>{"line one", "", ""}));
  EXPECT_EQ(st.text(), "line one");
}

TEST(StopText, MultiByteCharactersAreNeverCut) {
  // The stop string "é!" shares its first byte with "è": holding "\xC3" alone would cut "è" in two.
  StopText st({"\xC3\xA9!"});  // "é!"
  st.push("caf\xC3");          // a piece ending inside a character: held whatever the stop strings
  EXPECT_EQ(st.take(false), "caf");
  st.push("\xA8");  // "è": complete, and not a prefix of "é!"
  EXPECT_EQ(st.take(false), "\xC3\xA8");
  st.push("\xC3\xA9");  // "é" may begin "é!": held whole
  EXPECT_EQ(st.take(false), "");
  st.push("?");
  EXPECT_EQ(st.take(false), "\xC3\xA9?");
  // A four-byte character split over four pieces comes out whole.
  StopText emoji;
  std::string out;
  for (const char* b : {"\xF0", "\x9F", "\x98", "\x80"}) {
    emoji.push(b);
    const std::string s = emoji.take(false);
    EXPECT_TRUE(whole_utf8(s)) << s.size();
    out += s;
  }
  EXPECT_EQ(out, "\xF0\x9F\x98\x80");
}

TEST(StopText, AfterStoppingPiecesAreIgnored) {
  StopText st({"b"});
  st.push("abc");
  st.push("d");
  EXPECT_EQ(st.text(), "a");
  EXPECT_EQ(st.take(false), "a");
  EXPECT_EQ(st.take_rest(), "");
}

TEST(StopText, TakeRestSendsTheHoldback) {
  StopText st({"STOP"});
  st.push("go ST");
  EXPECT_EQ(st.take(false), "go ");
  EXPECT_EQ(st.take_rest(), "ST");
  EXPECT_EQ(st.emitted(), 5u);
}

// Random texts (ASCII and multi-byte characters) in random pieces, random stop strings: what is sent is
// the text cut at the first stop string, every sent piece is whole UTF-8, and nothing sent before the end
// ends with the beginning of a stop string.
TEST(StopText, RandomPiecesMatchTheReference) {
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {
      "a", "b", "c", " ", "\n", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"};
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  int stopped = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    for (size_t i = 0, n = 1 + pick(40); i < n; ++i) text += alphabet[pick(alphabet.size())];
    std::vector<std::string> stop;
    for (size_t i = 0, n = pick(4); i < n; ++i) {
      std::string s;
      for (size_t k = 0, m = 1 + pick(3); k < m; ++k) s += alphabet[pick(alphabet.size())];
      stop.push_back(s);
    }
    std::vector<std::string> pieces;  // cut at random bytes, also inside characters
    for (size_t at = 0; at < text.size();) {
      const size_t len = 1 + pick(5);
      pieces.push_back(text.substr(at, len));
      at += len;
    }
    StopText st(stop);
    const auto sent = stream(st, pieces);
    const std::string expected = cut_at_stop(text, stop);
    ASSERT_EQ(joined(sent), expected) << "trial " << trial;
    // While not stopped, whenever nothing is held, no suffix of what was sent begins a stop string.
    std::string so_far, pushed;
    for (size_t i = 0; i < pieces.size(); ++i) {
      ASSERT_TRUE(whole_utf8(sent[i])) << "trial " << trial << " piece " << i;
      so_far += sent[i];
      pushed += pieces[i];
      if (so_far != pushed) continue;
      for (const auto& s : stop)
        for (size_t k = 1; k < s.size() && k <= so_far.size(); ++k)
          ASSERT_NE(so_far.compare(so_far.size() - k, k, s, 0, k), 0) << "trial " << trial;
    }
    stopped += st.stopped();
  }
  EXPECT_GT(stopped, 200);  // the stop strings did occur
}

}  // namespace
}  // namespace mixtral::server
