// Picking the next token. Two layers:
//  - Sampler: logits -> token. Greedy at temperature 0, else temperature, top-k and top-p (nucleus)
//    filtering and a draw from a seeded generator (same seed, same tokens).
//  - SequenceSampler: one sequence's whole sampling step, shared by `mixtral run` (Engine) and
//    `mixtral serve` (BatchEngine): the grammar's mask, logit bias, repetition / presence / frequency
//    penalties from the sequence's history, min-p, then the Sampler; and the log-probabilities of the
//    model's distribution for the chosen token and the best alternatives.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mixtral {

struct SamplerOptions {
  float temperature = 0.8f;  // 0: greedy
  int64_t top_k = 40;        // 0: off
  float top_p = 0.95f;       // 1: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opts);
  int32_t sample(const float* logits, int64_t vocab);  // logits: [vocab]

 private:
  double uniform();  // [0, 1)
  SamplerOptions opts_;
  uint64_t state_;
  std::vector<std::pair<float, int32_t>> cand_;  // [vocab] (logit, id) candidates
};

// Index of the largest value; ties go to the lowest index.
int32_t argmax(const float* x, int64_t n);

struct SamplingParams {
  float temperature = 0.8f;  // 0: greedy
  int64_t top_k = 40;        // 0: off
  float top_p = 0.95f;       // 1: off
  float min_p = 0.0f;        // 0: off; else keep tokens with p >= min_p * p_max (at the temperature)
  uint64_t seed = 0;
  float presence_penalty = 0.0f;    // OpenAI's: minus this once for every generated token seen
  float frequency_penalty = 0.0f;   // OpenAI's: minus this times the count of each generated token
  float repetition_penalty = 1.0f;  // CTRL-style over prompt and generated tokens: logit / r if > 0, else * r
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, added to its logit); ids in [0, vocab)
  int top_logprobs = -1;  // -1: none; 0..20: the chosen token's logprob and this many alternatives
};

// Log-probabilities of the model's own distribution (log-softmax of the logits before mask, bias and
// penalties), as OpenAI reports them.
struct TokenLogprobs {
  float logprob = 0;                           // of the chosen token
  std::vector<std::pair<int32_t, float>> top;  // [top_logprobs] (token, logprob), best first, ties by id
};

class SequenceSampler {
 public:
  // p must be valid (the engines check it); vocab: the logits' length.
  SequenceSampler(const SamplingParams& p, int64_t vocab);
  // The prompt's tokens, for the repetition penalty's history.
  void add_prompt(const int32_t* ids, int64_t n);
  // One step. logits: [vocab], the model's (not modified). allowed: nullptr, or a bit mask (bit t of word
  // t / 32: token t may follow) over the first n_allowed ids, ids >= n_allowed not allowed. Order: mask,
  // logit bias, penalties, min-p, then temperature / top-k / top-p. Returns -1 when the mask allows no token.
  // lp (if given and top_logprobs >= 0) receives the chosen token's log-probabilities.
  int32_t sample(const float* logits, const uint32_t* allowed, int64_t n_allowed, TokenLogprobs* lp);
  // The token the sequence took (sampled or forced): updates the penalties' history.
  void accept(int32_t tok);
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  int64_t vocab_;
  Sampler sampler_;
  std::unordered_map<int32_t, int32_t> gen_counts_;  // generated token -> times (presence / frequency)
  std::unordered_set<int32_t> seen_;                 // prompt + generated (repetition penalty)
  std::vector<float> work_;                          // [vocab] logits after mask, bias, penalties, min-p
};

}  // namespace mixtral
