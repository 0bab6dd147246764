// `mixtral bench --parallel`: each decode step of N sequences gives every sequence the logits it gets alone
// (Engine::score of its tokens, another engine at another thread count), bit for bit, for every cache type;
// the sequences differ from each other, and every rep repeats the first.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "mixtral/engine.h"
#include "model/test_model.h"

namespace mixtral {
namespace {

std::filesystem::path test_dir() {
  return std::filesystem::temp_directory_path() /
         ("mixtral-parallel-bench-test-" + std::to_string(::getpid()));
}

// A Q4_0 GGUF whose head_dim (32) allows the q8_0 cache.
std::string model_path() {
  const std::string path = (test_dir() / "gguf-merged-q4_0.gguf").string();
  if (std::filesystem::exists(path)) return path;
  TestModelSpec spec;
  spec.config.dim = 64;
  spec.config.ffn_dim = 96;
  spec.config.n_layers = 2;
  spec.config.n_heads = 4;
  spec.config.n_kv_heads = 2;
  spec.config.head_dim = 32;
  spec.config.n_experts = 8;
  spec.config.n_experts_used = 2;
  spec.config.vocab_size = 300;
  spec.config.max_seq_len = 1024;
  spec.types = {DType::Q4_0};
  spec.layouts = {"gguf-merged"};
  spec.out_dir = test_dir().string();
  ThreadPool pool(2);
  Status st = make_test_model(spec, pool);
  EXPECT_TRUE(st.ok()) << st.error().message;
  static const bool cleanup = [] {
    std::atexit([] { std::filesystem::remove_all(test_dir()); });
    return true;
  }();
  (void)cleanup;
  return path;
}

std::unique_ptr<Engine> load(int threads, KvCacheType cache) {
  EngineOptions o;
  o.model_path = model_path();
  o.threads = threads;
  o.ctx_size = 32;
  o.cache_type = cache;
  auto e = Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.error().message;
  return e.ok() ? std::move(*e) : nullptr;
}

TEST(ParallelBench, EachSequenceOfAStepGetsItsLogitsAlone) {
  for (KvCacheType cache : {KvCacheType::kF16, KvCacheType::kF32, KvCacheType::kQ8_0}) {
    SCOPED_TRACE(kv_cache_type_name(cache));
    auto bencher = load(2, cache), solo = load(1, cache);
    ASSERT_TRUE(bencher && solo);
    const int64_t V = bencher->config().vocab_size;
    Engine::BenchOptions o;
    o.n_depth = 3;
    o.n_prompt = 5;
    o.n_gen = 4;
    o.reps = 2;
    o.measure_bandwidth = false;
    o.parallel = {1, 3, 2};  // 2 after 3: sequences 0 and 1 keep the prefill made for 3
    std::map<std::pair<int64_t, int64_t>, std::vector<float>> steps;  // (N, step) -> logits [N, vocab]
    int64_t repeats = 0;
    o.on_parallel_logits = [&](int64_t n, int64_t step, const float* logits) {
      std::vector<float> got(logits, logits + n * V);
      auto [it, first] = steps.try_emplace({n, step}, got);
      if (!first) {  // the next rep decodes the same tokens at the same positions again
        EXPECT_EQ(0, std::memcmp(it->second.data(), got.data(), got.size() * sizeof(float)))
            << "N " << n << " step " << step;
        ++repeats;
      }
    };
    auto r = bencher->bench(o);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->parallel.size(), 3u);
    EXPECT_EQ(steps.size(), 3u * 4u);
    EXPECT_EQ(repeats, 3 * 4);
    const int64_t past = o.n_depth + o.n_prompt;
    for (int64_t s = 0; s < 3; ++s) {
      // The token formula of Engine::bench (engine.h), written out again.
      std::vector<int32_t> tokens;  // [past + n_gen]
      for (int64_t p = 0; p < past + o.n_gen; ++p)
        tokens.push_back(static_cast<int32_t>((p * 7919 + s * 104729 + 13) % V));
      auto alone = solo->score(tokens);
      ASSERT_TRUE(alone.ok()) << alone.error().message;
      for (const auto& [key, logits] : steps) {
        const auto [n, i] = key;
        if (s >= n) continue;
        const float* want = alone->data() + (past + i) * V;
        EXPECT_EQ(0, std::memcmp(want, logits.data() + s * V, static_cast<size_t>(V) * sizeof(float)))
            << "sequence " << s << " of " << n << ", decode step " << i << " (position " << past + i << ")";
      }
    }
    // The sequences are different texts: their logits differ.
    const std::vector<float>& three = steps.at({3, 0});
    EXPECT_NE(0, std::memcmp(three.data(), three.data() + V, static_cast<size_t>(V) * sizeof(float)));
    EXPECT_NE(0, std::memcmp(three.data() + V, three.data() + 2 * V, static_cast<size_t>(V) * sizeof(float)));
    for (const auto& p : r->parallel) {
      double flops = 0;
      for (int64_t i = 0; i < o.n_gen; ++i) flops += Engine::decode_flops(bencher->config(), past + i);
      EXPECT_EQ(p.n_past, past);
      EXPECT_DOUBLE_EQ(p.flops_per_step, static_cast<double>(p.n_parallel) * flops / o.n_gen);
      EXPECT_GT(p.tps, 0);
      EXPECT_EQ(p.tps_reps.size(), 2u);
    }
  }
}

// decode_flops by hand for a config with a sliding window: attention counts only the window's positions.
TEST(ParallelBench, DecodeFlopsCountsTheConfig) {
  ModelConfig c;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 96;
  c.vocab_size = 300;
  c.n_experts = 8;
  c.n_experts_used = 2;
  // Per layer: Wq 64x64, Wk and Wv 64x32 each, Wo 64x64 = 12288; router 8x64 = 512; 2 experts of 3x64x96.
  const double layer_weights = 12288 + 512 + 2 * 3 * 64 * 96;
  const double head = 2.0 * 64 * 300;
  EXPECT_DOUBLE_EQ(Engine::decode_flops(c, 9), 2 * (2 * layer_weights + 4 * 4 * 16 * 10) + head);
  c.sliding_window = 4;
  EXPECT_DOUBLE_EQ(Engine::decode_flops(c, 9), 2 * (2 * layer_weights + 4 * 4 * 16 * 4) + head);
  EXPECT_DOUBLE_EQ(Engine::decode_flops(c, 2), 2 * (2 * layer_weights + 4 * 4 * 16 * 3) + head);
}

}  // namespace
}  // namespace mixtral
