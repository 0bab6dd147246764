#include "kernels/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "kernels/paged_chunk.h"
#include "tensor/quant.h"

namespace mixtral::kernels {

namespace {

using detail::PagedChunkArgs;
using detail::PagedChunkFn;
static_assert(detail::kMaxChunkKeys == kAttnChunk);

// Tokens of one sequence per tile: the prefill tokens that read the same whole chunk share one pass over
// its keys and values (fewer reads), in tiles of at most this many so the work still spreads over threads.
constexpr int64_t kTileTokens = 32;

int kv_kind(DType t) {
  switch (t) {
    case DType::F32:
      return detail::kKvF32;
    case DType::F16:
      return detail::kKvF16;
    case DType::Q8_0:
      return detail::kKvQ8_0;
    default:
      MX_CHECK(false, "paged KV cache: %.*s is not a cache type (f32, f16, q8_0)",
               static_cast<int>(dtype_name(t).size()), dtype_name(t).data());
  }
}

// Bytes of one (position, kv head) row.
size_t head_row_bytes(DType t, int64_t head_dim) {
  switch (kv_kind(t)) {
    case detail::kKvF32:
      return sizeof(float) * static_cast<size_t>(head_dim);
    case detail::kKvF16:
      return sizeof(uint16_t) * static_cast<size_t>(head_dim);
    default:
      MX_CHECK(head_dim % kQK8_0 == 0, "q8_0 KV cache: head_dim %lld is not a multiple of %d",
               static_cast<long long>(head_dim), kQK8_0);
      return sizeof(BlockQ8_0) * static_cast<size_t>(head_dim / kQK8_0);
  }
}

size_t block_bytes(const PagedKv& kv) {
  return static_cast<size_t>(kv.block_size) * kv_row_bytes(kv.type, kv.n_kv_heads, kv.head_dim);
}

// Row of kv head h at cache slot `slot` (block slot / bs, row slot % bs) in pool `base`.
size_t row_offset(const PagedKv& kv, int64_t slot, int64_t h) {
  return static_cast<size_t>(slot / kv.block_size) * block_bytes(kv) +
         static_cast<size_t>(h * kv.block_size + slot % kv.block_size) * head_row_bytes(kv.type, kv.head_dim);
}

// Dot product in 8 independent lanes (vectorisable without -ffast-math), summed pairwise: a fixed order.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  for (; i < n; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// One cache row (head_dim elements of `kind`) to floats.
void row_to_f32(int kind, const uint8_t* src, float* dst, int64_t hd) {
  switch (kind) {
    case detail::kKvF32:
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(hd));
      return;
    case detail::kKvF16:
      dequantize_row(DType::F16, src, dst, hd);
      return;
    default:
      dequantize_row(DType::Q8_0, src, dst, hd);
      return;
  }
}

// PagedChunkFn in portable C++ (the reference's arithmetic): the chunk's rows to f32 in kbuf/vbuf, then
// per query row its scores, exponentials summed in key order, and values weighted in key order.
void chunk_portable(const PagedChunkArgs& a) {
  const int64_t hd = a.head_dim, nk = a.j1 - a.j0, bs = a.block_size;
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t pos = a.j0 + j;
    const size_t off = static_cast<size_t>(a.table[pos / bs]) * a.block_bytes +
                       static_cast<size_t>(a.kvh * bs + pos % bs) * a.row_bytes;
    row_to_f32(a.kind, a.k + off, a.kbuf + j * hd, hd);
    row_to_f32(a.kind, a.v + off, a.vbuf + j * hd, hd);
  }
  for (int64_t r = 0; r < a.n_rows; ++r) {
    float* s = a.scratch + r * nk;  // [nk]
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = dot(a.q[r], a.kbuf + j * hd, hd) * a.scale;
      mx = std::max(mx, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    float* o = a.part[r];  // [hd + 2]
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = 0; j < nk; ++j) {
      const float w = s[j];
      const float* vj = a.vbuf + j * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] += w * vj[i];
    }
    o[hd] = mx;
    o[hd + 1] = sum;
  }
}

// The chunk kernel of the active instruction set for this head size (portable where none applies).
PagedChunkFn pick_chunk_fn(int64_t head_dim) {
  const Isa isa = std::min(active_isa(), detect_isa());
  if (isa == Isa::kAvx512 && head_dim % 16 == 0 && detail::paged_chunk_avx512() != nullptr)
    return detail::paged_chunk_avx512();
  if (isa >= Isa::kAvx2 && head_dim % 8 == 0 && detail::paged_chunk_avx2() != nullptr)
    return detail::paged_chunk_avx2();
  return chunk_portable;
}

