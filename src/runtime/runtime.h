// The forward pass: an explicit layer loop over a batch of tokens, a KV cache, scratch buffers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/result.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "moe/moe.h"
#include "runtime/paged_kv_cache.h"

namespace mixtral {

struct RuntimeOptions {
  int64_t n_ctx = 4096;     // KV cache capacity in positions
  int64_t max_batch = 256;  // tokens per forward step; longer prompts run in chunks
};

// Per layer: K and V of every cached position, f32.    k, v: [n_ctx, n_kv_heads * head_dim]
class KvCache {
 public:
  KvCache(const ModelConfig& c, int64_t n_ctx);
  float* k(int64_t layer) { return k_.get() + layer * layer_stride_; }
  float* v(int64_t layer) { return v_.get() + layer * layer_stride_; }
  int64_t n_ctx() const { return n_ctx_; }
  size_t bytes() const { return 2 * sizeof(float) * static_cast<size_t>(layer_stride_ * n_layers_); }

 private:
  int64_t n_ctx_, n_layers_, layer_stride_;
  std::unique_ptr<float[]> k_, v_;  // left uninitialised: pages are touched only as positions fill
};

// One token of a batched step over the paged cache: sequences differ from entry to entry.
struct BatchToken {
  int32_t token = 0;
  int32_t pos = 0;                       // its position in its own sequence
  const int32_t* block_table = nullptr;  // its sequence's blocks, covering positions [0, pos]
  bool want_logits = false;
};

// Receives the routing of each layer for each evaluated batch (introspection, tests).
using RoutingSink = std::function<void(int64_t layer, int64_t n_past, const Routing& r)>;

class Runtime {
 public:
  Runtime(const Model& m, const RuntimeOptions& opts, ThreadPool& pool);

  // Evaluates n tokens at positions [n_past, n_past + n), filling the cache. Writes logits of
  // every position (logits: [n, vocab]) when all_logits, else of the last one (logits: [vocab]).
  // Tokens must be in [0, vocab) and n_past + n must fit the context: else an Error (usage).
  Status forward(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits);

  // Continuous batching: evaluates n tokens of any mix of sequences in one step (n <= max_batch).
  // Each token's K/V goes to its sequence's block (pos / block_size, row pos % block_size), then
  // attends over its own sequence's positions [0, pos]. Logits of the entries with want_logits,
  // in entry order: logits [n_wanted, vocab]. The caller validates tokens and block tables.
  void forward_paged(const BatchToken* entries, int64_t n, PagedKvCache& kv, float* logits);
  // When set, forward_paged adds each token's chosen experts: counts [n_layers, n_experts].
  void set_expert_counts(std::vector<uint64_t>* counts) { expert_counts_ = counts; }
  int64_t max_batch() const { return opts_.max_batch; }

  int64_t n_ctx() const { return kv_.n_ctx(); }
  const KvCache& kv() const { return kv_; }
  void set_routing_sink(RoutingSink sink) { routing_sink_ = std::move(sink); }

 private:
  void forward_batch(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits);

  const Model& m_;
  const ModelConfig& c_;
  RuntimeOptions opts_;
  ThreadPool& pool_;
  KvCache kv_;
  MoeLayer moe_;
  RoutingSink routing_sink_;
  // Scratch, sized for max_batch tokens:
  std::vector<float> x_;                // [B, dim] residual stream
  std::vector<float> xn_;               // [B, dim] normalised input of a sublayer
  std::vector<float> q_;                // [B, n_heads * head_dim]
  std::vector<float> att_;              // [B, n_heads * head_dim]
  std::vector<float> o_;                // [B, dim] sublayer output
  std::vector<int32_t> pos_;            // [B]
  std::vector<float> kn_;               // [B, n_kv_heads * head_dim] new keys of a paged step
  std::vector<float> vn_;               // [B, n_kv_heads * head_dim] new values of a paged step
  std::vector<const int32_t*> tables_;  // [B] block table of each token of a paged step
  // Layer inputs with their dot formats (buffers reused across layers and steps):
  kernels::PreparedInput xn_in_;   // [n, dim] xn_ for Wq, Wk and Wv: quantized once for the three
  kernels::PreparedInput att_in_;  // [n, n_heads * head_dim] att_ for Wo
  std::vector<uint64_t>* expert_counts_ = nullptr;
};

}  // namespace mixtral
