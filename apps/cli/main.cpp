// `mixtral`: one binary, one subcommand per job. Exit status: 0 ok, 1 data error, 2 usage error.
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "analysis_cmds.h"
#include "cli_util.h"
#include "convert_cmds.h"
#include "core/dist.h"
#include "engine/core.h"
#include "grammar/grammar.h"
#include "grammar/json_schema.h"
#include "imatrix_cmd.h"
#include "mixtral/engine.h"
#include "mixtral/tokenizer.h"
#include "runtime/follow.h"
#include "server.h"
#include "tokenizer_cmds.h"

namespace {

using mixtral::Error;
using mixtral::Result;
using mixtral::Status;
using mixtral::cli::fail;
using mixtral::cli::json_ids;
using mixtral::cli::parse_ids;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string item;
  std::stringstream ss(s);
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

struct ModelArgs {
  std::string model;
  int threads = 0;
  int64_t ctx_size = 0;
  bool no_repack = false;
  mixtral::KvCacheType cache_type = mixtral::KvCacheType::kF16;
  void add(CLI::App* app, bool required = true) {
    auto* m =
        app->add_option("-m,--model", model,
                        required ? "GGUF file, Hugging Face directory or Mistral consolidated directory"
                                 : "GGUF file, HF or consolidated directory (default: the built-in model)");
    if (required) m->required();
    app->add_option("-t,--threads", threads, "worker threads (default: all cores)");
    app->add_option("-c,--ctx-size", ctx_size, "context size in tokens (default: min(trained, 4096))");
    app->add_flag(
        "--no-repack", no_repack,
        "use the weights where the file mapping holds them (by default they move to huge pages at load, "
        "Q4_0/Q8_0 repacked for the kernels: same values, faster)");
    mixtral::cli::add_cache_type_option(app, &cache_type);
  }
  mixtral::EngineOptions options() const {
    mixtral::EngineOptions o;
    o.model_path = model;
    o.threads = threads;
    o.ctx_size = ctx_size;
    o.repack = !no_repack;
    o.cache_type = cache_type;
    return o;
  }
  mixtral::Result<std::unique_ptr<mixtral::Engine>> load() const { return mixtral::Engine::load(options()); }
};

// --json-schema FILE | --grammar FILE: what the output of `run` and `bench` is constrained to.
struct GrammarArgs {
  std::string schema_file, grammar_file;
  void add(CLI::App* app, const char* what) {
    auto* js = app->add_option("--json-schema", schema_file,
                               std::string("JSON Schema file: ") + what + " JSON valid against it");
    auto* gr =
        app->add_option("--grammar", grammar_file,
                        std::string("GBNF grammar file (llama.cpp's syntax): ") + what + " sentences of it");
    js->excludes(gr);
  }
  bool given() const { return !schema_file.empty() || !grammar_file.empty(); }
};

// The grammar of --json-schema or --grammar, with the tokenizer's control pieces for `<PIECE>` terminals.
// Every error is one line naming the file (and, for a schema, the keyword and its JSON pointer).
Result<std::shared_ptr<const mixtral::grammar::Grammar>> load_grammar(const GrammarArgs& ga,
                                                                      const mixtral::Tokenizer& tok) {
  namespace g = mixtral::grammar;
  const bool schema = !ga.schema_file.empty();
  const std::string& path = schema ? ga.schema_file : ga.grammar_file;
  const char* flag = schema ? "--json-schema" : "--grammar";
  MX_ASSIGN_OR_RETURN(std::string text, mixtral::cli::read_text_file(path, flag));
  std::string gbnf;
  if (schema) {
    auto j = mixtral::parse_ordered_json(text);  // properties keep the file's order
    if (j.is_discarded()) return Error::data(std::string(flag) + ": " + path + ": not valid JSON");
    auto compiled = g::json_schema_to_gbnf(j);
    if (!compiled) return Error::data(std::string(flag) + ": " + path + ": " + compiled.error().message);
    gbnf = std::move(*compiled);
  } else {
    gbnf = std::move(text);
  }
  g::GbnfOptions go;
  go.token_id = [&tok](std::string_view piece) { return tok.piece_to_id(piece); };
  auto parsed = g::parse_gbnf(gbnf, go);
  if (!parsed) return Error::data(std::string(flag) + ": " + path + ": " + parsed.error().message);
  return std::shared_ptr<const g::Grammar>(*parsed);
}

// `run` under a grammar: prints exactly the bytes the matcher took (the tokens as the vocabulary spells
// them), stops where the grammar must end (or at EOS where it can), warns when -n cuts the output short.
int cmd_run_constrained(const ModelArgs& ma, const std::string& prompt, const std::string& prompt_tokens,
                        mixtral::GenerateOptions go, bool ids_only, const GrammarArgs& ga) {
  auto loaded = mixtral::cli::load_model(ma.options());
  if (!loaded) return fail(loaded.error());
  if (Status st = mixtral::cli::check_logit_bias(go, loaded->engine->config().vocab_size); !st)
    return fail(st.error());
  const mixtral::Tokenizer& tok = *loaded->tok;
  auto g = load_grammar(ga, tok);
  if (!g) return fail(g.error());
  std::vector<int32_t> ids;
  if (!prompt_tokens.empty()) {
    auto parsed = parse_ids(prompt_tokens, "--prompt-tokens");
    if (!parsed) return fail(parsed.error());
    ids = std::move(*parsed);
  } else {
    auto enc = tok.encode(prompt, tok.add_bos(), false);
    if (!enc) return fail(enc.error());
    ids = std::move(*enc);
  }
  auto masker = std::make_shared<const mixtral::grammar::TokenMasker>(mixtral::grammar::vocabulary_of(tok));
  go.grammar = *g;
  go.masker = masker;
  const auto& bytes = masker->vocabulary().bytes;
  mixtral::grammar::Matcher seen(*g);  // the output so far: is it a whole sentence where -n cuts it?
  mixtral::GenerateStop stop = mixtral::GenerateStop::kLength;
  auto out = loaded->engine->generate(
      ids, go,
      [&](int32_t t) {
        masker->accept(seen, t);
        if (ids_only) return;
        const std::string& b = bytes[static_cast<size_t>(t)];  // empty for EOS
        std::fwrite(b.data(), 1, b.size(), stdout);
        std::fflush(stdout);
      },
      &stop);
  if (!out) return fail(out.error());
  if (ids_only) std::printf("%s\n", json_ids(*out).c_str());
  // The output is the sentence alone; a terminal gets a line end after it.
  if (!ids_only && isatty(fileno(stdout))) std::printf("\n");
  if (stop == mixtral::GenerateStop::kLength && !seen.can_end())
    std::fprintf(stderr,
                 "mixtral: warning: the output is incomplete: -n %lld tokens ended it before the grammar "
                 "could end\n",
                 static_cast<long long>(go.max_tokens));
  return 0;
}

int cmd_run(const ModelArgs& ma, const std::string& prompt, const std::string& prompt_tokens,
            const mixtral::GenerateOptions& go, bool ids_only) {
  if (!prompt.empty() && prompt_tokens.empty())
    return mixtral::cli::run_text_prompt(ma.options(), prompt, go, ids_only);
  auto ids = parse_ids(prompt_tokens, "--prompt-tokens");
  if (!ids) return fail(ids.error());
  auto engine = ma.load();
  if (!engine) return fail(engine.error());
  mixtral::Engine& e = **engine;
  if (Status st = mixtral::cli::check_logit_bias(go, e.config().vocab_size); !st) return fail(st.error());
  const bool text = !ids_only && e.has_vocab();
  auto out = e.generate(*ids, go, [&](int32_t tok) {
    if (ids_only) return;
    if (text) {
      std::fputs(e.token_text(tok).c_str(), stdout);
    } else {
      std::printf("%d ", tok);
    }
    std::fflush(stdout);
  });
  if (!out) return fail(out.error());
  if (ids_only) {
    std::printf("%s\n", json_ids(*out).c_str());
  } else {
    std::printf("\n");
  }
  return 0;
}

int cmd_score(const ModelArgs& ma, const std::string& tokens, const std::string& logits_out, bool one_by_one,
              const std::string& routing_out) {
  auto ids = parse_ids(tokens, "--tokens");
  if (!ids) return fail(ids.error());
  auto engine = ma.load();
  if (!engine) return fail(engine.error());
  std::vector<mixtral::RoutingRecord> routing;
  auto logits = (*engine)->score(*ids, one_by_one, routing_out.empty() ? nullptr : &routing);
  if (!logits) return fail(logits.error());
  if (!routing_out.empty()) {
    Status st = mixtral::cli::write_routing_json(routing_out, *ids, (*engine)->config().n_layers, routing);
    if (!st) return fail(st.error());
  }
  const int64_t n = static_cast<int64_t>(ids->size()), V = (*engine)->config().vocab_size;
  if (!logits_out.empty()) {
    Status st = mixtral::write_npy(logits_out, logits->data(), {n, V});
    if (!st) return fail(st.error());
  }
  // log p(token[i+1] | token[0..i]) from a float64 log-sum-exp of row i.
  double total = 0.0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const float* row = logits->data() + i * V;
    double mx = row[0];
    for (int64_t j = 1; j < V; ++j) mx = std::max(mx, static_cast<double>(row[j]));
    double sum = 0.0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
    const double lp = row[(*ids)[static_cast<size_t>(i + 1)]] - mx - std::log(sum);
    total += lp;
    std::printf("%lld\t%d\t%.6f\n", static_cast<long long>(i + 1), (*ids)[static_cast<size_t>(i + 1)], lp);
  }
  const int64_t np = n > 1 ? n - 1 : 0;
  std::printf("total\t%lld\t%.6f\tppl %.4f\n", static_cast<long long>(np), total,
              np ? std::exp(-total / static_cast<double>(np)) : 1.0);
  return 0;
}

