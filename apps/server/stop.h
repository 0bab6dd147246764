// Stop strings over streamed text (pure: no engine, no tokenizer). The text of a choice grows piece by
// piece; it ends at the first occurrence of any stop string (which is not part of the answer), and while
// it grows, the bytes that could still become the start of a stop string are held back from the client.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace mixtral::server {

class StopText {
 public:
  explicit StopText(std::vector<std::string> stop = {});

  // Appends a piece of generated text; once a stop string occurs, the text is cut where it begins and
  // stopped() is true (later pieces are ignored). A stop string split over several pieces is found.
  void push(std::string_view piece);
  bool stopped() const { return stopped_; }
  // Everything generated so far, cut at a stop string.
  const std::string& text() const { return text_; }
  // Bytes of text() already taken.
  size_t emitted() const { return emitted_; }

  // How far text() may be sent now. Not final and not stopped: all but the longest suffix that is a
  // proper prefix of a stop string, and never inside a UTF-8 character (an unfinished character at the
  // end is held too). Final (the generation ended) or stopped: all of it.
  size_t sendable(bool final) const;
  // The bytes from emitted() to sendable(final), marking them emitted.
  std::string take(bool final);
  // What is left after emitted() (the generation ended early, e.g. a timeout), marking it emitted.
  std::string take_rest();

 private:
  std::vector<std::string> stop_;
  std::string text_;
  size_t emitted_ = 0;
  bool stopped_ = false;
};

}  // namespace mixtral::server
