// Paged KV cache, paged attention over every cache type and the step function: a prefill equal to decoding
// token by token, and per-token results independent of what else shares the batch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>

#include "kernels/paged_attention.h"
#include "model/test_model.h"
#include "runtime/runtime.h"

namespace mixtral {
namespace {

// Causal attention of one query row over rows [lo, pos] of contiguous k, v, in double: the independent
// reference.   q: [n_heads, hd]; k, v: [n_pos, n_kv_heads, hd]; out: [n_heads, hd]
void attention_f64(const float* q, const float* k, const float* v, int64_t pos, int64_t window,
                   const kernels::AttentionParams& p, float* out) {
  const int64_t hd = p.head_dim, group = p.n_heads / p.n_kv_heads, kvd = p.n_kv_heads * hd;
  const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  for (int64_t h = 0; h < p.n_heads; ++h) {
    const int64_t kvh = h / group;
    std::vector<double> s(static_cast<size_t>(pos + 1));
    double mx = -INFINITY, sum = 0;
    for (int64_t j = lo; j <= pos; ++j) {
      double d = 0;
      for (int64_t i = 0; i < hd; ++i) d += static_cast<double>(q[h * hd + i]) * k[j * kvd + kvh * hd + i];
      s[static_cast<size_t>(j)] = d * p.scale;
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    for (int64_t j = lo; j <= pos; ++j)
      sum += s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx);
    for (int64_t i = 0; i < hd; ++i) {
      double o = 0;
      for (int64_t j = lo; j <= pos; ++j) o += s[static_cast<size_t>(j)] / sum * v[j * kvd + kvh * hd + i];
      out[h * hd + i] = static_cast<float>(o);
    }
  }
}

// Mixtral's attention shape (32 query heads on 8 kv heads of 128) over 1000 positions in shuffled blocks
// of 16, with and without a window, for every cache type: within 2e-5 of the double reference over the
// rows the cache holds (read back with paged_kv_load), and 1 thread == 2 threads bit for bit.
TEST(PagedAttention, MixtralShapeLongContextWindowAndCacheTypes) {
  const int64_t H = 32, KVH = 8, hd = 128, bs = 16, n_ctx = 1000, n_blocks = (n_ctx + bs - 1) / bs + 3;
  const int64_t kvd = KVH * hd;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> k(static_cast<size_t>(n_ctx * kvd)), v(k.size());  // [n_ctx, KVH, hd]
  for (auto* a : {&k, &v})
    for (float& f : *a) f = nd(rng);
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<int64_t> slots(static_cast<size_t>(n_ctx));  // [n_ctx]
  for (int64_t j = 0; j < n_ctx; ++j)
    slots[static_cast<size_t>(j)] = table[static_cast<size_t>(j / bs)] * bs + j % bs;
  const std::vector<int32_t> pos = {0, 1, 17, 255, 256, 500, 998, 999};  // [n] query positions
  const int64_t n = static_cast<int64_t>(pos.size());
  std::vector<float> q(static_cast<size_t>(n * H * hd));  // [n, H, hd]
  for (float& f : q) f = nd(rng);
  std::vector<const int32_t*> tables(static_cast<size_t>(n), table.data());
  ThreadPool pool1(1), pool2(2);
  for (DType type : {DType::F32, DType::F16, DType::Q8_0}) {
    const size_t block_bytes = static_cast<size_t>(bs) * kernels::kv_row_bytes(type, KVH, hd);
    std::vector<uint8_t> pk(static_cast<size_t>(n_blocks) * block_bytes), pv(pk.size());
    const kernels::PagedKv kv{pk.data(), pv.data(), type, bs, KVH, hd};
    kernels::paged_kv_store(kv, k.data(), v.data(), slots.data(), n_ctx);
    std::vector<float> kc(k.size()), vc(v.size());  // [n_ctx, KVH, hd] what the cache holds
    for (int64_t j = 0; j < n_ctx; ++j)
      kernels::paged_kv_load(kv, slots[static_cast<size_t>(j)], kc.data() + j * kvd, vc.data() + j * kvd);
    double worst = 0;  // the type's rounding of the rows
    for (size_t i = 0; i < k.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::fabs(kc[i] - k[i])));
    EXPECT_LT(worst, type == DType::F32 ? 1e-30 : type == DType::F16 ? 4e-3 : 3e-2) << dtype_name(type);
    for (int64_t window : {int64_t{0}, int64_t{100}}) {
      const kernels::AttentionParams p{H, KVH, hd, window, 1.0f / std::sqrt(128.0f)};
      std::vector<float> want(q.size()), got1(q.size()), got2(q.size());
      for (int64_t t = 0; t < n; ++t)
        attention_f64(q.data() + t * H * hd, kc.data(), vc.data(), pos[static_cast<size_t>(t)], window, p,
                      want.data() + t * H * hd);
      SCOPED_TRACE(std::string(dtype_name(type)) + " window " + std::to_string(window));
      kernels::paged_attention(q.data(), kv, tables.data(), pos.data(), n, p, got1.data(), pool1);
      kernels::paged_attention(q.data(), kv, tables.data(), pos.data(), n, p, got2.data(), pool2);
      for (size_t i = 0; i < got1.size(); ++i) {
        ASSERT_NEAR(got1[i], want[i], 2e-5f) << i;
        ASSERT_EQ(got1[i], got2[i]) << i;
      }
    }
  }
}

TEST(PagedKvCache, RefcountsPrefixCacheAndEviction) {
  ModelConfig c;
  c.n_layers = 1;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  PagedKvCache kv(c, DType::F16, 3, 2);
  EXPECT_EQ(kv.bytes_per_token(), 2u * 2 * 4);  // K and V, 4 halves each
  EXPECT_EQ(kv.bytes(), 3u * 2 * kv.bytes_per_token());
  const int32_t t1[2] = {5, 6}, t2[2] = {7, 8};
  const uint64_t h1 = PagedKvCache::block_hash(0, t1, 2), h2 = PagedKvCache::block_hash(h1, t2, 2);
  EXPECT_NE(h1, PagedKvCache::block_hash(0, t2, 2));
  int32_t a = kv.allocate(), b = kv.allocate();
  EXPECT_EQ(kv.n_in_use(), 2);
  EXPECT_EQ(kv.lookup(h1, 0, t1), -1);
  kv.publish(a, h1, 0, t1);
  kv.publish(b, h2, h1, t2);
  EXPECT_EQ(kv.lookup(h1, 0, t1), a);  // shared: refcount 2
  EXPECT_EQ(kv.refcount(a), 2);
  EXPECT_EQ(kv.lookup(h2, 0, t2), -1);  // same hash but another parent: no match
  kv.release(a);
  kv.release(a);
  kv.release(b);
  EXPECT_EQ(kv.n_in_use(), 0);
  EXPECT_EQ(kv.n_cached_idle(), 2);
  EXPECT_EQ(kv.n_available(), 3);
  EXPECT_EQ(kv.lookup(h1, 0, t1), a);  // still cached after release
  kv.release(a);
  int32_t f = kv.allocate();  // the never-published block first
  EXPECT_NE(f, a);
  EXPECT_NE(f, b);
  int32_t g = kv.allocate();  // then the least recently used cached block (b), unpublished
  EXPECT_EQ(g, b);
  EXPECT_EQ(kv.lookup(h2, h1, t2), -1);
  EXPECT_EQ(kv.allocate(), a);
  EXPECT_EQ(kv.allocate(), -1);
}

class PagedForward : public ::testing::TestWithParam<const char*> {
 protected:
  static std::string model_path(const std::string& type) {
    const auto dir =
        std::filesystem::temp_directory_path() / ("mixtral-runtime-test-" + std::to_string(::getpid()));
    const std::string path = (dir / ("gguf-merged-" + type + ".gguf")).string();
    if (!std::filesystem::exists(path)) {
      TestModelSpec spec;
      spec.config.dim = 64;
      spec.config.ffn_dim = 96;
      spec.config.n_layers = 2;
      spec.config.n_heads = 4;
      spec.config.n_kv_heads = 2;
      spec.config.head_dim = 16;
      spec.config.n_experts = 8;
      spec.config.n_experts_used = 2;
      spec.config.vocab_size = 300;
      spec.config.max_seq_len = 256;
      spec.types = {*dtype_from_name(type)};
      spec.layouts = {"gguf-merged"};
      spec.out_dir = dir.string();
      ThreadPool pool(2);
      Status st = make_test_model(spec, pool);
      EXPECT_TRUE(st.ok()) << st.error().message;
    }
    return path;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                ("mixtral-runtime-test-" + std::to_string(::getpid())));
  }
};