int cmd_info(const ModelArgs& ma, int64_t ctx, std::optional<int> ranks) {
  mixtral::EngineOptions o = ma.options();
  o.threads = 1;
  o.ctx_size = 1;    // info allocates no real cache
  o.repack = false;  // and computes nothing
  auto engine = mixtral::Engine::load(o);
  if (!engine) return fail(engine.error());
  const mixtral::ModelConfig& c = (*engine)->config();
  if (ctx <= 0) {
    const int64_t trained = c.max_seq_len;
    ctx = trained > 0 ? std::min<int64_t>(trained, 4096) : 4096;
  }
  std::fputs((*engine)->describe(ctx).c_str(), stdout);
  std::string per_type;
  for (auto t : {mixtral::KvCacheType::kF32, mixtral::KvCacheType::kF16, mixtral::KvCacheType::kQ8_0}) {
    per_type += per_type.empty() ? "" : ", ";
    per_type += std::string(mixtral::kv_cache_type_name(t)) + " ";
    if (t == mixtral::KvCacheType::kQ8_0 && c.head_dim % 32 != 0)  // q8_0 blocks of 32 along a head
      per_type += "n/a (head dimension not divisible by 32)";
    else
      per_type += std::to_string(mixtral::kv_bytes_per_token(c, t));
  }
  std::printf("KV cache bytes per token: %s\n", per_type.c_str());
  if (ranks) {
    auto placement = (*engine)->describe_ranks(*ranks);
    if (!placement) return fail(placement.error());
    std::fputs(placement->c_str(), stdout);
  }
  return 0;
}

