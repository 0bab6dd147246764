// The forward pass: an explicit layer loop over a batch of tokens, a KV cache, scratch buffers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/result.h"
#include "core/thread_pool.h"
#include "model/weights.h"
#include "moe/moe.h"

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

// Receives the routing of each layer for each evaluated batch (introspection, tests).
using RoutingSink = std::function<void(int64_t layer, int64_t n_past, const Routing& r)>;

class Runtime {
 public:
  Runtime(const Model& m, const RuntimeOptions& opts, ThreadPool& pool);

  // Evaluates n tokens at positions [n_past, n_past + n), filling the cache. Writes logits of
  // every position (logits: [n, vocab]) when all_logits, else of the last one (logits: [vocab]).
  // Tokens must be in [0, vocab) and n_past + n must fit the context: else an Error (usage).
  Status forward(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits);

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
  std::vector<float> x_;      // [B, dim] residual stream
  std::vector<float> xn_;     // [B, dim] normalised input of a sublayer
  std::vector<float> q_;      // [B, n_heads * head_dim]
  std::vector<float> att_;    // [B, n_heads * head_dim]
  std::vector<float> o_;      // [B, dim] sublayer output
  std::vector<int32_t> pos_;  // [B]
};

}  // namespace mixtral
