// A one-line progress bar on stderr for long work (convert, quantize, perplexity, export).
// Draws only when stderr is a terminal (or when forced); otherwise it stays silent, so logs and
// pipes get no carriage-return noise.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mixtral {

class Progress {
 public:
  enum class Mode { kAuto, kOn, kOff };  // kAuto: on when stderr is a terminal
  Progress(std::string label, int64_t total, Mode mode = Mode::kAuto);
  ~Progress();  // finishes the line if anything was drawn
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void add(int64_t n) { update(done_ + n); }
  void update(int64_t done);                                            // redraws at most ~10 times a second
  void set_detail(std::string detail) { detail_ = std::move(detail); }  // shown after the bar
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw(bool final);
  std::string label_, detail_;
  int64_t total_, done_ = 0;
  bool enabled_, drawn_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace mixtral
