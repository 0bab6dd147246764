// `mixtral perplexity`, `mixtral route`, `score --routing-out` and the built-in model of `mixtral run`.
#include "analysis_cmds.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/check.h"
#include "core/progress.h"
#include "mixtral/tokenizer.h"
#include "sampler/sampler.h"

#ifndef MIXTRAL_SOURCE_DIR
#define MIXTRAL_SOURCE_DIR ""
#endif

namespace mixtral::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kBuiltinName = "tiny-kjv.gguf";

// ---------------------------------------------------------------------------------------------------------
// perplexity

// One window of Hugging Face's perplexity recipe: tokens [begin, end) are evaluated; only the last n_new
// targets (those no earlier window scored) count. The first window scores every token but its first.
struct Window {
  int64_t begin, end, n_new;
};

std::vector<Window> sliding_windows(int64_t n, int64_t ctx, int64_t stride) {
  std::vector<Window> out;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    out.push_back({begin, end, end - prev_end});
    prev_end = end;
    if (end == n) break;
  }
  return out;
}

struct PerplexityArgs {
  std::string model, text_file, kld_base_out, kld_base_in;
  int64_t ctx = 0, stride = 0;
  int threads = 0;
  KvCacheType cache_type = KvCacheType::kF16;
  bool json = false;
};

// A file of next-token log-probabilities: `--kl-divergence-base` writes it, `--kl-divergence` reads it.
// Native little-endian layout:
//   char magic[8] = "MXLOGP01"; uint64 vocab, count, ctx, stride;
//   int32 targets[count]: the scored tokens in order;
//   float32 logprobs[count][vocab]: row i is log p(. | the tokens before target i), as the window saw them.
constexpr char kLogprobMagic[8] = {'M', 'X', 'L', 'O', 'G', 'P', '0', '1'};
struct LogprobHeader {
  uint64_t vocab = 0, count = 0, ctx = 0, stride = 0;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

class LogprobWriter {
 public:
  static Result<LogprobWriter> create(const std::string& path, const LogprobHeader& h,
                                      const std::vector<int32_t>& targets) {
    LogprobWriter w;
    w.path_ = path;
    w.f_.reset(std::fopen(path.c_str(), "wb"));
    if (!w.f_) return Error::io("--kl-divergence-base: " + path + ": cannot create file");
    const bool ok =
        std::fwrite(kLogprobMagic, 1, 8, w.f_.get()) == 8 && std::fwrite(&h, sizeof h, 1, w.f_.get()) == 1 &&
        std::fwrite(targets.data(), sizeof(int32_t), targets.size(), w.f_.get()) == targets.size();
    if (!ok) return Error::io("--kl-divergence-base: " + path + ": write error");
    return w;
  }
  Status write_row(const std::vector<float>& row) {  // row: [vocab]
    if (std::fwrite(row.data(), sizeof(float), row.size(), f_.get()) != row.size())
      return Error::io("--kl-divergence-base: " + path_ + ": write error");
    return {};
  }
  Status close() {
    if (std::fclose(f_.release()) != 0) return Error::io("--kl-divergence-base: " + path_ + ": write error");
    return {};
  }