void check_args(const PagedKv& kv, const int32_t* pos, int64_t n, const AttentionParams& p) {
  MX_CHECK(kv.block_size > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 && p.head_dim > 0,
           "paged_attention: bad params");
  MX_CHECK(kv.n_kv_heads == p.n_kv_heads && kv.head_dim == p.head_dim,
           "paged_attention: cache of %lld x %lld, params %lld x %lld", static_cast<long long>(kv.n_kv_heads),
           static_cast<long long>(kv.head_dim), static_cast<long long>(p.n_kv_heads),
           static_cast<long long>(p.head_dim));
  head_row_bytes(kv.type, kv.head_dim);  // checks the type (and Q8_0's head_dim)
  for (int64_t t = 0; t < n; ++t) MX_CHECK(pos[t] >= 0, "paged_attention: negative position %d", pos[t]);
}

// First key of token t's attention.
int64_t first_key(int64_t pos, const AttentionParams& p) {
  return p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
}

// Where each token's chunk partials live: token t's chunks c = first .. last (absolute chunk numbers)
// at slots off[t] + c - first, each slot [n_heads, head_dim + 2] (o, m, l per head).
struct Partials {
  std::vector<int64_t> first, off;  // [n], [n + 1]

  void plan(const int32_t* pos, int64_t n, const AttentionParams& p) {
    first.resize(static_cast<size_t>(n));
    off.assign(static_cast<size_t>(n + 1), 0);
    for (int64_t t = 0; t < n; ++t) {
      first[t] = first_key(pos[t], p) / kAttnChunk;
      off[t + 1] = off[t] + pos[t] / kAttnChunk - first[t] + 1;
    }
  }
  // Head h of token t's chunk c, in part: [off[n], n_heads, head_dim + 2].
  float* at(float* part, int64_t t, int64_t c, int64_t h, const AttentionParams& p) const {
    return part + ((off[t] + c - first[t]) * p.n_heads + h) * (p.head_dim + 2);
  }
};

// out[t, h] from token t's chunk partials merged in position order: with M the largest chunk max,
// o = sum_c e^(m_c - M) o_c and l = sum_c e^(m_c - M) l_c (from the first chunk's terms, so a single chunk
// gives o_c / l_c exactly), out = o / l.
void merge(const Partials& pl, float* part, int64_t t, const AttentionParams& p, float* out) {
  const int64_t hd = p.head_dim, nc = pl.off[t + 1] - pl.off[t], c0 = pl.first[t];
  for (int64_t h = 0; h < p.n_heads; ++h) {
    float mx = -INFINITY;
    for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, pl.at(part, t, c0 + c, h, p)[hd]);
    float* o = out + (t * p.n_heads + h) * hd;  // [hd]
    const float* s0 = pl.at(part, t, c0, h, p);
    const float w0 = std::exp(s0[hd] - mx);
    float sum = w0 * s0[hd + 1];
    for (int64_t i = 0; i < hd; ++i) o[i] = w0 * s0[i];
    for (int64_t c = 1; c < nc; ++c) {
      const float* sc = pl.at(part, t, c0 + c, h, p);
      const float w = std::exp(sc[hd] - mx);
      sum += w * sc[hd + 1];
      for (int64_t i = 0; i < hd; ++i) o[i] += w * sc[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < hd; ++i) o[i] *= inv;
  }
}

// Tokens [t0, t0 + nt) (consecutive in the batch) over the keys [j0, j1) of one chunk, read through
// token t0's table (the others' tables name the same blocks there).
struct Tile {
  int64_t t0, nt, j0, j1;
};

// Do tables a and b name the same blocks for keys [j0, j1)?
bool same_blocks(const int32_t* a, const int32_t* b, int64_t j0, int64_t j1, int64_t bs) {
  if (a == b) return true;
  for (int64_t blk = j0 / bs; blk <= (j1 - 1) / bs; ++blk)
    if (a[blk] != b[blk]) return false;
  return true;
}

