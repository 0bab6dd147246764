// Causal attention over a paged KV cache: each query token reads the keys/values of its own
// sequence through that sequence's block table, so tokens of different sequences share one call
// (continuous batching). The result of a token depends only on its own query, position and blocks:
// never on which other tokens share the call.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"
#include "kernels/kernels.h"

namespace mixtral::kernels {

// One layer's block pool.       k, v: [n_blocks, block_size, n_kv_heads, head_dim]
struct PagedKv {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t block_size = 16;
};

// out[t] = attention of q[t] at position pos[t] over positions [0, pos[t]] (window: p.window) of its
// sequence, whose position j lives in block block_tables[t][j / block_size], row j % block_size.
//   q: [n, n_heads, head_dim]; pos: [n]; block_tables: [n] pointers; out: [n, n_heads, head_dim]
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out, ThreadPool& pool);

namespace ref {
// Single-threaded; the same per-(token, head) arithmetic as the pooled version (bitwise equal).
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out);
}  // namespace ref

}  // namespace mixtral::kernels