 private:
  std::string path_;
  FilePtr f_;
};

class LogprobReader {
 public:
  // Opens the file and refuses one written for another model, text, --ctx or --stride.
  static Result<LogprobReader> open(const std::string& path, const LogprobHeader& want,
                                    const std::vector<int32_t>& targets) {
    const std::string where = "--kl-divergence: " + path + ": ";
    LogprobReader r;
    r.path_ = path;
    r.f_.reset(std::fopen(path.c_str(), "rb"));
    if (!r.f_) return Error::io(where + "cannot open file");
    char magic[8];
    LogprobHeader h;
    if (std::fread(magic, 1, 8, r.f_.get()) != 8 || std::memcmp(magic, kLogprobMagic, 8) != 0 ||
        std::fread(&h, sizeof h, 1, r.f_.get()) != 1)
      return Error::data(where + "not a log-probabilities file (one written by --kl-divergence-base)");
    if (h.vocab != want.vocab)
      return Error::data(where + "written for a vocabulary of " + std::to_string(h.vocab) +
                         " tokens; this model has " + std::to_string(want.vocab));
    if (h.count != want.count)
      return Error::data(where + "holds " + std::to_string(h.count) + " positions; this text has " +
                         std::to_string(want.count) + " (another --text-file?)");
    if (h.ctx != want.ctx || h.stride != want.stride)
      return Error::data(where + "written with --ctx " + std::to_string(h.ctx) + " --stride " +
                         std::to_string(h.stride) + "; this run has --ctx " + std::to_string(want.ctx) +
                         " --stride " + std::to_string(want.stride));
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    const uint64_t expect = 8 + sizeof h + h.count * sizeof(int32_t) + h.count * h.vocab * sizeof(float);
    if (ec || size != expect)
      return Error::data(where + std::to_string(size) + " bytes where its header says " +
                         std::to_string(expect) + " (truncated?)");
    std::vector<int32_t> got(static_cast<size_t>(h.count));  // [count]
    if (std::fread(got.data(), sizeof(int32_t), got.size(), r.f_.get()) != got.size())
      return Error::io(where + "read error");
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != targets[i])
        return Error::data(where + "its tokens differ from this text's at token " + std::to_string(i + 1) +
                           " (another --text-file or tokenizer?)");
    return r;
  }
  Status read_row(std::vector<float>& row) {  // row: [vocab]
    if (std::fread(row.data(), sizeof(float), row.size(), f_.get()) != row.size())
      return Error::io("--kl-divergence: " + path_ + ": read error");
    return {};
  }

 private:
  std::string path_;
  FilePtr f_;
};

// Mean with its standard error, and the max, of a stream of values.
struct Stats {
  int64_t n = 0;
  double sum = 0, sum_sq = 0, max = -INFINITY;
  void add(double v) {
    ++n;
    sum += v;
    sum_sq += v * v;
    max = std::max(max, v);
  }
  double mean() const { return n ? sum / static_cast<double>(n) : 0.0; }
  double stderr_of_mean() const {
    if (n < 2) return 0.0;
    const double m = mean(), var = (sum_sq - static_cast<double>(n) * m * m) / static_cast<double>(n - 1);
    return std::sqrt(std::max(var, 0.0) / static_cast<double>(n));
  }
};

