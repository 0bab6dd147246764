#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>

namespace mixtral {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplerOptions& opts) : opts_(opts), state_(opts.seed ^ 0x9e3779b97f4a7c15ull) {}

double Sampler::uniform() {  // splitmix64
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (opts_.temperature <= 0.0f) return argmax(logits, vocab);
  cand_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) cand_[static_cast<size_t>(i)] = {logits[i], static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (opts_.top_k > 0 && static_cast<size_t>(opts_.top_k) < n) {
    n = static_cast<size_t>(opts_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax at the temperature over the kept candidates (sorted, best first).
  std::vector<double> p(n);
  const double mx = cand_[0].first;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp((cand_[i].first - mx) / opts_.temperature);
  // Nucleus: the smallest prefix whose probability reaches top_p.
  size_t keep = n;
  if (opts_.top_p < 1.0f) {
    double acc = 0.0;
    for (size_t i = 0; i < n; ++i) {
      acc += p[i] / sum;
      if (acc >= opts_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += p[i];
  double r = uniform() * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0.0) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace mixtral
