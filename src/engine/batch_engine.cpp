// The continuous-batching scheduler: a request queue, admission against the paged KV cache (with
// prefix reuse), steps mixing decodes and prefill chunks, per-sequence sampling (grammar-constrained where
// a request has a grammar: each sequence its own matcher), cancellation.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "grammar/grammar.h"
#include "mixtral/server_engine.h"
#include "runtime/runtime.h"
#include "sampler/sampler.h"

namespace mixtral {

namespace {
using Clock = std::chrono::steady_clock;
constexpr int32_t kEosId = 2;  // without a masker (whose vocabulary names the EOS token)

int resolve_threads(int t) {
  if (t > 0) return t;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

struct Request {
  uint64_t id = 0;
  CompletionParams params;
  BatchEngine::Callback cb;
  std::atomic<bool> cancelled{false};
};

struct Seq {
  std::shared_ptr<Request> req;
  std::vector<int32_t> tokens;       // prompt then generated
  std::vector<int32_t> blocks;       // block table: position p in blocks[p / block_size]
  std::vector<uint64_t> hashes;      // chained hash of each published full block
  int64_t n_prompt = 0, n_done = 0;  // positions whose K/V are in the cache
  int64_t n_gen = 0, max_tokens = 0, cached = 0;
  int64_t reserved = 0;  // blocks promised at admission, not yet allocated
  std::unique_ptr<Sampler> sampler;
  std::unordered_map<int32_t, int32_t> gen_counts;  // generated token -> times (presence/frequency)
  std::unordered_set<int32_t> seen;                 // prompt + generated (repetition penalty)
  std::unique_ptr<grammar::Matcher> matcher;        // where the output stands in params.grammar (or null)
  bool finished = false;
};
}  // namespace

struct BatchEngine::Impl {
  BatchEngineOptions opts;
  std::unique_ptr<Model> model;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<PagedKvCache> kv;
  int64_t ctx = 0;
  int32_t eos = kEosId;

  mutable std::mutex mu;  // guards the queue, flags, active count, stats
  std::condition_variable cv;
  std::deque<std::shared_ptr<Request>> queue;
  std::unordered_map<uint64_t, std::shared_ptr<Request>> live;  // queued or active, by id
  int64_t n_active = 0;
  uint64_t next_id = 1;
  bool accepting = true, stop = false;
  BatchEngineStats st;
  std::deque<std::pair<Clock::time_point, int64_t>> rate;  // (step end, tokens generated in it)
  std::thread thread;

  // Engine thread only:
  std::vector<std::unique_ptr<Seq>> active;
  int64_t reserved_total = 0;
  std::vector<float> logits;          // [max_batch, vocab]
  std::vector<float> work;            // [vocab]
  std::vector<uint32_t> mask;         // [masker words] bit t: token t may follow (constrained sequences)
  std::vector<uint64_t> step_counts;  // [n_layers, n_experts]
  // Events of a step, delivered after its bookkeeping (so a finished request sees its blocks freed).
  std::vector<std::pair<std::shared_ptr<Request>, TokenEvent>> outbox;