int cmd_perplexity(const PerplexityArgs& a) {
  if (a.ctx != 0 && a.ctx < 2) return fail(Error::usage("--ctx must be at least 2"));
  if (a.stride < 0) return fail(Error::usage("--stride must be positive"));
  auto text = read_text_file(a.text_file, "--text-file");
  if (!text.ok()) return fail(text.error());
  auto tok = Tokenizer::load(a.model);
  if (!tok.ok()) return fail(tok.error());
  auto ids = (*tok)->encode(*text, (*tok)->add_bos(), false);
  if (!ids.ok()) return fail(ids.error());
  const int64_t n = static_cast<int64_t>(ids->size());
  if (n < 2)
    return fail(Error::data("--text-file: " + a.text_file + ": " + std::to_string(n) +
                            " token(s); perplexity needs at least 2"));

  EngineOptions eo;
  eo.model_path = a.model;
  eo.threads = a.threads;
  eo.cache_type = a.cache_type;
  eo.ctx_size = 1;  // set below, once the trained context is known
  int64_t ctx = a.ctx;
  {
    auto probe = Engine::load(eo);
    if (!probe.ok()) return fail(probe.error());
    const int64_t trained = (*probe)->config().max_seq_len;
    if (ctx == 0) ctx = trained > 0 ? std::min<int64_t>(trained, 512) : 512;
    if (trained > 0 && ctx > trained)
      return fail(Error::usage("--ctx " + std::to_string(ctx) + " exceeds the model's trained context of " +
                               std::to_string(trained)));
  }
  const int64_t stride = a.stride > 0 ? a.stride : std::max<int64_t>(ctx / 2, 1);
  if (stride > ctx)
    return fail(Error::usage("--stride " + std::to_string(stride) + " must not exceed --ctx " +
                             std::to_string(ctx) + " (tokens would go unscored)"));
  eo.ctx_size = std::min(ctx, n);
  eo.batch_size = eo.ctx_size;
  auto loaded = load_model(eo);
  if (!loaded.ok()) return fail(loaded.error());
  Engine& engine = *loaded->engine;
  const int64_t V = engine.config().vocab_size;

  const std::vector<Window> windows = sliding_windows(n, ctx, stride);
  // The scored tokens in order (each window's targets first..T-1, below): the log-probabilities files' rows.
  std::vector<int32_t> targets;  // [tokens scored]
  for (const Window& w : windows)
    for (int64_t t = std::max<int64_t>(w.end - w.begin - w.n_new, 1); t < w.end - w.begin; ++t)
      targets.push_back((*ids)[static_cast<size_t>(w.begin + t)]);
  const LogprobHeader header{static_cast<uint64_t>(V), targets.size(), static_cast<uint64_t>(ctx),
                             static_cast<uint64_t>(stride)};
  std::optional<LogprobWriter> base_out;
  std::optional<LogprobReader> base_in;
  if (!a.kld_base_out.empty()) {
    auto w = LogprobWriter::create(a.kld_base_out, header, targets);
    if (!w.ok()) return fail(w.error());
    base_out.emplace(std::move(*w));
  }
  if (!a.kld_base_in.empty()) {
    auto r = LogprobReader::open(a.kld_base_in, header, targets);
    if (!r.ok()) return fail(r.error());
    base_in.emplace(std::move(*r));
  }

  Progress bar("perplexity", static_cast<int64_t>(targets.size()));
  double nll = 0.0, base_nll = 0.0;  // sums of -log p over scored tokens, nats (this run, the base file's)
  Stats kld;                         // KL(base || this run) per scored position, nats
  int64_t same_top = 0;              // positions whose most likely token is the base's
  std::vector<float> logp(static_cast<size_t>(V)), base(static_cast<size_t>(V));  // [V] each
  int64_t scored = 0;
  for (const Window& w : windows) {
    const std::vector<int32_t> win(ids->begin() + w.begin, ids->begin() + w.end);
    auto logits = engine.score(win);  // [T, V]
    if (!logits.ok()) return fail(logits.error());
    const int64_t T = w.end - w.begin;
    const int64_t first = std::max<int64_t>(T - w.n_new, 1);  // targets first..T-1, rows first-1..T-2
    for (int64_t t = first; t < T; ++t) {
      const float* row = logits->data() + (t - 1) * V;  // [V]
      double mx = row[0];
      for (int64_t j = 1; j < V; ++j) mx = std::max(mx, static_cast<double>(row[j]));
      double sum = 0.0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<double>(row[j]) - mx);
      const double lse = mx + std::log(sum);
      const int32_t target = win[static_cast<size_t>(t)];
      nll -= static_cast<double>(row[target]) - lse;
      if (!base_out && !base_in) continue;
      // The log-probabilities as the file holds them (float32): equal runs compare exactly equal.
      for (int64_t j = 0; j < V; ++j) logp[static_cast<size_t>(j)] = static_cast<float>(row[j] - lse);
      if (base_out) {
        if (Status st = base_out->write_row(logp); !st.ok()) return fail(st.error());
      }
      if (base_in) {
        if (Status st = base_in->read_row(base); !st.ok()) return fail(st.error());
        double kl = 0.0;
        for (int64_t j = 0; j < V; ++j) {
          const double lb = base[static_cast<size_t>(j)];
          kl += std::exp(lb) * (lb - static_cast<double>(logp[static_cast<size_t>(j)]));
        }
        kld.add(kl);
        same_top += argmax(base.data(), V) == argmax(logp.data(), V);
        base_nll -= base[static_cast<size_t>(target)];
      }
    }
    scored += T - first;
    bar.update(scored);
    bar.set_detail("ppl " +
                   std::to_string(std::exp(nll / static_cast<double>(std::max<int64_t>(scored, 1)))));
  }
  bar.finish();
  MX_CHECK(scored == static_cast<int64_t>(targets.size()), "perplexity: %lld tokens scored of %zu",
           static_cast<long long>(scored), targets.size());
  if (base_out) {
    if (Status st = base_out->close(); !st.ok()) return fail(st.error());
  }
  const double mean = nll / static_cast<double>(scored);
  const double base_ppl = std::exp(base_nll / static_cast<double>(scored));
  const double same_top_pct = 100.0 * static_cast<double>(same_top) / static_cast<double>(scored);
  if (a.json) {
    json j = {{"model", a.model},
              {"text_file", a.text_file},
              {"tokens", n},
              {"tokens_scored", scored},
              {"windows", windows.size()},
              {"ctx", ctx},
              {"stride", stride},
              {"cache_type", kv_cache_type_name(a.cache_type)},
              {"mean_nll", mean},
              {"perplexity", std::exp(mean)}};
    if (base_in) {
      j["kl_divergence_base"] = a.kld_base_in;
      j["base_perplexity"] = base_ppl;
      j["kld_mean"] = kld.mean();
      j["kld_stderr"] = kld.stderr_of_mean();
      j["kld_max"] = kld.max;
      j["same_top_pct"] = same_top_pct;
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("tokens scored: %lld (of %lld; %zu windows, ctx %lld, stride %lld; %s KV cache)\n",
                static_cast<long long>(scored), static_cast<long long>(n), windows.size(),
                static_cast<long long>(ctx), static_cast<long long>(stride),
                kv_cache_type_name(a.cache_type));
    std::printf("mean NLL: %.6f nats/token\n", mean);
    std::printf("perplexity: %.4f\n", std::exp(mean));
    if (base_in) {
      std::printf("base perplexity (%s): %.4f; this run %+.6f\n", a.kld_base_in.c_str(), base_ppl,
                  std::exp(mean) - base_ppl);
      std::printf("KL divergence from the base: mean %.6g +/- %.2g nats, max %.6g\n", kld.mean(),
                  kld.stderr_of_mean(), kld.max);
      std::printf("same top token as the base: %.3f%%\n", same_top_pct);
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// route

struct RouteArgs {
  std::string model, prompt, html, png;
  int threads = 0;
  KvCacheType cache_type = KvCacheType::kF16;
};

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

// A token as shown in a cell: SentencePiece's "▁" as a space, byte pieces of control characters as a symbol.
std::string display_piece(const Tokenizer& tok, int32_t id) {
  std::string p = tok.piece(id);
  if (tok.type(id) == TokenType::kByte) {
    if (p == "<0x0A>") return "\u21b5";
    if (p == "<0x09>") return "\u21e5";
    return p;
  }
  std::string o;
  const std::string sp = "\u2581";
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, sp.size(), sp) == 0) {
      o += ' ';
      i += sp.size();
    } else {
      o += p[i++];
    }
  }
  return o;
}

