#include "mixtral/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

#include "core/dist.h"
#include "core/huge_pages.h"
#include "core/membw.h"
#include "engine/core.h"
#include "grammar/grammar.h"
#include "kernels/kernels.h"
#include "kernels/paged_attention.h"
#include "model/test_model.h"
#include "runtime/runtime.h"
#include "sampler/sampler.h"

namespace mixtral {

struct Engine::Impl {
  std::unique_ptr<EngineCore> core;
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<PagedKvCache> kv;  // one sequence's blocks, covering the context
  std::unique_ptr<SoloSequence> seq;
  std::vector<int32_t> cached;  // the tokens whose K/V are at positions [0, size) of the cache
  int64_t reused = 0;           // prompt tokens the last generate() took from the cache

  // Evaluates tokens at [n_past, n_past + n) and keeps `cached` true to the cache.
  Status eval(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits) {
    cached.resize(std::min<size_t>(cached.size(), static_cast<size_t>(std::max<int64_t>(n_past, 0))));
    MX_TRY_STATUS(seq->eval(tokens, n, n_past, logits, all_logits));
    if (static_cast<int64_t>(cached.size()) == n_past) cached.insert(cached.end(), tokens, tokens + n);
    return Status();
  }
};

namespace {
SamplingParams sampling_of(const GenerateOptions& o) {
  SamplingParams p;
  p.temperature = o.temperature;
  p.top_k = o.top_k;
  p.top_p = o.top_p;
  p.min_p = o.min_p;
  p.seed = o.seed;
  p.presence_penalty = o.presence_penalty;
  p.frequency_penalty = o.frequency_penalty;
  p.repetition_penalty = o.repetition_penalty;
  p.logit_bias = o.logit_bias;
  return p;
}

Status check_grammar_options(const GenerateOptions& o, int64_t n_vocab) {
  if (o.grammar && !o.masker)
    return Error::usage("constrained output needs the model's vocabulary (GenerateOptions::masker)");
  if (o.masker && o.masker->n_vocab() > n_vocab)
    return Error::data("the grammar vocabulary has " + std::to_string(o.masker->n_vocab()) +
                       " tokens; the model has " + std::to_string(n_vocab));
  return Status();
}
}  // namespace

const char* kv_cache_type_name(KvCacheType t) {
  switch (t) {
    case KvCacheType::kF32:
      return "f32";
    case KvCacheType::kF16:
      return "f16";
    case KvCacheType::kQ8_0:
      return "q8_0";
  }
  return "?";
}

std::optional<KvCacheType> parse_kv_cache_type(std::string_view s) {
  for (KvCacheType t : {KvCacheType::kF32, KvCacheType::kF16, KvCacheType::kQ8_0})
    if (s == kv_cache_type_name(t)) return t;
  return std::nullopt;
}

size_t kv_bytes_per_token(const ModelConfig& c, KvCacheType t) {
  return 2 * kernels::kv_row_bytes(kv_dtype(t), c.n_kv_heads, c.head_dim) * static_cast<size_t>(c.n_layers);
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::load(const EngineOptions& opts) {
  if (opts.batch_size <= 0) return Error::usage("--batch-size must be positive");
  auto impl = std::make_unique<Impl>();
  MX_ASSIGN_OR_RETURN(impl->core, EngineCore::load({opts.model_path, opts.threads, opts.ctx_size, opts.repack,
                                                    opts.cache_type}));
  const EngineCore& core = *impl->core;
  RuntimeOptions ro;
  ro.max_batch = std::min(opts.batch_size, core.ctx);
  impl->runtime = std::make_unique<Runtime>(*core.model, ro, *core.pool);
  impl->kv = std::make_unique<PagedKvCache>(core.config(), core.kv_type,
                                            (core.ctx + kKvBlockSize - 1) / kKvBlockSize, kKvBlockSize);
  impl->seq = std::make_unique<SoloSequence>(*impl->runtime, *impl->kv, core.ctx);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelConfig& Engine::config() const {
  return impl_->core->config();
}
int64_t Engine::ctx_size() const {
  return impl_->core->ctx;
}
int Engine::threads() const {
  return impl_->core->threads;
}
KvCacheType Engine::cache_type() const {
  return impl_->core->cache_type;
}
int64_t Engine::reused_tokens() const {
  return impl_->reused;
}
bool Engine::has_vocab() const {
  return !impl_->core->model->vocab.empty();
}

std::string Engine::token_text(int32_t id) const {
  const auto& vocab = impl_->core->model->vocab;
  if (id < 0 || static_cast<size_t>(id) >= vocab.size()) return "";
  std::string piece = vocab[static_cast<size_t>(id)];
  // "<0xAB>" byte pieces and the "▁" word marker, as SentencePiece writes them.
  if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece[5] == '>')
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  std::string out;
  for (size_t i = 0; i < piece.size(); ++i) {
    if (piece.compare(i, 3, "\xe2\x96\x81") == 0) {
      out += ' ';
      i += 2;
    } else {
      out += piece[i];
    }
  }
  return out;
}

Result<std::vector<float>> Engine::score(const std::vector<int32_t>& tokens, bool one_by_one,
                                         std::vector<RoutingRecord>* routing) {
  const int64_t n = static_cast<int64_t>(tokens.size()), V = config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(n * V));  // [n, vocab]
  Impl& I = *impl_;
  if (routing) {
    I.runtime->set_routing_sink([routing](int64_t layer, const int32_t* pos, int64_t nt, const Routing& r) {
      for (int64_t t = 0; t < nt; ++t) {
        RoutingRecord rec{layer, pos[t], {}, {}};
        rec.experts.assign(r.experts.begin() + t * r.k, r.experts.begin() + (t + 1) * r.k);
        rec.weights.assign(r.weights.begin() + t * r.k, r.weights.begin() + (t + 1) * r.k);
        routing->push_back(std::move(rec));
      }
    });
  }
  Status st;
  if (one_by_one && n > 0) {
    for (int64_t i = 0; i < n && st.ok(); ++i)
      st = I.eval(tokens.data() + i, 1, i, logits.data() + i * V, true);
  } else {
    st = I.eval(tokens.data(), n, 0, logits.data(), true);
  }
  I.runtime->set_routing_sink(nullptr);
  if (!st.ok()) return st.error();
  return logits;
}

Result<std::vector<int32_t>> Engine::generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                                              const std::function<void(int32_t)>& on_token,
                                              GenerateStop* stop) {
  Impl& I = *impl_;
  const int64_t n = static_cast<int64_t>(prompt.size()), V = config().vocab_size;
  if (opts.max_tokens < 0) return Error::usage("-n must not be negative");
  const SamplingParams sp = sampling_of(opts);
  MX_TRY_STATUS(check_sampling(sp, V));
  MX_TRY_STATUS(check_grammar_options(opts, V));
  if (n + opts.max_tokens > ctx_size())
    return Error::usage("prompt of " + std::to_string(n) + " tokens plus " + std::to_string(opts.max_tokens) +
                        " new tokens exceeds the context of " + std::to_string(ctx_size()) + " (--ctx-size)");
  // The longest common prefix with what the cache holds, less at least the last prompt token (its logits
  // start the answer).
  int64_t reuse = 0;
  const int64_t can = std::min<int64_t>(static_cast<int64_t>(I.cached.size()), n - 1);
  while (reuse < can && I.cached[static_cast<size_t>(reuse)] == prompt[static_cast<size_t>(reuse)]) ++reuse;
  std::vector<float> logits(static_cast<size_t>(V));  // [vocab] of the last position
  MX_TRY_STATUS(I.eval(prompt.data() + reuse, n - reuse, reuse, logits.data(), false));
  I.reused = reuse;
  const int32_t eos = I.core->eos_with(opts.masker.get());
  SequenceStep step(sp, V, opts.grammar, opts.masker.get(), eos, opts.stop_at_eos);
  step.add_prompt(prompt.data(), n);
  GenerateStop why = GenerateStop::kLength;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < opts.max_tokens; ++i) {
    const int32_t tok = step.sample(logits.data());
    if (tok < 0)  // no token allowed: an error, never a quiet stop
      return Error::data("the grammar allowed no next token after " + std::to_string(i) +
                         " generated tokens: it has a dead end, or matching it needs more than the "
                         "matcher's limit of 4096 parse stacks (e.g. a very large or ambiguous alternation)");
    step.accept(tok);
    out.push_back(tok);
    if (on_token) on_token(tok);
    if (opts.stop_at_eos && tok == eos) {
      why = GenerateStop::kEos;
      break;
    }
    if (step.must_end()) {
      why = GenerateStop::kGrammar;
      break;
    }
    if (i + 1 == opts.max_tokens) break;
    MX_TRY_STATUS(I.eval(&tok, 1, n + i, logits.data(), false));
  }
  if (stop) *stop = why;
  return out;
}

