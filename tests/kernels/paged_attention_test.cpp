// Paged attention over typed KV caches (f32, f16, q8_0): the stored rows against their rounding rules, the
// attention of every instruction set against a float64 softmax of the cache's own (dequantized) contents,
// and the determinism guarantees bit for bit: thread count, batch composition, prefill vs decode.
#include "kernels/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

// One layer's pool with sequences in scattered blocks, every position of every sequence written by
// paged_kv_store (random K and V, normal).
struct Cache {
  DType type;
  int64_t n_kv_heads, head_dim, block_size;
  std::vector<uint8_t> k, v;                // [n_blocks, block_bytes]
  std::vector<std::vector<int32_t>> table;  // per sequence: its blocks

  Cache(DType t, int64_t nkv, int64_t hd, int64_t bs, const std::vector<int64_t>& lens, uint32_t seed)
      : type(t), n_kv_heads(nkv), head_dim(hd), block_size(bs) {
    int64_t n_blocks = 3;  // a few never used
    for (int64_t len : lens) n_blocks += (len + bs - 1) / bs;
    const size_t bb = static_cast<size_t>(bs) * kv_row_bytes(t, nkv, hd);
    k.assign(static_cast<size_t>(n_blocks) * bb, 0xff);  // 0xff..: NaN in every type if ever read
    v.assign(k.size(), 0xff);
    std::vector<int32_t> ids(static_cast<size_t>(n_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::normal_distribution<float> nd;
    size_t next = 0;
    for (int64_t len : lens) {
      std::vector<int32_t> tb(
          ids.begin() + static_cast<long>(next),
          ids.begin() + static_cast<long>(next + static_cast<size_t>((len + bs - 1) / bs)));
      next += tb.size();
      std::vector<float> kr(static_cast<size_t>(len * nkv * hd)), vr(kr.size());  // [len, nkv * hd]
      for (float& f : kr) f = nd(rng);
      for (float& f : vr) f = nd(rng);
      std::vector<int64_t> slots(static_cast<size_t>(len));
      for (int64_t j = 0; j < len; ++j)
        slots[static_cast<size_t>(j)] = int64_t{tb[static_cast<size_t>(j / bs)]} * bs + j % bs;
      paged_kv_store(kv(), kr.data(), vr.data(), slots.data(), len);
      table.push_back(std::move(tb));
    }
  }
  PagedKv kv() const {
    return PagedKv{const_cast<uint8_t*>(k.data()),
                   const_cast<uint8_t*>(v.data()),
                   type,
                   block_size,
                   n_kv_heads,
                   head_dim};
  }
  // Position j of sequence s, dequantized:  kr, vr: [n_kv_heads * head_dim]
  void load(int64_t s, int64_t j, float* kr, float* vr) const {
    paged_kv_load(kv(),
                  int64_t{table[static_cast<size_t>(s)][static_cast<size_t>(j / block_size)]} * block_size +
                      j % block_size,
                  kr, vr);
  }
};

// A batch of (sequence, position) queries.
struct Batch {
  std::vector<int32_t> pos;          // [n]
  std::vector<const int32_t*> tabs;  // [n]
  std::vector<int64_t> seq;          // [n]
  void add(const Cache& c, int64_t s, int32_t p) {
    pos.push_back(p);
    tabs.push_back(c.table[static_cast<size_t>(s)].data());
    seq.push_back(s);
  }
  int64_t n() const { return static_cast<int64_t>(pos.size()); }
};

// Softmax attention in float64 over the cache's dequantized rows.   q: [n, H, hd] -> [n, H, hd]
std::vector<double> attention_f64(const Cache& c, const Batch& b, const std::vector<float>& q,
                                  const AttentionParams& p) {
  const int64_t hd = p.head_dim, H = p.n_heads, kvd = p.n_kv_heads * hd, group = H / p.n_kv_heads;
  std::vector<double> out(static_cast<size_t>(b.n() * H * hd), 0.0);
  std::vector<float> kr(static_cast<size_t>(kvd)), vr(kr.size());
  for (int64_t t = 0; t < b.n(); ++t) {
    const int64_t pos = b.pos[static_cast<size_t>(t)],
                  lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
    std::vector<double> s(static_cast<size_t>(H * (pos + 1 - lo)));  // [H, keys]
    std::vector<std::vector<float>> vs;                              // [keys][kvd]
    for (int64_t j = lo; j <= pos; ++j) {
      c.load(b.seq[static_cast<size_t>(t)], j, kr.data(), vr.data());
      vs.push_back(vr);
      for (int64_t h = 0; h < H; ++h) {
        double d = 0;
        for (int64_t i = 0; i < hd; ++i)
          d += static_cast<double>(q[static_cast<size_t>((t * H + h) * hd + i)]) *
               kr[static_cast<size_t>(h / group * hd + i)];
        s[static_cast<size_t>(h * (pos + 1 - lo) + j - lo)] = d * p.scale;
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      double* sh = s.data() + h * (pos + 1 - lo);
      const double mx = *std::max_element(sh, sh + pos + 1 - lo);
      double sum = 0;
      for (int64_t j = 0; j <= pos - lo; ++j) sum += sh[j] = std::exp(sh[j] - mx);
      for (int64_t j = 0; j <= pos - lo; ++j)
        for (int64_t i = 0; i < hd; ++i)
          out[static_cast<size_t>((t * H + h) * hd + i)] +=
              sh[j] / sum * vs[static_cast<size_t>(j)][static_cast<size_t>(h / group * hd + i)];
    }
  }
  return out;
}

std::vector<float> random_q(int64_t n, const AttentionParams& p, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);  // scores of a few units: a peaked softmax
  std::vector<float> q(static_cast<size_t>(n * p.n_heads * p.head_dim));
  for (float& f : q) f = nd(rng);
  return q;
}

std::vector<float> run(const Cache& c, const Batch& b, const std::vector<float>& q, const AttentionParams& p,
                       ThreadPool& pool) {
  std::vector<float> out(q.size(), NAN);
  paged_attention(q.data(), c.kv(), b.tabs.data(), b.pos.data(), b.n(), p, out.data(), pool);
  return out;
}

// Every instruction set this CPU runs, the portable one first.
std::vector<Isa> isas() {
  std::vector<Isa> r;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (static_cast<int>(i) <= static_cast<int>(detect_isa())) r.push_back(i);
  return r;
}

std::string type_name(DType t) {
  return std::string(dtype_name(t));
}

TEST(PagedKv, RowBytesAndTypes) {
  EXPECT_TRUE(is_kv_type(DType::F32));
  EXPECT_TRUE(is_kv_type(DType::F16));
  EXPECT_TRUE(is_kv_type(DType::Q8_0));
  EXPECT_FALSE(is_kv_type(DType::Q4_0));
  EXPECT_FALSE(is_kv_type(DType::BF16));
  EXPECT_EQ(kv_row_bytes(DType::F32, 8, 128), 8u * 128 * 4);  // 8x7B: 4 KiB per position and layer
  EXPECT_EQ(kv_row_bytes(DType::F16, 8, 128), 8u * 128 * 2);
  EXPECT_EQ(kv_row_bytes(DType::Q8_0, 8, 128), 8u * 4 * 34);
}

// Round trip through scattered blocks: f32 exact, f16 the round-to-nearest-even half, q8_0 within half a
// step of its block's scale plus the scale's own fp16 rounding (127 steps of it); no row touches another.
TEST(PagedKv, StoreLoadRoundTrip) {
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    SCOPED_TRACE(type_name(t));
    const int64_t nkv = 3, hd = 64, bs = 8, n_blocks = 5, n = n_blocks * bs, kvd = nkv * hd;
    std::vector<uint8_t> k(static_cast<size_t>(n_blocks * bs) * kv_row_bytes(t, nkv, hd)), v(k.size());
    const PagedKv kv{k.data(), v.data(), t, bs, nkv, hd};
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    std::vector<float> kr(static_cast<size_t>(n * kvd)), vr(kr.size());  // [n, kvd]
    for (size_t i = 0; i < kr.size(); ++i) {
      kr[i] = nd(rng) * (i % 97 == 0 ? 1000.0f : 1.0f);  // some large values: f16 rounding, q8 scales
      vr[i] = nd(rng) * (i % 5 == 0 ? 1e-6f : 1e-3f);    // some f16 subnormals
    }
    std::fill(kr.begin(), kr.begin() + 32, 0.0f);  // an all-zero q8_0 block (scale 0)
    for (int j = 0; j < 32; ++j)  // scale exactly 1, so x / d lands on halves: rounded away from zero
      kr[static_cast<size_t>(32 + j)] =
          j == 0 ? 127.0f : (j % 2 ? 1.0f : -1.0f) * (static_cast<float>(j / 2) + 0.5f);
    std::vector<int64_t> slots(static_cast<size_t>(n));  // every slot once, in a scattered order
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    // Every ISA's converter writes the bytes quantize_row does (the portable path's).
    std::vector<uint8_t> k0, v0;
    for (Isa isa : isas()) {
      set_isa(isa);
      std::fill(k.begin(), k.end(), 0);
      std::fill(v.begin(), v.end(), 0);
      paged_kv_store(kv, kr.data(), vr.data(), slots.data(), n / 2);  // in two calls
      paged_kv_store(kv, kr.data() + n / 2 * kvd, vr.data() + n / 2 * kvd, slots.data() + n / 2, n - n / 2);
      if (isa == Isa::kScalar) {
        k0 = k;
        v0 = v;
      }
      EXPECT_TRUE(k == k0 && v == v0) << isa_name(isa);
    }
    set_isa(detect_isa());
    std::vector<float> kl(static_cast<size_t>(kvd)), vl(kl.size());
    for (int64_t i = 0; i < n; ++i) {
      paged_kv_load(kv, slots[static_cast<size_t>(i)], kl.data(), vl.data());
      for (const auto& [src, got] :
           {std::pair{kr.data() + i * kvd, kl.data()}, std::pair{vr.data() + i * kvd, vl.data()}}) {
        for (int64_t b = 0; b < kvd; b += 32) {
          float amax = 0;
          for (int64_t e = b; e < b + 32; ++e) amax = std::max(amax, std::fabs(src[e]));
          const float d = amax / 127.0f, d16 = fp16_to_f32(f32_to_fp16(d));
          for (int64_t e = b; e < b + 32; ++e) {
            if (t == DType::F32) {
              ASSERT_EQ(got[e], src[e]) << i << " " << e;
            } else if (t == DType::F16) {
              ASSERT_EQ(got[e], fp16_to_f32(f32_to_fp16(src[e]))) << i << " " << e;
            } else {
              ASSERT_LE(std::fabs(got[e] - src[e]), d / 2 + 127 * std::fabs(d16 - d) + 1e-6f * amax)
                  << i << " " << e;
            }
          }
        }
      }
    }
  }
}

// Query positions around block (16) and chunk (256) boundaries of a 700-position sequence.
const std::vector<int32_t> kPositions = {0, 1, 15, 16, 17, 255, 256, 257, 300, 511, 512, 513, 699};

// Every type, window and instruction set against float64; GQA 8 query heads on 2 kv heads. Tolerance:
// scores of magnitude up to ~10 carry f32 rounding of ~1e-6 (64-term dots; a polynomial exp within 2 ulp),
// which moves an output, a convex combination of values |v| < 5, by a few 1e-6: 2e-5 is ~10x the largest
// error seen (2.1e-6, every ISA and type alike: the reference's dequantized rows are the kernels' input).
TEST(PagedAttention, MatchesFloat64Reference) {
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    const Cache c(t, 2, 64, 16, {700, 40}, 5);
    for (int64_t window : {int64_t{0}, int64_t{300}}) {
      const AttentionParams p{8, 2, 64, window, 1.0f / 8.0f};
      Batch b;
      for (int32_t pos : kPositions) b.add(c, 0, pos);
      b.add(c, 1, 39);
      const std::vector<float> q = random_q(b.n(), p, 9);
      const std::vector<double> want = attention_f64(c, b, q, p);
      std::vector<float> got_ref(q.size());
      ref::paged_attention(q.data(), c.kv(), b.tabs.data(), b.pos.data(), b.n(), p, got_ref.data());
      ThreadPool pool(2);
      for (Isa isa : isas()) {
        set_isa(isa);
        SCOPED_TRACE(type_name(t) + " window " + std::to_string(window) + " " + isa_name(isa));
        const std::vector<float> got = run(c, b, q, p, pool);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], want[i], 2e-5) << i;
          ASSERT_NEAR(got_ref[i], want[i], 2e-5) << i;
          if (isa == Isa::kScalar) {
            ASSERT_EQ(got[i], got_ref[i]) << i;  // the reference's own arithmetic
          }
        }
      }
    }
  }
  set_isa(detect_isa());
}

