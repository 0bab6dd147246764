// Public API of mixtral.cpp: what the apps (cli, server) see.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixtral/config.h"
#include "mixtral/result.h"

namespace mixtral {

namespace grammar {
struct Grammar;
class TokenMasker;
}  // namespace grammar

// Element type of the KV cache (K and V alike), `--cache-type` on every command.
enum class KvCacheType { kF32, kF16, kQ8_0 };
const char* kv_cache_type_name(KvCacheType t);                       // "f32", "f16", "q8_0"
std::optional<KvCacheType> parse_kv_cache_type(std::string_view s);  // the names above
// Bytes of K and V of one token position over every layer (q8_0 needs head_dim % 32 == 0).
size_t kv_bytes_per_token(const ModelConfig& c, KvCacheType t);

struct EngineOptions {
  std::string model_path;
  int threads = 0;           // 0: all cores
  int64_t ctx_size = 0;      // KV cache positions; 0: min(trained context, 4096)
  int64_t batch_size = 256;  // prompt tokens per forward step
  bool repack = true;        // repack weights at load for the kernels (LoadOptions::repack)
  KvCacheType cache_type = KvCacheType::kF16;
};

struct GenerateOptions {
  int64_t max_tokens = 128;
  float temperature = 0.8f;  // 0: greedy
  int64_t top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  float min_p = 0.0f;                                 // 0: off
  float repetition_penalty = 1.0f;                    // --repeat-penalty (CTRL-style, prompt and output)
  float presence_penalty = 0.0f;                      // OpenAI's, over generated tokens
  float frequency_penalty = 0.0f;                     // OpenAI's, over generated tokens
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, added to its logit)
  bool stop_at_eos = true;
  // Constrained output: only tokens the grammar allows are sampled (the mask comes before top-k/p and the
  // temperature); EOS only where the grammar can end, and generation stops once it must end. The masker
  // (grammar::vocabulary_of the model's tokenizer) is needed with a grammar; its eos is the EOS token.
  std::shared_ptr<const grammar::Grammar> grammar;
  std::shared_ptr<const grammar::TokenMasker> masker;
};

// Why Engine::generate stopped.
enum class GenerateStop {
  kLength,   // max_tokens generated (with a grammar: the output may be incomplete)
  kEos,      // EOS sampled (with a grammar: where it can end)
  kGrammar,  // the grammar must end here (a grammar that allows no token is an Error::data)
};

// Per layer and token: the experts chosen and their weights (introspection).
struct RoutingRecord {
  int64_t layer;
  int64_t position;
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> load(const EngineOptions& opts);
  ~Engine();

  const ModelConfig& config() const;
  int64_t ctx_size() const;
  int threads() const;
  KvCacheType cache_type() const;
  // generate() keeps its sequence (prompt and output) in the KV cache and reuses the longest common
  // prefix with the next prompt, so a chat turn prefills only what is new: the number of prompt tokens the
  // last generate() took from the cache. score() and bench() start from an empty cache.
  int64_t reused_tokens() const;

  // Logits of every position of one prefill of `tokens`: [n, vocab] row-major. With
  // one_by_one, the same sequence is evaluated a token at a time (decode path).
  Result<std::vector<float>> score(const std::vector<int32_t>& tokens, bool one_by_one = false,
                                   std::vector<RoutingRecord>* routing = nullptr);