// The rates as "a<sep>b<sep>...", 2 decimals.
std::string join_rates(const std::vector<double>& v, const char* sep) {
  std::string out;
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%.2f", v[i]);
    out += (i > 0 ? sep : "") + std::string(buf);
  }
  return out;
}

// --parallel's comma list of sequence counts ("1,2,4,8"): each a whole number >= 1, measured in order.
Result<std::vector<int64_t>> parse_parallel(const std::string& s) {
  std::vector<int64_t> out;
  for (size_t start = 0;;) {
    const size_t end = s.find(',', start);
    const std::string item = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || v < 1)
      return Error::usage("bench: --parallel '" + s +
                          "': each value must be a whole number >= 1 (a list such as 1,2,4,8)");
    out.push_back(v);
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

int cmd_bench(const ModelArgs& ma, mixtral::Engine::BenchOptions bo, bool json, const GrammarArgs& ga) {
  const int64_t n_prompt = bo.n_prompt, n_gen = bo.n_gen, n_depth = bo.n_depth;
  const int reps = bo.reps;
  // With a grammar: compiled first (a bad file fails before the long part), timed after the plain runs.
  mixtral::GenerateOptions cgo;
  if (ga.given()) {
    if (n_gen <= 0) return fail(Error::usage("bench: --json-schema/--grammar need -n > 0"));
    auto tok = mixtral::Tokenizer::load(ma.model);
    if (!tok) return fail(tok.error());
    auto g = load_grammar(ga, **tok);
    if (!g) return fail(g.error());
    cgo.grammar = *g;
    cgo.masker =
        std::make_shared<const mixtral::grammar::TokenMasker>(mixtral::grammar::vocabulary_of(**tok));
  }
  mixtral::EngineOptions o = ma.options();
  // --parallel decodes after each sequence's depth and prompt: n_depth + n_prompt + n_gen positions.
  const int64_t need = bo.parallel.empty() ? n_depth + std::max(n_prompt, n_gen) : n_depth + n_prompt + n_gen;
  o.ctx_size = ma.ctx_size > 0 ? ma.ctx_size : std::max<int64_t>(need, 1);
  // The prompt in one step; the depth's prefill in steps of at least 512.
  o.batch_size = std::max<int64_t>(n_prompt, n_depth > 0 ? 512 : 1);
  // The first bandwidth reading before the load (Engine::measure_bandwidth says why).
  if (bo.measure_bandwidth) bo.bandwidth_before = mixtral::Engine::measure_bandwidth(ma.threads);
  auto engine = mixtral::Engine::load(o);
  if (!engine) return fail(engine.error());
  auto r = (*engine)->bench(bo);
  if (!r) return fail(r.error());
  mixtral::Engine::ConstrainedBenchResult cr;
  if (ga.given()) {
    auto c = (*engine)->bench_constrained(n_gen, reps, cgo);
    if (!c) return fail(c.error());
    cr = *c;
  }
  const double roofline = r->bandwidth > 0 ? r->bandwidth / r->bytes_per_token : 0;
  std::printf("model: %s, %d threads, %d reps, %s kernels\n", ma.model.c_str(), r->threads, r->reps, r->isa);
  // "pp512", or llama-bench's "pp512 @ d4096" after a depth.
  const std::string at = n_depth > 0 ? " @ d" + std::to_string(n_depth) : "";
  if (n_prompt > 0)
    std::printf("pp%lld%s: %.2f tokens/s\n", static_cast<long long>(n_prompt), at.c_str(), r->pp_tps);
  if (n_gen > 0)
    std::printf("tg%lld%s: %.2f tokens/s\n", static_cast<long long>(n_gen), at.c_str(), r->tg_tps);
  if (r->reps > 1) {  // each rep apart: on a shared machine the spread says how far to trust the mean
    if (n_prompt > 0)
      std::printf("pp%lld%s per rep: %s\n", static_cast<long long>(n_prompt), at.c_str(),
                  join_rates(r->pp_reps, ", ").c_str());
    if (n_gen > 0)
      std::printf("tg%lld%s per rep: %s\n", static_cast<long long>(n_gen), at.c_str(),
                  join_rates(r->tg_reps, ", ").c_str());
  }
  // "tg32 x16", "tg32 x16 @ d16": N sequences decoding together after depth + prompt positions each.
  std::string parallel_json;  // the "parallel" array, with --parallel
  for (const auto& p : r->parallel) {
    const std::string tag = "tg" + std::to_string(n_gen) + " x" + std::to_string(p.n_parallel) +
                            (p.n_past > 0 ? " @ d" + std::to_string(p.n_past) : "");
    std::printf("%s: %.2f tokens/s aggregate (%.2f per sequence), %.2f ms/step, %.1f GFLOP/s\n", tag.c_str(),
                p.tps, p.per_sequence_tps, p.ms_per_step, p.gflops);
    if (r->reps > 1) std::printf("%s per rep: %s\n", tag.c_str(), join_rates(p.tps_reps, ", ").c_str());
    char buf[320];
    std::snprintf(buf, sizeof(buf),
                  "%s{\"n_parallel\": %lld, \"n_past\": %lld, \"tokens_per_s\": %.4f, "
                  "\"per_sequence_tokens_per_s\": %.4f, \"ms_per_step\": %.6f, \"flops_per_step\": %.1f, "
                  "\"gflops\": %.4f, \"tokens_per_s_reps\": [",
                  parallel_json.empty() ? "" : ", ", static_cast<long long>(p.n_parallel),
                  static_cast<long long>(p.n_past), p.tps, p.per_sequence_tps, p.ms_per_step,
                  p.flops_per_step, p.gflops);
    parallel_json += buf + join_rates(p.tps_reps, ", ") + "]}";
  }
  if (!r->parallel.empty()) parallel_json = ", \"parallel\": [" + parallel_json + "]";
  const double ratio = cr.tg_tps > 0 ? cr.tg_tps_constrained / cr.tg_tps : 0;
  if (ga.given()) {
    std::printf(
        "tg%lld sampled (temp %.2f, top-k %lld, top-p %.2f): %.2f tokens/s free, %.2f constrained by %s "
        "(%.1f%%; %lld sentences)\n",
        static_cast<long long>(n_gen), static_cast<double>(cgo.temperature),
        static_cast<long long>(cgo.top_k), static_cast<double>(cgo.top_p), cr.tg_tps, cr.tg_tps_constrained,
        (ga.schema_file.empty() ? ga.grammar_file : ga.schema_file).c_str(), 100.0 * ratio,
        static_cast<long long>(cr.sentences));
    if (cr.reps > 1)
      std::printf("tg%lld sampled per rep: free %s; constrained %s\n", static_cast<long long>(n_gen),
                  join_rates(cr.tg_reps, ", ").c_str(), join_rates(cr.tg_constrained_reps, ", ").c_str());
    std::printf("grammar per token (mask + accept): median %.1f us, p99 %.1f us\n", cr.mask_us_median,
                cr.mask_us_p99);
  }
  std::printf("bytes read per generated token: %.1f MB\n", r->bytes_per_token / 1e6);
  if (r->ranks > 1)
    std::printf(
        "mpirun: %d ranks; rank 0 exchanged %.0f bytes of expert outputs per decoded token and layer\n",
        r->ranks, r->exchange_bytes_per_token_layer);
  if (roofline > 0)
    std::printf("read bandwidth now: %.2f GB/s -> decode roofline %.2f tokens/s; tg is %.1f%% of it\n",
                r->bandwidth / 1e9, roofline, 100.0 * r->tg_tps / roofline);
  const double weights_roofline = r->weights_bandwidth > 0 ? r->weights_bandwidth / r->bytes_per_token : 0;
  if (weights_roofline > 0)
    std::printf("reading a token's weights in place: %.2f GB/s -> %.2f tokens/s; tg is %.1f%% of it\n",
                r->weights_bandwidth / 1e9, weights_roofline, 100.0 * r->tg_tps / weights_roofline);
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  const double rss = static_cast<double>(ru.ru_maxrss) * 1024.0;
  std::printf("peak RSS: %.1f MB\n", rss / 1e6);
  std::string grammar_json;  // the constrained fields, with a grammar
  if (ga.given()) {
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "\"tg_tps_sampled\": %.4f, \"tg_tps_constrained\": %.4f, \"constrained_ratio\": %.4f, "
                  "\"grammar_us_median\": %.2f, \"grammar_us_p99\": %.2f, ",
                  cr.tg_tps, cr.tg_tps_constrained, ratio, cr.mask_us_median, cr.mask_us_p99);
    grammar_json = buf;
  }
  if (json)
    std::printf(
        "{%s\"peak_rss_bytes\": %.0f, \"pp_tps\": %.4f, \"tg_tps\": %.4f, \"threads\": %d, \"n_prompt\": "
        "%lld, "
        "\"n_gen\": %lld, \"n_depth\": %lld, "
        "\"reps\": %d, \"bytes_per_token\": %.0f, \"bandwidth_bytes_per_s\": %.0f, \"roofline_fraction\": "
        "%.4f, \"weights_bandwidth_bytes_per_s\": %.0f, \"weights_roofline_fraction\": %.4f, \"isa\": "
        "\"%s\", \"ranks\": %d, \"exchange_bytes_per_token_layer\": %.0f, "
        "\"pp_tps_reps\": [%s], \"tg_tps_reps\": [%s]%s}\n",
        grammar_json.c_str(), rss, r->pp_tps, r->tg_tps, r->threads, static_cast<long long>(n_prompt),
        static_cast<long long>(n_gen), static_cast<long long>(n_depth), r->reps, r->bytes_per_token,
        r->bandwidth, roofline > 0 ? r->tg_tps / roofline : 0.0, r->weights_bandwidth,
        weights_roofline > 0 ? r->tg_tps / weights_roofline : 0.0, r->isa, r->ranks,
        r->exchange_bytes_per_token_layer, join_rates(r->pp_reps, ", ").c_str(),
        join_rates(r->tg_reps, ", ").c_str(), parallel_json.c_str());
  return 0;
}

