#include "engine/core.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <thread>

#include "core/dist.h"
#include "kernels/paged_attention.h"
#include "mixtral/tokenizer.h"
#include "runtime/follow.h"

namespace mixtral {

int resolve_threads(int t) {
  if (t > 0) return t;
  const unsigned hc = std::thread::hardware_concurrency();  // this host's cores, shared by its ranks
  return std::max(1, static_cast<int>(hc) / dist::local_size());
}

DType kv_dtype(KvCacheType t) {
  switch (t) {
    case KvCacheType::kF32:
      return DType::F32;
    case KvCacheType::kF16:
      return DType::F16;
    case KvCacheType::kQ8_0:
      return DType::Q8_0;
  }
  return DType::F32;
}

Result<std::unique_ptr<Model>> load_for_rank(const std::string& path, bool repack) {
  LoadOptions lo;
  lo.repack = repack;
  lo.rank = dist::rank();
  lo.n_ranks = dist::size();
  auto m = load_model(path, lo);
  const Status all = dist::agree(m.ok() ? Status() : Status(m.error()));
  if (!all) return all.error();
  return m;
}

int follower_main() {
  // Ctrl-C reaches every rank through mpirun: rank 0 finishes its command (serve drains) and ends the
  // followers; were they to die first, rank 0's next step would fail. A rank 0 that dies ends the job.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  follow::Words body;
  follow::Kind kind = follow::receive(body);
  while (kind == follow::Kind::kLoad) {
    size_t at = 2;
    const bool repack = body.at(0) != 0;
    const int threads = resolve_threads(body.at(1));
    const std::string path = follow::get_string(body, at);
    auto m = load_for_rank(path, repack);
    if (!m) {  // rank 0 reports it
      kind = follow::receive(body);
      continue;
    }
    ThreadPool pool(threads);
    kind = follow::follow_steps(**m, pool, body);
  }
  MX_CHECK(kind == follow::Kind::kEnd, "follower: unexpected message %d", static_cast<int>(kind));
  return 0;
}

Result<std::unique_ptr<EngineCore>> EngineCore::load(const CoreOptions& opts) {
  if (opts.threads < 0) return Error::usage("--threads must be positive");
  if (opts.ctx_size < 0) return Error::usage("--ctx-size must be positive");
  auto core = std::make_unique<EngineCore>();
  core->threads = resolve_threads(opts.threads);
  // Under mpirun the other ranks load the same path with the same options (follower_main), each keeping
  // its own experts; then every rank's outcome is gathered, so a rank that cannot load stops all of them.
  follow::Words load_msg{opts.repack ? 1 : 0, opts.threads};
  follow::put_string(load_msg, opts.model_path);
  follow::send(follow::Kind::kLoad, load_msg);
  MX_ASSIGN_OR_RETURN(core->model, load_for_rank(opts.model_path, opts.repack));
  const ModelConfig& c = core->model->config;
  if (opts.cache_type == KvCacheType::kQ8_0 && c.head_dim % 32 != 0)
    return Error::usage("--cache-type q8_0 needs a head dimension divisible by 32; this model's is " +
                        std::to_string(c.head_dim) + " (use f16 or f32)");
  core->cache_type = opts.cache_type;
  core->kv_type = kv_dtype(opts.cache_type);
  core->ctx =
      opts.ctx_size > 0 ? opts.ctx_size : (c.max_seq_len > 0 ? std::min<int64_t>(c.max_seq_len, 4096) : 4096);
  core->pool = std::make_unique<ThreadPool>(core->threads);
  // BOS and EOS as the model's tokenizer defines them; without a tokenizer, Mistral's ids.
  if (auto tok = Tokenizer::load(opts.model_path); tok.ok()) {
    core->bos = (*tok)->bos_id();
    core->eos = (*tok)->eos_id();
  }
  return core;
}

int32_t EngineCore::eos_with(const grammar::TokenMasker* masker) const {
  return masker && masker->vocabulary().eos >= 0 ? masker->vocabulary().eos : eos;
}

Status check_sampling(const SamplingParams& p, int64_t vocab) {
  if (!(p.temperature >= 0.0f) || std::isinf(p.temperature)) return Error::usage("--temp must be >= 0");
  if (p.top_k < 0) return Error::usage("--top-k must not be negative");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return Error::usage("--top-p must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return Error::usage("--min-p must be in [0, 1]");
  if (!(p.repetition_penalty > 0.0f) || std::isinf(p.repetition_penalty))
    return Error::usage("--repeat-penalty must be positive (1: off)");
  if (!std::isfinite(p.presence_penalty)) return Error::usage("--presence-penalty must be a finite number");
  if (!std::isfinite(p.frequency_penalty)) return Error::usage("--frequency-penalty must be a finite number");
  for (const auto& [id, bias] : p.logit_bias) {
    if (id < 0 || id >= vocab)
      return Error::usage("--logit-bias: token id " + std::to_string(id) + " is out of range [0, " +
                          std::to_string(vocab) + ")");
    if (std::isnan(bias) || bias == INFINITY)
      return Error::usage("--logit-bias: the bias of token " + std::to_string(id) +
                          " must be a number (-inf bans it)");
  }
  return Status();
}

SequenceStep::SequenceStep(const SamplingParams& p, int64_t vocab, std::shared_ptr<const grammar::Grammar> g,
                           const grammar::TokenMasker* masker, int32_t eos, bool allow_eos)
    : sampler_(p, vocab), grammar_(std::move(g)), masker_(masker), eos_(eos), allow_eos_(allow_eos) {
  if (grammar_) {
    MX_CHECK(masker_ != nullptr, "a grammar without the model's vocabulary");
    matcher_ = std::make_unique<grammar::Matcher>(grammar_);
  }
}

void SequenceStep::fill_mask() {
  if (!matcher_) return;
  masker_->fill_mask(*matcher_, mask_);
  if (!allow_eos_ && eos_ >= 0 && eos_ < masker_->n_vocab())
    mask_[static_cast<size_t>(eos_) / 32] &= ~(1u << (eos_ % 32));
  mask_ready_ = true;
}

int32_t SequenceStep::sample(const float* logits, TokenLogprobs* lp) {
  if (!matcher_) return sampler_.sample(logits, nullptr, 0, lp);
  if (!mask_ready_) fill_mask();
  mask_ready_ = false;
  return sampler_.sample(logits, mask_.data(), masker_->n_vocab(), lp);
}

void SequenceStep::accept(int32_t tok) {
  sampler_.accept(tok);
  mask_ready_ = false;
  if (matcher_) MX_CHECK(masker_->accept(*matcher_, tok), "grammar: the sampled token was not allowed");
}

void SequenceStep::restart() {
  if (matcher_) *matcher_ = grammar::Matcher(grammar_);
  mask_ready_ = false;
}

}  // namespace mixtral
