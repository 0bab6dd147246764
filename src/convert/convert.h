// GGUF writing for `mixtral quantize` and `mixtral convert` (public entry points in
// include/mixtral/convert.h). This layer sits above model (it reads through load_model and the
// tokenizer's readers) and below engine/apps. Internals exposed here for tests: the type targets and
// the per-tensor type policy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/result.h"
#include "mixtral/config.h"
#include "mixtral/convert.h"
#include "tensor/dtype.h"

namespace mixtral::convert {

// llama.cpp-style mixes; kNone: one type everywhere.
enum class Mix { kNone, kQ2_K, kQ3_K_S, kQ3_K_M, kQ3_K_L, kQ4_K_S, kQ4_K_M, kQ5_K_S, kQ5_K_M };

struct Target {
  std::string name;         // upper case, as the user may spell it in any case
  DType base = DType::F32;  // the type of every weight the mix does not single out
  uint32_t file_type = 0;   // general.file_type (llama.cpp's llama_ftype numbering)
  Mix mix = Mix::kNone;
};

// The TYPE argument: a usage error naming it (and listing the accepted names) when unknown.
Result<Target> parse_target(std::string_view name);

// What a tensor is, for the policy.
enum class Role {
  kTokenEmbd,
  kOutput,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnOutput,
  kFfnGate,
  kFfnUp,
  kFfnDown,
  kNorm,
  kRouter
};

// The type the policy asks for (before the row-length fallback). `layer` is the block index (-1 for
// token_embd/output); a tied token_embd is passed as kOutput (it serves as the output matrix too).
DType policy_type(const Target& t, bool pure, const ModelConfig& c, Role role, int64_t layer);

// The type a tensor with rows of `cols` elements is written in when `want` cannot hold them (its
// block size does not divide cols) or this build cannot write it: the first of the fallback chain that
// can (K types: q5_0/q5_1/q8_0 as llama.cpp, then q8_0, then f16). Returns `want` when it can.
DType row_fallback(DType want, int64_t cols);
// Whether quantize_row/dequantize_row handle t in this build.
bool can_write(DType t);

}  // namespace mixtral::convert
