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

// llama.cpp-style mixes (its llama_ftype of the same name); kNone: one type everywhere.
enum class Mix {
  kNone,
  kQ2_K,
  kQ3_K_S,
  kQ3_K_M,
  kQ3_K_L,
  kQ4_K_S,
  kQ4_K_M,
  kQ5_K_S,
  kQ5_K_M,
  kIQ4_NL,
  kIQ4_XS,
  kIQ1_S,
  kIQ1_M,
  kIQ2_XXS,
  kIQ2_XS,
  kIQ2_S,
  kIQ2_M,
  kIQ3_XXS,
  kIQ3_XS,
  kIQ3_S,
  kIQ3_M
};

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

// What the policy decides by besides the tensor: TYPE, --pure, and whether an importance matrix is given
// (llama.cpp's IQ3_XXS, IQ4_NL and IQ4_XS mixes choose some tensors' types by that).
struct PolicyInput {
  Target target;
  bool pure = false;
  bool imatrix = false;
};

// The type the policy asks for (before the row-length fallback). `layer` is the block index (-1 for
// token_embd/output); a tied token_embd is passed as kOutput (it serves as the output matrix too).
// Rows of token_embd and output are c.dim long.
DType policy_type(const PolicyInput& in, const ModelConfig& c, Role role, int64_t layer);

// The type a tensor with rows of `cols` elements is written in when want's block size does not divide
// cols: llama.cpp's one fallback (the 256-block i-quants and iq4_xs -> iq4_nl, q2_k/q3_k -> q4_0,
// q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0), or f16 when that does not divide cols either (or want
// has no fallback). Returns `want` when its block size divides cols.
DType row_fallback(DType want, int64_t cols);
// Whether quantize_row/dequantize_row handle t in this build.
bool can_write(DType t);
// Whether a tensor of this role written in t makes quantize refuse to run without an importance matrix
// (llama.cpp's tensor_requires_imatrix: the types of needs_importance, except in token_embd and output).
bool requires_imatrix(Role role, DType t);

}  // namespace mixtral::convert
