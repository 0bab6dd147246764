// `mixtral imatrix`: runs the model over a text in chunks and collects, for every weight matmul, the sum of
// the squared inputs per column and the token count (per expert for the expert tensors), as llama.cpp's
// llama-imatrix does:
// - the text is tokenized once (BOS first when the tokenizer adds one) and cut into chunks of --ctx tokens
//   (a partial last chunk is dropped); each chunk is evaluated alone from position 0, its first token
//   replaced by BOS;
// - attention's Wq, Wk, Wv (the normalised input, each its own entry), Wo (the attention output) count every
//   token; an expert's W1, W3 (the normalised input) and W2 (silu(W1 x) * W3 x) only the tokens routed to it.
// The router and the output head are not collected (llama-imatrix takes the output only with
// --process-output; neither is ever quantized with an imatrix here).
#include "imatrix_cmd.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/dist.h"
#include "core/progress.h"
#include "engine/core.h"
#include "io/imatrix.h"
#include "mixtral/tokenizer.h"
#include "runtime/runtime.h"

namespace mixtral::cli {
namespace {

constexpr int64_t kDefaultCtx = 512;  // llama-imatrix's default context (its chunk size)
constexpr int64_t kMaxBatch = 512;    // tokens per forward step (results do not depend on it)

struct ImatrixArgs {
  std::string model, text_file, out;
  int64_t ctx = 0;  // 0: min(trained context, 512)
  int threads = 0;
};

constexpr MatmulWeight kWeights[] = {MatmulWeight::kWq, MatmulWeight::kWk, MatmulWeight::kWv,
                                     MatmulWeight::kWo, MatmulWeight::kW1, MatmulWeight::kW3,
                                     MatmulWeight::kW2};
constexpr int64_t kNumWeights = 7;

// The GGUF name of a layer's weight, as llama.cpp names it (the merged expert tensors; a dense model's FFN).
std::string weight_name(int64_t layer, MatmulWeight w, bool moe) {
  const std::string p = "blk." + std::to_string(layer) + ".";
  switch (w) {
    case MatmulWeight::kWq:
      return p + "attn_q.weight";
    case MatmulWeight::kWk:
      return p + "attn_k.weight";
    case MatmulWeight::kWv:
      return p + "attn_v.weight";
    case MatmulWeight::kWo:
      return p + "attn_output.weight";
    case MatmulWeight::kW1:
      return p + (moe ? "ffn_gate_exps.weight" : "ffn_gate.weight");
    case MatmulWeight::kW3:
      return p + (moe ? "ffn_up_exps.weight" : "ffn_up.weight");
    case MatmulWeight::kW2:
      return p + (moe ? "ffn_down_exps.weight" : "ffn_down.weight");
  }
  return p;
}

// Sums of squares in float64 (llama.cpp sums in float32: over many chunks that loses digits, not meaning).
class Collector final : public MatmulObserver {
 public:
  explicit Collector(const Model& m) {
    const ModelConfig& c = m.config;
    acc_.resize(static_cast<size_t>(c.n_layers * kNumWeights));
    const int64_t qd = c.n_heads * c.head_dim;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const bool moe = !m.layers[static_cast<size_t>(l)].router.empty();
      for (MatmulWeight w : kWeights) {
        Acc& a = at(l, w);
        a.name = weight_name(l, w, moe);
        const bool expert = w == MatmulWeight::kW1 || w == MatmulWeight::kW3 || w == MatmulWeight::kW2;
        a.cols = w == MatmulWeight::kWo ? qd : w == MatmulWeight::kW2 ? c.ffn_dim : c.dim;
        const int64_t n_mat = expert && moe ? c.n_experts : 1;
        a.sums.assign(static_cast<size_t>(n_mat * a.cols), 0.0);
        a.counts.assign(static_cast<size_t>(n_mat), 0);
      }
    }
  }

