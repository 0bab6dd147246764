// The per-tensor type policy of `mixtral quantize`/`convert` (docs/formats.md) on Mixtral 8x7B's and
// Mistral 7B's shapes, the TYPE names and the row-length fallback. The expectations are llama.cpp's
// (src/llama-quant.cpp of the llama.cpp node-llama-cpp bundles: llama_ftype_get_default_type,
// llama_tensor_get_type_impl, tensor_type_fallback, tensor_requires_imatrix), read from its source; each
// check names the rule it is.
#include <gtest/gtest.h>

#include "convert/convert.h"

namespace mixtral::convert {
namespace {

ModelConfig mixtral_8x7b() {
  ModelConfig c;
  c.dim = 4096;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.ffn_dim = 14336;
  c.vocab_size = 32000;
  c.n_experts = 8;
  c.n_experts_used = 2;
  return c;
}

ModelConfig mistral_7b() {
  ModelConfig c = mixtral_8x7b();
  c.n_experts = c.n_experts_used = 1;
  return c;
}

Target target(const char* name) {
  auto t = parse_target(name);
  EXPECT_TRUE(t.ok()) << name;
  return *t;
}

// The type of a tensor of `role` in block `layer` under TYPE `name` (an importance matrix given unless
// imatrix is false).
DType type_of(const char* name, const ModelConfig& c, Role role, int64_t layer, bool pure = false,
              bool imatrix = true) {
  return policy_type(PolicyInput{target(name), pure, imatrix}, c, role, layer);
}

// llama.cpp's use_more_bits(i, n) for n = 32: layers 0-3, 28-31 and 4 + 3k + 2 (6, 9, ..., 27).
bool more_bits_32(int64_t l) {
  return l < 4 || l >= 28 || (l - 4) % 3 == 2;
}

TEST(ConvertPolicy, TypeNamesAnyCaseAndUnknown) {
  EXPECT_EQ(target("q4_k_m").name, "Q4_K_M");
  EXPECT_EQ(target("Q4_k_M").file_type, 15u);
  EXPECT_EQ(target("bf16").file_type, 32u);
  EXPECT_EQ(target("Q8_0").base, DType::Q8_0);
  auto bad = parse_target("Q4_K_X");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().exit_code(), 2);
  EXPECT_NE(bad.error().message.find("'Q4_K_X'"), std::string::npos);
  EXPECT_EQ(quant_type_names().size(), 32u);
  EXPECT_EQ(target("iq4_xs").file_type, 30u);
  EXPECT_EQ(target("IQ4_NL").file_type, 25u);
}

// llama.h's llama_ftype numbers and llama_ftype_get_default_type's base types of the i-quant mixes.
TEST(ConvertPolicy, IQuantFileTypesAndBases) {
  struct Want {
    const char* name;
    uint32_t file_type;
    DType base;
  };
  for (const Want& w :
       {Want{"IQ2_XXS", 19, DType::IQ2_XXS}, Want{"IQ2_XS", 20, DType::IQ2_XS},
        Want{"IQ3_XS", 22, DType::IQ3_S}, Want{"IQ3_XXS", 23, DType::IQ3_XXS},
        Want{"IQ1_S", 24, DType::IQ1_S}, Want{"IQ3_S", 26, DType::IQ3_S}, Want{"IQ3_M", 27, DType::IQ3_S},
        Want{"IQ2_S", 28, DType::IQ2_XS}, Want{"IQ2_M", 29, DType::IQ2_S}, Want{"IQ1_M", 31, DType::IQ1_M}}) {
    const Target t = target(w.name);
    EXPECT_EQ(t.name, w.name);
    EXPECT_EQ(t.file_type, w.file_type) << w.name;
    EXPECT_EQ(t.base, w.base) << w.name;
    // --pure: the base type everywhere, output and token_embd too (llama_tensor_get_type skips the mix).
    for (Role r : {Role::kTokenEmbd, Role::kOutput, Role::kAttnV, Role::kAttnK, Role::kFfnDown})
      EXPECT_EQ(type_of(w.name, mixtral_8x7b(), r, 0, true), w.base) << w.name;
  }
}

TEST(ConvertPolicy, RouterAndNormsAlwaysF32) {
  for (const auto& name : quant_type_names()) {
    for (bool pure : {false, true})
      for (bool imatrix : {false, true}) {
        EXPECT_EQ(type_of(name.c_str(), mixtral_8x7b(), Role::kRouter, 3, pure, imatrix), DType::F32) << name;
        EXPECT_EQ(type_of(name.c_str(), mixtral_8x7b(), Role::kNorm, 3, pure, imatrix), DType::F32) << name;
      }
  }
}

TEST(ConvertPolicy, PlainTypesEverywhere) {
  for (const char* name : {"F16", "Q4_0", "Q5_1", "Q8_0", "Q3_K", "Q6_K"}) {
    const Target t = target(name);
    for (Role r : {Role::kTokenEmbd, Role::kOutput, Role::kAttnV, Role::kAttnK, Role::kFfnDown, Role::kFfnUp})
      EXPECT_EQ(type_of(name, mixtral_8x7b(), r, 0), t.base) << name;
  }
}

TEST(ConvertPolicy, Q4KMOnMixtral) {
  const ModelConfig c = mixtral_8x7b();
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kOutput, -1), DType::Q6_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kTokenEmbd, -1), DType::Q4_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnQ, 5), DType::Q4_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnK, 5), DType::Q8_0);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnV, 5), DType::Q8_0);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnOutput, 5), DType::Q5_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kFfnGate, 5), DType::Q4_K);
  for (int64_t l = 0; l < 32; ++l)
    EXPECT_EQ(type_of("Q4_K_M", c, Role::kFfnDown, l), more_bits_32(l) ? DType::Q6_K : DType::Q4_K) << l;
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kFfnDown, 0, true), DType::Q4_K);  // --pure
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kOutput, -1, true), DType::Q4_K);
}