std::string Engine::describe(int64_t ctx) const {
  const Model& m = *impl_->core->model;
  const ModelConfig& c = m.config;
  std::ostringstream s;
  s << "model:        " << m.path << "\n";
  s << "layout:       " << layout_name(m.layout) << "\n";
  s << "dim:          " << c.dim << "\n";
  s << "layers:       " << c.n_layers << "\n";
  s << "heads:        " << c.n_heads << " query, " << c.n_kv_heads << " key/value, head_dim " << c.head_dim
    << "\n";
  s << "ffn:          " << c.ffn_dim << "\n";
  s << "experts:      " << c.n_experts << " (top-" << c.n_experts_used << ")\n";
  s << "vocab:        " << c.vocab_size << "\n";
  s << "norm_eps:     " << c.norm_eps << "\n";
  s << "rope_theta:   " << c.rope_theta << " ("
    << (c.rope_layout == RopeLayout::kHalf ? "rotate-half" : "interleaved") << " q/k rows)\n";
  s << "sliding_window: " << (c.sliding_window ? std::to_string(c.sliding_window) : std::string("none"))
    << "\n";
  s << "context:      " << (c.max_seq_len ? std::to_string(c.max_seq_len) : std::string("unknown"))
    << " (trained)\n";
  s << "tied_embeddings: " << (c.tie_embeddings ? "yes" : "no") << "\n";
  std::map<std::string, std::pair<int64_t, size_t>> by_type;
  std::map<std::string, double> type_bits;  // bits per weight of each type
  size_t total = 0;
  double weights = 0;  // elements of every tensor
  for (const auto& t : m.tensors) {
    const std::string name(dtype_name(t.dtype));
    auto& e = by_type[name];
    ++e.first;
    e.second += t.nbytes;
    total += t.nbytes;
    type_bits[name] = bits_per_weight(t.dtype);
    weights += 8.0 * static_cast<double>(t.nbytes) / type_bits[name];
  }
  s << "tensors:      " << m.tensors.size() << " (" << total << " bytes)\n";
  for (const auto& [name, e] : by_type)
    s << "  " << name << ": " << e.first << " tensors, " << e.second << " bytes\n";
  s << "bits per weight:";
  for (const auto& [name, bits] : type_bits) s << " " << name << " " << bits << ",";
  s << " all tensors " << (weights > 0 ? 8.0 * static_cast<double>(total) / weights : 0.0) << "\n";
  const KvCacheType kt = cache_type();
  const size_t per_token = kv_bytes_per_token(c, kt), kv = per_token * static_cast<size_t>(ctx);
  s << "KV cache:     " << per_token << " bytes per token (" << kv_cache_type_name(kt) << ", K and V of "
    << c.n_layers << " layers)\n";
  s << "memory for a context of " << ctx << ": weights " << total << " bytes (mapped) + KV cache " << kv
    << " bytes (" << kv_cache_type_name(kt) << ") = " << (total + kv) << " bytes\n";
  s << "bytes read per decoded token: " << static_cast<size_t>(bytes_per_token()) << "\n";
  return s.str();
}