  void observe(int64_t layer, MatmulWeight w, int32_t expert, const float* x, const int32_t* rows, int64_t n,
               int64_t cols) override {
    Acc& a = at(layer, w);
    const size_t mat = expert < 0 || a.counts.size() == 1 ? 0 : static_cast<size_t>(expert);
    MX_CHECK(cols == a.cols && mat < a.counts.size(), "imatrix: %s: unexpected input", a.name.c_str());
    double* s = a.sums.data() + mat * static_cast<size_t>(cols);
    for (int64_t i = 0; i < n; ++i) {
      const float* r = x + (rows ? rows[i] : i) * cols;  // [cols]
      for (int64_t j = 0; j < cols; ++j) s[j] += static_cast<double>(r[j]) * r[j];
    }
    a.counts[mat] += n;
  }

  // The entries by name; a non-finite sum is an error naming its tensor (llama-imatrix stops there too).
  Result<Imatrix> finish(const ImatrixArgs& args, int64_t n_chunks, int64_t ctx) const {
    Imatrix im;
    im.datasets = {args.text_file};
    im.chunk_count = n_chunks;
    im.chunk_size = ctx;
    for (const Acc& a : acc_) {
      ImatrixEntry e;
      e.sums.resize(a.sums.size());
      for (size_t i = 0; i < a.sums.size(); ++i) {
        e.sums[i] = static_cast<float>(a.sums[i]);
        if (!std::isfinite(e.sums[i]))
          return Error::data(args.model + ": " + a.name + ": non-finite activations (column " +
                             std::to_string(i % static_cast<size_t>(a.cols)) + ")");
      }
      e.counts = a.counts;
      im.entries.emplace(a.name, std::move(e));
    }
    return im;
  }

  // "blk.3.ffn_down_exps.weight 7/8, ...": the entries with matrices (experts) that saw no token.
  std::string partial() const {
    std::string out;
    for (const Acc& a : acc_) {
      int64_t seen = 0;
      for (int64_t c : a.counts) seen += c > 0;
      if (seen < static_cast<int64_t>(a.counts.size()))
        out += (out.empty() ? "" : ", ") + a.name + " " + std::to_string(seen) + "/" +
               std::to_string(a.counts.size());
    }
    return out;
  }

