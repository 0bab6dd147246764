// The engine core shared by Engine (run, score, perplexity, bench, chat, route) and BatchEngine (serve):
// model loading, option checks, threads, the context default, EOS and BOS, the KV cache type, and one
// sequence's sampling step (the grammar's mask and the SequenceSampler).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "core/thread_pool.h"
#include "grammar/grammar.h"
#include "mixtral/engine.h"
#include "model/weights.h"
#include "sampler/sampler.h"
#include "tensor/dtype.h"

namespace mixtral {

// Positions per KV block, for both engines (attention chunks at multiples of kernels::kAttnChunk, so the
// block size never changes a result).
inline constexpr int64_t kKvBlockSize = 16;

struct CoreOptions {
  std::string model_path;
  int threads = 0;       // 0: all cores
  int64_t ctx_size = 0;  // 0: min(trained context, 4096)
  bool repack = true;
  KvCacheType cache_type = KvCacheType::kF16;
};

struct EngineCore {
  std::unique_ptr<Model> model;
  std::unique_ptr<ThreadPool> pool;
  int threads = 1;
  int64_t ctx = 0;  // positions per sequence
  KvCacheType cache_type = KvCacheType::kF16;
  DType kv_type = DType::F16;
  // From the model's tokenizer; a model without one (no tokenizer file or GGUF metadata) gets Mistral's
  // ids (tokenizer.h's Vocab defaults: BOS 1, EOS 2).
  int32_t bos = 1, eos = 2;

  // Refuses bad options (usage errors naming the flag), loads the model and its tokenizer's ids.
  static Result<std::unique_ptr<EngineCore>> load(const CoreOptions& opts);
  const ModelConfig& config() const { return model->config; }
  // The EOS of generation: the masker's vocabulary's when given (constrained output), else the model's.
  int32_t eos_with(const grammar::TokenMasker* masker) const;
};

int resolve_threads(int threads);  // 0: all cores (under mpirun: this host's cores / its ranks)
// Loads a model for this rank (all of it in one process; its experts under mpirun) and gathers every rank's
// outcome (dist::agree): a failure on any rank is an error on all, naming that rank and its host.
Result<std::unique_ptr<Model>> load_for_rank(const std::string& path, bool repack);
// Under mpirun, what ranks other than 0 run instead of the command: they load what rank 0 loads and follow
// its forward steps (runtime/follow.h) until rank 0 ends. Returns the exit code.
int follower_main();
DType kv_dtype(KvCacheType t);

// Sampling settings as the CLI takes them: an out-of-range value is a usage error naming its flag
// (--temp, --top-k, --top-p, --min-p, --repeat-penalty, --presence-penalty, --frequency-penalty,
// --logit-bias).
Status check_sampling(const SamplingParams& p, int64_t vocab);

// One sequence's sampling: its grammar's mask (if any), then the SequenceSampler (bias, penalties, min-p,
// temperature, top-k, top-p, logprobs).
class SequenceStep {
 public:
  // masker: needed with a grammar. Without allow_eos, EOS is never allowed by the grammar's mask.
  SequenceStep(const SamplingParams& p, int64_t vocab, std::shared_ptr<const grammar::Grammar> g,
               const grammar::TokenMasker* masker, int32_t eos, bool allow_eos);
  void add_prompt(const int32_t* ids, int64_t n) { sampler_.add_prompt(ids, n); }
  // The grammar's mask for the next token (nothing without a grammar); sample() fills it when needed.
  void fill_mask();
  // The next token from the model's logits [vocab]; -1 when the grammar allows none. lp: see
  // SequenceSampler::sample.
  int32_t sample(const float* logits, TokenLogprobs* lp = nullptr);
  // Takes the token (sampled or forced): the penalties' history and the grammar's matcher.
  void accept(int32_t tok);
  bool has_grammar() const { return matcher_ != nullptr; }
  bool must_end() const { return matcher_ && matcher_->must_end(); }  // the grammar is complete
  void restart();                                                     // the grammar from its start

 private:
  SequenceSampler sampler_;
  std::shared_ptr<const grammar::Grammar> grammar_;
  const grammar::TokenMasker* masker_;
  std::unique_ptr<grammar::Matcher> matcher_;
  std::vector<uint32_t> mask_;  // [masker words] bit t: token t may follow
  bool mask_ready_ = false;
  int32_t eos_;
  bool allow_eos_;
};

}  // namespace mixtral
