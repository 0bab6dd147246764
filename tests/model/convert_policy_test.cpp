// The per-tensor type policy of `mixtral quantize`/`convert` (docs/formats.md) on Mixtral 8x7B's and
// Mistral 7B's shapes, the TYPE names and the row-length fallback.
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

TEST(ConvertPolicy, TypeNamesAnyCaseAndUnknown) {
  EXPECT_EQ(target("q4_k_m").name, "Q4_K_M");
  EXPECT_EQ(target("Q4_k_M").file_type, 15u);
  EXPECT_EQ(target("bf16").file_type, 32u);
  EXPECT_EQ(target("Q8_0").base, DType::Q8_0);
  auto bad = parse_target("Q4_K_X");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().exit_code(), 2);
  EXPECT_NE(bad.error().message.find("'Q4_K_X'"), std::string::npos);
  EXPECT_EQ(quant_type_names().size(), 22u);
  EXPECT_EQ(target("iq4_xs").file_type, 30u);
  EXPECT_EQ(target("IQ4_NL").file_type, 25u);
}

TEST(ConvertPolicy, RouterAndNormsAlwaysF32) {
  for (const auto& name : quant_type_names()) {
    const Target t = target(name.c_str());
    for (bool pure : {false, true}) {
      EXPECT_EQ(policy_type(t, pure, mixtral_8x7b(), Role::kRouter, 3), DType::F32) << name;
      EXPECT_EQ(policy_type(t, pure, mixtral_8x7b(), Role::kNorm, 3), DType::F32) << name;
    }
  }
}

TEST(ConvertPolicy, PlainTypesEverywhere) {
  for (const char* name : {"F16", "Q4_0", "Q5_1", "Q8_0", "Q3_K", "Q6_K"}) {
    const Target t = target(name);
    for (Role r : {Role::kTokenEmbd, Role::kOutput, Role::kAttnV, Role::kAttnK, Role::kFfnDown, Role::kFfnUp})
      EXPECT_EQ(policy_type(t, false, mixtral_8x7b(), r, 0), t.base) << name;
  }
}

TEST(ConvertPolicy, Q4KMOnMixtral) {
  const Target t = target("Q4_K_M");
  const ModelConfig c = mixtral_8x7b();
  EXPECT_EQ(policy_type(t, false, c, Role::kOutput, -1), DType::Q6_K);
  EXPECT_EQ(policy_type(t, false, c, Role::kTokenEmbd, -1), DType::Q4_K);
  EXPECT_EQ(policy_type(t, false, c, Role::kAttnQ, 5), DType::Q4_K);
  EXPECT_EQ(policy_type(t, false, c, Role::kAttnK, 5), DType::Q8_0);
  EXPECT_EQ(policy_type(t, false, c, Role::kAttnV, 5), DType::Q8_0);
  EXPECT_EQ(policy_type(t, false, c, Role::kAttnOutput, 5), DType::Q5_K);
  EXPECT_EQ(policy_type(t, false, c, Role::kFfnGate, 5), DType::Q4_K);
  // ffn_down: q6_k in layers 0-3, 28-31 and 4 + 3k + 2 (6, 9, ..., 27).
  for (int64_t l = 0; l < 32; ++l) {
    const bool more = l < 4 || l >= 28 || (l - 4) % 3 == 2;
    EXPECT_EQ(policy_type(t, false, c, Role::kFfnDown, l), more ? DType::Q6_K : DType::Q4_K) << l;
  }
  EXPECT_EQ(policy_type(t, true, c, Role::kFfnDown, 0), DType::Q4_K);  // --pure
  EXPECT_EQ(policy_type(t, true, c, Role::kOutput, -1), DType::Q4_K);
}

// llama.cpp's IQ4_XS and IQ4_NL mixes (llama_tensor_get_type); ffn_down's q5_k in the first n/8 layers
// without an imatrix is quantize_gguf's, not the policy's.
TEST(ConvertPolicy, IQ4MixesOnMixtralAndMistral) {
  for (const char* name : {"IQ4_XS", "IQ4_NL"}) {
    const Target t = target(name);
    const ModelConfig moe = mixtral_8x7b(), dense = mistral_7b();
    EXPECT_EQ(policy_type(t, false, moe, Role::kOutput, -1), DType::Q6_K) << name;
    EXPECT_EQ(policy_type(t, false, moe, Role::kTokenEmbd, -1), t.base) << name;
    EXPECT_EQ(policy_type(t, false, moe, Role::kAttnK, 5), DType::Q8_0) << name;
    EXPECT_EQ(policy_type(t, false, moe, Role::kAttnV, 5), DType::Q8_0) << name;
    EXPECT_EQ(policy_type(t, false, moe, Role::kAttnOutput, 5), DType::Q5_K) << name;
    EXPECT_EQ(policy_type(t, false, moe, Role::kFfnDown, 5), t.base) << name;
    EXPECT_EQ(policy_type(t, false, dense, Role::kAttnV, 5), DType::Q5_K) << name;  // 32 heads, 8 kv heads
    EXPECT_EQ(policy_type(t, false, dense, Role::kAttnOutput, 5), t.base) << name;
    EXPECT_EQ(policy_type(t, true, moe, Role::kAttnOutput, 5), t.base) << name;
  }
}

TEST(ConvertPolicy, DenseAttnV) {
  const ModelConfig c = mistral_7b();
  EXPECT_EQ(policy_type(target("Q4_K_M"), false, c, Role::kAttnV, 0), DType::Q6_K);
  EXPECT_EQ(policy_type(target("Q4_K_M"), false, c, Role::kAttnV, 4), DType::Q4_K);
  EXPECT_EQ(policy_type(target("Q4_K_M"), false, c, Role::kAttnK, 4), DType::Q4_K);
  EXPECT_EQ(policy_type(target("Q2_K"), false, c, Role::kAttnV, 4), DType::Q4_K);  // 32 heads over 8 kv
  EXPECT_EQ(policy_type(target("Q3_K_M"), false, c, Role::kAttnV, 1), DType::Q5_K);
  EXPECT_EQ(policy_type(target("Q3_K_M"), false, c, Role::kAttnV, 2), DType::Q4_K);
  EXPECT_EQ(policy_type(target("Q3_K_M"), false, c, Role::kAttnOutput, 2), DType::Q4_K);
  EXPECT_EQ(policy_type(target("Q3_K_M"), false, c, Role::kFfnDown, 1), DType::Q5_K);  // < 32/16
  EXPECT_EQ(policy_type(target("Q3_K_M"), false, c, Role::kFfnDown, 2), DType::Q4_K);
}

TEST(ConvertPolicy, RowFallback) {
  EXPECT_EQ(row_fallback(DType::Q4_K, 4096), DType::Q4_K);
  EXPECT_EQ(row_fallback(DType::Q4_K, 4096 + 32), DType::Q5_0);
  EXPECT_EQ(row_fallback(DType::Q5_K, 96), DType::Q5_1);
  EXPECT_EQ(row_fallback(DType::Q6_K, 96), DType::Q8_0);
  EXPECT_EQ(row_fallback(DType::Q6_K, 48), DType::F16);
  EXPECT_EQ(row_fallback(DType::Q8_0, 48), DType::F16);
  EXPECT_EQ(row_fallback(DType::F32, 7), DType::F32);
  EXPECT_EQ(row_fallback(DType::IQ4_XS, 288), DType::IQ4_NL);
  EXPECT_EQ(row_fallback(DType::IQ4_XS, 48), DType::F16);
}

}  // namespace
}  // namespace mixtral::convert