  void run();
  bool admit(const std::shared_ptr<Request>& r);
  void finish(Seq& s, FinishReason why);
  // The next token of s, or -1 when its grammar allows none (it then stops).
  int32_t sample(Seq& s, const float* row, TokenEvent& ev);
  void ensure_block(Seq& s, int64_t pos);
  void publish_full_blocks(Seq& s);
};

BatchEngine::BatchEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

BatchEngine::~BatchEngine() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
    impl_->accepting = false;
    for (auto& [id, r] : impl_->live) r->cancelled = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

Result<std::unique_ptr<BatchEngine>> BatchEngine::load(const BatchEngineOptions& opts) {
  if (opts.threads < 0) return Error::usage("--threads must be positive");
  if (opts.ctx_size < 0) return Error::usage("--ctx-size must be positive");
  if (opts.parallel <= 0) return Error::usage("--parallel must be positive");
  if (opts.block_size <= 0 || opts.max_batch <= 0 || opts.max_queue < 0)
    return Error::usage("bad batch engine options");
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  LoadOptions lo;
  lo.repack = opts.repack;
  MX_ASSIGN_OR_RETURN(impl->model, load_model(opts.model_path, lo));
  const ModelConfig& c = impl->model->config;
  impl->pool = std::make_unique<ThreadPool>(resolve_threads(opts.threads));
  impl->ctx =
      opts.ctx_size > 0 ? opts.ctx_size : (c.max_seq_len > 0 ? std::min<int64_t>(c.max_seq_len, 4096) : 4096);
  // Every decode of `parallel` sequences must fit one step.
  impl->opts.max_batch = std::max<int64_t>(opts.max_batch, opts.parallel);
  RuntimeOptions ro;
  ro.n_ctx = 1;  // the contiguous cache is unused here
  ro.max_batch = impl->opts.max_batch;
  impl->runtime = std::make_unique<Runtime>(*impl->model, ro, *impl->pool);
  // Room for `parallel` full contexts, so an admitted request never waits for blocks.
  const int64_t per_seq = (impl->ctx + opts.block_size - 1) / opts.block_size;
  impl->kv = std::make_unique<PagedKvCache>(c, per_seq * opts.parallel, opts.block_size);
  impl->logits.resize(static_cast<size_t>(impl->opts.max_batch * c.vocab_size));
  impl->work.resize(static_cast<size_t>(c.vocab_size));
  if (opts.masker) {
    if (opts.masker->n_vocab() > c.vocab_size)
      return Error::usage("the grammar vocabulary has " + std::to_string(opts.masker->n_vocab()) +
                          " tokens; the model has " + std::to_string(c.vocab_size));
    const int32_t e = opts.masker->vocabulary().eos;
    if (e >= 0) impl->eos = e;
  }
  impl->st.n_layers = c.n_layers;
  impl->st.n_experts = c.n_experts;
  impl->st.expert_selections.assign(static_cast<size_t>(c.n_layers * c.n_experts), 0);
  impl->step_counts.assign(static_cast<size_t>(c.n_layers * c.n_experts), 0);
  impl->st.kv_blocks_total = impl->kv->n_blocks();
  impl->st.block_size = opts.block_size;
  Impl* p = impl.get();
  impl->thread = std::thread([p] { p->run(); });
  return std::unique_ptr<BatchEngine>(new BatchEngine(std::move(impl)));
}

const ModelConfig& BatchEngine::config() const {
  return impl_->model->config;
}
int64_t BatchEngine::ctx_size() const {
  return impl_->ctx;
}
const std::string& BatchEngine::model_path() const {
  return impl_->opts.model_path;
}

BatchEngineStats BatchEngine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  BatchEngineStats s = impl_->st;
  s.queued = static_cast<int64_t>(impl_->queue.size());
  s.active = impl_->n_active;
  const auto now = Clock::now();
  int64_t n = 0;
  Clock::time_point first = now;
  for (const auto& [t, k] : impl_->rate)
    if (now - t < std::chrono::seconds(5)) {
      n += k;
      first = std::min(first, t);
    }
  const double span = std::chrono::duration<double>(now - first).count();
  s.gen_tokens_per_s = span > 0.05 ? static_cast<double>(n) / span : 0.0;
  return s;
}

BatchEngine::SubmitResult BatchEngine::submit(CompletionParams params, Callback cb) {
  Impl& I = *impl_;
  const int64_t n = static_cast<int64_t>(params.prompt.size()), V = I.model->config.vocab_size;
  if (n == 0) return {Submit::kBadRequest, 0, "the prompt is empty"};
  for (int32_t t : params.prompt)
    if (t < 0 || t >= V)
      return {Submit::kBadRequest, 0, "prompt token id " + std::to_string(t) + " is out of range"};
  if (n >= I.ctx)
    return {Submit::kTooLong, 0,
            "the prompt has " + std::to_string(n) + " tokens; the context holds " + std::to_string(I.ctx) +
                " (prompt plus at least one generated token)"};
  if (params.max_tokens <= 0) return {Submit::kBadRequest, 0, "max_tokens must be at least 1"};
  if (params.grammar && !I.opts.masker)
    return {Submit::kBadRequest, 0,
            "constrained output needs the model's vocabulary, and this engine was loaded without one "
            "(BatchEngineOptions::masker)"};
  params.max_tokens = std::min(params.max_tokens, I.ctx - n);
  auto r = std::make_shared<Request>();
  r->params = std::move(params);
  r->cb = std::move(cb);
  {
    std::lock_guard<std::mutex> lk(I.mu);
    if (!I.accepting) return {Submit::kShuttingDown, 0, "the server is shutting down"};
    if (static_cast<int64_t>(I.queue.size()) + I.n_active >= I.opts.parallel + I.opts.max_queue)
      return {Submit::kQueueFull, 0, "the request queue is full"};
    r->id = I.next_id++;
    I.queue.push_back(r);
    I.live[r->id] = r;
  }
  I.cv.notify_all();
  return {Submit::kOk, r->id, ""};
}

void BatchEngine::cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    auto it = impl_->live.find(id);
    if (it == impl_->live.end()) return;
    it->second->cancelled = true;
  }
  impl_->cv.notify_all();
}

void BatchEngine::shutdown(double grace_s) {
  Impl& I = *impl_;
  std::unique_lock<std::mutex> lk(I.mu);
  I.accepting = false;
  I.cv.wait_for(lk, std::chrono::duration<double>(grace_s), [&] { return I.live.empty(); });
  for (auto& [id, r] : I.live) r->cancelled = true;
  I.stop = true;
  lk.unlock();
  I.cv.notify_all();
  if (I.thread.joinable()) I.thread.join();
}

// Takes the longest cached prefix of whole blocks (leaving at least one prompt token to compute, whose
// logits start the answer) and reserves blocks for the rest of prompt + max_tokens. False: not enough
// blocks now (the request waits).
bool BatchEngine::Impl::admit(const std::shared_ptr<Request>& r) {
  const auto& prompt = r->params.prompt;
  const int64_t n = static_cast<int64_t>(prompt.size()), bs = kv->block_size();
  auto s = std::make_unique<Seq>();
  s->req = r;
  s->blocks.reserve(static_cast<size_t>((n + r->params.max_tokens + bs - 1) / bs));
  uint64_t parent = 0;
  for (int64_t b = 0; (b + 1) * bs <= n - 1; ++b) {
    const uint64_t h = PagedKvCache::block_hash(parent, prompt.data() + b * bs, bs);
    const int32_t blk = kv->lookup(h, parent, prompt.data() + b * bs);
    if (blk < 0) break;
    s->blocks.push_back(blk);
    s->hashes.push_back(h);
    parent = h;
  }
  const int64_t total = n + r->params.max_tokens;
  const int64_t needed = (total + bs - 1) / bs - static_cast<int64_t>(s->blocks.size());
  if (kv->n_available() - reserved_total < needed) {
    for (int32_t b : s->blocks) kv->release(b);
    return false;
  }
  reserved_total += needed;
  s->reserved = needed;
  s->tokens = prompt;
  s->n_prompt = n;
  s->n_done = s->cached = static_cast<int64_t>(s->blocks.size()) * bs;
  s->max_tokens = r->params.max_tokens;
  const CompletionParams& p = r->params;
  s->sampler = std::make_unique<Sampler>(SamplerOptions{p.temperature, p.top_k, p.top_p, p.seed});
  if (p.repetition_penalty != 1.0f) s->seen.insert(prompt.begin(), prompt.end());
  if (p.grammar) s->matcher = std::make_unique<grammar::Matcher>(p.grammar);
  {
    std::lock_guard<std::mutex> lk(mu);
    st.prompt_tokens += static_cast<uint64_t>(n);
    st.prompt_tokens_cached += static_cast<uint64_t>(s->cached);
  }
  active.push_back(std::move(s));
  return true;
}

void BatchEngine::Impl::ensure_block(Seq& s, int64_t pos) {
  const int64_t bs = kv->block_size();
  while (static_cast<int64_t>(s.blocks.size()) <= pos / bs) {
    const int32_t b = kv->allocate();
    MX_CHECK(b >= 0 && s.reserved > 0, "paged KV cache: no block for a reserved sequence");
    --s.reserved;
    --reserved_total;
    s.blocks.push_back(b);
  }
}

void BatchEngine::Impl::publish_full_blocks(Seq& s) {
  const int64_t bs = kv->block_size();
  while (static_cast<int64_t>(s.hashes.size() + 1) * bs <= s.n_done) {
    const size_t b = s.hashes.size();
    const uint64_t parent = b == 0 ? 0 : s.hashes[b - 1];
    const int32_t* toks = s.tokens.data() + static_cast<int64_t>(b) * bs;
    const uint64_t h = PagedKvCache::block_hash(parent, toks, bs);
    kv->publish(s.blocks[b], h, parent, toks);
    s.hashes.push_back(h);
  }
}

void BatchEngine::Impl::finish(Seq& s, FinishReason why) {
  if (s.finished) return;
  s.finished = true;
  TokenEvent ev;
  ev.finish = why;
  ev.prompt_tokens = s.n_prompt;
  ev.cached_tokens = s.cached;
  outbox.emplace_back(s.req, std::move(ev));
  for (int32_t b : s.blocks) kv->release(b);
  s.blocks.clear();
  reserved_total -= s.reserved;
  s.reserved = 0;
}

int32_t BatchEngine::Impl::sample(Seq& s, const float* row, TokenEvent& ev) {
  const CompletionParams& p = s.req->params;
  const int64_t V = model->config.vocab_size;
  float* w = work.data();  // [vocab] logits after the grammar's mask, penalties and min_p
  std::copy(row, row + V, w);
  if (s.matcher) {  // the mask first: penalties, min_p and the sampler then see only allowed tokens
    const grammar::TokenMasker& masker = *opts.masker;
    masker.fill_mask(*s.matcher, mask);
    if (p.ignore_eos && eos >= 0 && eos < masker.n_vocab())
      mask[static_cast<size_t>(eos) / 32] &= ~(1u << (eos % 32));
    if (std::all_of(mask.begin(), mask.end(), [](uint32_t m) { return m == 0; })) return -1;
    grammar::apply_mask(mask, w, masker.n_vocab());
    // Ids the tokenizer does not have (a model vocabulary padded beyond it) are never grammatical.
    std::fill(w + masker.n_vocab(), w + V, -std::numeric_limits<float>::infinity());
  }
  if (p.repetition_penalty != 1.0f)
    for (int32_t t : s.seen) w[t] = w[t] > 0 ? w[t] / p.repetition_penalty : w[t] * p.repetition_penalty;
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f)
    for (const auto& [t, c] : s.gen_counts)
      w[t] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(c);
  if (p.min_p > 0.0f && p.temperature > 0.0f) {
    const float mx = *std::max_element(w, w + V);
    const float cut = mx + p.temperature * std::log(p.min_p);  // p_i >= min_p * p_max at the temperature
    for (int64_t i = 0; i < V; ++i)
      if (w[i] < cut) w[i] = -std::numeric_limits<float>::infinity();
  }
  const int32_t tok = s.sampler->sample(w, V);
  if (p.top_logprobs >= 0) {  // log-softmax of the model's logits (before penalties)
    const float mx = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(row[i] - mx));
    const float lse = mx + static_cast<float>(std::log(sum));
    ev.logprob = row[tok] - lse;
    if (p.top_logprobs > 0) {
      std::vector<int32_t> idx(static_cast<size_t>(V));
      for (int64_t i = 0; i < V; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      const int64_t k = std::min<int64_t>(p.top_logprobs, V);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
      for (int64_t i = 0; i < k; ++i)
        ev.top.emplace_back(idx[static_cast<size_t>(i)], row[idx[static_cast<size_t>(i)]] - lse);
    }
  }
  return tok;
}

