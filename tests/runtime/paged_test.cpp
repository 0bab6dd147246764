// Paged KV cache, paged attention and the batched forward step: equal to the contiguous single-sequence
// forward, and per-token results independent of what else shares the batch.
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

TEST(PagedAttention, MatchesContiguousReferenceThroughShuffledBlocks) {
  const int64_t H = 4, KVH = 2, hd = 8, bs = 4, n_pos = 19, n_blocks = 7;
  const kernels::AttentionParams p{H, KVH, hd, 0, 1.0f / std::sqrt(8.0f)};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> k(n_pos * KVH * hd), v(n_pos * KVH * hd), q(n_pos * H * hd);  // contiguous [n_pos, ...]
  for (auto* a : {&k, &v, &q})
    for (float& f : *a) f = nd(rng);
  std::vector<int32_t> table = {5, 0, 3, 6, 2};  // positions 0..19 -> shuffled blocks
  std::vector<float> pk(n_blocks * bs * KVH * hd, NAN), pv(pk.size(), NAN);
  for (int64_t j = 0; j < n_pos; ++j) {
    const int64_t row = table[static_cast<size_t>(j / bs)] * bs + j % bs;
    std::copy_n(k.begin() + j * KVH * hd, KVH * hd, pk.begin() + row * KVH * hd);
    std::copy_n(v.begin() + j * KVH * hd, KVH * hd, pv.begin() + row * KVH * hd);
  }
  std::vector<int32_t> pos(n_pos);
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<const int32_t*> tables(n_pos, table.data());
  std::vector<float> want(q.size()), got_ref(q.size());
  kernels::ref::attention(q.data(), k.data(), v.data(), pos.data(), n_pos, n_pos, p, want.data());
  ThreadPool pool1(1), pool2(2);
  kernels::PagedKv kv{pk.data(), pv.data(), DType::F32, bs, p.n_kv_heads, p.head_dim};
  kernels::ref::paged_attention(q.data(), kv, tables.data(), pos.data(), n_pos, p, got_ref.data());
  const kernels::Isa best = kernels::detect_isa();
  for (kernels::Isa isa : {kernels::Isa::kScalar, best}) {
    kernels::set_isa(isa);
    SCOPED_TRACE(kernels::isa_name(isa));
    std::vector<float> got1(q.size()), got2(q.size());
    kernels::paged_attention(q.data(), kv, tables.data(), pos.data(), n_pos, p, got1.data(), pool1);
    kernels::paged_attention(q.data(), kv, tables.data(), pos.data(), n_pos, p, got2.data(), pool2);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got2[i], want[i], 1e-5f) << i;
      ASSERT_EQ(got1[i], got2[i]) << i;  // 1 thread == 2 threads, bitwise
      // The portable path is the reference's arithmetic, bit for bit.
      if (isa == kernels::Isa::kScalar) {
        ASSERT_EQ(got2[i], got_ref[i]) << i;
      }
    }
  }
  kernels::set_isa(best);
}

// Mixtral's attention shape (32 query heads on 8 kv heads of 128) over 1000 positions in shuffled blocks
// of 16, with a window: every ISA within 2e-5 of the contiguous float reference.
TEST(PagedAttention, MixtralShapeLongContextAndWindow) {
  const int64_t H = 32, KVH = 8, hd = 128, bs = 16, n_ctx = 1000, n_blocks = (n_ctx + bs - 1) / bs + 3;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> k(n_ctx * KVH * hd), v(k.size());  // contiguous [n_ctx, KVH, hd]
  for (auto* a : {&k, &v})
    for (float& f : *a) f = nd(rng);
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<float> pk(static_cast<size_t>(n_blocks * bs * KVH * hd), NAN), pv(pk.size(), NAN);
  for (int64_t j = 0; j < n_ctx; ++j) {
    const int64_t row = table[static_cast<size_t>(j / bs)] * bs + j % bs;
    std::copy_n(k.begin() + j * KVH * hd, KVH * hd, pk.begin() + row * KVH * hd);
    std::copy_n(v.begin() + j * KVH * hd, KVH * hd, pv.begin() + row * KVH * hd);
  }
  const std::vector<int32_t> pos = {0, 1, 17, 500, 998, 999};  // [n] query positions
  const int64_t n = static_cast<int64_t>(pos.size());
  std::vector<float> q(static_cast<size_t>(n * H * hd));  // [n, H, hd]
  for (float& f : q) f = nd(rng);
  std::vector<const int32_t*> tables(static_cast<size_t>(n), table.data());
  ThreadPool pool(2);
  const kernels::Isa best = kernels::detect_isa();
  for (int64_t window : {int64_t{0}, int64_t{100}}) {
    const kernels::AttentionParams p{H, KVH, hd, window, 1.0f / std::sqrt(128.0f)};
    std::vector<float> want(q.size());
    kernels::ref::attention(q.data(), k.data(), v.data(), pos.data(), n, n_ctx, p, want.data());
    for (kernels::Isa isa : {kernels::Isa::kScalar, best}) {
      kernels::set_isa(isa);
      SCOPED_TRACE(std::string(kernels::isa_name(isa)) + " window " + std::to_string(window));
      std::vector<float> got(q.size());
      kernels::paged_attention(q.data(), kernels::PagedKv{pk.data(), pv.data(), DType::F32, bs, p.n_kv_heads, p.head_dim}, tables.data(),
                               pos.data(), n, p, got.data(), pool);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-5f) << i;
    }
  }
  kernels::set_isa(best);
}

TEST(PagedKvCache, RefcountsPrefixCacheAndEviction) {
  ModelConfig c;
  c.n_layers = 1;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  PagedKvCache kv(c, 3, 2);
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

TEST_P(PagedForward, PrefillChunksMatchContiguousForward) {
  auto m = load_model(model_path(GetParam()));
  ASSERT_TRUE(m.ok()) << m.error().message;
  const Model& model = **m;
  const int64_t V = model.config.vocab_size, n = 37;
  ThreadPool pool(2);
  Runtime rt(model, {64, 64}, pool);
  const auto toks = tokens_of(1, n, static_cast<int>(V));
  std::vector<float> want(static_cast<size_t>(n * V));  // [n, V]
  ASSERT_TRUE(rt.forward(toks.data(), n, 0, want.data(), true).ok());

  PagedKvCache kv(model.config, 8, 16);
  std::vector<int32_t> table = {6, 2, 4};  // any blocks
  std::vector<float> got(static_cast<size_t>(n * V));
  // Three chunks of 16, 16, 5 tokens, all positions asking for logits.
  for (int64_t s = 0; s < n; s += 16) {
    const int64_t m_ = std::min<int64_t>(16, n - s);
    std::vector<BatchToken> e;
    for (int64_t i = s; i < s + m_; ++i)
      e.push_back({toks[static_cast<size_t>(i)], static_cast<int32_t>(i), table.data(), true});
    rt.forward_paged(e.data(), m_, kv, got.data() + s * V);
  }
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 2e-4f * (1 + std::fabs(want[i]))) << i;
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
  Runtime rt(model, {64, 64}, pool);
  const auto a = tokens_of(2, 20, static_cast<int>(V)), b = tokens_of(3, 64, static_cast<int>(V));
  PagedKvCache kv(model.config, 16, 16);
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
      rt.forward_paged(&e, 1, kv, alone.data() + i * V);
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
      rt.forward_paged(e.data(), static_cast<int64_t>(e.size()), kv, lg.data());
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