std::string expert_colour(int64_t e, int64_t n_experts) {
  static const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                   "#59a14f", "#edc948", "#b07aa1", "#ff9da7"};
  if (n_experts <= 8) return kPalette[e];
  char buf[64];
  std::snprintf(buf, sizeof buf, "hsl(%lld,65%%,62%%)", static_cast<long long>(e * 360 / n_experts));
  return buf;
}

std::string fmt(double v, int prec = 3) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

// Per-layer expert load as an inline SVG bar chart: the tokens that chose each expert (any of the top k),
// the top-1 share drawn darker.
std::string load_histogram(const std::vector<int64_t>& any, const std::vector<int64_t>& top1,
                           int64_t n_tokens, int64_t n_experts) {
  const int bw = 30, gap = 6, h = 90, top = 14, bottom = 18;
  const int width = static_cast<int>(n_experts) * (bw + gap) + gap;
  const double mx = static_cast<double>(std::max<int64_t>(n_tokens, 1));
  std::ostringstream s;
  s << "<svg class=\"hist\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\""
    << h + top + bottom << "\" role=\"img\"><title>expert load: tokens routed to each expert (dark: as top-1)"
    << "</title>";
  for (int64_t e = 0; e < n_experts; ++e) {
    const int x = gap + static_cast<int>(e) * (bw + gap);
    const double ha = h * static_cast<double>(any[static_cast<size_t>(e)]) / mx;
    const double h1 = h * static_cast<double>(top1[static_cast<size_t>(e)]) / mx;
    const std::string c = expert_colour(e, n_experts);
    s << "<rect x=\"" << x << "\" y=\"" << fmt(top + h - ha, 1) << "\" width=\"" << bw << "\" height=\""
      << fmt(ha, 1) << "\" fill=\"" << c << "\" fill-opacity=\"0.45\"/>";
    s << "<rect x=\"" << x << "\" y=\"" << fmt(top + h - h1, 1) << "\" width=\"" << bw << "\" height=\""
      << fmt(h1, 1) << "\" fill=\"" << c << "\"/>";
    s << "<text x=\"" << x + bw / 2 << "\" y=\"" << fmt(top + h - ha - 3, 1)
      << "\" font-size=\"10\" text-anchor=\"middle\">" << any[static_cast<size_t>(e)] << "</text>";
    s << "<text x=\"" << x + bw / 2 << "\" y=\"" << top + h + 13
      << "\" font-size=\"11\" text-anchor=\"middle\">" << e << "</text>";
  }
  s << "</svg>";
  return s.str();
}

