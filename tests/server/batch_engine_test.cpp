// The continuous-batching engine: answers independent of what shares the batch, prefix reuse, limits,
// cancellation freeing KV blocks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "core/thread_pool.h"
#include "mixtral/server_engine.h"
#include "model/test_model.h"

namespace mixtral {
namespace {

std::string model_path() {
  static const std::string path = [] {
    const auto dir =
        std::filesystem::temp_directory_path() / ("mixtral-batch-test-" + std::to_string(::getpid()));
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
    spec.types = {DType::Q8_0};
    spec.layouts = {"gguf-merged"};
    spec.out_dir = dir.string();
    ThreadPool pool(2);
    Status st = make_test_model(spec, pool);
    EXPECT_TRUE(st.ok()) << st.error().message;
    std::atexit([] {
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                  ("mixtral-batch-test-" + std::to_string(::getpid())));
    });
    return (dir / "gguf-merged-q8_0.gguf").string();
  }();
  return path;
}

std::unique_ptr<BatchEngine> load(int parallel, int64_t max_queue = 256, int64_t max_batch = 64) {
  BatchEngineOptions o;
  o.model_path = model_path();
  o.threads = 2;
  o.ctx_size = 128;
  o.parallel = parallel;
  o.max_queue = max_queue;
  o.max_batch = max_batch;
  auto e = BatchEngine::load(o);
  EXPECT_TRUE(e.ok()) << e.error().message;
  return std::move(*e);
}

// Collects one request's tokens; wait() blocks until its last event.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  int64_t cached = -1;
  int stop_after = -1;  // return false (cancel) after this many tokens
  BatchEngine::Callback cb() {
    return [this](const TokenEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      if (ev.token >= 0) tokens.push_back(ev.token);
      cached = ev.cached_tokens;
      if (ev.finish != FinishReason::kNone) {
        finish = ev.finish;
        cv.notify_all();
      }
      return stop_after < 0 || static_cast<int>(tokens.size()) < stop_after;
    };
  }
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(60), [&] { return finish != FinishReason::kNone; }));
  }
};

CompletionParams greedy(std::vector<int32_t> prompt, int64_t n) {
  CompletionParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = n;
  p.temperature = 0;
  p.ignore_eos = true;
  return p;
}

std::vector<int32_t> prompt_of(int seed, int n) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back(3 + (seed * 37 + i * 11) % 290);
  return t;
}

TEST(BatchEngine, ConcurrentAnswersEqualAnswersAlone) {
  const int N = 6;
  std::vector<std::vector<int32_t>> alone(N);
  {
    auto e = load(1);
    for (int i = 0; i < N; ++i) {
      Collector c;
      ASSERT_EQ(e->submit(greedy(prompt_of(i, 5 + 7 * i), 12), c.cb()).status, BatchEngine::Submit::kOk);
      c.wait();
      EXPECT_EQ(c.finish, FinishReason::kLength);
      alone[static_cast<size_t>(i)] = c.tokens;
      ASSERT_EQ(c.tokens.size(), 12u);
    }
  }
  // Four at a time, small steps (max_batch 8): prefill chunks of some mix with decodes of others.
  auto e = load(4, 256, 8);
  std::vector<Collector> cs(N);
  for (int i = 0; i < N; ++i)
    ASSERT_EQ(e->submit(greedy(prompt_of(i, 5 + 7 * i), 12), cs[static_cast<size_t>(i)].cb()).status,
              BatchEngine::Submit::kOk);
  for (int i = 0; i < N; ++i) {
    cs[static_cast<size_t>(i)].wait();
    EXPECT_EQ(cs[static_cast<size_t>(i)].tokens, alone[static_cast<size_t>(i)]) << "request " << i;
  }
  const auto st = e->stats();
  EXPECT_EQ(st.generated_tokens, static_cast<uint64_t>(12 * N));
  EXPECT_EQ(st.kv_blocks_in_use, 0);
  uint64_t sel = 0;
  for (uint64_t v : st.expert_selections) sel += v;
  // Every evaluated token picks top-2 in each of 2 layers.
  EXPECT_EQ(sel, 2 * 2 * (st.prompt_tokens_computed + st.generated_tokens - N));
}

TEST(BatchEngine, SharedPrefixReusesBlocksAndGivesTheSameAnswer) {
  auto base = prompt_of(9, 40);  // 2 full blocks of 16 shareable (the last prompt token is always computed)
  auto a = base, b = base;
  a.insert(a.end(), {10, 11, 12});
  b.insert(b.end(), {20, 21});
  std::vector<int32_t> cold;
  {
    auto e = load(2);
    Collector c;
    ASSERT_EQ(e->submit(greedy(b, 8), c.cb()).status, BatchEngine::Submit::kOk);
    c.wait();
    EXPECT_EQ(c.cached, 0);
    cold = c.tokens;
  }
  auto e = load(2);
  Collector ca, cb;
  ASSERT_EQ(e->submit(greedy(a, 8), ca.cb()).status, BatchEngine::Submit::kOk);
  ca.wait();
  ASSERT_EQ(e->submit(greedy(b, 8), cb.cb()).status, BatchEngine::Submit::kOk);
  cb.wait();
  EXPECT_EQ(cb.cached, 32);
  EXPECT_EQ(cb.tokens, cold);
  const auto st = e->stats();
  EXPECT_EQ(st.prompt_tokens_cached, 32u);
  EXPECT_EQ(st.prompt_tokens_computed, a.size() + b.size() - 32);
  EXPECT_EQ(st.kv_blocks_in_use, 0);
  EXPECT_GE(st.kv_blocks_cached, 2);
}

TEST(BatchEngine, LimitsAndCancellation) {
  auto e = load(1, 1);
  Collector c0;
  auto too_long = greedy(prompt_of(1, 128), 4);
  EXPECT_EQ(e->submit(too_long, c0.cb()).status, BatchEngine::Submit::kTooLong);
  EXPECT_EQ(e->submit(greedy({}, 4), c0.cb()).status, BatchEngine::Submit::kBadRequest);
  EXPECT_EQ(e->submit(greedy({1, 999}, 4), c0.cb()).status, BatchEngine::Submit::kBadRequest);
  // One running + one queued fill parallel 1 + queue 1: a third is refused. (The first needs 100 steps to
  // end by itself; the three submits take microseconds.)
  Collector c1, c2, c3;
  c2.stop_after = 3;  // cancels itself from its callback after 3 tokens
  const auto r1 = e->submit(greedy(prompt_of(2, 20), 100), c1.cb());
  const auto r2 = e->submit(greedy(prompt_of(3, 20), 100), c2.cb());
  const auto r3 = e->submit(greedy(prompt_of(4, 20), 4), c3.cb());
  ASSERT_EQ(r1.status, BatchEngine::Submit::kOk);
  ASSERT_EQ(r2.status, BatchEngine::Submit::kOk);
  EXPECT_EQ(r3.status, BatchEngine::Submit::kQueueFull);
  e->cancel(r1.id);
  c1.wait();
  EXPECT_EQ(c1.finish, FinishReason::kCancelled);
  EXPECT_LT(c1.tokens.size(), 100u);
  c2.wait();
  EXPECT_EQ(c2.finish, FinishReason::kCancelled);
  EXPECT_EQ(c2.tokens.size(), 3u);
  EXPECT_EQ(e->stats().kv_blocks_in_use, 0);
  e->shutdown(5);
  EXPECT_EQ(e->stats().kv_blocks_in_use, 0);
  EXPECT_EQ(e->stats().active, 0);
}

}  // namespace
}  // namespace mixtral
