// The continuous-batching engine: answers independent of what shares the batch, prefix reuse, limits,
// cancellation freeing KV blocks, grammar-constrained sampling.
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <regex>

#include "core/thread_pool.h"
#include "grammar/grammar.h"
#include "mixtral/server_engine.h"
#include "mixtral/tokenizer.h"
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

// The test model's vocabulary (<unk> <s> </s>, 256 byte pieces, "▁a" "a" "▁b" ...) as a token masker.
std::shared_ptr<const grammar::TokenMasker> masker() {
  static const auto m = [] {
    auto tok = Tokenizer::load(model_path());
    EXPECT_TRUE(tok.ok()) << tok.error().message;
    return std::make_shared<const grammar::TokenMasker>(grammar::vocabulary_of(**tok));
  }();
  return m;
}

std::unique_ptr<BatchEngine> load(int parallel, int64_t max_queue = 256, int64_t max_batch = 64,
                                  bool with_masker = true) {
  BatchEngineOptions o;
  if (with_masker) o.masker = masker();
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

// The step budget (max_batch, `serve --step-tokens`): a prompt goes through in chunks of the budget, and
// the answer does not depend on it.
TEST(BatchEngine, StepBudgetChunksThePrompt) {
  const auto prompt = prompt_of(5, 50);
  std::vector<int32_t> first;
  for (const int64_t budget : {64, 8, 1}) {
    auto e = load(1, 256, budget);
    Collector c;
    ASSERT_EQ(e->submit(greedy(prompt, 4), c.cb()).status, BatchEngine::Submit::kOk);
    c.wait();
    const auto st = e->stats();
    // ceil(50 / budget) prefill steps (the last one samples the first token), then 3 decode steps.
    EXPECT_EQ(st.steps, static_cast<uint64_t>((50 + budget - 1) / budget + 3)) << "budget " << budget;
    EXPECT_EQ(st.prompt_tokens_computed, 50u);
    if (first.empty()) first = c.tokens;
    EXPECT_EQ(c.tokens, first) << "budget " << budget;
  }
}

// A prompt arriving while a sequence decodes: every step carries the decoding sequence's next token first,
// and the prompt fills the rest of the budget (4 - 1 = 3 tokens a step), so the stream never skips a step.
TEST(BatchEngine, DecodesFirstThenPrefillUpToTheBudget) {
  auto e = load(2, 256, 4);
  const auto a = prompt_of(1, 3), b = prompt_of(2, 20);
  std::mutex mu;
  std::vector<int32_t> a_tokens;
  size_t a_at_b_first = 0;
  Collector cb;
  auto b_cb = cb.cb();
  Collector ca;  // only for wait()
  auto a_done = ca.cb();
  BatchEngine* eng = e.get();
  // Submitted from A's first token (on the engine thread), so B is admitted at the very next step.
  ASSERT_EQ(e->submit(greedy(a, 30),
                      [&](const TokenEvent& ev) {
                        size_t n = 0;
                        {
                          std::lock_guard<std::mutex> lk(mu);
                          if (ev.token >= 0) a_tokens.push_back(ev.token);
                          n = a_tokens.size();
                        }
                        if (ev.token >= 0 && n == 1) {
                          EXPECT_EQ(eng->submit(greedy(b, 2),
                                                [&](const TokenEvent& bev) {
                                                  if (bev.token >= 0 && cb.tokens.empty()) {
                                                    std::lock_guard<std::mutex> lk(mu);
                                                    a_at_b_first = a_tokens.size();
                                                  }
                                                  return b_cb(bev);
                                                })
                                        .status,
                                    BatchEngine::Submit::kOk);
                        }
                        return a_done(ev);
                      })
                .status,
            BatchEngine::Submit::kOk);
  ca.wait();
  cb.wait();
  // Step 1: A's prompt (its token 1). Steps 2..8: A's next token, then 3, 3, 3, 3, 3, 3, 2 tokens of B's
  // prompt; B's first token comes from step 8, after A's token 8 of the same step.
  EXPECT_EQ(a_at_b_first, 8u);
  EXPECT_EQ(cb.tokens.size(), 2u);
  EXPECT_EQ(a_tokens.size(), 30u);
  const auto st = e->stats();
  EXPECT_EQ(st.steps, 30u);  // B's 8 steps all shared with A's
  EXPECT_EQ(st.prompt_tokens_computed, a.size() + b.size());
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

grammar::GrammarPtr compile(const char* gbnf) {
  auto g = grammar::parse_gbnf(gbnf);
  EXPECT_TRUE(g.ok()) << g.error().message;
  return *g;
}

// The bytes of tokens as the client sees them (EOS: none).
std::string text_of(const std::vector<int32_t>& toks) {
  std::string out;
  for (int32_t t : toks) out += masker()->vocabulary().bytes[static_cast<size_t>(t)];
  return out;
}

// A bounded grammar (it must end within 15 bytes), sampled with every setting that reshapes the logits.
const char* kTuple = R"g(root ::= "(" [a-e]{1,4} ("," [0-9]{1,2}){0,3} ")")g";
const std::regex kTupleRe(R"(\([a-e]{1,4}(,[0-9]{1,2}){0,3}\))");

CompletionParams tuple_request(int i) {
  CompletionParams p;
  p.prompt = prompt_of(i, 3 + 5 * i);
  p.max_tokens = 40;
  p.grammar = compile(kTuple);
  p.temperature = i == 0 ? 0.0f : 0.5f + 0.25f * static_cast<float>(i);
  p.seed = static_cast<uint64_t>(100 + i);
  p.top_k = i % 3 == 1 ? 5 : 0;
  p.top_p = i % 3 == 2 ? 0.9f : 1.0f;
  p.min_p = i % 4 == 3 ? 0.05f : 0.0f;
  p.presence_penalty = i % 2 == 1 ? 0.5f : 0.0f;
  p.frequency_penalty = i % 5 == 4 ? 0.3f : 0.0f;
  p.repetition_penalty = i % 3 == 0 ? 1.3f : 1.0f;
  p.top_logprobs = 2;
  return p;
}

TEST(BatchEngine, GrammarConstrainsOutputAloneAndInABatch) {
  const int N = 8;
  std::vector<std::vector<int32_t>> alone(N);
  {
    auto e = load(1);
    for (int i = 0; i < N; ++i) {
      Collector c;
      ASSERT_EQ(e->submit(tuple_request(i), c.cb()).status, BatchEngine::Submit::kOk);
      c.wait();
      const std::string text = text_of(c.tokens);
      // The grammar ends at ")" (must_end): the engine stops right after it, without waiting for EOS.
      EXPECT_TRUE(std::regex_match(text, kTupleRe)) << "request " << i << ": " << text;
      EXPECT_EQ(c.finish, FinishReason::kStop) << "request " << i;
      ASSERT_FALSE(c.tokens.empty());
      EXPECT_NE(c.tokens.back(), masker()->vocabulary().eos);
      alone[static_cast<size_t>(i)] = c.tokens;
    }
  }
  // Free text from the same model is not grammatical (else the test above could not fail).
  {
    auto e = load(1);
    Collector c;
    CompletionParams p = tuple_request(3);
    p.grammar = nullptr;
    p.ignore_eos = true;
    ASSERT_EQ(e->submit(p, c.cb()).status, BatchEngine::Submit::kOk);
    c.wait();
    EXPECT_FALSE(std::regex_match(text_of(c.tokens), kTupleRe));
  }
  // Together with unconstrained requests, small steps: the same tokens (each sequence its own matcher).
  auto e = load(4, 256, 8);
  std::vector<Collector> cs(N), free_cs(2);
  for (int i = 0; i < N; ++i) {
    ASSERT_EQ(e->submit(tuple_request(i), cs[static_cast<size_t>(i)].cb()).status, BatchEngine::Submit::kOk);
    if (i == 2 || i == 5) {
      ASSERT_EQ(e->submit(greedy(prompt_of(i, 9), 20), free_cs[i == 2 ? 0 : 1].cb()).status,
                BatchEngine::Submit::kOk);
    }
  }
  for (int i = 0; i < N; ++i) {
    cs[static_cast<size_t>(i)].wait();
    EXPECT_EQ(cs[static_cast<size_t>(i)].tokens, alone[static_cast<size_t>(i)]) << "request " << i;
  }
  for (auto& c : free_cs) {
    c.wait();
    EXPECT_EQ(c.tokens.size(), 20u);
  }
  EXPECT_EQ(e->stats().kv_blocks_in_use, 0);
}

TEST(BatchEngine, GrammarEosOnlyWhereItCanEnd) {
  // After "a" the grammar can end or take "b": EOS competes with the two spellings of "b" (the byte piece
  // and the word piece). At a high temperature the three are near equally likely.
  const char* g = R"(root ::= "a" "b"?)";
  const int32_t eos = masker()->vocabulary().eos;
  ASSERT_GE(eos, 0);
  auto e = load(4);
  int by_eos = 0, by_end = 0;
  for (int ignore = 0; ignore < 2; ++ignore) {
    std::vector<Collector> cs(16);
    for (int i = 0; i < 16; ++i) {
      CompletionParams p;
      p.prompt = prompt_of(i, 6);
      p.max_tokens = 10;
      p.grammar = compile(g);
      p.temperature = 50.0f;
      p.seed = static_cast<uint64_t>(i);
      p.ignore_eos = ignore == 1;
      ASSERT_EQ(e->submit(p, cs[static_cast<size_t>(i)].cb()).status, BatchEngine::Submit::kOk);
    }
    for (auto& c : cs) {
      c.wait();
      EXPECT_EQ(c.finish, FinishReason::kStop);
      ASSERT_FALSE(c.tokens.empty());
      if (c.tokens.back() == eos) {  // EOS right after "a", where the grammar can end
        EXPECT_EQ(ignore, 0) << "EOS sampled under ignore_eos";
        EXPECT_EQ(text_of(c.tokens), "a");
        EXPECT_EQ(c.tokens.size(), 2u);
        ++by_eos;
      } else {  // "ab": the grammar must end, so the engine stops
        EXPECT_EQ(text_of(c.tokens), "ab");
        ++by_end;
      }
    }
  }
  EXPECT_GT(by_eos, 0);
  EXPECT_GT(by_end, 16);  // every ignore_eos request, and some others
  // -n cuts a sentence short: kLength, a prefix of one.
  Collector c;
  CompletionParams p;
  p.prompt = prompt_of(1, 4);
  p.max_tokens = 2;
  p.grammar = compile(R"(root ::= "xyz" [0-9]{5})");
  p.temperature = 0;
  ASSERT_EQ(e->submit(p, c.cb()).status, BatchEngine::Submit::kOk);
  c.wait();
  EXPECT_EQ(c.finish, FinishReason::kLength);
  EXPECT_EQ(c.tokens.size(), 2u);
  const std::string text = text_of(c.tokens);
  EXPECT_TRUE(std::regex_match(text, std::regex("x(y(z[0-9]{0,5})?)?")) && text.size() >= 2) << text;
}

// A grammar whose matcher goes past its bound (4096 parse stacks, grammar_impl.h) after "{": each of
// 5000 alternatives is a distinct stack once "~" is read, so "~" is never allowed and the mask after
// "{" allows nothing. That is an error (kGrammarError), never a stop that looks like a finished answer.
TEST(BatchEngine, GrammarThatAllowsNothingIsAnError) {
  std::string g = R"(root ::= "{" "~" ()";
  for (int i = 0; i < 5000; ++i) g += (i ? " | \"" : "\"") + std::to_string(i) + "\"";
  g += " )";
  auto e = load(2);
  std::vector<Collector> cs(3);
  for (size_t i = 0; i < cs.size(); ++i) {
    CompletionParams p;
    p.prompt = prompt_of(static_cast<int>(i), 5);
    p.max_tokens = 8;
    p.grammar = compile(i == 2 ? R"(root ::= "{" [0-9])" : g.c_str());  // the last one is well formed
    p.temperature = 1.0f;
    p.seed = i;
    ASSERT_EQ(e->submit(p, cs[i].cb()).status, BatchEngine::Submit::kOk);
  }
  for (size_t i = 0; i < 2; ++i) {
    cs[i].wait();
    EXPECT_EQ(cs[i].finish, FinishReason::kGrammarError) << i;
    EXPECT_EQ(text_of(cs[i].tokens), "{") << i;  // the one token allowed, then nothing
  }
  cs[2].wait();
  EXPECT_EQ(cs[2].finish, FinishReason::kStop);
  EXPECT_TRUE(std::regex_match(text_of(cs[2].tokens), std::regex(R"(\{[0-9])"))) << text_of(cs[2].tokens);
  EXPECT_EQ(e->stats().kv_blocks_in_use, 0);
}

TEST(BatchEngine, GrammarWithoutMaskerIsABadRequest) {
  auto e = load(1, 256, 64, /*with_masker=*/false);
  Collector c;
  CompletionParams p = greedy(prompt_of(1, 4), 4);
  p.grammar = compile(R"(root ::= "a")");
  const auto r = e->submit(p, c.cb());
  EXPECT_EQ(r.status, BatchEngine::Submit::kBadRequest);
  EXPECT_NE(r.message.find("vocabulary"), std::string::npos) << r.message;
}

}  // namespace
}  // namespace mixtral
