// The engine core: `mixtral run`/`score` (Engine) and `mixtral serve` (BatchEngine) give the same bits for
// the same tokens at any thread count and cache type, the Engine's prefix reuse across generate() calls,
// KV cache sizes and the option checks.
#include "mixtral/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>

#include "core/thread_pool.h"
#include "mixtral/server_engine.h"
#include "model/test_model.h"
#include "sampler/sampler.h"

namespace mixtral {
namespace {

std::filesystem::path test_dir() {
  return std::filesystem::temp_directory_path() / ("mixtral-engine-test-" + std::to_string(::getpid()));
}

// A Q4_0 GGUF (with its tokenizer: BOS 1, EOS 2) whose head_dim (32) allows the q8_0 cache; head_dim 16
// for the refusal.
std::string model_path(int64_t head_dim = 32) {
  const std::string path =
      (test_dir() / ("hd" + std::to_string(head_dim)) / "gguf-merged-q4_0.gguf").string();
  if (std::filesystem::exists(path)) return path;
  TestModelSpec spec;
  spec.config.dim = 64;
  spec.config.ffn_dim = 96;
  spec.config.n_layers = 2;
  spec.config.n_heads = 4;
  spec.config.n_kv_heads = 2;
  spec.config.head_dim = head_dim;
  spec.config.n_experts = 8;
  spec.config.n_experts_used = 2;
  spec.config.vocab_size = 300;
  spec.config.max_seq_len = 1024;
  spec.types = {DType::Q4_0};
  spec.layouts = {"gguf-merged"};
  spec.out_dir = (test_dir() / ("hd" + std::to_string(head_dim))).string();
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

std::vector<int32_t> prompt_of(int seed, int n) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back(3 + (seed * 37 + i * 11 + i * i % 7) % 290);
  return t;
}

std::unique_ptr<Engine> load_engine(int threads, KvCacheType type, int64_t batch = 64) {
  EngineOptions o;
  o.model_path = model_path();
  o.threads = threads;
  o.ctx_size = 512;
  o.batch_size = batch;
  o.cache_type = type;
  auto e = Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.error().message;
  return e.ok() ? std::move(*e) : nullptr;
}

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<TokenEvent> events;
  bool done = false;
  BatchEngine::Callback cb() {
    return [this](const TokenEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      if (ev.token >= 0) events.push_back(ev);
      if (ev.finish != FinishReason::kNone) {
        done = true;
        cv.notify_all();
      }
      return true;
    };
  }
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(120), [&] { return done; }));
  }
};

GenerateOptions greedy(int64_t n) {
  GenerateOptions g;
  g.max_tokens = n;
  g.temperature = 0;
  g.stop_at_eos = false;
  return g;
}

constexpr int kTop = 4;  // alternatives compared beside the chosen token's logprob

class RunAndServe : public ::testing::TestWithParam<KvCacheType> {};