Result<std::string> Engine::describe_ranks(int n_ranks) const {
  const Model& m = *impl_->core->model;
  const ModelConfig& c = m.config;
  const int64_t parts = n_ranks >= 1 ? expert_parts(c, n_ranks) : 0;
  if (parts == 0)
    return Error::usage("--ranks must be in [1, " +
                        std::to_string(c.n_experts * (std::min(c.ffn_dim, c.dim) / kExpertPartRows)) +
                        "] (experts cut into parts of at least " + std::to_string(kExpertPartRows) +
                        " rows)");
  size_t all = 0, experts = 0;
  for (const auto& t : m.tensors) all += t.nbytes;
  std::vector<size_t> held(static_cast<size_t>(n_ranks), 0);     // [ranks] expert bytes
  std::vector<std::string> where(static_cast<size_t>(n_ranks));  // [ranks] "layer:experts ..."
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = m.layers[static_cast<size_t>(l)];
    std::vector<std::string> list(static_cast<size_t>(n_ranks));
    for (int64_t e = 0; e < c.n_experts; ++e) {
      experts += expert_bytes(L, e, c, {0, 0, c.ffn_dim, 0, c.dim});
      for (int64_t p = 0; p < parts; ++p) {
        const ExpertPart x = expert_part(c, n_ranks, l, e, p);
        const auto r = static_cast<size_t>(x.rank);
        held[r] += expert_bytes(L, e, c, x);
        if (!list[r].empty()) list[r] += ',';
        list[r] += std::to_string(e);
        if (parts > 1) {
          list[r] += '/';
          list[r] += std::to_string(p);
        }
      }
    }
    for (size_t r = 0; r < list.size(); ++r) {
      if (list[r].empty()) continue;
      if (!where[r].empty()) where[r] += ' ';
      where[r] += std::to_string(l);
      where[r] += ':';
      where[r] += list[r];
    }
  }
  const size_t shared = all - experts;
  std::ostringstream s;
  s << "ranks:        " << n_ranks << " ("
    << (parts > 1 ? "experts cut into " + std::to_string(parts) + " parts by rows, the parts"
                  : std::string("experts"))
    << " round robin over layer and expert; every rank holds the " << shared
    << " bytes of shared weights: attention, norms, router, embeddings, output)\n";
  for (int r = 0; r < n_ranks; ++r) {
    const auto i = static_cast<size_t>(r);
    s << "rank " << r << ": experts " << held[i] << " bytes + shared " << shared
      << " bytes = " << held[i] + shared << " bytes; layer:experts" << (parts > 1 ? "/part " : " ")
      << where[i] << "\n";
  }
  return s.str();
}

