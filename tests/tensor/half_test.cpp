// fp16/bf16 conversions against the CPU's own conversion instructions (F16C), the independent
// reference: every half value up, and a sweep of floats (edges, subnormals, ties) down.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "tensor/quant.h"

namespace mixtral {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Half, EveryHalfConvertsUpExactly) {
  if (!__builtin_cpu_supports("f16c")) GTEST_FAIL() << "this test needs F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = _cvtsh_ss(static_cast<unsigned short>(h));
    const float got = fp16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(bits(got), bits(want)) << "half 0x" << std::hex << h;
    }
  }
}

TEST(Half, FloatsConvertDownWithRoundToNearestEven) {
  std::mt19937 rng(7);
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.0f, 65520.0f, 1e10f, -1e10f, 6.1e-5f, 5.96e-8f,
                           2.98e-8f, 2.99e-8f, 1e-9f, std::numeric_limits<float>::infinity()};
  for (int i = 0; i < 200000; ++i) xs.push_back(from_bits(rng()));  // every exponent, NaNs included
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // exact ties between neighbouring halves
    const float a = _cvtsh_ss(static_cast<unsigned short>(h)), b = _cvtsh_ss(static_cast<unsigned short>(h + 1));
    xs.push_back(0.5f * (a + b));
  }
  for (float x : xs) {
    const uint16_t want = _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
    const uint16_t got = f32_to_fp16(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(fp16_to_f32(got)));
    } else {
      ASSERT_EQ(got, want) << "x=" << x << " bits 0x" << std::hex << bits(x);
    }
  }
}

TEST(BFloat16, RoundsToNearestEvenAndKeepsNan) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is a tie between bf16 1.0 and 1.0078125: even mantissa wins (1.0).
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);  // tie, rounds up to even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const float x = from_bits(rng() & 0xbfffffffu);  // finite
    if (!std::isfinite(x) || std::fabs(x) < std::numeric_limits<float>::min()) continue;  // normal numbers
    const float y = bf16_to_f32(f32_to_bf16(x));
    if (std::isinf(y)) continue;
    ASSERT_LE(std::fabs(y - x), std::fabs(x) * (1.0f / 256.0f)) << x;  // half an ulp of an 8-bit mantissa
  }
}

}  // namespace
}  // namespace mixtral