// For each cache type and thread count 1, 2, 3: a 200-token prompt and a 12-token greedy answer. Engine:
// generate() gives the tokens, score() of prompt + answer the logits, turned into logprobs by the
// sampler's own code (SequenceSampler, as the server's). BatchEngine: the same prompt among two other
// requests (sampled, different prompts) in steps of 16 tokens. Tokens and logprobs equal bit for bit, and
// every thread count gives the first's bits.
TEST_P(RunAndServe, RunScoreAndServeAreBitwiseIdentical) {
  const auto prompt = prompt_of(1, 200);
  const int64_t n = static_cast<int64_t>(prompt.size()), n_gen = 12;
  const KvCacheType type = GetParam();
  std::vector<float> first_logits;
  std::vector<int32_t> first_tokens;
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(std::string(kv_cache_type_name(type)) + " threads " + std::to_string(threads));
    auto e = load_engine(threads, type, 64);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->cache_type(), type);
    auto gen = e->generate(prompt, greedy(n_gen), nullptr);
    ASSERT_TRUE(gen.ok()) << gen.error().message;
    ASSERT_EQ(static_cast<int64_t>(gen->size()), n_gen);
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), gen->begin(), gen->end() - 1);
    auto logits = e->score(all);
    ASSERT_TRUE(logits.ok()) << logits.error().message;
    const int64_t V = e->config().vocab_size;
    if (first_logits.empty()) {
      first_logits = *logits;
      first_tokens = *gen;
    } else {
      EXPECT_EQ(*gen, first_tokens);
      ASSERT_EQ(logits->size(), first_logits.size());
      for (size_t i = 0; i < logits->size(); ++i) ASSERT_EQ((*logits)[i], first_logits[i]) << i;
    }
    // Engine's logprobs of the answer, through the server's sampler code.
    std::vector<TokenLogprobs> want(static_cast<size_t>(n_gen));
    SamplingParams sp;
    sp.temperature = 0;
    sp.top_logprobs = kTop;
    SequenceSampler ss(sp, V);
    for (int64_t i = 0; i < n_gen; ++i) {
      const int32_t tok =
          ss.sample(logits->data() + (n - 1 + i) * V, nullptr, 0, &want[static_cast<size_t>(i)]);
      EXPECT_EQ(tok, (*gen)[static_cast<size_t>(i)]) << i;  // score's logits pick generate's tokens
    }

    BatchEngineOptions bo;
    bo.model_path = model_path();
    bo.threads = threads;
    bo.ctx_size = 512;
    bo.parallel = 3;
    bo.max_batch = 16;
    bo.cache_type = type;
    auto be = BatchEngine::load(bo);
    ASSERT_TRUE(be.ok()) << be.error().message;
    Collector target, other1, other2;
    CompletionParams o1;
    o1.prompt = prompt_of(2, 100);
    o1.max_tokens = 30;
    o1.seed = 5;
    o1.ignore_eos = true;
    CompletionParams o2 = o1;
    o2.prompt = prompt_of(3, 60);
    o2.temperature = 0.7f;
    CompletionParams tp;
    tp.prompt = prompt;
    tp.max_tokens = n_gen;
    tp.temperature = 0;
    tp.ignore_eos = true;
    tp.top_logprobs = kTop;
    ASSERT_EQ((*be)->submit(o1, other1.cb()).status, BatchEngine::Submit::kOk);
    ASSERT_EQ((*be)->submit(tp, target.cb()).status, BatchEngine::Submit::kOk);
    ASSERT_EQ((*be)->submit(o2, other2.cb()).status, BatchEngine::Submit::kOk);
    target.wait();
    other1.wait();
    other2.wait();
    ASSERT_EQ(static_cast<int64_t>(target.events.size()), n_gen);
    for (int64_t i = 0; i < n_gen; ++i) {
      const TokenEvent& ev = target.events[static_cast<size_t>(i)];
      const TokenLogprobs& w = want[static_cast<size_t>(i)];
      EXPECT_EQ(ev.token, (*gen)[static_cast<size_t>(i)]) << i;
      EXPECT_EQ(ev.logprob, w.logprob) << i;
      EXPECT_EQ(ev.top, w.top) << i;
      ASSERT_EQ(static_cast<int>(ev.top.size()), kTop);
    }
    const BatchEngineStats st = (*be)->stats();
    EXPECT_STREQ(st.kv_cache_type, kv_cache_type_name(type));
    EXPECT_EQ(st.kv_bytes_per_token, static_cast<int64_t>(kv_bytes_per_token(e->config(), type)));
    EXPECT_EQ(st.kv_bytes_total, st.kv_blocks_total * st.block_size * st.kv_bytes_per_token);
    EXPECT_EQ(st.kv_blocks_total, 3 * 512 / st.block_size);  // parallel x ctx
  }
}

INSTANTIATE_TEST_SUITE_P(CacheTypes, RunAndServe,
                         ::testing::Values(KvCacheType::kF32, KvCacheType::kF16, KvCacheType::kQ8_0),
                         [](const auto& info) { return std::string(kv_cache_type_name(info.param)); });