double Engine::bytes_per_token() const {
  // One decode step reads attention, router and output head, and top-k of n experts per layer.
  const Model& m = *impl_->core->model;
  const ModelConfig& c = m.config;
  double experts = 0, other = 0;
  for (const auto& L : m.layers) {
    for (size_t e = 0; e < L.w1.size(); ++e)  // whole experts, whatever part of them this rank holds
      experts +=
          static_cast<double>(expert_bytes(L, static_cast<int64_t>(e), c, {0, 0, c.ffn_dim, 0, c.dim}));
    other += static_cast<double>(L.wq.nbytes() + L.wk.nbytes() + L.wv.nbytes() + L.wo.nbytes() +
                                 4 * L.router.size());
  }
  other += static_cast<double>(m.output.nbytes());
  return other + experts * static_cast<double>(c.n_experts_used) / static_cast<double>(c.n_experts);
}

namespace {
// The weights one decode step reads (bytes_per_token's count): attention and output whole, and the first
// top-k experts of each layer, which stand for whichever the router picks (all lie in the same memory).
// Under mpirun: the first top-k of this rank's experts (fewer when it holds fewer).
std::vector<ReadRegion> token_regions(const Model& m) {
  std::vector<ReadRegion> out;
  auto add = [&](const TensorView& v) { out.push_back({v.data, v.nbytes()}); };
  for (const LayerWeights& L : m.layers) {
    for (const TensorView* v : {&L.wq, &L.wk, &L.wv, &L.wo}) add(*v);
    int64_t taken = 0;
    for (size_t e = 0; e < L.w1.size() && taken < m.config.n_experts_used; ++e) {
      if (!L.w1[e].data) continue;  // another rank's
      for (const auto* experts : {&L.w1, &L.w3, &L.w2}) add((*experts)[e]);
      ++taken;
    }
  }
  add(m.output);
  return out;
}
}  // namespace

double Engine::decode_flops(const ModelConfig& c, int64_t pos) {
  const auto dim = static_cast<double>(c.dim), hd = static_cast<double>(c.head_dim);
  const double qd = static_cast<double>(c.n_heads) * hd, kvd = static_cast<double>(c.n_kv_heads) * hd;
  const double attn_params = dim * qd + 2 * dim * kvd + qd * dim;  // Wq, Wk, Wv, Wo
  const double router_params = static_cast<double>(c.n_experts) * dim;
  const double expert_params = 3 * dim * static_cast<double>(c.ffn_dim);  // W1, W3, W2
  const int64_t attended = c.sliding_window > 0 ? std::min(pos + 1, c.sliding_window) : pos + 1;
  const double layer =
      2 * (attn_params + router_params + static_cast<double>(c.n_experts_used) * expert_params) +
      4 * static_cast<double>(c.n_heads) * hd * static_cast<double>(attended);
  return static_cast<double>(c.n_layers) * layer + 2 * dim * static_cast<double>(c.vocab_size);
}

