#include "stop.h"

#include <algorithm>

namespace mixtral::server {

namespace {

bool is_continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

// Bytes of the UTF-8 character that lead byte c begins (1 for ASCII and for bytes that begin none).
size_t char_length(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0xF0 && u <= 0xF7) return 4;
  if (u >= 0xE0) return u <= 0xEF ? 3 : 1;
  if (u >= 0xC0) return 2;
  return 1;
}

}  // namespace

StopText::StopText(std::vector<std::string> stop) : stop_(std::move(stop)) {
  stop_.erase(std::remove(stop_.begin(), stop_.end(), std::string()), stop_.end());
}

void StopText::push(std::string_view piece) {
  if (stopped_) return;
  const size_t from = text_.size();
  text_ += piece;
  // Earlier pushes found no stop string, so one can only end in the new bytes.
  size_t cut = std::string::npos;
  for (const auto& s : stop_) {
    const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
    const size_t at = text_.find(s, start);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    text_.resize(cut);
    stopped_ = true;
  }
}

size_t StopText::sendable(bool final) const {
  if (final || stopped_) return text_.size();
  size_t hold = 0;  // longest suffix of text_ that is a proper prefix of a stop string
  for (const auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k)
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  size_t n = text_.size() - hold;
  // Never inside a character: back to the start of the one that byte n - 1 belongs to if it ends after n
  // (the held suffix begins inside it, or it is unfinished at the end of the text).
  if (n > 0) {
    size_t begin = n - 1;
    while (begin > 0 && n - begin < 4 && is_continuation(text_[begin])) --begin;
    if (!is_continuation(text_[begin]) && begin + char_length(text_[begin]) > n) n = begin;
  }
  return std::max(n, emitted_);
}

std::string StopText::take(bool final) {
  const size_t to = sendable(final);
  std::string out = text_.substr(emitted_, to - emitted_);
  emitted_ = to;
  return out;
}

std::string StopText::take_rest() {
  std::string out = text_.substr(emitted_);
  emitted_ = text_.size();
  return out;
}

}  // namespace mixtral::server
