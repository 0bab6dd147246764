#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tensor/quant.h"
#include "tensor/quant_iq.h"
#include "tensor/tensor.h"

namespace mixtral {
namespace {

TEST(DType, GgmlIdsAndSizes) {
  EXPECT_EQ(row_bytes(DType::Q8_0, 4096), 4096u / 32 * 34);
  EXPECT_EQ(row_bytes(DType::Q4_0, 4096), 4096u / 32 * 18);
  EXPECT_EQ(row_bytes(DType::BF16, 10), 20u);
  EXPECT_EQ(dtype_from_name("Q4_0"), DType::Q4_0);
  EXPECT_FALSE(dtype_from_name("q9_9").has_value());
  EXPECT_FALSE(dtype_traits(99).has_value());
  EXPECT_EQ(dtype_traits(12)->name, "q4_k");
}

// GGML's i-quant types: ids, names and block sizes as GGML defines them (block bytes = the fields of the
// published structs: fp16 d, index, sign, high-bit and scale bytes), each the size of our block struct.
TEST(DType, IQuantIdsNamesAndSizes) {
  struct T {
    uint32_t id;
    const char* name;
    int64_t block;
    size_t bytes, struct_bytes;
    double bpw;
  };
  const T types[] = {
      {16, "iq2_xxs", 256, 2 + 256 / 8 * 2, sizeof(BlockIQ2_XXS), 2.0625},
      {17, "iq2_xs", 256, 2 + 256 / 8 * 2 + 256 / 32, sizeof(BlockIQ2_XS), 2.3125},
      {18, "iq3_xxs", 256, 2 + 3 * 256 / 8, sizeof(BlockIQ3_XXS), 3.0625},
      {19, "iq1_s", 256, 2 + 256 / 8 + 256 / 16, sizeof(BlockIQ1_S), 1.5625},
      {20, "iq4_nl", 32, 2 + 16, sizeof(BlockIQ4_NL), 4.5},
      {21, "iq3_s", 256, 2 + 13 * 256 / 32 + 256 / 64, sizeof(BlockIQ3_S), 3.4375},
      {22, "iq2_s", 256, 2 + 256 / 4 + 256 / 16, sizeof(BlockIQ2_S), 2.5625},
      {23, "iq4_xs", 256, 2 + 2 + 256 / 64 + 256 / 2, sizeof(BlockIQ4_XS), 4.25},
      {29, "iq1_m", 256, 256 / 8 + 256 / 16 + 256 / 32, sizeof(BlockIQ1_M), 1.75},
  };
  for (const T& t : types) {
    const auto tr = dtype_traits(t.id);
    ASSERT_TRUE(tr.has_value()) << t.name;
    EXPECT_EQ(tr->name, t.name);
    EXPECT_EQ(tr->block_size, t.block) << t.name;
    EXPECT_EQ(tr->block_bytes, t.bytes) << t.name;
    EXPECT_EQ(t.struct_bytes, t.bytes) << t.name;
    EXPECT_TRUE(tr->supported) << t.name;
    EXPECT_TRUE(tr->quantizable) << t.name;  // every i-quant has a quantizer
    std::string upper(t.name);
    for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_EQ(dtype_from_name(upper), static_cast<DType>(t.id)) << t.name;
    EXPECT_EQ(bits_per_weight(static_cast<DType>(t.id)), t.bpw) << t.name;
    EXPECT_EQ(row_bytes(static_cast<DType>(t.id), 4096), static_cast<size_t>(4096 / t.block) * t.bytes);
  }
  EXPECT_EQ(bits_per_weight(DType::Q4_0), 4.5);
  EXPECT_EQ(bits_per_weight(DType::Q6_K), 6.5625);
  EXPECT_EQ(bits_per_weight(DType::F32), 32.0);
  EXPECT_TRUE(traits(DType::Q4_K).quantizable);
  // The ids between IQ4_XS and IQ1_M are GGML's integer and f64 types (I8, I16, I32, I64, F64), which no
  // model weight uses: they stay unknown.
  for (uint32_t id : {24u, 25u, 26u, 27u, 28u}) EXPECT_FALSE(dtype_traits(id).has_value()) << id;
}

// The repacked Q4_0 is internal: same bytes per row as Q4_0, but no file type id or name reaches it.
TEST(DType, InternalQ4_0G8IsNoFileType) {
  EXPECT_TRUE(is_internal(DType::Q4_0_G8));
  EXPECT_FALSE(is_internal(DType::Q4_0));
  EXPECT_EQ(row_bytes(DType::Q4_0_G8, 4096), row_bytes(DType::Q4_0, 4096));
  EXPECT_EQ(dtype_name(DType::Q4_0_G8), "q4_0_g8");
  EXPECT_FALSE(dtype_traits(static_cast<uint32_t>(DType::Q4_0_G8)).has_value());
  EXPECT_FALSE(dtype_from_name("q4_0_g8").has_value());
  EXPECT_TRUE(is_internal(DType::Q8_0_G8));
  EXPECT_EQ(row_bytes(DType::Q8_0_G8, 4096), row_bytes(DType::Q8_0, 4096));
  EXPECT_FALSE(dtype_traits(static_cast<uint32_t>(DType::Q8_0_G8)).has_value());
  EXPECT_FALSE(dtype_from_name("q8_0_g8").has_value());
}

// The same for Q8_0: values in the activations' grouped order (kernels/internal.h), decoding to the
// Q8_0 row's values exactly, in place or not, and back.
TEST(Quant, Q8_0G8RepackKeepsEveryValue) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist;
  const int64_t n = 768, groups = n / 256;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  std::vector<BlockQ8_0> q8(n / kQK8_0);
  quantize_row(DType::Q8_0, x.data(), q8.data(), n);
  std::vector<BlockQ8_0G8> g8(groups);
  repack(DType::Q8_0, DType::Q8_0_G8, q8.data(), g8.data(), 1, n);
  for (int64_t g = 0; g < groups; ++g)
    for (int j = 0; j < 8; ++j) {
      const BlockQ8_0& b = q8[g * 8 + j];
      ASSERT_EQ(g8[g].d[j], b.d);
      for (int e = 0; e < 32; ++e) {  // value e = 16h + 4k + i sits in vector 2k + h at byte 4j + i
        const int h = e / 16, k = (e % 16) / 4, i = e % 4;
        ASSERT_EQ(g8[g].qs[32 * (2 * k + h) + 4 * j + i], b.qs[e]) << "block " << j << " value " << e;
      }
    }
  std::vector<float> a(n), b(n);
  dequantize_row(DType::Q8_0, q8.data(), a.data(), n);
  dequantize_row(DType::Q8_0_G8, g8.data(), b.data(), n);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float)));
  std::vector<BlockQ8_0> in_place(q8);
  repack(DType::Q8_0, DType::Q8_0_G8, in_place.data(), in_place.data(), 1, n);
  EXPECT_EQ(0, std::memcmp(in_place.data(), g8.data(), sizeof(BlockQ8_0G8) * groups));
  repack(DType::Q8_0_G8, DType::Q8_0, in_place.data(), in_place.data(), 1, n);
  EXPECT_EQ(0, std::memcmp(in_place.data(), q8.data(), sizeof(BlockQ8_0) * q8.size()));
  std::vector<BlockQ8_0G8> direct(groups);
  quantize_row(DType::Q8_0_G8, x.data(), direct.data(), n);
  EXPECT_EQ(0, std::memcmp(direct.data(), g8.data(), sizeof(BlockQ8_0G8) * groups));
}

