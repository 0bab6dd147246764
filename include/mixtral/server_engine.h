// Public: the continuous-batching engine behind `mixtral serve`. Requests (token prompts with sampling
// settings) queue, are admitted up to `parallel` at a time, and advance together: every step is one
// forward pass over the next token of each decoding sequence plus chunks of newly admitted prompts.
// KV lives in a paged cache (blocks of block_size positions) with a prefix cache, so prompts that share
// a prefix reuse its blocks. Per-token results do not depend on the batch (see docs/architecture.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtral/config.h"
#include "mixtral/engine.h"
#include "mixtral/result.h"

namespace mixtral {

namespace grammar {
struct Grammar;
class TokenMasker;
}  // namespace grammar

struct BatchEngineOptions {
  std::string model_path;
  int threads = 0;       // 0: all cores
  int64_t ctx_size = 0;  // positions per sequence; 0: min(trained context, 4096)
  int parallel = 4;      // sequences advancing together
  // The step's token budget (`serve --step-tokens`): each forward step takes first the next token of every
  // decoding sequence, then prefill chunks of prompts in admission order up to this many tokens in all.
  // Raised to `parallel` if smaller, so every decode fits one step. While a prompt prefills, every step
  // carries ~budget tokens, so the decoding streams' inter-token gap grows with the budget, and the prompt
  // advances by the budget minus the decodes per step. 64 by measurement (4-layer full-width 8x7B Q4_0, 2
  // threads, 16 streams decoding, a 1000-token prompt arriving): the streams' gap grows 2.7x while it
  // prefills, its first token after ~9 s; 32: 1.6x, 12 s; 128: 4.6x, 6.7 s; 256: 9.6x, 6.4 s (prefill no
  // faster, stall twice as long); 16: no stall, 26 s (the prompt waits for the streams to end).
  int64_t max_batch = 64;
  int64_t block_size = 16;  // positions per KV block
  int64_t max_queue = 256;  // waiting requests beyond `parallel`; more are refused
  bool repack = true;       // repack weights at load for the kernels (LoadOptions::repack)
  KvCacheType cache_type = KvCacheType::kF16;
  // Bytes of the KV block pool (K and V, every layer); 0: room for `parallel` full contexts of ctx_size.
  // Too small for one full context is a usage error naming --kv-memory.
  int64_t kv_memory = 0;
  // The vocabulary's byte trie for constrained sampling (grammar::vocabulary_of the model's tokenizer);
  // needed by requests with a grammar. Its eos is the end-of-sequence token.
  std::shared_ptr<const grammar::TokenMasker> masker;
};

struct CompletionParams {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;
  int64_t top_k = 0;  // 0: off
  float min_p = 0.0f;
  uint64_t seed = 0;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;  // OpenAI's, over generated tokens
  float repetition_penalty = 1.0f;                          // CTRL-style, over prompt and generated tokens
  std::vector<std::pair<int32_t, float>> logit_bias;        // (token id in [0, vocab), added to its logit)
  int top_logprobs = -1;  // -1: no logprobs; 0..20: the chosen token's logprob and this many alternatives
  bool ignore_eos = false;
  // Constrained output: only tokens the grammar allows are sampled; EOS only where it can end, and the
  // sequence stops (kStop) once it must end. Null: free text.
  std::shared_ptr<const grammar::Grammar> grammar;
};

// kGrammarError: the grammar allowed no token at all (a dead end, or its matcher went past its bound on
// parse stacks) — an error, never a normal stop; the event carries no token.
enum class FinishReason { kNone, kStop, kLength, kCancelled, kGrammarError };

struct TokenEvent {
  int32_t token = -1;  // -1 when the event only finishes the request
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // [top_logprobs] (token, logprob), best first
  FinishReason finish = FinishReason::kNone;   // kNone: more follow
  int64_t prompt_tokens = 0, cached_tokens = 0;
};

struct BatchEngineStats {
  int64_t queued = 0, active = 0;
  int64_t kv_blocks_total = 0, kv_blocks_in_use = 0, kv_blocks_cached = 0, block_size = 0;
  int64_t kv_bytes_total = 0;  // the block pool (K and V, every layer)
  int64_t kv_bytes_per_token = 0;
  const char* kv_cache_type = "";     // "f32", "f16", "q8_0"
  uint64_t prompt_tokens = 0;         // prompt tokens of admitted requests
  uint64_t prompt_tokens_cached = 0;  // of which taken from the prefix cache
  uint64_t prompt_tokens_computed = 0;
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;
  double gen_tokens_per_s = 0;  // generated tokens per second over the last few seconds
  int64_t n_layers = 0, n_experts = 0;
  std::vector<uint64_t> expert_selections;  // [n_layers, n_experts]
};

class BatchEngine {
 public:
  // Called on the engine thread for each token and once with finish != kNone (the last event).
  // Return false to cancel the request (its blocks are freed at the next step).
  using Callback = std::function<bool(const TokenEvent&)>;

  static Result<std::unique_ptr<BatchEngine>> load(const BatchEngineOptions& opts);
  ~BatchEngine();  // cancels everything and stops the engine thread

  enum class Submit { kOk, kQueueFull, kTooLong, kBadRequest, kShuttingDown };
  struct SubmitResult {
    Submit status = Submit::kOk;
    uint64_t id = 0;
    std::string message;
  };
  SubmitResult submit(CompletionParams params, Callback cb);
  void cancel(uint64_t id);
  // Stops admitting; waits up to grace_s for in-flight requests, then cancels the rest.
  void shutdown(double grace_s);

  const ModelConfig& config() const;
  int64_t ctx_size() const;
  const std::string& model_path() const;
  BatchEngineStats stats() const;

 private:
  struct Impl;
  explicit BatchEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixtral
