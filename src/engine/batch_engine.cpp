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

#include "engine/core.h"
#include "grammar/grammar.h"
#include "mixtral/server_engine.h"
#include "runtime/runtime.h"
#include "sampler/sampler.h"

namespace mixtral {

namespace {
using Clock = std::chrono::steady_clock;

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
  int64_t reserved = 0;                // blocks promised at admission, not yet allocated
  std::unique_ptr<SequenceStep> step;  // its sampling (and grammar) state
  bool finished = false;
};
}  // namespace

struct BatchEngine::Impl {
  BatchEngineOptions opts;
  std::unique_ptr<EngineCore> core;
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<PagedKvCache> kv;
  int64_t ctx = 0;
  int32_t eos = 0;

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
  std::vector<uint64_t> step_counts;  // [n_layers, n_experts]
  // Events of a step, delivered after its bookkeeping (so a finished request sees its blocks freed).
  std::vector<std::pair<std::shared_ptr<Request>, TokenEvent>> outbox;

  void run();
  bool admit(const std::shared_ptr<Request>& r);
  void finish(Seq& s, FinishReason why);
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
  if (opts.parallel <= 0) return Error::usage("--parallel must be positive");
  if (opts.kv_memory < 0) return Error::usage("--kv-memory must not be negative");
  if (opts.block_size <= 0 || opts.max_batch <= 0 || opts.max_queue < 0)
    return Error::usage("bad batch engine options");
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  MX_ASSIGN_OR_RETURN(impl->core, EngineCore::load({opts.model_path, opts.threads, opts.ctx_size, opts.repack,
                                                    opts.cache_type}));
  const EngineCore& core = *impl->core;
  const ModelConfig& c = core.config();
  impl->ctx = core.ctx;
  // Every decode of `parallel` sequences must fit one step.
  impl->opts.max_batch = std::max<int64_t>(opts.max_batch, opts.parallel);
  RuntimeOptions ro;
  ro.max_batch = impl->opts.max_batch;
  impl->runtime = std::make_unique<Runtime>(*core.model, ro, *core.pool);
  // The pool: kv_memory bytes, else room for `parallel` full contexts. At least one full context, so an
  // admitted request never waits for blocks.
  const int64_t per_seq = (impl->ctx + opts.block_size - 1) / opts.block_size;
  const auto block_bytes = static_cast<int64_t>(kv_bytes_per_token(c, opts.cache_type)) * opts.block_size;
  const int64_t n_blocks = opts.kv_memory > 0 ? opts.kv_memory / block_bytes : per_seq * opts.parallel;
  if (n_blocks < per_seq)
    return Error::usage(
        "--kv-memory " + std::to_string(opts.kv_memory) + " holds " + std::to_string(n_blocks) +
        " blocks of " + std::to_string(opts.block_size) + " positions (" + std::to_string(block_bytes) +
        " bytes each, " + kv_cache_type_name(opts.cache_type) + "); one full context of " +
        std::to_string(impl->ctx) + " needs " + std::to_string(per_seq * block_bytes) + " bytes");
  impl->kv = std::make_unique<PagedKvCache>(c, core.kv_type, n_blocks, opts.block_size);
  impl->logits.resize(static_cast<size_t>(impl->opts.max_batch * c.vocab_size));
  if (opts.masker && opts.masker->n_vocab() > c.vocab_size)
    return Error::usage("the grammar vocabulary has " + std::to_string(opts.masker->n_vocab()) +
                        " tokens; the model has " + std::to_string(c.vocab_size));
  impl->eos = core.eos_with(opts.masker.get());
  impl->st.n_layers = c.n_layers;
  impl->st.n_experts = c.n_experts;
  impl->st.expert_selections.assign(static_cast<size_t>(c.n_layers * c.n_experts), 0);
  impl->step_counts.assign(static_cast<size_t>(c.n_layers * c.n_experts), 0);
  impl->st.kv_blocks_total = impl->kv->n_blocks();
  impl->st.block_size = opts.block_size;
  impl->st.kv_bytes_total = static_cast<int64_t>(impl->kv->bytes());
  impl->st.kv_bytes_per_token = static_cast<int64_t>(impl->kv->bytes_per_token());
  impl->st.kv_cache_type = kv_cache_type_name(opts.cache_type);
  Impl* p = impl.get();
  impl->thread = std::thread([p] { p->run(); });
  return std::unique_ptr<BatchEngine>(new BatchEngine(std::move(impl)));
}

const ModelConfig& BatchEngine::config() const {
  return impl_->core->config();
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
  const int64_t n = static_cast<int64_t>(params.prompt.size()), V = I.core->config().vocab_size;
  if (n == 0) return {Submit::kBadRequest, 0, "the prompt is empty"};
  for (int32_t t : params.prompt)
    if (t < 0 || t >= V)
      return {Submit::kBadRequest, 0, "prompt token id " + std::to_string(t) + " is out of range"};
  if (n >= I.ctx)
    return {Submit::kTooLong, 0,
            "the prompt has " + std::to_string(n) + " tokens; the context holds " + std::to_string(I.ctx) +
                " (prompt plus at least one generated token)"};
  if (params.max_tokens <= 0) return {Submit::kBadRequest, 0, "max_tokens must be at least 1"};
  for (const auto& [id, bias] : params.logit_bias) {
    if (id < 0 || id >= V)
      return {
          Submit::kBadRequest, 0,
          "logit_bias: token id " + std::to_string(id) + " is out of range [0, " + std::to_string(V) + ")"};
    if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
      return {Submit::kBadRequest, 0,
              "logit_bias: the bias of token " + std::to_string(id) + " must be a number"};
  }
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
  SamplingParams sp;
  sp.temperature = p.temperature;
  sp.top_k = p.top_k;
  sp.top_p = p.top_p;
  sp.min_p = p.min_p;
  sp.seed = p.seed;
  sp.presence_penalty = p.presence_penalty;
  sp.frequency_penalty = p.frequency_penalty;
  sp.repetition_penalty = p.repetition_penalty;
  sp.logit_bias = p.logit_bias;
  sp.top_logprobs = p.top_logprobs;
  s->step = std::make_unique<SequenceStep>(sp, core->config().vocab_size, p.grammar, opts.masker.get(), eos,
                                           !p.ignore_eos);
  s->step->add_prompt(prompt.data(), n);
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

void BatchEngine::Impl::run() {
  const int64_t V = core->config().vocab_size;
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
      runtime->step(entries.data(), static_cast<int64_t>(entries.size()), *kv, logits.data());
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
      TokenLogprobs lp;
      const int32_t tok = s.step->sample(lr, &lp);
      if (tok < 0) {  // the grammar allows nothing here: an error, not a stop (the caller reports it)
        finish(s, FinishReason::kGrammarError);
        continue;
      }
      ev.token = tok;
      ev.logprob = lp.logprob;
      ev.top = std::move(lp.top);
      s.tokens.push_back(tok);
      ++s.n_gen;
      ++n_gen;
      s.step->accept(tok);  // the mask allowed tok, so the grammar's matcher takes it
      const bool grammar_end = s.step->has_grammar() && (tok == eos || s.step->must_end());
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