// head_dim 12 (no SIMD kernel: portable) and 24 (AVX2's 8-wide kernel under AVX-512 too).
TEST(PagedAttention, OddHeadDims) {
  for (int64_t hd : {int64_t{12}, int64_t{24}}) {
    for (DType t : {DType::F32, DType::F16}) {
      const Cache c(t, 2, hd, 16, {600}, 6);
      const AttentionParams p{4, 2, hd, 0, 1.0f / std::sqrt(static_cast<float>(hd))};
      Batch b;
      for (int32_t pos : {0, 16, 255, 256, 599}) b.add(c, 0, pos);
      const std::vector<float> q = random_q(b.n(), p, 10);
      const std::vector<double> want = attention_f64(c, b, q, p);
      ThreadPool pool(2);
      for (Isa isa : isas()) {
        set_isa(isa);
        SCOPED_TRACE(type_name(t) + " hd " + std::to_string(hd) + " " + isa_name(isa));
        const std::vector<float> got = run(c, b, q, p, pool);
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-5) << i;
      }
    }
  }
  set_isa(detect_isa());
}

void expect_same_bits(const std::vector<float>& a, const float* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(a[i], b[i]) << what << " " << i;
}

// Per instruction set and type: a 300-token prefill after a 260-token cached prefix (so its tokens share
// whole chunks) gives the same bits as decoding the tokens one at a time, as at 1, 2 and 3 threads, as
// in a batch mixed with another sequence's tokens, and as a second sequence whose table names the same
// prefix blocks (shared prompt) prefilled beside it.
TEST(PagedAttention, BitwiseBatchAndThreadInvariant) {
  const int64_t H = 8, KVH = 2, hd = 32, bs = 16, n_pre = 260, n_new = 300;
  ThreadPool pool1(1), pool2(2), pool3(3);
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    Cache c(t, KVH, hd, bs, {n_pre + n_new, 50}, 8);
    // Sequence 2: sequence 0's first 256 / 16 blocks (a shared prompt) then blocks of its own
    // (sequence 1's, whose rows differ).
    std::vector<int32_t> shared(c.table[0].begin(), c.table[0].begin() + 16);
    shared.insert(shared.end(), c.table[1].begin(), c.table[1].end());
    c.table.push_back(shared);
    for (int64_t window : {int64_t{0}, int64_t{200}}) {
      const AttentionParams p{H, KVH, hd, window, 1.0f / std::sqrt(32.0f)};
      Batch prefill, mixed, seq2;
      for (int64_t i = 0; i < n_new; ++i) prefill.add(c, 0, static_cast<int32_t>(n_pre + i));
      const std::vector<float> q = random_q(n_new, p, 12);
      const size_t row = static_cast<size_t>(H * hd);
      for (Isa isa : isas()) {
        set_isa(isa);
        SCOPED_TRACE(type_name(t) + " window " + std::to_string(window) + " " + isa_name(isa));
        const std::vector<float> want = run(c, prefill, q, p, pool2);
        // One by one.
        for (int64_t i = 0; i < n_new;
             i += 11) {  // every 4th at 3 threads (the rest at 1: quick when loaded)
          Batch one;
          one.add(c, 0, prefill.pos[static_cast<size_t>(i)]);
          const std::vector<float> qi(q.begin() + static_cast<long>(i * static_cast<int64_t>(row)),
                                      q.begin() + static_cast<long>((i + 1) * static_cast<int64_t>(row)));
          expect_same_bits(run(c, one, qi, p, i % 44 == 0 ? pool3 : pool1),
                           want.data() + i * static_cast<int64_t>(row), row, "decode " + std::to_string(i));
        }
        // Threads.
        expect_same_bits(run(c, prefill, q, p, pool1), want.data(), want.size(), "1 thread");
        expect_same_bits(run(c, prefill, q, p, pool3), want.data(), want.size(), "3 threads");
        // Mixed: sequence 1 decode tokens before, inside and after; sequence 2 (shared prefix) beside.
        Batch mix;
        std::vector<float> qm;
        std::vector<int64_t> from;  // [mix.n()] row of `want` or -1
        const std::vector<float> qx = random_q(4, p, 13);
        auto add = [&](int64_t s, int32_t pos, const float* qr, int64_t w) {
          mix.add(c, s, pos);
          qm.insert(qm.end(), qr, qr + row);
          from.push_back(w);
        };
        add(1, 49, qx.data(), -1);
        for (int64_t i = 0; i < n_new; ++i) {
          if (i == 100) add(2, 270, qx.data() + row, -1);
          if (i == 250) add(1, 20, qx.data() + 2 * row, -1);
          add(0, prefill.pos[static_cast<size_t>(i)], q.data() + i * static_cast<int64_t>(row), i);
          if (i >= 200 && i < 220)
            add(2, static_cast<int32_t>(256 + (i - 200)), q.data() + i * static_cast<int64_t>(row), -1);
        }
        const std::vector<float> got = run(c, mix, qm, p, pool2);
        for (int64_t m = 0; m < mix.n(); ++m)
          if (from[static_cast<size_t>(m)] >= 0)
            expect_same_bits(std::vector<float>(got.begin() + m * static_cast<int64_t>(row),
                                                got.begin() + (m + 1) * static_cast<int64_t>(row)),
                             want.data() + from[static_cast<size_t>(m)] * static_cast<int64_t>(row), row,
                             "mixed");
        // Sequence 2's tokens (sharing sequence 0's chunk 0 in the mixed batch) equal them alone.
        for (int64_t m = 0; m < mix.n(); ++m) {
          if (mix.seq[static_cast<size_t>(m)] != 2) continue;
          Batch one;
          one.add(c, 2, mix.pos[static_cast<size_t>(m)]);
          const std::vector<float> qi(qm.begin() + m * static_cast<int64_t>(row),
                                      qm.begin() + (m + 1) * static_cast<int64_t>(row));
          expect_same_bits(run(c, one, qi, p, pool1), got.data() + m * static_cast<int64_t>(row), row,
                           "shared prefix");
        }
      }
    }
  }
  set_isa(detect_isa());
}

TEST(PagedAttentionDeathTest, Q8_0NeedsWholeBlocksPerHead) {
  EXPECT_DEATH(kv_row_bytes(DType::Q8_0, 8, 48), "head_dim 48");
  EXPECT_DEATH(kv_row_bytes(DType::Q4_0, 8, 64), "not a cache type");
}

}  // namespace
}  // namespace mixtral::kernels