// llama.cpp's IQ4_XS and IQ4_NL mixes (llama_tensor_get_type_impl).
TEST(ConvertPolicy, IQ4MixesOnMixtralAndMistral) {
  for (const char* name : {"IQ4_XS", "IQ4_NL"}) {
    const DType base = target(name).base;
    const ModelConfig moe = mixtral_8x7b(), dense = mistral_7b();
    EXPECT_EQ(type_of(name, moe, Role::kOutput, -1), DType::Q6_K) << name;
    EXPECT_EQ(type_of(name, moe, Role::kTokenEmbd, -1), base) << name;
    EXPECT_EQ(type_of(name, moe, Role::kAttnK, 5), DType::Q8_0) << name;
    EXPECT_EQ(type_of(name, moe, Role::kAttnV, 5), DType::Q8_0) << name;
    EXPECT_EQ(type_of(name, moe, Role::kAttnOutput, 5), DType::Q5_K) << name;
    EXPECT_EQ(type_of(name, moe, Role::kFfnDown, 5), base) << name;
    EXPECT_EQ(type_of(name, dense, Role::kAttnV, 5), DType::Q5_K) << name;  // 32 heads, 8 kv heads
    EXPECT_EQ(type_of(name, dense, Role::kAttnOutput, 5), base) << name;
    EXPECT_EQ(type_of(name, moe, Role::kAttnOutput, 5, true), base) << name;
    // ffn_down "i_layer < n_layer/8 && (IQ4_NL || IQ4_XS) && !has_imatrix": q5_k.
    for (int64_t l = 0; l < 32; ++l) {
      EXPECT_EQ(type_of(name, moe, Role::kFfnDown, l, false, false), l < 4 ? DType::Q5_K : base) << name << l;
      EXPECT_EQ(type_of(name, moe, Role::kFfnDown, l, false, true), base) << name << l;
    }
  }
}

TEST(ConvertPolicy, DenseAttnV) {
  const ModelConfig c = mistral_7b();
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnV, 0), DType::Q6_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnV, 4), DType::Q4_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnK, 4), DType::Q4_K);
  EXPECT_EQ(type_of("Q2_K", c, Role::kAttnV, 4), DType::Q4_K);  // 32 heads over 8 kv
  EXPECT_EQ(type_of("Q3_K_M", c, Role::kAttnV, 1), DType::Q5_K);
  EXPECT_EQ(type_of("Q3_K_M", c, Role::kAttnV, 2), DType::Q4_K);
  EXPECT_EQ(type_of("Q3_K_M", c, Role::kAttnOutput, 2), DType::Q4_K);
  EXPECT_EQ(type_of("Q3_K_M", c, Role::kFfnDown, 1), DType::Q5_K);  // < 32/16
  EXPECT_EQ(type_of("Q3_K_M", c, Role::kFfnDown, 2), DType::Q4_K);
}