namespace {
// Sequence s's token at position p in a parallel bench (engine.h); sequence 0's are the solo bench's.
int32_t parallel_token(int64_t s, int64_t p, int64_t vocab) {
  return static_cast<int32_t>((p * 7919 + s * 104729 + 13) % vocab);
}

// Refuses --parallel values bench_parallel cannot run: <= 0, without decode steps, past the context, or
// needing more memory than is available (the KV cache, the logits and the step's activations).
Status check_parallel(const EngineCore& core, const Engine::BenchOptions& o) {
  if (o.parallel.empty()) return Status();
  for (int64_t n : o.parallel)
    if (n <= 0) return Error::usage("bench: --parallel " + std::to_string(n) + ": each value must be >= 1");
  if (o.n_gen <= 0) return Error::usage("bench: --parallel needs -n > 0 (the decode steps it times)");
  const int64_t len = o.n_depth + o.n_prompt + o.n_gen;
  if (len > core.ctx)
    return Error::usage("bench: --parallel: " + std::to_string(len) +
                        " positions per sequence (-d + -p + -n) exceed the context of " +
                        std::to_string(core.ctx) + " (--ctx-size)");
  const ModelConfig& c = core.config();
  const auto max_n = static_cast<double>(*std::max_element(o.parallel.begin(), o.parallel.end()));
  const auto blocks = static_cast<double>((len + kKvBlockSize - 1) / kKvBlockSize);
  const double kv =
      max_n * blocks * static_cast<double>(kKvBlockSize * kv_bytes_per_token(c, core.cache_type));
  // Per entry: its logits row, the runtime's rows (x, xn, o; q, att; k, v) and the experts' hidden rows.
  const double per_entry =
      4.0 * static_cast<double>(c.vocab_size + 3 * c.dim + 2 * c.n_heads * c.head_dim +
                                2 * c.n_kv_heads * c.head_dim + c.n_experts_used * (2 * c.ffn_dim + c.dim));
  const double need = kv + max_n * per_entry;
  const std::optional<size_t> avail = available_memory();
  if (avail && need > static_cast<double>(*avail)) {
    char buf[256];
    std::snprintf(
        buf, sizeof(buf),
        "bench: --parallel %.0f needs about %.0f MB (KV cache of %.0f sequences x %lld positions, %s, "
        "and the step's buffers); %.0f MB are available",
        max_n, need / 1e6, max_n, static_cast<long long>(len), kv_cache_type_name(core.cache_type),
        static_cast<double>(*avail) / 1e6);
    return Error::usage(buf);
  }
  return Status();
}

// The parallel tests of Engine::bench (engine.h): a Runtime of its own, whose batch holds the largest N (and
// the engine's prefill chunk), over one paged KV cache of max N sequences x (depth + prompt + gen) positions.
std::vector<Engine::ParallelResult> bench_parallel(const EngineCore& core, int64_t prefill_batch,
                                                   const Engine::BenchOptions& o) {
  using clock = std::chrono::steady_clock;
  const ModelConfig& c = core.config();
  const int64_t V = c.vocab_size;
  const int64_t max_n = *std::max_element(o.parallel.begin(), o.parallel.end());
  const int64_t past = o.n_depth + o.n_prompt, len = past + o.n_gen;
  const int64_t per_seq = (len + kKvBlockSize - 1) / kKvBlockSize;  // blocks of one sequence
  RuntimeOptions ro;
  ro.max_batch = std::max(max_n, prefill_batch);
  Runtime rt(*core.model, ro, *core.pool);
  PagedKvCache kv(c, core.kv_type, max_n * per_seq, kKvBlockSize);
  std::vector<int32_t> tables(static_cast<size_t>(max_n * per_seq));  // [max_n, per_seq] row s: s's blocks
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  auto table = [&](int64_t s) { return tables.data() + s * per_seq; };
  std::vector<BatchToken> entries(static_cast<size_t>(ro.max_batch));  // [max_batch]
  std::vector<float> logits(static_cast<size_t>(max_n * V));           // [max_n, vocab]
  // The FLOPs of one sequence's n_gen decode steps.
  double seq_flops = 0;
  for (int64_t i = 0; i < o.n_gen; ++i) seq_flops += Engine::decode_flops(c, past + i);
  std::vector<Engine::ParallelResult> out;
  int64_t prefilled = 0;  // sequences [0, prefilled) hold their first `past` positions (the same for any N)
  for (const int64_t n : o.parallel) {
    for (; prefilled < n; ++prefilled) {
      for (int64_t b = 0; b < past; b += ro.max_batch) {
        const int64_t nb = std::min(ro.max_batch, past - b);
        for (int64_t i = 0; i < nb; ++i)
          entries[static_cast<size_t>(i)] = {parallel_token(prefilled, b + i, V), static_cast<int32_t>(b + i),
                                             table(prefilled), false};
        rt.step(entries.data(), nb, kv, nullptr);
      }
    }
    // Decode step i: each sequence's token at position past + i.
    auto step = [&](int64_t i) {
      const int64_t pos = past + i;
      for (int64_t s = 0; s < n; ++s)
        entries[static_cast<size_t>(s)] = {parallel_token(s, pos, V), static_cast<int32_t>(pos), table(s),
                                           true};
      rt.step(entries.data(), n, kv, logits.data());
    };
    step(0);  // warm-up (rep 0 writes the same position again)
    Engine::ParallelResult pr;
    pr.n_parallel = n;
    pr.n_past = past;
    double sec = 0;
    for (int rep = 0; rep < o.reps; ++rep) {
      const auto t0 = clock::now();
      for (int64_t i = 0; i < o.n_gen; ++i) {
        step(i);
        if (o.on_parallel_logits) o.on_parallel_logits(n, i, logits.data());
      }
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      sec += s;
      pr.tps_reps.push_back(static_cast<double>(n * o.n_gen) / s);
    }
    const double steps = static_cast<double>(o.n_gen * o.reps);
    pr.tps = static_cast<double>(n) * steps / sec;
    pr.per_sequence_tps = pr.tps / static_cast<double>(n);
    pr.ms_per_step = 1e3 * sec / steps;
    pr.flops_per_step = static_cast<double>(n) * seq_flops / static_cast<double>(o.n_gen);
    pr.gflops = pr.flops_per_step * steps / sec / 1e9;
    out.push_back(std::move(pr));
  }
  return out;
}
}  // namespace