std::vector<int32_t> tokens_of(int seed, int n, int vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    t[static_cast<size_t>(i)] = static_cast<int32_t>((seed * 131 + i * 17 + 3) % vocab);
  return t;
}

// A prefill in chunks (SoloSequence: 16, 16, 5 tokens) gives every position the bits of decoding the same
// tokens one at a time, for every cache type; f16 and q8_0 caches stay close to the f32 cache.
TEST_P(PagedForward, PrefillChunksEqualTokenByTokenDecode) {
  auto m = load_model(model_path(GetParam()));
  ASSERT_TRUE(m.ok()) << m.error().message;
  const Model& model = **m;
  const int64_t V = model.config.vocab_size, n = 37;
  ThreadPool pool(2);
  Runtime rt(model, {16}, pool);
  const auto toks = tokens_of(1, n, static_cast<int>(V));
  std::vector<float> f32_logits;  // [n, V]
  for (DType type : {DType::F32, DType::F16, DType::Q8_0}) {
    SCOPED_TRACE(dtype_name(type));
    if (type == DType::Q8_0 && model.config.head_dim % 32 != 0) continue;
    PagedKvCache kv(model.config, type, 4, 16);
    SoloSequence seq(rt, kv, 64);
    std::vector<float> chunked(static_cast<size_t>(n * V)), single(chunked.size());  // [n, V]
    ASSERT_TRUE(seq.eval(toks.data(), n, 0, chunked.data(), true).ok());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_TRUE(seq.eval(toks.data() + i, 1, i, single.data() + i * V, true).ok());
    for (size_t i = 0; i < chunked.size(); ++i) ASSERT_EQ(chunked[i], single[i]) << i;
    if (type == DType::F32) f32_logits = chunked;
    for (size_t i = 0; i < chunked.size(); ++i)
      ASSERT_NEAR(chunked[i], f32_logits[i], 0.05f * (1 + std::fabs(f32_logits[i]))) << i;
    EXPECT_EQ(seq.eval(toks.data(), 60, 10, chunked.data(), false).error().kind, ErrorKind::kUsage);
  }
}