  // Prefills the prompt, then samples up to max_tokens tokens, calling on_token for each as it
  // is produced. Returns the generated ids; `stop` (if given) says why it stopped.
  Result<std::vector<int32_t>> generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                                        const std::function<void(int32_t)>& on_token,
                                        GenerateStop* stop = nullptr);

  // Text of one token as the file's vocabulary spells it (empty when the file has none).
  std::string token_text(int32_t id) const;
  bool has_vocab() const;

  struct BenchOptions {
    int64_t n_prompt = 512, n_gen = 128;
    int64_t n_depth = 0;  // positions already in the cache when each test starts (llama-bench's -d)
    int reps = 3;
    bool measure_bandwidth = true;
    double bandwidth_before = 0;  // a reading from measure_bandwidth before the model was loaded, or 0
    // `--parallel`: one test per value N, in order (bench below). Empty: none.
    std::vector<int64_t> parallel;
    // Tests: called after each timed decode step of a parallel test, logits [N, vocab] (row s: sequence s).
    std::function<void(int64_t n_parallel, int64_t step, const float* logits)> on_parallel_logits;
  };
  // One `--parallel` value: N sequences decoding together, each decode step one Runtime::step of N entries
  // (one token per sequence at its own position, logits for all N), as `serve` builds its decode steps.
  struct ParallelResult {
    int64_t n_parallel = 0;
    int64_t n_past = 0;            // positions in each sequence's cache before its first decode step
    double tps = 0;                // aggregate decode tokens/s: N * n_gen * reps over all reps' time
    double per_sequence_tps = 0;   // tps / N
    double ms_per_step = 0;        // mean time of one decode step
    double flops_per_step = 0;     // decode_flops summed over the step's N tokens, mean over the n_gen steps
    double gflops = 0;             // flops_per_step / step time, 1e9/s
    std::vector<double> tps_reps;  // [reps] each rep's aggregate tokens/s
  };
  struct BenchResult {
    int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
    int threads = 0, reps = 0;
    double pp_tps = 0, tg_tps = 0;         // all reps' tokens over all reps' time
    std::vector<double> pp_reps, tg_reps;  // [reps] each rep's tokens/s (the spread, on a noisy machine)
    double bytes_per_token = 0;            // weight bytes one decode step reads
    double bandwidth = 0;                  // measured read bandwidth, bytes/s (0 if not measured)
    // The best pure read of one token's weights where they lie (measure_regions_bandwidth), bytes/s: the
    // rate of the very memory decode reads, against the fresh buffer `bandwidth` reads (0 if not measured).
    double weights_bandwidth = 0;
    const char* isa = "";                  // the kernels' instruction set: scalar, avx2 or avx512
    std::vector<ParallelResult> parallel;  // one per BenchOptions::parallel value, in its order
    // Under mpirun: the ranks and the expert outputs rank 0 sent and received per decoded token and layer
    // during the timed decode (bytes; 0 in one process).
    int ranks = 1;
    double exchange_bytes_per_token_layer = 0;
  };
  // llama-bench style: a prefill of n_prompt tokens and n_gen single-token decode steps, each after an
  // untimed prefill of n_depth tokens (none: from an empty cache), repeated reps times after an untimed
  // warm-up of one of each. The read bandwidth is measured after the timed runs, and before them unless
  // bandwidth_before is given; the higher one counts.
  // With o.parallel, after those: per value N (in order), N sequences in one paged KV cache, each with its
  // own block table; each sequence's n_depth + n_prompt positions are prefilled (untimed, a sequence alone
  // per step), then n_gen decode steps of N entries each, after one untimed warm-up step and repeated reps
  // times (each rep decodes the same positions again). Sequence s's token at position p, prompt and decode
  // alike, is (p * 7919 + s * 104729 + 13) mod vocab: sequences differ, so their routing does, and the
  // tokens do not depend on the kernels' results. Usage errors name --parallel (a value <= 0, or more
  // sequences than MemAvailable holds), -n (0) and --ctx-size (n_depth + n_prompt + n_gen past it).
  Result<BenchResult> bench(const BenchOptions& o);
  // The arithmetic of one decoded token at position pos (attending pos + 1 positions, or the sliding window),
  // in FLOPs (a multiply-add is 2): per layer 2 x (Wq, Wk, Wv and Wo's parameters + the router's
  // (n_experts x dim) + top-k experts' 3 x dim x ffn) + 4 x n_heads x head_dim x positions attended
  // (scores and the weighted sum of values), and the output head's 2 x dim x vocab. Norms, RoPE and the
  // softmaxes are left out (under 0.1% at 8x7B's sizes).
  static double decode_flops(const ModelConfig& c, int64_t pos);
  // Decode with sampling, free and grammar-constrained, in the same run: each rep decodes n_gen tokens from
  // position 0 under opts.grammar (the matcher starts over whenever the grammar ends) and, in alternating
  // order, the same n_gen tokens fed again with sampling but no mask, so that only the grammar's work
  // differs (opts' sampler settings and seed). Needs opts.grammar and opts.masker.
  struct ConstrainedBenchResult {
    int64_t n_gen = 0;
    int reps = 0;
    double tg_tps = 0, tg_tps_constrained = 0;  // all reps' tokens over all reps' time
    std::vector<double> tg_reps, tg_constrained_reps;
    double mask_us_median = 0, mask_us_p99 = 0;  // per constrained token: fill_mask + accept
    int64_t sentences = 0;                       // grammar sentences completed over the constrained runs
  };
  Result<ConstrainedBenchResult> bench_constrained(int64_t n_gen, int reps, const GenerateOptions& opts);
  // Read bandwidth in bytes/s with `threads` threads (0: all cores), in a child process so that its
  // buffer never counts in this one's memory. Best taken before a model is loaded: on a Zen 5 VM the
  // second of decode after it ran up to 2x slow.
  static double measure_bandwidth(int threads);
  double bytes_per_token() const;

  // Human-readable report for `mixtral info`: layout, hyper-parameters, tensors by type,
  // memory for a context of ctx positions.
  std::string describe(int64_t ctx) const;
  // `mixtral info --ranks N`: where `mpirun -np N` puts each layer's experts (round robin over layer and
  // expert) and the weight bytes each rank holds. N outside [1, experts]: an Error (usage).
  Result<std::string> describe_ranks(int n_ranks) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TestModelOptions {
  ModelConfig config;
  uint64_t seed = 1;
  std::vector<std::string> types;    // GGUF type names: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k..q6_k
  std::vector<std::string> layouts;  // "hf", "hf-sharded", "consolidated", "gguf-merged", "gguf-legacy"
  std::string out_dir;
  int threads = 0;
  bool progress = false;
  std::string vocab_format = "v1";  // "v1" or "v3" (Mistral's v3 control pieces at ids 3..9)
};
Status make_test_model(const TestModelOptions& opts);

}  // namespace mixtral

namespace mixtral {
// Writes a float32 NumPy array (row-major), e.g. logits [n_tokens, vocab].
Status write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
}  // namespace mixtral
