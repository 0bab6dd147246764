// Picks the next token from logits: greedy at temperature 0, else temperature, top-k and top-p
// (nucleus) filtering and a draw from a seeded generator (same seed, same tokens).
#pragma once

#include <cstdint>
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

}  // namespace mixtral