// Greedy answers must not depend on the batch: the logits of a token evaluated alone and evaluated among
// other sequences' tokens (prefill chunks of 1..40 tokens of another sequence) must be bitwise equal, with
// every kernel instruction set this CPU runs.
TEST_P(PagedForward, PerTokenResultsIndependentOfBatchComposition) {
  auto m = load_model(model_path(GetParam()));
  ASSERT_TRUE(m.ok()) << m.error().message;
  const Model& model = **m;
  const int64_t V = model.config.vocab_size;
  ThreadPool pool(2);
  Runtime rt(model, {64}, pool);
  const auto a = tokens_of(2, 20, static_cast<int>(V)), b = tokens_of(3, 64, static_cast<int>(V));
  PagedKvCache kv(model.config, DType::F16, 16, 16);
  const std::vector<int32_t> ta = {0, 1}, tb = {2, 3, 4, 5}, ta2 = {6, 7};
  const kernels::Isa saved = kernels::active_isa();
  for (kernels::Isa isa : {kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (static_cast<int>(isa) > static_cast<int>(kernels::detect_isa())) continue;
    kernels::set_isa(isa);
    SCOPED_TRACE(kernels::isa_name(isa));
    // Alone: a's 20 tokens one at a time (decode path, batch of 1).
    std::vector<float> alone(static_cast<size_t>(20 * V)), mixed(static_cast<size_t>(20 * V));
    for (int32_t i = 0; i < 20; ++i) {
      BatchToken e{a[static_cast<size_t>(i)], i, ta.data(), true};
      rt.step(&e, 1, kv, alone.data() + i * V);
    }
    // Mixed: the same tokens of a (in other blocks), each step sharing the batch with 1..40 tokens of b
    // (b's positions [i, i + nb) are rewritten with the same tokens; earlier ones exist from earlier steps).
    for (int32_t i = 0; i < 20; ++i) {
      std::vector<BatchToken> e;
      const int32_t nb = 1 + (i * 7) % 40;
      for (int32_t j = 0; j < nb && i + j < 64; ++j)
        e.push_back({b[static_cast<size_t>(i + j)], i + j, tb.data(), j == nb - 1});
      e.insert(e.begin() + nb / 2, BatchToken{a[static_cast<size_t>(i)], i, ta2.data(), true});
      std::vector<float> lg(
          static_cast<size_t>(2 * V));  // [2, V]: b's last token and a's token, in entry order
      rt.step(e.data(), static_cast<int64_t>(e.size()), kv, lg.data());
      std::copy_n(lg.begin(), V, mixed.begin() + i * V);
    }
    int64_t differ = 0;
    float max_diff = 0;
    for (size_t i = 0; i < alone.size(); ++i) {
      differ += alone[i] != mixed[i];
      max_diff = std::max(max_diff, std::fabs(alone[i] - mixed[i]));
    }
    EXPECT_EQ(differ, 0) << "max |diff| " << max_diff;
  }
  kernels::set_isa(saved);
}

INSTANTIATE_TEST_SUITE_P(Types, PagedForward, ::testing::Values("f32", "q8_0", "q4_0"));

}  // namespace
}  // namespace mixtral