std::string routing_html(const std::string& model, const Tokenizer& tok, const std::vector<int32_t>& ids,
                         const ModelConfig& cfg, const std::vector<RoutingRecord>& routing) {
  const int64_t L = cfg.n_layers, E = cfg.n_experts, n = static_cast<int64_t>(ids.size());
  // by_pos[l][i]: the record of layer l, position i
  std::vector<std::vector<const RoutingRecord*>> by_pos(
      static_cast<size_t>(L), std::vector<const RoutingRecord*>(static_cast<size_t>(n)));
  for (const RoutingRecord& r : routing)
    if (r.layer >= 0 && r.layer < L && r.position >= 0 && r.position < n)
      by_pos[static_cast<size_t>(r.layer)][static_cast<size_t>(r.position)] = &r;
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Expert "
       "routing</title>\n<style>\n"
       "body{font-family:sans-serif;margin:16px;color:#222;background:#fff}\n"
       "h1{font-size:20px;margin:0 0 4px}h2{font-size:14px;margin:0 0 6px}\n"
       ".meta{font-size:12px;color:#555;margin:0 0 8px}\n"
       ".legend span{display:inline-block;padding:2px "
       "8px;margin-right:4px;font-size:12px;border-radius:3px}\n"
       ".layer{display:flex;gap:16px;align-items:flex-start;border-top:1px solid #ddd;padding:8px 0}\n"
       ".tokens{flex:1;font-family:monospace;font-size:14px;line-height:24px}\n"
       ".tok{white-space:pre;padding:2px 1px;margin:0 1px;border-radius:2px}\n"
       ".side{width:300px}\n</style></head><body>\n";
  h << "<h1>Expert routing</h1>\n<p class=\"meta\">" << html_escape(model) << " &middot; " << L << " layers, "
    << E << " experts, top-" << cfg.n_experts_used << " &middot; " << n
    << " tokens. Each cell is one token, coloured by the expert with the largest router weight in that "
       "layer; "
       "hover for both experts and their weights.</p>\n<div class=\"legend\">";
  for (int64_t e = 0; e < E; ++e)
    h << "<span style=\"background:" << expert_colour(e, E) << "\">expert " << e << "</span>";
  h << "</div>\n";
  for (int64_t l = 0; l < L; ++l) {
    std::vector<int64_t> any(static_cast<size_t>(E)), top1(static_cast<size_t>(E));
    h << "<section class=\"layer\" data-layer=\"" << l << "\"><div class=\"tokens\"><h2>Layer " << l
      << "</h2>";
    for (int64_t i = 0; i < n; ++i) {
      const RoutingRecord* r = by_pos[static_cast<size_t>(l)][static_cast<size_t>(i)];
      const std::string text = html_escape(display_piece(tok, ids[static_cast<size_t>(i)]));
      if (!r || r->experts.empty()) {
        h << "<span class=\"tok\" data-layer=\"" << l << "\" data-pos=\"" << i << "\">" << text << "</span>";
        continue;
      }
      size_t best = 0;  // top-1: the largest weight
      for (size_t k = 1; k < r->weights.size(); ++k)
        if (r->weights[k] > r->weights[best]) best = k;
      std::string experts, weights,
          tip = "pos " + std::to_string(i) + " '" +
                html_escape(display_piece(tok, ids[static_cast<size_t>(i)])) + "', layer " +
                std::to_string(l) + ":";
      std::vector<size_t> order(r->experts.size());
      for (size_t k = 0; k < order.size(); ++k) order[k] = k;
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t x, size_t y) { return r->weights[x] > r->weights[y]; });
      for (size_t k : order) {
        const int32_t e = r->experts[k];
        if (e >= 0 && e < E) {
          any[static_cast<size_t>(e)]++;
          if (k == best) top1[static_cast<size_t>(e)]++;
        }
        experts += (experts.empty() ? "" : ",") + std::to_string(e);
        weights += (weights.empty() ? "" : ",") + fmt(r->weights[k], 4);
        tip += " expert " + std::to_string(e) + " (" + fmt(r->weights[k]) + ")";
      }
      h << "<span class=\"tok\" data-layer=\"" << l << "\" data-pos=\"" << i << "\" data-experts=\""
        << experts << "\" data-weights=\"" << weights
        << "\" style=\"background:" << expert_colour(std::clamp<int64_t>(r->experts[best], 0, E - 1), E)
        << "\" title=\"" << tip << "\">" << text << "</span>";
    }
    h << "</div><div class=\"side\">" << load_histogram(any, top1, n, E) << "</div></section>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// Renders the page with headless Chromium ($MIXTRAL_CHROMIUM, default "chromium").