// The MoE bumps are llama.cpp's `n_expert == 8`: a 4-expert model takes the dense rules for attn_k,
// attn_v and attn_output.
TEST(ConvertPolicy, MoEBumpsNeedEightExperts) {
  ModelConfig c = mixtral_8x7b();
  c.n_experts = 4;
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnK, 5), DType::Q4_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnV, 5), DType::Q4_K);
  EXPECT_EQ(type_of("Q4_K_M", c, Role::kAttnOutput, 5), DType::Q4_K);
  EXPECT_EQ(type_of("Q2_K", c, Role::kAttnOutput, 5), DType::Q3_K);
  EXPECT_EQ(type_of("Q3_K_S", c, Role::kAttnOutput, 5), DType::Q3_K);
}

// ---------------------------------------------------------------------------------------------
// The i-quant mixes on Mixtral 8x7B (32 layers, 8 experts, 32 heads over 8 kv heads: n_gqa() = 4), each
// role against llama_tensor_get_type_impl, with an importance matrix (as they are made). Layers: n/8 = 4,
// 7n/8 = 28.

// The 1- and 2-bit mixes: llama.cpp's branch "IQ2_XXS || IQ2_XS || IQ1_S || IQ2_S || IQ2_M || IQ1_M".
TEST(ConvertPolicy, LowBitMixesOnMixtral) {
  struct Want {
    const char* name;
    DType base;
    DType bump;  // the branch's second choice: iq3_s for IQ2_S/IQ2_M, else q2_k
  };
  const ModelConfig c = mixtral_8x7b();
  for (const Want& w :
       {Want{"IQ2_XXS", DType::IQ2_XXS, DType::Q2_K}, Want{"IQ2_XS", DType::IQ2_XS, DType::Q2_K},
        Want{"IQ2_S", DType::IQ2_XS, DType::IQ3_S}, Want{"IQ2_M", DType::IQ2_S, DType::IQ3_S},
        Want{"IQ1_S", DType::IQ1_S, DType::Q2_K}, Want{"IQ1_M", DType::IQ1_M, DType::Q2_K}}) {
    const char* n = w.name;
    // OUTPUT: "IQ2_XXS || IQ2_XS || IQ3_XXS || IQ1_S || IQ2_S || IQ2_M || IQ1_M" -> q5_k.
    EXPECT_EQ(type_of(n, c, Role::kOutput, -1), DType::Q5_K) << n;
    // TOKEN_EMBD: IQ2_XXS, IQ2_XS, IQ1_S, IQ1_M -> q2_k; IQ2_S, IQ2_M -> iq3_s.
    EXPECT_EQ(type_of(n, c, Role::kTokenEmbd, -1), w.bump) << n;
    for (int64_t l = 0; l < 32; ++l) {
      // attn_v: "n_gqa() >= 4 || n_expert >= 4" -> q4_k (no Q8_0 bump in this branch).
      EXPECT_EQ(type_of(n, c, Role::kAttnV, l), DType::Q4_K) << n << l;
      // ATTENTION_K: "n_expert == 8" -> q4_k.
      EXPECT_EQ(type_of(n, c, Role::kAttnK, l), DType::Q4_K) << n << l;
      // FFN_DOWN: "i_ffn_down < n_ffn_down/8" -> iq3_s (IQ2_S, IQ2_M) or q2_k.
      EXPECT_EQ(type_of(n, c, Role::kFfnDown, l), l < 4 ? w.bump : w.base) << n << l;
      // ATTENTION_OUTPUT: "n_expert == 8" -> q5_k.
      EXPECT_EQ(type_of(n, c, Role::kAttnOutput, l), DType::Q5_K) << n << l;
      // No rule for attn_q, ffn_gate, ffn_up in this branch: the base type.
      for (Role r : {Role::kAttnQ, Role::kFfnGate, Role::kFfnUp})
        EXPECT_EQ(type_of(n, c, r, l), w.base) << n << l;
    }
  }
}