int run_command(int argc, char** argv) {
  CLI::App app{"mixtral.cpp: fast, exact inference for Mixtral mixture-of-experts models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mixtral 0.1.0");

  // run
  ModelArgs run_m;
  std::string prompt, prompt_tokens;
  mixtral::GenerateOptions go;
  bool ids_only = false;
  auto* run = app.add_subcommand("run", "generate a continuation of a prompt");
  run_m.add(run, /*required=*/false);
  auto* p_opt = run->add_option("-p,--prompt", prompt, "prompt text");
  auto* pt_opt = run->add_option("--prompt-tokens", prompt_tokens, "prompt as token ids: 1,2,3");
  p_opt->excludes(pt_opt);
  run->add_option("-n,--n-predict", go.max_tokens, "tokens to generate")->capture_default_str();
  mixtral::cli::add_sampling_options(run, &go);
  run->add_flag("--ids", ids_only, "print the generated ids as one JSON array on the last line");
  GrammarArgs run_g;
  run_g.add(run, "prints only");

  // score
  ModelArgs score_m;
  std::string score_tokens, logits_out, routing_out;
  bool one_by_one = false;
  auto* score = app.add_subcommand("score", "one prefill: per-position log-probabilities and logits");
  score_m.add(score);
  score->add_option("--tokens", score_tokens, "token ids: 1,2,3")->required();
  score->add_option("--logits-out", logits_out, "write logits [n_tokens, vocab] as float32 .npy");
  score->add_option("--routing-out", routing_out,
                    "write the experts and weights chosen per layer and token as JSON");
  score->add_flag("--decode-one-by-one", one_by_one, "evaluate one token at a time (decode path)");

  // info
  ModelArgs info_m;
  int64_t info_ctx = 0;
  auto* info = app.add_subcommand("info", "layout, hyper-parameters, tensors and memory of a model");
  info_m.add(info);
  info->add_option("--ctx", info_ctx, "context size for the memory estimate");
  int info_ranks = 0;
  info->add_option("--ranks", info_ranks,
                   "print where mpirun -np N places the experts and the weight bytes of each rank");

  // bench
  ModelArgs bench_m;
  mixtral::Engine::BenchOptions bench_o;
  bool bench_json = false, bench_no_bw = false;
  std::string bench_parallel;
  auto* bench = app.add_subcommand("bench", "prompt-processing and generation speed (llama-bench style)");
  bench_m.add(bench);
  bench->add_option("-p,--n-prompt", bench_o.n_prompt, "prompt tokens")->capture_default_str();
  bench->add_option("-n,--n-gen", bench_o.n_gen, "generated tokens")->capture_default_str();
  bench
      ->add_option("-d,--n-depth", bench_o.n_depth,
                   "positions already in the KV cache when each test starts (untimed prefill)")
      ->capture_default_str();
  bench->add_option("-r,--reps", bench_o.reps, "repetitions")->capture_default_str();
  bench->add_flag("--json", bench_json, "print one JSON object on the last line");
  bench->add_flag("--no-bandwidth", bench_no_bw, "skip measuring the memory bandwidth");
  bench->add_option("--parallel", bench_parallel,
                    "also decode N sequences together, one step for all (serve's decode step), for each N "
                    "of a list such as 1,2,4,8: aggregate tokens/s and GFLOP/s");
  GrammarArgs bench_g;
  bench_g.add(bench, "also times sampled decode, free and constrained to");

  // make-test-model
  mixtral::TestModelOptions tm;
  tm.config.dim = 256;
  tm.config.ffn_dim = 512;
  tm.config.n_layers = 2;
  tm.config.n_heads = 8;
  tm.config.n_kv_heads = 2;
  tm.config.n_experts = 8;
  tm.config.n_experts_used = 2;
  tm.config.vocab_size = 320;
  tm.config.max_seq_len = 4096;
  tm.config.rope_theta = 1e6f;
  std::string types = "f32,f16,bf16,q8_0,q4_0",
              layouts = "hf,hf-sharded,consolidated,gguf-merged,gguf-legacy";
  auto* mk =
      app.add_subcommand("make-test-model", "write a random Mixtral in every layout (tests, benchmarks)");
  mk->add_option("out_dir", tm.out_dir, "output directory")->required();
  mk->add_option("--dim", tm.config.dim)->capture_default_str();
  mk->add_option("--ffn", tm.config.ffn_dim)->capture_default_str();
  mk->add_option("--layers", tm.config.n_layers)->capture_default_str();
  mk->add_option("--heads", tm.config.n_heads)->capture_default_str();
  mk->add_option("--kv-heads", tm.config.n_kv_heads)->capture_default_str();
  mk->add_option("--head-dim", tm.config.head_dim, "default: dim / heads");
  mk->add_option("--experts", tm.config.n_experts)->capture_default_str();
  mk->add_option("--top-k", tm.config.n_experts_used)->capture_default_str();
  mk->add_option("--vocab", tm.config.vocab_size)->capture_default_str();
  mk->add_option("--ctx", tm.config.max_seq_len, "trained context written to the config")
      ->capture_default_str();
  mk->add_option("--rope-theta", tm.config.rope_theta)->capture_default_str();
  mk->add_option("--sliding-window", tm.config.sliding_window, "0: none")->capture_default_str();
  mk->add_flag("--tie-embeddings", tm.config.tie_embeddings);
  mk->add_option("--seed", tm.seed)->capture_default_str();
  mk->add_option("--types", types, "weight types")->capture_default_str();
  mk->add_option("--layouts", layouts, "layouts")->capture_default_str();
  mk->add_option("-t,--threads", tm.threads, "worker threads");
  mk->add_option(
        "--vocab-format", tm.vocab_format,
        "v1, or v3: Mistral's v3 control pieces ([INST] 3 .. [/TOOL_RESULTS] 9, tool calls) in the GGUF "
        "vocabulary and a tokenizer.model[.v3] in the HF and consolidated directories")
      ->capture_default_str();

  // serve
  mixtral::server::ServerOptions so;
  auto* serve = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  mixtral::server::add_serve_options(serve, so);

  auto run_tokenizer_command = mixtral::cli::add_tokenizer_commands(app);
  auto run_analysis_command = mixtral::cli::add_analysis_commands(app);
  auto run_convert_command = mixtral::cli::add_convert_commands(app);
  auto run_imatrix_command = mixtral::cli::add_imatrix_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "mixtral: error: %s (see mixtral --help)\n", e.what());
    return 2;
  }

  if (auto rc = run_tokenizer_command()) return *rc;
  if (auto rc = run_analysis_command()) return *rc;
  if (auto rc = run_convert_command()) return *rc;
  if (auto rc = run_imatrix_command()) return *rc;
  if (run->parsed()) {
    if (prompt.empty() && prompt_tokens.empty())
      return fail(Error::usage("run: give --prompt or --prompt-tokens"));
    if (run_m.model.empty()) {  // the built-in model (models/tiny-kjv.gguf)
      auto builtin = mixtral::cli::builtin_model_path();
      if (!builtin) return fail(builtin.error());
      run_m.model = *builtin;
    }
    if (run_g.given()) return cmd_run_constrained(run_m, prompt, prompt_tokens, go, ids_only, run_g);
    return cmd_run(run_m, prompt, prompt_tokens, go, ids_only);
  }
  if (score->parsed()) return cmd_score(score_m, score_tokens, logits_out, one_by_one, routing_out);
  if (serve->parsed()) return mixtral::server::serve(so);
  if (info->parsed())
    return cmd_info(info_m, info_ctx, info->count("--ranks") ? std::optional<int>(info_ranks) : std::nullopt);
  if (bench->parsed()) {
    bench_o.measure_bandwidth = !bench_no_bw;
    if (bench->count("--parallel") > 0) {
      auto par = parse_parallel(bench_parallel);
      if (!par) return fail(par.error());
      bench_o.parallel = *par;
    }
    return cmd_bench(bench_m, bench_o, bench_json, bench_g);
  }
  if (mk->parsed()) {
    if (tm.config.head_dim == 0 && tm.config.n_heads > 0)
      tm.config.head_dim = tm.config.dim / tm.config.n_heads;
    tm.types = split_list(types);
    tm.layouts = split_list(layouts);
    tm.progress = isatty(fileno(stderr));
    Status st = mixtral::make_test_model(tm);
    if (!st) return fail(st.error());
    return 0;
  }
  return 2;
}

}  // namespace

// Under mpirun (expert parallelism) rank 0 runs the command and the other ranks follow its forward steps
// (engine/core.h follower_main); a plain process is rank 0 of 1.
int main(int argc, char** argv) {
  if (Status st = mixtral::dist::init(&argc, &argv); !st) {
    std::fprintf(stderr, "mixtral: %s\n", st.error().message.c_str());
    return st.error().exit_code();
  }
  int rc = 0;
  if (mixtral::dist::rank() == 0) {
    rc = run_command(argc, argv);
    mixtral::follow::send(mixtral::follow::Kind::kEnd, {});
  } else {
    rc = mixtral::follower_main();
  }
  mixtral::dist::finalize();
  return rc;
}