// generate() keeps its sequence in the cache: the next prompt recomputes only what differs from it (at
// least its last token), and answers as a fresh engine does.
TEST(EngineCore, GenerateReusesTheCachedPrefix) {
  auto e = load_engine(2, KvCacheType::kF16, 32);
  ASSERT_TRUE(e);
  GenerateOptions sampled;
  sampled.max_tokens = 10;
  sampled.temperature = 1.0f;
  sampled.top_k = 0;
  sampled.top_p = 1.0f;
  sampled.seed = 9;
  sampled.stop_at_eos = false;
  const auto a = prompt_of(4, 100);
  auto out1 = e->generate(a, sampled, nullptr);
  ASSERT_TRUE(out1.ok()) << out1.error().message;
  EXPECT_EQ(e->reused_tokens(), 0);
  // Turn 2: the whole first exchange plus a new turn. The cache holds a and the answer but its last token.
  auto b = a;
  b.insert(b.end(), out1->begin(), out1->end());
  const auto more = prompt_of(5, 40);
  b.insert(b.end(), more.begin() + 1, more.end());
  auto out2 = e->generate(b, sampled, nullptr);
  ASSERT_TRUE(out2.ok()) << out2.error().message;
  EXPECT_EQ(e->reused_tokens(), static_cast<int64_t>(a.size() + out1->size()) - 1);
  // The same prompt again: all but its last token.
  auto out3 = e->generate(b, sampled, nullptr);
  ASSERT_TRUE(out3.ok());
  EXPECT_EQ(e->reused_tokens(), static_cast<int64_t>(b.size()) - 1);
  EXPECT_EQ(*out3, *out2);
  // A prompt sharing the first 50 tokens only.
  auto c = a;
  c.resize(50);
  const auto tail = prompt_of(6, 30);
  c.insert(c.end(), tail.begin() + 1, tail.end());
  auto out4 = e->generate(c, sampled, nullptr);
  ASSERT_TRUE(out4.ok());
  EXPECT_EQ(e->reused_tokens(), 50);
  // score() starts from position 0: the next generate reuses what it left (the same K/V bits).
  ASSERT_TRUE(e->score(a).ok());
  auto out5 = e->generate(b, sampled, nullptr);
  ASSERT_TRUE(out5.ok());
  EXPECT_EQ(e->reused_tokens(), static_cast<int64_t>(a.size()));
  EXPECT_EQ(*out5, *out2);
  // A fresh engine: the same answers.
  auto f = load_engine(2, KvCacheType::kF16, 32);
  for (const auto& [prompt, want] : {std::pair{&b, &*out2}, std::pair{&c, &*out4}}) {
    auto got = f->generate(*prompt, sampled, nullptr);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, *want);
  }
  // The bits: logits of b's last position from the reusing engine's cache equal a fresh score's.
  auto fresh = f->score(b);
  ASSERT_TRUE(fresh.ok());
  GenerateOptions one = greedy(1);
  one.temperature = 0;
  auto g1 = e->generate(b, one, nullptr);
  ASSERT_TRUE(g1.ok());
  EXPECT_EQ(e->reused_tokens(), static_cast<int64_t>(b.size()) - 1);
  const int64_t V = e->config().vocab_size;
  EXPECT_EQ((*g1)[0], argmax(fresh->data() + (static_cast<int64_t>(b.size()) - 1) * V, V));
}

// score()'s routing records: one per layer and position, with the token's position, the same from a
// prefill in chunks as token by token.
TEST(EngineCore, RoutingRecordsCarryPositions) {
  auto e = load_engine(2, KvCacheType::kF16, 16);
  ASSERT_TRUE(e);
  const auto toks = prompt_of(7, 40);
  std::vector<RoutingRecord> chunked, single;
  ASSERT_TRUE(e->score(toks, false, &chunked).ok());
  ASSERT_TRUE(e->score(toks, true, &single).ok());
  const int64_t L = e->config().n_layers, n = static_cast<int64_t>(toks.size());
  ASSERT_EQ(static_cast<int64_t>(chunked.size()), L * n);
  ASSERT_EQ(single.size(), chunked.size());
  auto key = [](const RoutingRecord& r) { return std::pair{r.position, r.layer}; };
  auto by_key = [&](const RoutingRecord& a, const RoutingRecord& b) { return key(a) < key(b); };
  std::sort(chunked.begin(), chunked.end(), by_key);
  std::sort(single.begin(), single.end(), by_key);
  for (size_t i = 0; i < chunked.size(); ++i) {
    EXPECT_EQ(chunked[i].position, static_cast<int64_t>(i) / L);
    EXPECT_EQ(chunked[i].layer, static_cast<int64_t>(i) % L);
    EXPECT_EQ(key(chunked[i]), key(single[i]));
    EXPECT_EQ(chunked[i].experts, single[i].experts);
    EXPECT_EQ(chunked[i].weights, single[i].weights);
    EXPECT_EQ(chunked[i].experts.size(), 2u);
  }
}

TEST(EngineCore, KvBytesPerTokenAndDescribe) {
  ModelConfig c;  // Mixtral 8x7B's attention: 32 layers of 8 KV heads of 128
  c.n_layers = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  EXPECT_EQ(kv_bytes_per_token(c, KvCacheType::kF32), 262144u);  // 256 KiB
  EXPECT_EQ(kv_bytes_per_token(c, KvCacheType::kF16), 131072u);
  EXPECT_EQ(kv_bytes_per_token(c, KvCacheType::kQ8_0), 69632u);  // 34 bytes per 32 values
  auto e = load_engine(1, KvCacheType::kQ8_0);
  ASSERT_TRUE(e);
  const std::string d = e->describe(100);
  // Test model: 2 layers x K and V x 2 heads x 32 dims at 34 / 32 bytes = 272 bytes per token.
  EXPECT_NE(d.find("KV cache:     272 bytes per token (q8_0"), std::string::npos) << d;
  EXPECT_NE(d.find("+ KV cache 27200 bytes (q8_0) = "), std::string::npos) << d;
}