TEST(ConvertPolicy, LowBitMixesDense) {
  const ModelConfig gqa = mistral_7b();  // n_gqa() = 4, 1 expert
  ModelConfig mha = mistral_7b();        // n_gqa() = 1
  mha.n_kv_heads = mha.n_heads;
  ModelConfig four = mha;  // n_gqa() = 1, 4 experts
  four.n_experts = 4;
  for (const char* n : {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ2_S", "IQ2_M"}) {
    const DType base = target(n).base;
    const bool s_m = std::string(n) == "IQ2_S" || std::string(n) == "IQ2_M";
    const bool iq1 = std::string(n).starts_with("IQ1");
    // attn_v: q4_k when n_gqa() >= 4 or n_expert >= 4, else iq3_s (IQ2_S, IQ2_M) or q2_k.
    EXPECT_EQ(type_of(n, gqa, Role::kAttnV, 3), DType::Q4_K) << n;
    EXPECT_EQ(type_of(n, four, Role::kAttnV, 3), DType::Q4_K) << n;
    EXPECT_EQ(type_of(n, mha, Role::kAttnV, 3), s_m ? DType::IQ3_S : DType::Q2_K) << n;
    // attn_k: the Q4_K bump is for n_expert == 8 only.
    EXPECT_EQ(type_of(n, gqa, Role::kAttnK, 3), base) << n;
    EXPECT_EQ(type_of(n, four, Role::kAttnK, 3), base) << n;
    // attn_output without 8 experts: IQ1_S/IQ1_M -> iq2_xxs, IQ2_S/IQ2_M -> iq3_s, else the base.
    const DType out = iq1 ? DType::IQ2_XXS : s_m ? DType::IQ3_S : base;
    EXPECT_EQ(type_of(n, gqa, Role::kAttnOutput, 3), out) << n;
    EXPECT_EQ(type_of(n, four, Role::kAttnOutput, 3), out) << n;
  }
}

TEST(ConvertPolicy, IQ3XXSOnMixtral) {
  const ModelConfig c = mixtral_8x7b();
  EXPECT_EQ(type_of("IQ3_XXS", c, Role::kOutput, -1), DType::Q5_K);      // OUTPUT: IQ3_XXS in the q5_k list
  EXPECT_EQ(type_of("IQ3_XXS", c, Role::kTokenEmbd, -1), DType::IQ3_S);  // TOKEN_EMBD: IQ3_XXS -> iq3_s
  for (int64_t l = 0; l < 32; ++l) {
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kAttnQ, l), DType::IQ2_S);  // ATTENTION_Q: IQ3_XXS -> iq2_s
    // attn_v / attn_k: "n_expert == 8" -> q8_0 (after the n_gqa() rule).
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kAttnV, l), DType::Q8_0);
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kAttnK, l), DType::Q8_0);
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kAttnOutput, l), DType::Q5_K);  // n_expert == 8 list
    // FFN_DOWN: "IQ3_XXS && !has_imatrix" -> q4_k in layers < n/8, else q3_k; with one: the base.
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kFfnDown, l), DType::IQ3_XXS);
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kFfnDown, l, false, false), l < 4 ? DType::Q4_K : DType::Q3_K);
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kFfnGate, l), DType::IQ3_XXS);
    EXPECT_EQ(type_of("IQ3_XXS", c, Role::kFfnUp, l), DType::IQ3_XXS);
  }
}

TEST(ConvertPolicy, IQ3XXSDense) {
  const ModelConfig gqa = mistral_7b();
  ModelConfig mha = mistral_7b();
  mha.n_kv_heads = mha.n_heads;
  EXPECT_EQ(type_of("IQ3_XXS", gqa, Role::kAttnK, 3), DType::IQ2_S);                // ATTENTION_K: -> iq2_s
  EXPECT_EQ(type_of("IQ3_XXS", gqa, Role::kAttnV, 3), DType::Q4_K);                 // n_gqa() >= 4
  EXPECT_EQ(type_of("IQ3_XXS", mha, Role::kAttnV, 3), DType::IQ3_XXS);              // has_imatrix
  EXPECT_EQ(type_of("IQ3_XXS", mha, Role::kAttnV, 3, false, false), DType::IQ3_S);  // !has_imatrix
  EXPECT_EQ(type_of("IQ3_XXS", gqa, Role::kAttnOutput, 3), DType::IQ3_S);           // dense: IQ3_XXS -> iq3_s
}