// Every (token, chunk) of the batch, as tiles: a token joins the previous token's tile for the same chunk
// when it reads the same keys of the same blocks (a whole chunk of a shared prefix), up to kTileTokens.
void plan_tiles(const int32_t* const* tables, const int32_t* pos, int64_t n, const AttentionParams& p,
                int64_t bs, std::vector<Tile>& tiles) {
  tiles.clear();
  int64_t max_pos = 0;
  for (int64_t t = 0; t < n; ++t) max_pos = std::max<int64_t>(max_pos, pos[t]);
  std::vector<int64_t> open(static_cast<size_t>(max_pos / kAttnChunk + 1), -1);  // [chunks] tile index
  for (int64_t t = 0; t < n; ++t) {
    const int64_t lo = first_key(pos[t], p), hi = int64_t{pos[t]} + 1;
    for (int64_t c = lo / kAttnChunk; c <= pos[t] / kAttnChunk; ++c) {
      const int64_t j0 = std::max(lo, c * kAttnChunk), j1 = std::min(hi, (c + 1) * kAttnChunk);
      const int64_t i = open[static_cast<size_t>(c)];
      if (i >= 0) {
        Tile& tl = tiles[static_cast<size_t>(i)];
        if (tl.t0 + tl.nt == t && tl.nt < kTileTokens && tl.j0 == j0 && tl.j1 == j1 &&
            same_blocks(tables[tl.t0], tables[t], j0, j1, bs)) {
          ++tl.nt;
          continue;
        }
      }
      open[static_cast<size_t>(c)] = static_cast<int64_t>(tiles.size());
      tiles.push_back({t, 1, j0, j1});
    }
  }
}

// Per-thread buffers of the chunk kernels.
struct ChunkScratch {
  std::vector<const float*> q;    // [rows]
  std::vector<float*> part;       // [rows]
  std::vector<float> s;           // [rows, kAttnChunk]
  std::vector<float> kbuf, vbuf;  // [kAttnChunk, head_dim]
};

// Runs the rows of tile `tl` that read kv head kvh.
void run_tile(PagedChunkFn fn, const Tile& tl, int64_t kvh, const float* q, const PagedKv& kv,
              const int32_t* const* tables, const AttentionParams& p, const Partials& pl, float* part,
              ChunkScratch& cs) {
  const int64_t hd = p.head_dim, group = p.n_heads / p.n_kv_heads, rows = tl.nt * group;
  cs.q.resize(static_cast<size_t>(rows));
  cs.part.resize(static_cast<size_t>(rows));
  const size_t s_need = static_cast<size_t>(rows * kAttnChunk),
               buf_need = static_cast<size_t>(kAttnChunk * hd);
  if (cs.s.size() < s_need) cs.s.resize(s_need);
  if (cs.kbuf.size() < buf_need) cs.kbuf.resize(buf_need), cs.vbuf.resize(buf_need);
  const int64_t c = tl.j0 / kAttnChunk;
  for (int64_t i = 0; i < tl.nt; ++i)
    for (int64_t g = 0; g < group; ++g) {
      const int64_t t = tl.t0 + i, h = kvh * group + g;
      cs.q[static_cast<size_t>(i * group + g)] = q + (t * p.n_heads + h) * hd;
      cs.part[static_cast<size_t>(i * group + g)] = pl.at(part, t, c, h, p);
    }
  PagedChunkArgs a;
  a.k = static_cast<const uint8_t*>(kv.k);
  a.v = static_cast<const uint8_t*>(kv.v);
  a.kind = kv_kind(kv.type);
  a.block_size = kv.block_size;
  a.head_dim = hd;
  a.block_bytes = block_bytes(kv);
  a.row_bytes = head_row_bytes(kv.type, hd);
  a.table = tables[tl.t0];
  a.kvh = kvh;
  a.j0 = tl.j0;
  a.j1 = tl.j1;
  a.n_rows = rows;
  a.q = cs.q.data();
  a.part = cs.part.data();
  a.scale = p.scale;
  a.scratch = cs.s.data();
  a.kbuf = cs.kbuf.data();
  a.vbuf = cs.vbuf.data();
  fn(a);
}

}  // namespace

bool is_kv_type(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::Q8_0;
}

size_t kv_row_bytes(DType t, int64_t n_kv_heads, int64_t head_dim) {
  return static_cast<size_t>(n_kv_heads) * head_row_bytes(t, head_dim);
}

void paged_kv_store(const PagedKv& kv, const float* k, const float* v, const int64_t* slots, int64_t n) {
  const int64_t hd = kv.head_dim, kvd = kv.n_kv_heads * hd;
  const size_t rb = head_row_bytes(kv.type, hd);
  // The AVX2 converter (on AVX-512 machines too) writes the same bytes as quantize_row, faster.
  const detail::KvRowStoreFn fast =
      std::min(active_isa(), detect_isa()) >= Isa::kAvx2 ? detail::kv_row_store_avx2() : nullptr;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < kv.n_kv_heads; ++h) {
      const size_t off = row_offset(kv, slots[i], h);
      const float* ks = k + i * kvd + h * hd;  // [hd]
      const float* vs = v + i * kvd + h * hd;  // [hd]
      if (kv.type == DType::F32) {
        std::memcpy(static_cast<uint8_t*>(kv.k) + off, ks, rb);
        std::memcpy(static_cast<uint8_t*>(kv.v) + off, vs, rb);
      } else if (fast != nullptr) {
        fast(kv_kind(kv.type), ks, hd, static_cast<uint8_t*>(kv.k) + off);
        fast(kv_kind(kv.type), vs, hd, static_cast<uint8_t*>(kv.v) + off);
      } else {
        quantize_row(kv.type, ks, static_cast<uint8_t*>(kv.k) + off, hd);
        quantize_row(kv.type, vs, static_cast<uint8_t*>(kv.v) + off, hd);
      }
    }
}