TEST(EngineCore, OptionChecksNameTheFlag) {
  {
    EngineOptions o;
    o.model_path = model_path(16);
    o.cache_type = KvCacheType::kQ8_0;
    auto e = Engine::load(o);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.error().kind, ErrorKind::kUsage);
    EXPECT_NE(e.error().message.find("--cache-type"), std::string::npos) << e.error().message;
    BatchEngineOptions bo;
    bo.model_path = o.model_path;
    bo.cache_type = KvCacheType::kQ8_0;
    auto b = BatchEngine::load(bo);
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.error().message.find("--cache-type"), std::string::npos) << b.error().message;
  }
  {
    BatchEngineOptions bo;  // f16: 2 layers x K, V x 64 halves = 512 bytes per token; 512 positions 262144
    bo.model_path = model_path();
    bo.ctx_size = 512;
    bo.kv_memory = 262144 - 1;
    auto b = BatchEngine::load(bo);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.error().kind, ErrorKind::kUsage);
    EXPECT_NE(b.error().message.find("--kv-memory"), std::string::npos) << b.error().message;
    bo.kv_memory = 262144 * 2 + 9000;  // two contexts and a bit: 32 + 32 + 1 blocks of 16 (8192 bytes)
    auto ok = BatchEngine::load(bo);
    ASSERT_TRUE(ok.ok()) << ok.error().message;
    EXPECT_EQ((*ok)->stats().kv_blocks_total, 65);
    EXPECT_EQ((*ok)->stats().kv_bytes_total, 65 * 16 * 512);
    CompletionParams p;
    p.prompt = {1, 5, 6};
    p.logit_bias = {{300, 1.0f}};
    auto r = (*ok)->submit(p, [](const TokenEvent&) { return true; });
    EXPECT_EQ(r.status, BatchEngine::Submit::kBadRequest);
    EXPECT_NE(r.message.find("logit_bias"), std::string::npos) << r.message;
  }
  auto e = load_engine(1, KvCacheType::kF16);
  ASSERT_TRUE(e);
  const std::vector<int32_t> prompt = {1, 5, 6};
  struct Case {
    const char* flag;
    void (*set)(GenerateOptions&);
  };
  const Case cases[] = {
      {"--min-p", [](GenerateOptions& g) { g.min_p = 1.5f; }},
      {"--repeat-penalty", [](GenerateOptions& g) { g.repetition_penalty = 0.0f; }},
      {"--presence-penalty", [](GenerateOptions& g) { g.presence_penalty = NAN; }},
      {"--frequency-penalty", [](GenerateOptions& g) { g.frequency_penalty = INFINITY; }},
      {"--logit-bias",
       [](GenerateOptions& g) {
         g.logit_bias = {{-1, 2.0f}};
       }},
      {"--logit-bias",
       [](GenerateOptions& g) {
         g.logit_bias = {{5, NAN}};
       }},
  };
  for (const Case& c : cases) {
    GenerateOptions g = greedy(2);
    c.set(g);
    auto r = e->generate(prompt, g, nullptr);
    ASSERT_FALSE(r.ok()) << c.flag;
    EXPECT_EQ(r.error().kind, ErrorKind::kUsage) << c.flag;
    EXPECT_NE(r.error().message.find(c.flag), std::string::npos) << r.error().message;
  }
  // A banned token (bias -inf) is never chosen; penalties and min-p run.
  GenerateOptions g = greedy(20);
  auto free_run = e->generate(prompt, g, nullptr);
  ASSERT_TRUE(free_run.ok());
  g.logit_bias = {{(*free_run)[0], -INFINITY}};
  g.repetition_penalty = 1.3f;
  g.presence_penalty = 0.5f;
  g.frequency_penalty = 0.5f;
  g.min_p = 0.05f;
  auto banned = e->generate(prompt, g, nullptr);
  ASSERT_TRUE(banned.ok()) << banned.error().message;
  for (int32_t t : *banned) EXPECT_NE(t, (*free_run)[0]);
}

}  // namespace
}  // namespace mixtral
