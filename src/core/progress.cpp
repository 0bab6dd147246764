#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace mixtral {

Progress::Progress(std::string label, int64_t total, Mode mode)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      enabled_(mode == Mode::kOn || (mode == Mode::kAuto && isatty(STDERR_FILENO))),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  finish();
}

void Progress::update(int64_t done) {
  done_ = std::clamp<int64_t>(done, 0, total_);
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done_ < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_ && drawn_) draw(true);
}

void Progress::draw(bool final) {
  constexpr int kWidth = 30;
  const double frac = static_cast<double>(done_) / static_cast<double>(total_);
  const int fill = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(fill), '#');
  bar.append(static_cast<size_t>(kWidth - fill), '.');
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = frac > 0 ? secs * (1 - frac) / frac : 0;
  std::fprintf(stderr, "\r%s [%s] %5.1f%% %lld/%lld %.0fs", label_.c_str(), bar.c_str(), 100 * frac,
               static_cast<long long>(done_), static_cast<long long>(total_), final ? secs : eta);
  std::fputs(final ? "   " : " left", stderr);
  if (!detail_.empty()) std::fprintf(stderr, "  %s", detail_.c_str());
  std::fputs(final ? "\n" : "\033[K", stderr);
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace mixtral