// Repacking moves bytes, never values: the repacked row decodes to the Q4_0 row's values exactly, the
// layout is the documented one, in place or not, and unpacking restores the original bytes.
TEST(Quant, Q4_0G8RepackKeepsEveryValue) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  const int64_t n = 1024, groups = n / kQKG8;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  std::vector<BlockQ4_0> q4(n / kQK4_0);
  quantize_row(DType::Q4_0, x.data(), q4.data(), n);
  std::vector<BlockQ4_0G8> g8(groups);
  repack_q4_0_g8(q4.data(), g8.data(), groups);
  for (int64_t g = 0; g < groups; ++g)
    for (int j = 0; j < 8; ++j) {
      const BlockQ4_0& b = q4[g * 8 + j];
      ASSERT_EQ(g8[g].d[j], b.d);
      for (int m = 0; m < 16; ++m) ASSERT_EQ(g8[g].qs[32 * (m / 4) + 4 * j + m % 4], b.qs[m]);
    }
  std::vector<float> a(n), b(n);
  dequantize_row(DType::Q4_0, q4.data(), a.data(), n);
  dequantize_row(DType::Q4_0_G8, g8.data(), b.data(), n);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float)));
  std::vector<BlockQ4_0> in_place(q4);
  repack_q4_0_g8(in_place.data(), reinterpret_cast<BlockQ4_0G8*>(in_place.data()), groups);
  EXPECT_EQ(0, std::memcmp(in_place.data(), g8.data(), sizeof(BlockQ4_0G8) * groups));
  unpack_q4_0_g8(reinterpret_cast<const BlockQ4_0G8*>(in_place.data()), in_place.data(), groups);
  EXPECT_EQ(0, std::memcmp(in_place.data(), q4.data(), sizeof(BlockQ4_0) * q4.size()));
  std::vector<BlockQ4_0G8> direct(groups);
  quantize_row(DType::Q4_0_G8, x.data(), direct.data(), n);
  EXPECT_EQ(0, std::memcmp(direct.data(), g8.data(), sizeof(BlockQ4_0G8) * groups));
}

// Q8_0 and Q4_0 round trips keep every element within half a quantisation step of its block,
// plus the error of storing the step itself as fp16 (relative 2^-11, times the largest |q|).
TEST(Quant, RoundTripErrorWithinHalfAStep) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(4096), y(4096);
  for (auto& v : x) v = nd(rng);
  x[5] = 0.0f;
  for (int i = 64; i < 96; ++i) x[i] = 0.0f;  // an all-zero block
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::vector<uint8_t> q(row_bytes(t, 4096));
    quantize_row(t, x.data(), q.data(), 4096);
    dequantize_row(t, q.data(), y.data(), 4096);
    for (int b = 0; b < 4096 / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
      const float step = t == DType::Q8_0 ? amax / 127.0f : amax / 8.0f;
      const float qmax = t == DType::Q8_0 ? 127.0f : 8.0f;
      // Q4_0 maps the block's signed extreme to -8 and clamps at +7: a value of the opposite sign
      // near amax is off by up to a whole step; everything else by half a step.
      const float half_steps = t == DType::Q8_0 ? 0.5f : 1.0f;
      const float bound = (half_steps + qmax / 2048.0f) * step * 1.001f + 1e-7f;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), bound)
            << dtype_name(t) << " block " << b << " elem " << j;
    }
  }
}

TEST(Tensor, SliceOfAnExpertTensor) {
  std::vector<float> data(3 * 4 * 8);
  TensorView t{data.data(), DType::F32, 3, {3, 4, 8, 1}};
  TensorView e = t.slice(2);
  EXPECT_EQ(e.ndim, 2);
  EXPECT_EQ(e.rows(), 4);
  EXPECT_EQ(e.cols(), 8);
  EXPECT_EQ(e.data, data.data() + 2 * 32);
  EXPECT_EQ(shape_string(t), "[3, 4, 8]");
}

}  // namespace
}  // namespace mixtral