Status render_png(const std::string& html_path, const std::string& png_path, int width, int height) {
  const char* env = std::getenv("MIXTRAL_CHROMIUM");
  const std::string chromium = env && *env ? env : "chromium";
  std::error_code ec;
  const fs::path abs = fs::absolute(html_path, ec);
  char tmpl[] = "/tmp/mixtral-chromium-XXXXXX";
  if (!mkdtemp(tmpl)) return Error::io("--png: cannot create a temporary Chromium profile directory");
  const std::string cmd =
      "timeout 120 " + shell_quote(chromium) +
      " --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking"
      " --hide-scrollbars --user-data-dir=" +
      shell_quote(tmpl) + " --window-size=" + std::to_string(width) + "," + std::to_string(height) +
      " --screenshot=" + shell_quote(fs::absolute(png_path, ec)) + " " +
      shell_quote("file://" + abs.string()) + " >/dev/null 2>&1";
  fs::remove(png_path, ec);
  const int rc = std::system(cmd.c_str());
  fs::remove_all(tmpl, ec);
  if (rc != 0 || !fs::exists(png_path) || fs::file_size(png_path, ec) == 0)
    return Error::io("--png: " + png_path + ": headless " + chromium + " failed (exit " +
                     std::to_string(WIFEXITED(rc) ? WEXITSTATUS(rc) : rc) +
                     "); install it (tools/install-deps.sh) or set MIXTRAL_CHROMIUM");
  return {};
}

int cmd_route(const RouteArgs& a) {
  EngineOptions eo;
  eo.model_path = a.model;
  eo.threads = a.threads;
  eo.cache_type = a.cache_type;
  auto loaded = load_model(eo);
  if (!loaded.ok()) return fail(loaded.error());
  const Tokenizer& tok = *loaded->tok;
  auto ids = tok.encode(a.prompt, tok.add_bos(), false);
  if (!ids.ok()) return fail(ids.error());
  if (ids->empty()) return fail(Error::usage("--prompt: no tokens to route"));
  Engine& engine = *loaded->engine;
  if (static_cast<int64_t>(ids->size()) > engine.ctx_size())
    return fail(Error::usage("--prompt: " + std::to_string(ids->size()) + " tokens exceed the context of " +
                             std::to_string(engine.ctx_size()) + " (--ctx-size)"));
  std::vector<RoutingRecord> routing;
  auto logits = engine.score(*ids, false, &routing);
  if (!logits.ok()) return fail(logits.error());
  const std::string page = routing_html(a.model, tok, *ids, engine.config(), routing);
  {
    std::ofstream f(a.html, std::ios::binary);
    if (!f) return fail(Error::io("--html: " + a.html + ": cannot create file"));
    f << page;
    if (!f.good()) return fail(Error::io("--html: " + a.html + ": write error"));
  }
  if (!a.png.empty()) {
    const int64_t n = static_cast<int64_t>(ids->size());
    const int64_t rows = (n * 7) / 80 + 1;  // about 80 monospace characters' worth of cells per line
    const int height = static_cast<int>(
        std::min<int64_t>(120 + engine.config().n_layers * std::max<int64_t>(140, 40 + rows * 26), 16000));
    Status st = render_png(a.html, a.png, 1280, height);
    if (!st.ok()) return fail(st.error());
  }
  std::fprintf(stderr, "wrote %s (%zu tokens, %lld layers)%s%s\n", a.html.c_str(), ids->size(),
               static_cast<long long>(engine.config().n_layers), a.png.empty() ? "" : " and ", a.png.c_str());
  return 0;
}

}  // namespace