TEST(ConvertPolicy, IQ3XSAndIQ3SOnMixtral) {
  const ModelConfig c = mixtral_8x7b();
  for (const char* n : {"IQ3_XS", "IQ3_S"}) {
    const bool xs = std::string(n) == "IQ3_XS";
    EXPECT_EQ(type_of(n, c, Role::kOutput, -1), DType::Q6_K) << n;      // OUTPUT: not in the q5_k list
    EXPECT_EQ(type_of(n, c, Role::kTokenEmbd, -1), DType::IQ3_S) << n;  // no TOKEN_EMBD rule: the base
    for (int64_t l = 0; l < 32; ++l) {
      // ATTENTION_Q: IQ3_XS -> iq3_xxs.
      EXPECT_EQ(type_of(n, c, Role::kAttnQ, l), xs ? DType::IQ3_XXS : DType::IQ3_S) << n << l;
      EXPECT_EQ(type_of(n, c, Role::kAttnK, l), DType::Q8_0) << n << l;       // n_expert == 8 -> q8_0
      EXPECT_EQ(type_of(n, c, Role::kAttnV, l), DType::Q8_0) << n << l;       // n_expert == 8 -> q8_0
      EXPECT_EQ(type_of(n, c, Role::kAttnOutput, l), DType::Q5_K) << n << l;  // n_expert == 8 list
      EXPECT_EQ(type_of(n, c, Role::kFfnDown, l), DType::IQ3_S) << n << l;
      // FFN_GATE / FFN_UP: IQ3_XS in layers [n/8, 7n/8) -> iq3_xxs.
      const DType gu = xs && l >= 4 && l < 28 ? DType::IQ3_XXS : DType::IQ3_S;
      EXPECT_EQ(type_of(n, c, Role::kFfnGate, l), gu) << n << l;
      EXPECT_EQ(type_of(n, c, Role::kFfnUp, l), gu) << n << l;
    }
  }
  const ModelConfig gqa = mistral_7b();
  ModelConfig mha = mistral_7b();
  mha.n_kv_heads = mha.n_heads;
  EXPECT_EQ(type_of("IQ3_XS", gqa, Role::kAttnK, 3), DType::IQ3_XXS);  // ATTENTION_K: IQ3_XS -> iq3_xxs
  EXPECT_EQ(type_of("IQ3_S", gqa, Role::kAttnK, 3), DType::IQ3_S);
  for (const char* n : {"IQ3_XS", "IQ3_S"}) {
    EXPECT_EQ(type_of(n, gqa, Role::kAttnV, 3), DType::Q4_K) << n;  // "(IQ3_XS || IQ3_S) && n_gqa() >= 4"
    EXPECT_EQ(type_of(n, mha, Role::kAttnV, 3), DType::IQ3_S) << n;
    EXPECT_EQ(type_of(n, gqa, Role::kAttnOutput, 3), DType::IQ3_S) << n;  // no dense rule
  }
}

TEST(ConvertPolicy, IQ3MOnMixtralAndMistral) {
  const ModelConfig c = mixtral_8x7b();
  EXPECT_EQ(type_of("IQ3_M", c, Role::kOutput, -1), DType::Q6_K);
  EXPECT_EQ(type_of("IQ3_M", c, Role::kTokenEmbd, -1), DType::IQ3_S);
  for (int64_t l = 0; l < 32; ++l) {
    EXPECT_EQ(type_of("IQ3_M", c, Role::kAttnQ, l), DType::IQ3_S) << l;
    EXPECT_EQ(type_of("IQ3_M", c, Role::kAttnK, l), DType::Q8_0) << l;
    EXPECT_EQ(type_of("IQ3_M", c, Role::kAttnV, l), DType::Q8_0) << l;  // q4_k, then n_expert == 8 -> q8_0
    EXPECT_EQ(type_of("IQ3_M", c, Role::kAttnOutput, l), DType::Q5_K) << l;
    // FFN_DOWN: "IQ3_M && (i_layer < n_layer/8 || (n_expert == 8 && use_more_bits))" -> q4_k.
    EXPECT_EQ(type_of("IQ3_M", c, Role::kFfnDown, l), more_bits_32(l) ? DType::Q4_K : DType::IQ3_S) << l;
    EXPECT_EQ(type_of("IQ3_M", c, Role::kFfnGate, l), DType::IQ3_S) << l;
  }
  const ModelConfig d = mistral_7b();
  EXPECT_EQ(type_of("IQ3_M", d, Role::kAttnV, 9), DType::Q4_K);       // attn_v: IQ3_M -> q4_k
  EXPECT_EQ(type_of("IQ3_M", d, Role::kAttnOutput, 9), DType::Q4_K);  // dense: IQ3_M -> q4_k
  EXPECT_EQ(type_of("IQ3_M", d, Role::kFfnDown, 3), DType::Q4_K);     // layer < n/8
  EXPECT_EQ(type_of("IQ3_M", d, Role::kFfnDown, 9), DType::IQ3_S);    // more-bits, but not 8 experts
}