double Engine::measure_bandwidth(int threads) {
  return measure_read_bandwidth_isolated(resolve_threads(threads));
}

Result<Engine::BenchResult> Engine::bench(const BenchOptions& o) {
  using clock = std::chrono::steady_clock;
  Impl& I = *impl_;
  const int64_t V = config().vocab_size;
  if (o.n_prompt < 0 || o.n_gen < 0 || o.n_depth < 0 || o.reps <= 0)
    return Error::usage("bench: -p, -n, -d must be >= 0 and -r > 0");
  const int64_t need = o.n_depth + std::max(o.n_prompt, o.n_gen);
  if (need > ctx_size())
    return Error::usage("bench: " + std::to_string(need) + " positions exceed the context of " +
                        std::to_string(ctx_size()) + " (--ctx-size)");
  MX_TRY_STATUS(check_parallel(*I.core, o));
  BenchResult r;
  r.n_prompt = o.n_prompt;
  r.n_gen = o.n_gen;
  r.n_depth = o.n_depth;
  r.threads = threads();
  r.reps = o.reps;
  r.bytes_per_token = bytes_per_token();
  r.isa = kernels::isa_name(kernels::active_isa());
  // [depth + max(prompt, 1)] tokens: the depth's, then the prompt's
  std::vector<int32_t> toks(static_cast<size_t>(o.n_depth + std::max<int64_t>(o.n_prompt, 1)));
  for (size_t i = 0; i < toks.size(); ++i)
    toks[i] = static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(V));
  const int32_t* prompt = toks.data() + o.n_depth;
  std::vector<float> logits(static_cast<size_t>(V));  // [vocab]
  // The cache holds the depth's positions before each test (untimed; a prefill reads and writes only its
  // own positions, so once suffices unless the depth is overwritten, which no test does).
  auto fill_depth = [&]() -> Status {
    return o.n_depth > 0 ? I.eval(toks.data(), o.n_depth, 0, nullptr, false) : Status();
  };
  // The roofline: the best read bandwidth measured just before and just after the timed runs (on a
  // shared machine it drifts by 10-20% within a minute; the higher reading gives the stricter fraction).
  // Before the warm-up, which absorbs some of what the measurement leaves behind.
  r.bandwidth = o.bandwidth_before;
  if (o.measure_bandwidth && r.bandwidth <= 0) r.bandwidth = measure_read_bandwidth_isolated(threads());
  MX_TRY_STATUS(fill_depth());
  // Warm-up as llama-bench does it: one untimed prefill of n_prompt tokens (it touches every expert, so
  // page faults and buffer growth are not timed: they cost the first rep of a 512-token Q4_K_M prefill
  // about 10%) and one decode step.
  if (o.n_prompt > 0) MX_TRY_STATUS(I.eval(prompt, o.n_prompt, o.n_depth, logits.data(), false));
  if (o.n_gen > 0 || o.n_prompt == 0) MX_TRY_STATUS(I.eval(prompt, 1, o.n_depth, logits.data(), false));
  double pp = 0, tg = 0;
  size_t exchanged = 0;  // bytes of the expert exchange during the timed decode
  for (int rep = 0; rep < o.reps; ++rep) {
    if (o.n_prompt > 0) {
      const auto t0 = clock::now();
      MX_TRY_STATUS(I.eval(prompt, o.n_prompt, o.n_depth, logits.data(), false));
      const double sec = std::chrono::duration<double>(clock::now() - t0).count();
      pp += sec;
      r.pp_reps.push_back(static_cast<double>(o.n_prompt) / sec);
    }
    if (o.n_gen > 0) {
      int32_t tok = prompt[0];
      const size_t x0 = dist::bytes_exchanged();
      const auto t0 = clock::now();
      for (int64_t i = 0; i < o.n_gen; ++i) {
        MX_TRY_STATUS(I.eval(&tok, 1, o.n_depth + i, logits.data(), false));
        tok = static_cast<int32_t>((tok + 1) % V);
      }
      const double sec = std::chrono::duration<double>(clock::now() - t0).count();
      exchanged += dist::bytes_exchanged() - x0;
      tg += sec;
      r.tg_reps.push_back(static_cast<double>(o.n_gen) / sec);
    }
  }
  if (o.n_prompt > 0) r.pp_tps = static_cast<double>(o.n_prompt * o.reps) / pp;
  if (o.n_gen > 0) r.tg_tps = static_cast<double>(o.n_gen * o.reps) / tg;
  r.ranks = dist::size();
  if (o.n_gen > 0)
    r.exchange_bytes_per_token_layer =
        static_cast<double>(exchanged) / static_cast<double>(o.n_gen * o.reps * config().n_layers);
  if (!o.parallel.empty()) r.parallel = bench_parallel(*I.core, I.runtime->max_batch(), o);
  if (o.measure_bandwidth) {
    r.bandwidth = std::max(r.bandwidth, measure_read_bandwidth_isolated(threads()));
    r.weights_bandwidth = measure_regions_bandwidth(*I.core->pool, token_regions(*I.core->model));
  }
  return r;
}