void paged_kv_load(const PagedKv& kv, int64_t slot, float* k, float* v) {
  const int kind = kv_kind(kv.type);
  const int64_t hd = kv.head_dim;
  for (int64_t h = 0; h < kv.n_kv_heads; ++h) {
    const size_t off = row_offset(kv, slot, h);
    row_to_f32(kind, static_cast<const uint8_t*>(kv.k) + off, k + h * hd, hd);
    row_to_f32(kind, static_cast<const uint8_t*>(kv.v) + off, v + h * hd, hd);
  }
}

void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out, ThreadPool& pool) {
  check_args(kv, pos, n, p);
  if (n == 0) return;
  const PagedChunkFn fn = pick_chunk_fn(p.head_dim);
  thread_local Partials pl;
  thread_local std::vector<Tile> tiles;
  thread_local std::vector<float> part_buf;  // [pl.off[n], n_heads, head_dim + 2]
  pl.plan(pos, n, p);
  plan_tiles(block_tables, pos, n, p, kv.block_size, tiles);
  const size_t need = static_cast<size_t>(pl.off[static_cast<size_t>(n)] * p.n_heads * (p.head_dim + 2));
  if (part_buf.size() < need) part_buf.resize(need);
  // The caller's thread_locals, named here (the workers' own would be other objects).
  float* const part = part_buf.data();
  const Partials& plan = pl;
  // Items (tile, kv head) by chunk, then kv head, then tile: the tiles that read the same keys and values
  // run one after another, while those are still in cache.
  thread_local std::vector<int64_t> items;     // [tiles * n_kv_heads] tile * n_kv_heads + kv head
  thread_local std::vector<int64_t> by_chunk;  // [tiles] tile indices ordered by chunk
  by_chunk.resize(tiles.size());
  std::iota(by_chunk.begin(), by_chunk.end(), 0);
  std::stable_sort(by_chunk.begin(), by_chunk.end(), [&](int64_t x, int64_t y) {
    return tiles[static_cast<size_t>(x)].j0 / kAttnChunk < tiles[static_cast<size_t>(y)].j0 / kAttnChunk;
  });
  items.clear();
  for (size_t b = 0; b < by_chunk.size();) {
    size_t e = b;  // [b, e): the tiles of one chunk
    while (e < by_chunk.size() && tiles[static_cast<size_t>(by_chunk[e])].j0 / kAttnChunk ==
                                      tiles[static_cast<size_t>(by_chunk[b])].j0 / kAttnChunk)
      ++e;
    for (int64_t h = 0; h < p.n_kv_heads; ++h)
      for (size_t i = b; i < e; ++i) items.push_back(by_chunk[i] * p.n_kv_heads + h);
    b = e;
  }
  const Tile* const tl = tiles.data();
  const int64_t* const it = items.data();
  pool.parallel_for(static_cast<int64_t>(items.size()), 1, [&](int64_t b, int64_t e) {
    thread_local ChunkScratch cs;
    for (int64_t i = b; i < e; ++i)
      run_tile(fn, tl[it[i] / p.n_kv_heads], it[i] % p.n_kv_heads, q, kv, block_tables, p, plan, part, cs);
  });
  pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) merge(plan, part, t, p, out);
  });
}

namespace ref {
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out) {
  check_args(kv, pos, n, p);
  Partials pl;
  pl.plan(pos, n, p);
  std::vector<float> part(static_cast<size_t>(pl.off[static_cast<size_t>(n)] * p.n_heads * (p.head_dim + 2)));
  ChunkScratch cs;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t lo = first_key(pos[t], p);
    for (int64_t c = lo / kAttnChunk; c <= pos[t] / kAttnChunk; ++c) {
      const Tile tl{t, 1, std::max(lo, c * kAttnChunk), std::min(int64_t{pos[t]} + 1, (c + 1) * kAttnChunk)};
      for (int64_t kvh = 0; kvh < p.n_kv_heads; ++kvh)
        run_tile(chunk_portable, tl, kvh, q, kv, block_tables, p, pl, part.data(), cs);
    }
    merge(pl, part.data(), t, p, out);
  }
}
}  // namespace ref

}  // namespace mixtral::kernels
