// `mixtral quantize` and `mixtral convert`: thin wrappers over include/mixtral/convert.h.
#include "convert_cmds.h"

#include <memory>
#include <string>

#include "cli_util.h"
#include "mixtral/convert.h"

namespace mixtral::cli {
namespace {

std::string type_list() {
  std::string s;
  for (const auto& n : quant_type_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
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
      "importance matrix (`mixtral imatrix`, llama-imatrix's GGUF or .dat), matched to the tensors by name: "
      "the K-quant and i-quant tensors weigh their rounding errors by it; IQ1_*, IQ2_*, IQ3_XXS and IQ3_XS "
      "need one (types that weigh nothing by it refuse it)");
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
      if (st->imatrix_opt->count() > 0) {
        if (st->imatrix.empty()) return fail(Error::usage("quantize: --imatrix: an empty file name"));
        st->quantize.imatrix = st->imatrix;
      }
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