// OUTPUT: "nx % qk_k != 0" (rows of the base type's blocks) -> q8_0, before the mix's choice; a tied
// token_embd is the output (kOutput).
TEST(ConvertPolicy, OutputRowsNotWholeBlocks) {
  ModelConfig c = mixtral_8x7b();
  c.dim = 4096 + 32;
  for (const char* n : {"IQ2_XS", "IQ3_XXS", "IQ3_M", "Q4_K_M", "IQ4_XS"})
    EXPECT_EQ(type_of(n, c, Role::kOutput, -1), DType::Q8_0) << n;
  EXPECT_EQ(type_of("IQ4_NL", c, Role::kOutput, -1), DType::Q6_K);  // 32-blocks fit; q6_k's fallback q8_0
  EXPECT_EQ(row_fallback(DType::Q6_K, c.dim), DType::Q8_0);
}

// tensor_requires_imatrix: iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, except token_embd and output.
TEST(ConvertPolicy, WhichTensorsRequireAnImatrix) {
  for (DType t : {DType::IQ1_S, DType::IQ1_M, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS}) {
    EXPECT_TRUE(requires_imatrix(Role::kFfnUp, t)) << dtype_name(t);
    EXPECT_TRUE(requires_imatrix(Role::kAttnQ, t)) << dtype_name(t);
    EXPECT_FALSE(requires_imatrix(Role::kTokenEmbd, t)) << dtype_name(t);
    EXPECT_FALSE(requires_imatrix(Role::kOutput, t)) << dtype_name(t);
  }
  for (DType t :
       {DType::IQ3_S, DType::IQ4_XS, DType::IQ4_NL, DType::Q2_K, DType::Q4_K, DType::Q8_0, DType::F16})
    EXPECT_FALSE(requires_imatrix(Role::kFfnDown, t)) << dtype_name(t);
  // So, on Mixtral 8x7B without --imatrix, these TYPEs are refused and the others are not.
  const ModelConfig c = mixtral_8x7b();
  for (const auto& name : quant_type_names()) {
    bool needs = false;
    for (Role r : {Role::kTokenEmbd, Role::kOutput, Role::kAttnQ, Role::kAttnK, Role::kAttnV,
                   Role::kAttnOutput, Role::kFfnGate, Role::kFfnUp, Role::kFfnDown})
      for (int64_t l = 0; l < 32; ++l)
        needs |= requires_imatrix(r, row_fallback(type_of(name.c_str(), c, r, l, false, false), 4096));
    const bool want = name == "IQ1_S" || name == "IQ1_M" || name == "IQ2_XXS" || name == "IQ2_XS" ||
                      name == "IQ2_S" || name == "IQ2_M" || name == "IQ3_XXS" || name == "IQ3_XS";
    EXPECT_EQ(needs, want) << name;
  }
}

// tensor_type_fallback: one step, then f16 when that does not fit either.
TEST(ConvertPolicy, RowFallback) {
  EXPECT_EQ(row_fallback(DType::Q4_K, 4096), DType::Q4_K);
  EXPECT_EQ(row_fallback(DType::Q4_K, 4096 + 32), DType::Q5_0);
  EXPECT_EQ(row_fallback(DType::Q5_K, 96), DType::Q5_1);
  EXPECT_EQ(row_fallback(DType::Q6_K, 96), DType::Q8_0);
  EXPECT_EQ(row_fallback(DType::Q6_K, 48), DType::F16);
  EXPECT_EQ(row_fallback(DType::Q8_0, 48), DType::F16);
  EXPECT_EQ(row_fallback(DType::F32, 7), DType::F32);
  EXPECT_EQ(row_fallback(DType::Q2_K, 288), DType::Q4_0);  // Q2_K, Q3_K -> q4_0
  EXPECT_EQ(row_fallback(DType::Q3_K, 288), DType::Q4_0);
  for (DType t : {DType::IQ1_S, DType::IQ1_M, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS,
                  DType::IQ3_S, DType::IQ4_XS}) {
    EXPECT_EQ(row_fallback(t, 14336), t) << dtype_name(t);
    EXPECT_EQ(row_fallback(t, 288), DType::IQ4_NL) << dtype_name(t);  // the 256-block i-quants -> iq4_nl
    EXPECT_EQ(row_fallback(t, 48), DType::F16) << dtype_name(t);
  }
  EXPECT_EQ(row_fallback(DType::IQ4_NL, 48), DType::F16);
}

}  // namespace
}  // namespace mixtral::convert
