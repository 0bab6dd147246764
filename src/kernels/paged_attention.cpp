#include "kernels/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/internal.h"

namespace mixtral::kernels {

namespace {

// Dot product in 8 independent lanes (vectorisable without -ffast-math), summed pairwise: a fixed order, so
// every caller gets the same bits.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  for (; i < n; ++i) acc[i % 8] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// One (token, head): scores into s (scratch [pos + 1]), softmax, weighted sum of values into o.
void attend_one(const float* qh, const PagedKv& kv, const int32_t* table, int64_t pos, int64_t kvh,
                const AttentionParams& p, float* s, float* o) {
  const int64_t hd = p.head_dim, kvd = p.n_kv_heads * hd, bs = kv.block_size;
  const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
  float mx = -INFINITY;
  for (int64_t j = lo; j <= pos; ++j) {
    const float* kj = static_cast<const float*>(kv.k) + (static_cast<int64_t>(table[j / bs]) * bs + j % bs) * kvd + kvh * hd;
    s[j] = dot(qh, kj, hd) * p.scale;
    mx = std::max(mx, s[j]);
  }
  float sum = 0.0f;
  for (int64_t j = lo; j <= pos; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < hd; ++i) o[i] = 0.0f;
  for (int64_t j = lo; j <= pos; ++j) {
    const float* vj = static_cast<const float*>(kv.v) + (static_cast<int64_t>(table[j / bs]) * bs + j % bs) * kvd + kvh * hd;
    const float w = s[j] * inv;
    for (int64_t i = 0; i < hd; ++i) o[i] += w * vj[i];
  }
}

// Items [begin, end) of n * n_kv_heads (token t = i / n_kv_heads, kv head i % n_kv_heads): the group of
// query heads that read that kv head, through the table's fast path if it has one.
void attend_range(const detail::PagedAttnFn fast, const float* q, const PagedKv& kv,
                  const int32_t* const* tables, const int32_t* pos, const AttentionParams& p, float* out,
                  int64_t begin, int64_t end, std::vector<float>& s) {
  const int64_t hd = p.head_dim, group = p.n_heads / p.n_kv_heads;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t t = i / p.n_kv_heads, kvh = i % p.n_kv_heads;
    const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos[t] - p.window + 1) : 0;
    const size_t need = static_cast<size_t>(group * (pos[t] + 1));
    if (s.size() < need) s.resize(need);
    const float* qg = q + (t * p.n_heads + kvh * group) * hd;  // [group, hd]
    float* og = out + (t * p.n_heads + kvh * group) * hd;      // [group, hd]
    if (fast != nullptr) {
      const detail::PagedAttnArgs a{qg,    static_cast<const float*>(kv.k), static_cast<const float*>(kv.v), tables[t], kv.block_size, p.n_kv_heads, hd,
                                    group, kvh,  lo,   pos[t],    p.scale,       og,           s.data()};
      fast(a);
    } else {
      for (int64_t g = 0; g < group; ++g)
        attend_one(qg + g * hd, kv, tables[t], pos[t], kvh, p, s.data(), og + g * hd);
    }
  }
}

void check_args(const PagedKv& kv, const int32_t* pos, int64_t n, const AttentionParams& p) {
  MX_CHECK(kv.block_size > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0,
           "paged_attention: bad params");
  for (int64_t t = 0; t < n; ++t) MX_CHECK(pos[t] >= 0, "paged_attention: negative position %d", pos[t]);
}

}  // namespace

void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out, ThreadPool& pool) {
  check_args(kv, pos, n, p);
  const detail::PagedAttnFn fast = p.head_dim % 8 == 0 ? detail::active_table().paged_attn : nullptr;
  pool.parallel_for(n * p.n_kv_heads, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> s;  // [group, max pos + 1] scores of one (token, kv head)
    attend_range(fast, q, kv, block_tables, pos, p, out, b, e, s);
  });
}

namespace ref {
void paged_attention(const float* q, const PagedKv& kv, const int32_t* const* block_tables,
                     const int32_t* pos, int64_t n, const AttentionParams& p, float* out) {
  check_args(kv, pos, n, p);
  std::vector<float> s;  // [group, max pos + 1]
  attend_range(nullptr, q, kv, block_tables, pos, p, out, 0, n * p.n_kv_heads, s);
}
}  // namespace ref

}  // namespace mixtral::kernels
