// The forward pass: one step function, an explicit layer loop over a batch of (sequence, token, position)
// entries and one paged KV cache. A single sequence is the batch-of-one case (SoloSequence).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/result.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "moe/moe.h"
#include "runtime/paged_kv_cache.h"

namespace mixtral {

struct RuntimeOptions {
  int64_t max_batch = 256;  // entries per step
};

// One token of a step: sequences may differ from entry to entry.
struct BatchToken {
  int32_t token = 0;
  int32_t pos = 0;                       // its position in its own sequence
  const int32_t* block_table = nullptr;  // its sequence's blocks, covering positions [0, pos]
  bool want_logits = false;
};

// Receives the routing of each layer of each step (introspection, tests): r holds the step's n entries in
// entry order, pos [n] their positions.
using RoutingSink = std::function<void(int64_t layer, const int32_t* pos, int64_t n, const Routing& r)>;

class Runtime {
 public:
  Runtime(const Model& m, const RuntimeOptions& opts, ThreadPool& pool);

  // Evaluates n entries (0 < n <= max_batch) of any mix of sequences. Each entry's K/V goes into its
  // sequence's block (pos / block_size, row pos % block_size) before any entry attends; then it attends
  // over its own sequence's positions [0, pos]. Writes the logits of the entries with want_logits, in
  // entry order: logits [n_wanted, vocab]. An entry's results depend only on its own sequence (batch
  // invariance): never on the other entries nor on the thread count. The caller validates tokens,
  // positions and block tables.
  // Under mpirun (a model loaded for several ranks) every rank runs each step together: rank 0 calls step
  // and sends it to the others first (follow.h), which run it with logits null.
  void step(const BatchToken* entries, int64_t n, PagedKvCache& kv, float* logits);

  // When set, step adds each entry's chosen experts: counts [n_layers, n_experts].
  void set_expert_counts(std::vector<uint64_t>* counts) { expert_counts_ = counts; }
  void set_routing_sink(RoutingSink sink) { routing_sink_ = std::move(sink); }
  // When set, step shows o the input rows of every weight matmul (not the router's nor the output's).
  void set_matmul_observer(MatmulObserver* o) { observer_ = o; }
  int64_t max_batch() const { return opts_.max_batch; }
  const ModelConfig& config() const { return c_; }

 private:
  const Model& m_;
  const ModelConfig& c_;
  RuntimeOptions opts_;
  ThreadPool& pool_;
  MoeLayer moe_;
  RoutingSink routing_sink_;
  std::vector<uint64_t>* expert_counts_ = nullptr;
  MatmulObserver* observer_ = nullptr;
  void announce(const BatchToken* entries, int64_t n, PagedKvCache& kv);
  std::vector<int32_t> announce_;  // the step message (follow::Words) of rank 0
  // Scratch, sized for max_batch entries:
  std::vector<float> x_;                // [B, dim] residual stream
  std::vector<float> xn_;               // [B, dim] normalised input of a sublayer
  std::vector<float> q_;                // [B, n_heads * head_dim]
  std::vector<float> att_;              // [B, n_heads * head_dim]
  std::vector<float> o_;                // [B, dim] sublayer output
  std::vector<float> kn_;               // [B, n_kv_heads * head_dim] new keys
  std::vector<float> vn_;               // [B, n_kv_heads * head_dim] new values
  std::vector<int32_t> pos_;            // [B]
  std::vector<int64_t> slots_;          // [B] cache slot of each entry's new K/V (block * block_size + row)
  std::vector<const int32_t*> tables_;  // [B] block table of each entry
  // Layer inputs with their dot formats (buffers reused across layers and steps):
  kernels::PreparedInput xn_in_;   // [n, dim] xn_ for Wq, Wk and Wv: quantized once for the three
  kernels::PreparedInput att_in_;  // [n, n_heads * head_dim] att_ for Wo
};

// One sequence alone in a cache, at positions [0, n_ctx) in blocks 0, 1, ... in order: what `run`,
// `score`, `bench` and `chat` evaluate. Prompts go through step in chunks of max_batch.
class SoloSequence {
 public:
  // kv must hold n_ctx positions (n_blocks * block_size >= n_ctx).
  SoloSequence(Runtime& rt, PagedKvCache& kv, int64_t n_ctx);
  int64_t n_ctx() const { return n_ctx_; }
  // Evaluates n tokens at positions [n_past, n_past + n). logits (if not null): every position's
  // ([n, vocab]) when all_logits, else the last one's ([vocab]). Tokens out of [0, vocab), n == 0 or
  // n_past + n past the context: an Error (usage).
  Status eval(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits);

 private:
  Runtime& rt_;
  PagedKvCache& kv_;
  int64_t n_ctx_;
  std::vector<int32_t> table_;     // [n_blocks] 0, 1, ...
  std::vector<BatchToken> batch_;  // [max_batch]
};

}  // namespace mixtral
