// Writes one random Mixtral in every layout users have: Hugging Face directories (single and
// sharded safetensors), Mistral consolidated directories and GGUF files (merged and legacy
// per-expert experts). All layouts hold the same weights (q/k rows permuted where the layout
// demands it), generated element by element from the seed so files of any size stream to disk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "tensor/dtype.h"

namespace mixtral {

struct TestModelSpec {
  ModelConfig config;  // rope_layout is ignored: each layout uses its own
  uint64_t seed = 1;
  std::vector<DType> types;  // weight types; HF/consolidated get the float ones among them
  // Any of "hf", "hf-sharded", "consolidated", "gguf-merged", "gguf-legacy".
  std::vector<std::string> layouts;
  std::string out_dir;
  // "v1": <unk> <s> </s>, bytes, pieces (GGUF only). "v3": Mistral's v3 control pieces at ids 3..9 ([INST],
  // [/INST], [TOOL_CALLS], [AVAILABLE_TOOLS], [/AVAILABLE_TOOLS], [TOOL_RESULTS], [/TOOL_RESULTS]) before
  // the bytes, in the GGUF metadata and as a SentencePiece tokenizer.model (HF) / tokenizer.model.v3
  // (consolidated) beside the weights.
  std::string vocab_format = "v1";
  bool progress = false;  // progress lines on stderr
};

// Files written, relative to out_dir, for type T (e.g. "f32", "q8_0"):
//   hf-T/{config.json, model.safetensors}                       (T in f32, f16, bf16)
//   hf-T-sharded/{config.json, model-0000K-of-0000N.safetensors, model.safetensors.index.json}
//   consolidated-T/{params.json, consolidated.safetensors}      (T in f32, f16, bf16)
//   gguf-merged-T.gguf, gguf-legacy-T.gguf                      (every T)
// and, for vocab_format "v3", hf-T*/tokenizer.model and consolidated-T/tokenizer.model.v3.
Status make_test_model(const TestModelSpec& spec, ThreadPool& pool);

}  // namespace mixtral