 private:
  struct Acc {
    std::string name;
    int64_t cols = 0;
    std::vector<double> sums;     // [n_mat, cols]
    std::vector<int64_t> counts;  // [n_mat]
  };
  Acc& at(int64_t layer, MatmulWeight w) {
    return acc_[static_cast<size_t>(layer * kNumWeights + static_cast<int64_t>(w))];
  }
  std::vector<Acc> acc_;  // [n_layers, kNumWeights]
};

int cmd_imatrix(const ImatrixArgs& a) {
  if (a.ctx < 0) return fail(Error::usage("imatrix: --ctx must be at least 1"));
  if (a.threads < 0) return fail(Error::usage("imatrix: --threads must be positive"));
  if (mixtral::dist::active())  // it sees every expert's inputs, so every expert must be in this process
    return fail(Error::usage("imatrix: runs in one process, not under mpirun -np " +
                             std::to_string(mixtral::dist::size())));
  {  // refuse an output nobody can write before the long part
    const auto dir = std::filesystem::path(a.out).parent_path();
    std::error_code ec;
    if (a.out.empty() || std::filesystem::is_directory(a.out, ec) ||
        (!dir.empty() && !std::filesystem::is_directory(dir, ec)))
      return fail(Error::usage("imatrix: -o " + a.out + ": not a file in an existing directory"));
  }
  if (std::error_code ec; std::filesystem::is_directory(a.text_file, ec))
    return fail(Error::io("--text-file: " + a.text_file + ": is a directory"));
  auto text = read_text_file(a.text_file, "--text-file");
  if (!text) return fail(text.error());
  auto tok = Tokenizer::load(a.model);
  if (!tok) return fail(tok.error());
  auto ids = (*tok)->encode(*text, (*tok)->add_bos(), false);
  if (!ids) return fail(ids.error());

  CoreOptions co;
  co.model_path = a.model;
  co.threads = a.threads;
  co.cache_type = KvCacheType::kF32;  // the keys and values as computed: no cache rounding in the statistic
  auto core = EngineCore::load(co);
  if (!core) return fail(core.error());
  const Model& model = *(*core)->model;
  const ModelConfig& c = model.config;
  if ((*tok)->n_vocab() > c.vocab_size)
    return fail(Error::data((*tok)->source() + ": the tokenizer has " + std::to_string((*tok)->n_vocab()) +
                            " pieces but the model's vocabulary has " + std::to_string(c.vocab_size)));
  const int64_t trained = c.max_seq_len;
  const int64_t ctx = a.ctx > 0 ? a.ctx : trained > 0 ? std::min(trained, kDefaultCtx) : kDefaultCtx;
  if (trained > 0 && ctx > trained)
    return fail(Error::usage("imatrix: --ctx " + std::to_string(ctx) +
                             " exceeds the model's trained context of " + std::to_string(trained)));
  const auto n_tokens = static_cast<int64_t>(ids->size());
  const int64_t n_chunks = n_tokens / ctx;
  if (n_chunks == 0)
    return fail(Error::data("--text-file: " + a.text_file + ": " + std::to_string(n_tokens) +
                            " tokens, fewer than one chunk of --ctx " + std::to_string(ctx)));

  RuntimeOptions ro;
  ro.max_batch = std::min(ctx, kMaxBatch);
  Runtime rt(model, ro, *(*core)->pool);
  PagedKvCache kv(c, DType::F32, (ctx + kKvBlockSize - 1) / kKvBlockSize, kKvBlockSize);
  SoloSequence seq(rt, kv, ctx);
  Collector col(model);
  rt.set_matmul_observer(&col);
  std::fprintf(stderr, "imatrix: %lld chunks of %lld tokens (%lld of the text's %lld tokens), %d threads\n",
               static_cast<long long>(n_chunks), static_cast<long long>(ctx),
               static_cast<long long>(n_chunks * ctx), static_cast<long long>(n_tokens), (*core)->threads);
  Progress bar("imatrix", n_chunks);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> chunk(static_cast<size_t>(ctx));  // [ctx]
  for (int64_t i = 0; i < n_chunks; ++i) {
    std::copy(ids->begin() + i * ctx, ids->begin() + (i + 1) * ctx, chunk.begin());
    if ((*tok)->add_bos()) chunk[0] = (*tok)->bos_id();
    if (Status st = seq.eval(chunk.data(), ctx, 0, nullptr, false); !st) return fail(st.error());
    bar.add(1);
  }
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto im = col.finish(a, n_chunks, ctx);
  if (!im) return fail(im.error());
  if (const std::string p = col.partial(); !p.empty())
    std::fprintf(stderr, "mixtral: warning: experts that no token was routed to (written with count 0): %s\n",
                 p.c_str());
  if (Status st = write_imatrix_gguf(*im, a.out); !st) return fail(st.error());
  std::fprintf(stderr, "imatrix: %lld tokens in %.2f s (%.1f tokens/s), %zu entries written to %s\n",
               static_cast<long long>(n_chunks * ctx), secs, static_cast<double>(n_chunks * ctx) / secs,
               im->entries.size(), a.out.c_str());
  return 0;
}

}  // namespace

std::function<std::optional<int>()> add_imatrix_command(CLI::App& app) {
  auto a = std::make_shared<ImatrixArgs>();
  auto* im = app.add_subcommand(
      "imatrix",
      "importance matrix for quantization (llama.cpp's GGUF imatrix format): per weight and input column, "
      "the mean squared activation over a text, per expert for the expert tensors");
  im->add_option("-m,--model", a->model, "GGUF file, Hugging Face directory or consolidated directory")
      ->required();
  im->add_option("--text-file", a->text_file, "the text to run (UTF-8; BOS added as the tokenizer says)")
      ->required();
  im->add_option("--ctx", a->ctx,
                 "chunk length in tokens; each chunk is evaluated alone, BOS first (default: min(trained "
                 "context, 512), llama-imatrix's default)");
  im->add_option("-o,--output", a->out, "output file (GGUF imatrix)")->required();
  im->add_option("-t,--threads", a->threads, "worker threads (default: all cores)");
  return [a, im]() -> std::optional<int> {
    if (!im->parsed()) return std::nullopt;
    return cmd_imatrix(*a);
  };
}

}  // namespace mixtral::cli
