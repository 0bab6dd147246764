#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

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
  size_t last = 0;  // the last candidate with a nonzero probability (rounding may leave r >= 0 at the end)
  for (size_t i = 0; i < keep; ++i) {
    if (p[i] == 0.0) continue;
    r -= p[i];
    last = i;
    if (r < 0.0) return cand_[i].second;
  }
  return cand_[last].second;
}

SequenceSampler::SequenceSampler(const SamplingParams& p, int64_t vocab)
    : p_(p), vocab_(vocab), sampler_(SamplerOptions{p.temperature, p.top_k, p.top_p, p.seed}) {
  MX_CHECK(vocab > 0, "sampler: empty vocabulary");
  for (const auto& [id, bias] : p_.logit_bias)
    MX_CHECK(id >= 0 && id < vocab, "sampler: logit_bias token %d outside the vocabulary", id);
  work_.resize(static_cast<size_t>(vocab));
}

void SequenceSampler::add_prompt(const int32_t* ids, int64_t n) {
  if (p_.repetition_penalty != 1.0f) seen_.insert(ids, ids + n);
}

void SequenceSampler::accept(int32_t tok) {
  if (p_.repetition_penalty != 1.0f) seen_.insert(tok);
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) ++gen_counts_[tok];
}

int32_t SequenceSampler::sample(const float* logits, const uint32_t* allowed, int64_t n_allowed,
                                TokenLogprobs* lp) {
  const int64_t V = vocab_;
  const float ninf = -std::numeric_limits<float>::infinity();
  float* w = work_.data();  // [vocab] logits after the mask, bias, penalties and min-p
  std::copy(logits, logits + V, w);
  if (allowed) {  // the mask first: bias, penalties, min-p and the sampler then see only allowed tokens
    const int64_t n = std::min(n_allowed, V);
    bool any = false;
    for (int64_t t = 0; t < n; ++t) {
      if ((allowed[t / 32] >> (t % 32)) & 1u)
        any = true;
      else
        w[t] = ninf;
    }
    if (!any) return -1;
    std::fill(w + n, w + V, ninf);
  }
  for (const auto& [t, bias] : p_.logit_bias) w[t] += bias;
  if (p_.repetition_penalty != 1.0f)
    for (int32_t t : seen_) w[t] = w[t] > 0 ? w[t] / p_.repetition_penalty : w[t] * p_.repetition_penalty;
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f)
    for (const auto& [t, c] : gen_counts_)
      w[t] -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(c);
  if (p_.min_p > 0.0f && p_.temperature > 0.0f) {
    const float mx = *std::max_element(w, w + V);
    const float cut = mx + p_.temperature * std::log(p_.min_p);  // p_i >= min_p * p_max at the temperature
    for (int64_t i = 0; i < V; ++i)
      if (w[i] < cut) w[i] = ninf;
  }
  const int32_t tok = sampler_.sample(w, V);
  if (lp && p_.top_logprobs >= 0) {  // log-softmax of the model's logits (before mask, bias, penalties)
    const float mx = *std::max_element(logits, logits + V);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    lp->logprob = static_cast<float>(logits[tok] - lse);
    lp->top.clear();
    const int64_t k = std::min<int64_t>(p_.top_logprobs, V);
    if (k > 0) {
      std::vector<int32_t> idx(static_cast<size_t>(V));  // [vocab] token ids, the best k first
      for (int64_t i = 0; i < V; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int64_t i = 0; i < k; ++i) {
        const int32_t t = idx[static_cast<size_t>(i)];
        lp->top.emplace_back(t, static_cast<float>(logits[t] - lse));
      }
    }
  }
  return tok;
}

}  // namespace mixtral