Result<Engine::ConstrainedBenchResult> Engine::bench_constrained(int64_t n_gen, int reps,
                                                                 const GenerateOptions& opts) {
  using clock = std::chrono::steady_clock;
  Impl& I = *impl_;
  const int64_t V = config().vocab_size;
  if (n_gen <= 0 || reps <= 0) return Error::usage("bench: -n and -r must be > 0 with a grammar");
  if (n_gen > ctx_size())
    return Error::usage("bench: " + std::to_string(n_gen) + " tokens exceed the context of " +
                        std::to_string(ctx_size()) + " (--ctx-size)");
  if (!opts.grammar) return Error::usage("bench_constrained: no grammar");
  MX_TRY_STATUS(check_grammar_options(opts, V));
  ConstrainedBenchResult r;
  r.n_gen = n_gen;
  r.reps = reps;
  const int32_t first = I.core->bos;
  const int32_t eos = I.core->eos_with(opts.masker.get());
  const SamplingParams sp = sampling_of(opts);
  MX_TRY_STATUS(check_sampling(sp, V));
  std::vector<float> logits(static_cast<size_t>(V));  // [vocab]
  std::vector<double> mask_us;                        // [reps * n_gen]
  double free_s = 0, con_s = 0;
  // Each run decodes n_gen tokens from position 0 and returns its seconds. The constrained run samples
  // under the grammar (the same seed every time, so the same tokens); the free run feeds those very tokens
  // and samples without the mask (its draws unused). Both read the same experts (a random model's routing
  // follows the tokens, and the grammar's tokens differ from free text): only the grammar's work differs.
  std::vector<int32_t> inputs(static_cast<size_t>(n_gen), first);  // [n_gen] the constrained run's inputs
  auto free_run = [&]() -> Result<double> {
    SequenceStep step(sp, V, nullptr, nullptr, eos, opts.stop_at_eos);
    int64_t sink = 0;  // keeps the draws
    const auto t0 = clock::now();
    for (int64_t i = 0; i < n_gen; ++i) {
      MX_TRY_STATUS(I.eval(&inputs[static_cast<size_t>(i)], 1, i, logits.data(), false));
      sink += step.sample(logits.data());
    }
    const double sec = std::chrono::duration<double>(clock::now() - t0).count();
    MX_CHECK(sink >= 0, "sampled ids are non-negative");
    return sec;
  };
  bool timed = false;  // the first constrained run (untimed) records the inputs
  auto constrained_run = [&]() -> Result<double> {
    SequenceStep con(sp, V, opts.grammar, opts.masker.get(), eos, opts.stop_at_eos);
    int32_t tok = first;
    const auto t0 = clock::now();
    for (int64_t i = 0; i < n_gen; ++i) {
      if (!timed) inputs[static_cast<size_t>(i)] = tok;
      MX_CHECK(inputs[static_cast<size_t>(i)] == tok, "bench: the constrained run repeats itself");
      MX_TRY_STATUS(I.eval(&tok, 1, i, logits.data(), false));
      const auto m0 = clock::now();
      con.fill_mask();
      const auto m1 = clock::now();
      tok = con.sample(logits.data());
      if (tok < 0) {  // a dead end: start over
        con.restart();
        tok = con.sample(logits.data());
        MX_CHECK(tok >= 0, "grammar: no token can start a sentence");
      }
      const auto m2 = clock::now();
      con.accept(tok);
      if (tok == eos || con.must_end()) {  // a whole sentence: the next starts over
        if (timed) ++r.sentences;
        con.restart();
      }
      // The grammar's share: filling the mask and taking the token (sampling under the mask excluded).
      if (timed)
        mask_us.push_back(std::chrono::duration<double, std::micro>((m1 - m0) + (clock::now() - m2)).count());
    }
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  {  // warm-up; records the inputs
    auto warm = constrained_run();
    if (!warm.ok()) return warm.error();
  }
  timed = true;
  for (int rep = 0; rep < reps; ++rep) {
    // Alternating which goes first, so that a drift within a rep favours neither.
    double f = 0, c = 0;
    if (rep % 2 == 0) {
      MX_ASSIGN_OR_RETURN(f, free_run());
      MX_ASSIGN_OR_RETURN(c, constrained_run());
    } else {
      MX_ASSIGN_OR_RETURN(c, constrained_run());
      MX_ASSIGN_OR_RETURN(f, free_run());
    }
    free_s += f;
    con_s += c;
    r.tg_reps.push_back(static_cast<double>(n_gen) / f);
    r.tg_constrained_reps.push_back(static_cast<double>(n_gen) / c);
  }
  r.tg_tps = static_cast<double>(n_gen * reps) / free_s;
  r.tg_tps_constrained = static_cast<double>(n_gen * reps) / con_s;
  std::sort(mask_us.begin(), mask_us.end());
  r.mask_us_median = mask_us[mask_us.size() / 2];
  r.mask_us_p99 = mask_us[std::min(mask_us.size() - 1, mask_us.size() * 99 / 100)];
  return r;
}

Status make_test_model(const TestModelOptions& opts) {
  TestModelSpec spec;
  spec.config = opts.config;
  spec.seed = opts.seed;
  for (const auto& t : opts.types) {
    auto d = dtype_from_name(t);
    if (!d || !traits(*d).quantizable)
      return Error::usage("--types: unknown type or one this build cannot write '" + t + "'");
    spec.types.push_back(*d);
  }
  spec.layouts = opts.layouts;
  spec.out_dir = opts.out_dir;
  spec.progress = opts.progress;
  spec.vocab_format = opts.vocab_format;
  ThreadPool pool(resolve_threads(opts.threads));
  return make_test_model(spec, pool);
}

}  // namespace mixtral

#include "io/npy.h"

namespace mixtral {
Status write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  return write_npy_f32(path, data, shape);
}
}  // namespace mixtral