Status write_routing_json(const std::string& path, const std::vector<int32_t>& tokens, int64_t n_layers,
                          const std::vector<RoutingRecord>& routing) {
  json recs = json::array();
  int64_t k = 0;
  for (const RoutingRecord& r : routing) {
    std::vector<size_t> order(r.experts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t x, size_t y) { return r.weights[x] > r.weights[y]; });
    json ex = json::array(), w = json::array();
    for (size_t i : order) {
      ex.push_back(r.experts[i]);
      w.push_back(r.weights[i]);
    }
    k = static_cast<int64_t>(r.experts.size());
    recs.push_back({{"layer", r.layer}, {"pos", r.position}, {"experts", ex}, {"weights", w}});
  }
  json j = {{"tokens", tokens}, {"n_layers", n_layers}, {"k", k}, {"routing", recs}};
  std::ofstream f(path, std::ios::binary);
  if (!f) return Error::io("--routing-out: " + path + ": cannot create file");
  f << j.dump() << "\n";
  if (!f.good()) return Error::io("--routing-out: " + path + ": write error");
  return {};
}

Result<std::string> builtin_model_path() {
  if (const char* env = std::getenv("MIXTRAL_BUILTIN_MODEL"); env && *env) {
    if (!fs::exists(env))
      return Error::usage(std::string("MIXTRAL_BUILTIN_MODEL: ") + env + ": no such file");
    return std::string(env);
  }
  std::vector<fs::path> tried;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    tried.push_back(exe.parent_path() / kBuiltinName);
    tried.push_back(exe.parent_path() / ".." / "share" / "mixtral" / kBuiltinName);
  }
  if (std::string(MIXTRAL_SOURCE_DIR).size())
    tried.push_back(fs::path(MIXTRAL_SOURCE_DIR) / "models" / kBuiltinName);
  std::string where;
  for (const fs::path& p : tried) {
    if (fs::exists(p, ec)) return p.lexically_normal().string();
    where += (where.empty() ? "" : ", ") + p.lexically_normal().string();
  }
  return Error::usage("run: no --model given and the built-in model was not found (looked at " + where +
                      "; set MIXTRAL_BUILTIN_MODEL)");
}

std::function<std::optional<int>()> add_analysis_commands(CLI::App& app) {
  auto pa = std::make_shared<PerplexityArgs>();
  auto* pp = app.add_subcommand(
      "perplexity", "perplexity of a text file: Hugging Face's sliding-window recipe (ctx, stride)");
  pp->add_option("-m,--model", pa->model, "GGUF file, Hugging Face directory or consolidated directory")
      ->required();
  pp->add_option("--text-file", pa->text_file, "the text to score (UTF-8; BOS added as the tokenizer says)")
      ->required();
  pp->add_option("--ctx", pa->ctx, "window length in tokens (default: min(trained context, 512))");
  pp->add_option("--stride", pa->stride,
                 "tokens between window starts; only new tokens are scored (default: ctx/2)");
  pp->add_option("-t,--threads", pa->threads, "worker threads (default: all cores)");
  add_cache_type_option(pp, &pa->cache_type);
  auto* kb =
      pp->add_option("--kl-divergence-base", pa->kld_base_out,
                     "write every scored position's next-token log-probabilities to this file (run it with "
                     "--cache-type f32: the base of --kl-divergence)");
  pp->add_option("--kl-divergence", pa->kld_base_in,
                 "read a --kl-divergence-base file (same model, text, --ctx, --stride) and report the KL "
                 "divergence from it, its perplexity and how often the top token agrees")
      ->excludes(kb);
  pp->add_flag("--json", pa->json, "print one JSON object instead of the text report");

  auto ra = std::make_shared<RouteArgs>();
  auto* rt = app.add_subcommand("route", "HTML page of the experts each token is routed to, per layer");
  rt->add_option("-m,--model", ra->model, "GGUF file, Hugging Face directory or consolidated directory")
      ->required();
  rt->add_option("-p,--prompt", ra->prompt, "text to route (BOS added as the tokenizer says)")->required();
  rt->add_option("--html", ra->html, "output page (self-contained HTML, inline SVG)")->required();
  rt->add_option("--png", ra->png, "also render the page to PNG with headless Chromium");
  rt->add_option("-t,--threads", ra->threads, "worker threads (default: all cores)");
  add_cache_type_option(rt, &ra->cache_type);

  return [pa, pp, ra, rt]() -> std::optional<int> {
    if (pp->parsed()) return cmd_perplexity(*pa);
    if (rt->parsed()) return cmd_route(*ra);
    return std::nullopt;
  };
}

}  // namespace mixtral::cli
