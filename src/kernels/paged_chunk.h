// Private interface between kernels/paged_attention.cpp (chunking, tiling, threads, merge) and its per-ISA
// chunk kernels (x86/paged_attention_avx2.cpp, x86/paged_attention_avx512.cpp). Plain declarations only,
// for the reason internal.h gives.
//
// Block layout (what paged_kv_store writes): block b of a pool holds, per kv head, its block_size rows
// contiguously: [n_kv_heads][block_size][row], a row being head_dim elements of the cache type
// (F32: floats; F16: IEEE halves; Q8_0: head_dim / 32 BlockQ8_0). So the key (or value) of position j for
// kv head h is the row at  base + table[j / bs] * block_bytes + (h * bs + j % bs) * row_bytes,
// and one (block, head) run of up to bs keys is contiguous.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mixtral::kernels::detail {

enum KvKind { kKvF32 = 0, kKvF16 = 1, kKvQ8_0 = 2 };

// Keys per call at most (kernels::kAttnChunk; paged_attention.cpp checks they agree).
constexpr int64_t kMaxChunkKeys = 256;

// Attention of n_rows query rows over the keys [j0, j1) of one chunk of one kv head, unnormalised:
//   s[r, j] = scale * q[r] . k[j],  m[r] = max_j s[r, j],  l[r] = sum_j e^(s[r, j] - m[r]),
//   o[r] = sum_j e^(s[r, j] - m[r]) v[j]   (j ascending).
// The rows are the query heads of one or more tokens that read this kv head over exactly these keys (a
// tile). Every row's arithmetic is the same whatever the other rows of the call, so a token's chunk comes
// out bit for bit alike alone (decode) or in a tile (prefill).
struct PagedChunkArgs {
  const uint8_t* k;  // key pool (layout above)
  const uint8_t* v;  // value pool
  int kind;          // KvKind
  int64_t block_size, head_dim;
  size_t block_bytes, row_bytes;  // bytes of one block; of one (position, kv head) row
  const int32_t* table;           // the sequence's blocks
  int64_t kvh;
  int64_t j0, j1;  // keys [j0, j1), inside one chunk (0 < j1 - j0 <= kMaxChunkKeys)
  int64_t n_rows;
  const float* const* q;  // [n_rows] -> [head_dim]
  float* const* part;     // [n_rows] -> [head_dim + 2]: o, then m, then l
  float scale;
  float* scratch;  // [n_rows, j1 - j0] scores, then their exponentials
  float* kbuf;     // [j1 - j0, head_dim] room for f32 copies of the chunk's keys (kernels that reread them)
  float* vbuf;     // [j1 - j0, head_dim] likewise for the values
};
using PagedChunkFn = void (*)(const PagedChunkArgs& a);

// nullptr where this build has no such kernel. AVX2: head_dim % 8 == 0; AVX-512: head_dim % 16 == 0.
PagedChunkFn paged_chunk_avx2();
PagedChunkFn paged_chunk_avx512();

// One row of n floats to cache type `kind` (F16 or Q8_0), byte for byte as quantize_row writes it.
//   x: [n] (Q8_0: n % 32 == 0); dst: the row
using KvRowStoreFn = void (*)(int kind, const float* x, int64_t n, uint8_t* dst);
KvRowStoreFn kv_row_store_avx2();  // nullptr where this build has none

}  // namespace mixtral::kernels::detail
