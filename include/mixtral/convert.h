// Public: writing llama.cpp-compatible GGUF files.
//   quantize_gguf: GGUF (merged or per-expert experts, any type we load) -> GGUF in another type or mix
//   convert_model: Hugging Face or Mistral consolidated directory -> GGUF (q/k rows permuted to GGUF's
//                  interleaved RoPE order where the source holds them in rotate-half order)
// Both stream: weights are read from memory maps and written row by row into a mapped output, so the
// resident set stays small whatever the model size; rows are (de)quantised on a thread pool.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mixtral/result.h"

namespace mixtral {

struct ConvertOptions {
  std::string input;      // quantize: a GGUF file; convert: a model directory
  std::string output;     // the GGUF file to write (through OUTPUT.tmp, renamed when complete)
  std::string type;       // a name from quant_type_names(); empty (convert only): the source's float type
  bool pure = false;      // mixes: every weight in the mix's base type (router and norms still F32)
  bool no_vocab = false;  // convert: write no tokenizer when the directory has none
  int64_t context_length = 0;  // convert: llama.context_length (0: the config's, else 32768)
  int threads = 0;             // 0: all cores
  bool progress = true;        // a progress bar when stderr is a terminal
  // quantize: an importance matrix file (`mixtral imatrix`, llama.cpp's GGUF or .dat imatrix; empty: none),
  // matched to the tensors by name: the K-quant and i-quant tensors weigh their rounding errors by it; the
  // TYPEs llama.cpp refuses without one are refused (exit 2).
  std::string imatrix;
  // Notes for the user (fallback types, requantisation, defaults taken); default: stderr lines.
  std::function<void(const std::string&)> note;
};

// Every accepted TYPE name, upper case (matching is case-insensitive).
const std::vector<std::string>& quant_type_names();
// The per-tensor type policy of every TYPE, as text for --help and the docs.
std::string quant_policy_text();

Status quantize_gguf(const ConvertOptions& opts);
Status convert_model(const ConvertOptions& opts);

}  // namespace mixtral
