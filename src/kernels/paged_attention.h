// Causal attention over a paged KV cache, the only attention of the forward pass: each query token reads
// the keys/values of its own sequence through that sequence's block table, so tokens of different
// sequences share one call (continuous batching), and a single sequence is the batch-of-one case.
//
// Determinism: a token's keys [lo, pos] are cut into chunks at fixed absolute positions (multiples of
// kAttnChunk, whatever the block size, thread count or batch); each chunk gives (max, sum, unnormalised
// output) per head, and the chunks are merged in position order. So the result of a token depends only on
// its own query, position and cached rows: never on the threads nor on which other tokens share the call,
// and a prefill gives the same bits as decoding the same tokens one by one.
//
// Cache element types: F32, F16 (IEEE half, round-to-nearest-even) and Q8_0 (blocks of 32 values with an
// fp16 scale, tensor/quant.h's BlockQ8_0), for K and V alike. Rows are written by paged_kv_store only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "tensor/dtype.h"

namespace mixtral::kernels {

// Keys per chunk of one token's attention (a multiple of every block size the engines use: 16, 32, ...).
inline constexpr int64_t kAttnChunk = 256;

// Is t a KV cache element type (F32, F16, Q8_0)?
bool is_kv_type(DType t);
// Bytes of one position's K (or V) in one layer: n_kv_heads * head_dim elements of type t.
// Q8_0 needs head_dim % 32 == 0 (MX_CHECK; callers refuse it first with a usage error).
size_t kv_row_bytes(DType t, int64_t n_kv_heads, int64_t head_dim);

// One layer's block pool. The layout inside a block is the kernel's business (paged_kv_store writes it,
// paged_attention reads it); callers only size it:  k, v: [n_blocks, block_bytes] with
// block_bytes = block_size * kv_row_bytes(type, n_kv_heads, head_dim).
struct PagedKv {
  void* k = nullptr;
  void* v = nullptr;
  DType type = DType::F32;
  int64_t block_size = 16;
  int64_t n_kv_heads = 0, head_dim = 0;
};

// Writes n new rows, converted to kv.type, each at its slot (block * block_size + row in block).
//   k, v: [n, n_kv_heads * head_dim] f32; slots: [n]
void paged_kv_store(const PagedKv& kv, const float* k, const float* v, const int64_t* slots, int64_t n);
// Reads one cached position back as f32 (tests, tools).   k, v: [n_kv_heads * head_dim]
void paged_kv_load(const PagedKv& kv, int64_t slot, float* k, float* v);

// out[t] = attention of q[t] at position pos[t] over positions [0, pos[t]] (window: p.window) of its
// sequence, whose position j lives in block block_tables[t][j / block_size], row j % block_size.
//   q: [n, n_heads, head_dim]; pos: [n]; block_tables: [n] pointers; out: [n, n_heads, head_dim]
// p.n_kv_heads and p.head_dim must match kv's.
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out, ThreadPool& pool);

namespace ref {
// Single-threaded scalar oracle: the same chunks and merge order, straightforward loops.
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out);
}  // namespace ref

}  // namespace mixtral::kernels