void BatchEngine::Impl::run() {
  const int64_t V = model->config.vocab_size;
  std::vector<BatchToken> entries;  // [<= max_batch]
  std::vector<Seq*> owner;          // [<= max_batch] the sequence of each entry
  std::vector<Seq*> sampled;        // sequences whose last entry wants logits, in entry order
  for (;;) {
    std::vector<std::shared_ptr<Request>> to_admit;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return stop || !active.empty() || !queue.empty(); });
      if (stop && active.empty()) {
        for (auto& r : queue) r->cancelled = true;
        to_admit.assign(queue.begin(), queue.end());  // told they are cancelled below
        queue.clear();
      } else {
        // Drop cancelled waiting requests; take as many as there are free slots.
        for (auto it = queue.begin(); it != queue.end();)
          if ((*it)->cancelled) {
            to_admit.push_back(*it);
            it = queue.erase(it);
          } else {
            ++it;
          }
      }
    }
    for (auto& r : to_admit) {      // cancelled before admission
      if (!r->cancelled) continue;  // (every entry here is cancelled)
      TokenEvent ev;
      ev.finish = FinishReason::kCancelled;
      r->cb(ev);
      std::lock_guard<std::mutex> lk(mu);
      live.erase(r->id);
      cv.notify_all();
    }
    {
      std::unique_lock<std::mutex> lk(mu);
      if (stop && active.empty() && queue.empty()) {
        cv.notify_all();
        return;
      }
      while (!queue.empty() && static_cast<int64_t>(active.size()) < opts.parallel) {
        auto r = queue.front();
        lk.unlock();
        const bool ok = admit(r);
        lk.lock();
        if (!ok) break;
        queue.pop_front();
      }
      n_active = static_cast<int64_t>(active.size());
    }
    // Cancelled sequences leave before the step.
    for (auto& s : active)
      if (s->req->cancelled) finish(*s, FinishReason::kCancelled);

    // Build the step: one token per decoding sequence, then prefill chunks in admission order.
    entries.clear();
    owner.clear();
    int64_t budget = opts.max_batch;
    for (auto& s : active)
      if (!s->finished && s->n_done >= s->n_prompt && budget > 0) {
        const int64_t p = s->n_done;
        ensure_block(*s, p);
        entries.push_back(
            {s->tokens[static_cast<size_t>(p)], static_cast<int32_t>(p), s->blocks.data(), true});
        owner.push_back(s.get());
        --budget;
      }
    for (auto& s : active) {
      if (s->finished || s->n_done >= s->n_prompt || budget == 0) continue;
      const int64_t take = std::min(budget, s->n_prompt - s->n_done);
      ensure_block(*s, s->n_done + take - 1);
      for (int64_t i = 0; i < take; ++i) {
        const int64_t p = s->n_done + i;
        entries.push_back({s->tokens[static_cast<size_t>(p)], static_cast<int32_t>(p), s->blocks.data(),
                           p == s->n_prompt - 1});
        owner.push_back(s.get());
      }
      budget -= take;
    }
    int64_t n_prefill = 0;
    if (!entries.empty()) {
      std::fill(step_counts.begin(), step_counts.end(), 0);
      runtime->set_expert_counts(&step_counts);
      runtime->forward_paged(entries.data(), static_cast<int64_t>(entries.size()), *kv, logits.data());
      runtime->set_expert_counts(nullptr);
      for (size_t i = 0; i < entries.size(); ++i) {
        Seq& s = *owner[i];
        if (s.n_done < s.n_prompt) ++n_prefill;
        s.n_done = entries[i].pos + 1;
      }
    }
    // Sample, in entry order (the logits rows are in that order).
    int64_t row = 0, n_gen = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (!entries[i].want_logits) continue;
      Seq& s = *owner[i];
      const float* lr = logits.data() + row++ * V;
      publish_full_blocks(s);
      if (s.req->cancelled) continue;
      TokenEvent ev;
      const int32_t tok = sample(s, lr, ev);
      if (tok < 0) {  // the grammar allows nothing here: an error, not a stop (the caller reports it)
        finish(s, FinishReason::kGrammarError);
        continue;
      }
      ev.token = tok;
      s.tokens.push_back(tok);
      ++s.n_gen;
      ++n_gen;
      ++s.gen_counts[tok];
      if (s.req->params.repetition_penalty != 1.0f) s.seen.insert(tok);
      bool grammar_end = false;
      if (s.matcher) {  // the mask allowed tok, so the matcher takes it
        MX_CHECK(opts.masker->accept(*s.matcher, tok), "grammar: the sampled token was not allowed");
        grammar_end = tok == eos || s.matcher->must_end();
      }
      if (grammar_end || (tok == eos && !s.req->params.ignore_eos)) {
        ev.finish = FinishReason::kStop;
      } else if (s.n_gen >= s.max_tokens || static_cast<int64_t>(s.tokens.size()) >= ctx) {
        ev.finish = FinishReason::kLength;
      }
      ev.prompt_tokens = s.n_prompt;
      ev.cached_tokens = s.cached;
      if (ev.finish != FinishReason::kNone) {
        s.finished = true;
        for (int32_t b : s.blocks) kv->release(b);
        s.blocks.clear();
        reserved_total -= s.reserved;
        s.reserved = 0;
      }
      outbox.emplace_back(s.req, std::move(ev));
    }
    for (auto& s : active)
      if (!s->finished) publish_full_blocks(*s);
    std::vector<uint64_t> done_ids;
    for (auto& s : active)
      if (s->finished) done_ids.push_back(s->req->id);
    active.erase(std::remove_if(active.begin(), active.end(), [](const auto& s) { return s->finished; }),
                 active.end());
    {
      std::lock_guard<std::mutex> lk(mu);
      for (uint64_t id : done_ids) live.erase(id);
      n_active = static_cast<int64_t>(active.size());
      st.kv_blocks_in_use = kv->n_in_use();
      st.kv_blocks_cached = kv->n_cached_idle();
      st.prompt_tokens_computed += static_cast<uint64_t>(n_prefill);
      st.generated_tokens += static_cast<uint64_t>(n_gen);
      if (!entries.empty()) {
        ++st.steps;
        for (size_t i = 0; i < step_counts.size(); ++i) st.expert_selections[i] += step_counts[i];
      }
      const auto now = Clock::now();
      if (n_gen > 0) rate.emplace_back(now, n_gen);
      while (!rate.empty() && now - rate.front().first > std::chrono::seconds(5)) rate.pop_front();
    }
    // Deliver; a callback returning false cancels its request (finished at the next step).
    for (auto& [req, ev] : outbox)
      if (!req->cb(ev) && ev.finish == FinishReason::kNone) req->cancelled = true;
    outbox.clear();
    if (!done_ids.empty()) cv.notify_all();
  }
}

}  // namespace mixtral
