// `mixtral quantize` and `mixtral convert`: thin wrappers over include/mixtral/convert.h.
#include "convert_cmds.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <regex>
#include <string>

#include "cli_util.h"
#include "io/gguf.h"
#include "io/imatrix.h"
#include "io/quote.h"
#include "mixtral/convert.h"

namespace mixtral::cli {
namespace {

std::string type_list() {
  std::string s;
  for (const auto& n : quant_type_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// --imatrix FILE: read (either format) and matched to the input's weights by name: every layer matmul weight
// (attn_q/k/v/output, the experts' ffn_gate/up/down, merged or per expert: blk.L.ffn_gate.E.weight is row E
// of the entry blk.L.ffn_gate_exps.weight) needs an entry of its size (columns x matrices), and every entry
// must name a weight of the input. Then refused: no quantizer weighs its rounding errors by it yet, and a
// flag is never taken only to be ignored.
Status check_imatrix(const ConvertOptions& o, const std::string& path) {
  if (path.empty()) return Error::usage("quantize: --imatrix: an empty file name");
  auto read = read_imatrix(path);
  if (!read) return Error{read.error().kind, "--imatrix: " + read.error().message};
  const Imatrix& im = *read;
  MX_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(o.input));
  struct Want {
    int64_t cols = 0, n_mat = 0;
    bool needed = false;  // a weight quantize quantizes (not the router)
  };
  std::map<std::string, Want> want;  // by entry name
  static const std::regex per_expert(R"(^(blk\.\d+\.ffn_(gate|up|down))\.(\d+)\.weight$)");
  static const std::regex layer_matmul(
      R"(^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down|ffn_gate_exps|ffn_up_exps|)"
      R"(ffn_down_exps)\.weight$)");
  for (const GgufTensorInfo& t : g.tensors()) {
    if (t.ne.size() < 2) continue;  // norms
    std::smatch m;
    if (std::regex_match(t.name, m, per_expert)) {
      Want& w = want[m[1].str() + "_exps.weight"];
      w.cols = t.ne[0];
      w.n_mat = std::max<int64_t>(w.n_mat, std::stoll(m[3].str()) + 1);
      w.needed = true;
      continue;
    }
    Want& w = want[t.name];
    w.cols = t.ne[0];
    w.n_mat = t.ne.size() >= 3 ? t.ne[2] : 1;
    w.needed = std::regex_match(t.name, layer_matmul);
  }
  const std::string where = "--imatrix " + path + ": ";
  for (const auto& [name, e] : im.entries) {
    auto it = want.find(name);
    if (it == want.end())
      return Error::data(where + "entry " + quote_name(name) + " names no weight of " + o.input +
                         " (an importance matrix of another model?)");
    const Want& w = it->second;
    const bool counts_ok =
        im.legacy || e.counts.size() == 1 || static_cast<int64_t>(e.counts.size()) == w.n_mat;
    if (static_cast<int64_t>(e.sums.size()) != w.cols * w.n_mat || !counts_ok)
      return Error::data(where + "entry " + quote_name(name) + " has " + std::to_string(e.sums.size()) +
                         " values in " + std::to_string(e.counts.size()) + " matrices; the weight in " +
                         o.input + " has " + std::to_string(w.cols) + " columns x " +
                         std::to_string(w.n_mat) + " matrices (an importance matrix of another model?)");
  }
  for (const auto& [name, w] : want)
    if (w.needed && !im.entries.count(name))
      return Error::data(where + "no entry for " + quote_name(name) + " of " + o.input);
  std::string type = o.type;
  std::transform(type.begin(), type.end(), type.begin(), [](unsigned char c) { return std::toupper(c); });
  if (type == "F32" || type == "F16" || type == "BF16" || type == "Q8_0")
    return Error::usage("quantize: --imatrix has no use for type " + type +
                        " (an importance matrix weighs the rounding of the 4-bit and smaller types; "
                        "llama-quantize ignores it there)");
  return Error::usage("quantize: --imatrix is not yet used for type " + type +
                      ": no quantizer here weighs its rounding errors by an importance matrix yet (quantize "
                      "without --imatrix)");
}

struct State {
  ConvertOptions quantize, convert;
  std::string imatrix;
  CLI::Option* imatrix_opt = nullptr;
  CLI::App* quantize_cmd = nullptr;
  CLI::App* convert_cmd = nullptr;
};

}  // namespace

std::function<std::optional<int>()> add_convert_commands(CLI::App& app) {
  auto st = std::make_shared<State>();
  const std::string footer = "\nTYPE (case-insensitive): " + type_list() + "\n\n" + quant_policy_text();

  auto* q = app.add_subcommand("quantize", "write a GGUF file in another type or llama.cpp-style mix");
  q->add_option("input", st->quantize.input, "input GGUF file (merged or per-expert experts)")->required();
  q->add_option("output", st->quantize.output, "output GGUF file (merged *_exps experts)")->required();
  q->add_option("type", st->quantize.type, "TYPE: see below")->required();
  q->add_flag("--pure", st->quantize.pure,
              "mixes: every weight in the base type (router and norms stay F32)");
  q->add_option("-t,--threads", st->quantize.threads, "worker threads (default: all cores)");
  st->imatrix_opt = q->add_option(
      "--imatrix", st->imatrix,
      "importance matrix (`mixtral imatrix`, llama-imatrix's GGUF or .dat), checked against the "
      "input's weights; not yet used by any type's quantizer, so refused after the check");
  q->footer(footer);
  st->quantize_cmd = q;

  auto* c = app.add_subcommand("convert",
                               "Hugging Face or Mistral consolidated directory -> llama.cpp-compatible GGUF");
  c->add_option("dir", st->convert.input,
                "model directory: config.json + *.safetensors (sharded with an index) or params.json + "
                "consolidated*.safetensors, with tokenizer.model[.v3] or tokenizer.json (+ "
                "tokenizer_config.json for the chat template)")
      ->required();
  c->add_option("-o,--outfile", st->convert.output, "output GGUF file")->required();
  c->add_option("--type", st->convert.type, "TYPE (default: the source's float type: F32, F16 or BF16)");
  c->add_flag("--pure", st->convert.pure, "mixes: every weight in the base type (router and norms stay F32)");
  c->add_option("--ctx", st->convert.context_length,
                "llama.context_length to write (default: the config's max_position_embeddings, else 32768)");
  c->add_flag("--no-vocab", st->convert.no_vocab,
              "allow a directory without a tokenizer (llama.cpp needs one)");
  c->add_option("-t,--threads", st->convert.threads, "worker threads (default: all cores)");
  c->footer(footer);
  st->convert_cmd = c;

  return [st]() -> std::optional<int> {
    if (st->quantize_cmd->parsed()) {
      const auto& types = quant_type_names();
      const bool known = std::any_of(types.begin(), types.end(), [&](const std::string& t) {
        return t.size() == st->quantize.type.size() &&
               std::equal(t.begin(), t.end(), st->quantize.type.begin(),
                          [](char a, char b) { return std::toupper(a) == std::toupper(b); });
      });
      // An unknown TYPE: quantize_gguf's error names it.
      if (st->imatrix_opt->count() > 0 && known)
        if (Status s = check_imatrix(st->quantize, st->imatrix); !s) return fail(s.error());
      Status s = quantize_gguf(st->quantize);
      if (!s) return fail(s.error());
      return 0;
    }
    if (st->convert_cmd->parsed()) {
      Status s = convert_model(st->convert);
      if (!s) return fail(s.error());
      return 0;
    }
    return std::nullopt;
  };
}

}  // namespace mixtral::cli
