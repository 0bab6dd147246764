// Quantizers of every block type: sizes, round-trip error bounds, edge cases. The bit layouts themselves
// are checked against the independent NumPy dequantisers (test_quant_layouts.py) and, end to end,
// against llama.cpp (tests/model/test_fidelity.py).
#include "tensor/quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tensor/quant_iq.h"

namespace mixtral {
namespace {

std::vector<uint8_t> encode(DType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(row_bytes(t, static_cast<int64_t>(x.size())));
  quantize_row(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

std::vector<float> round_trip(DType t, const std::vector<float>& x) {
  const auto q = encode(t, x);
  std::vector<float> y(x.size());
  dequantize_row(t, q.data(), y.data(), static_cast<int64_t>(x.size()));
  return y;
}

// sqrt(mean((y - x)^2)) / sqrt(mean(x^2))
double nrmse(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0.0, s = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    e += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
    s += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(e / s);
}

TEST(Quant, BlockSizesMatchTheTraits) {
  EXPECT_EQ(traits(DType::Q4_1).block_bytes, sizeof(BlockQ4_1));
  EXPECT_EQ(traits(DType::Q5_0).block_bytes, sizeof(BlockQ5_0));
  EXPECT_EQ(traits(DType::Q5_1).block_bytes, sizeof(BlockQ5_1));
  EXPECT_EQ(traits(DType::Q2_K).block_bytes, sizeof(BlockQ2_K));
  EXPECT_EQ(traits(DType::Q3_K).block_bytes, sizeof(BlockQ3_K));
  EXPECT_EQ(traits(DType::Q4_K).block_bytes, sizeof(BlockQ4_K));
  EXPECT_EQ(traits(DType::Q5_K).block_bytes, sizeof(BlockQ5_K));
  EXPECT_EQ(traits(DType::Q6_K).block_bytes, sizeof(BlockQ6_K));
  EXPECT_EQ(traits(DType::Q8_K).block_bytes, sizeof(BlockQ8_K));
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K}) {
    EXPECT_EQ(traits(t).block_size, 256) << dtype_name(t);
    EXPECT_TRUE(traits(t).supported) << dtype_name(t);
  }
  EXPECT_FALSE(traits(DType::Q8_1).supported);
}

// Every i-quant can be written (the grid types' quantizers are checked in iq_quantize_test).
TEST(Quant, IQuantsAreQuantizable) {
  for (DType t : {DType::IQ1_S, DType::IQ1_M, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS,
                  DType::IQ3_S, DType::IQ4_NL, DType::IQ4_XS})
    EXPECT_TRUE(traits(t).quantizable) << dtype_name(t);
}

struct Bound {
  DType type;
  double gauss;    // normalised RMS error bound, gaussian data
  double uniform;  // ... uniform data in [-1, 3) (an offset that the min-carrying types use)
};

// Normalised RMS round-trip error on 64K elements. Measured on the development machine
// (gaussian / uniform [-1, 3)):
//   q8_k 0.0070 / 0.0044   q8_0 0.0054 / 0.0042   q6_k 0.0176 / 0.0145   q5_1 0.0380 / 0.0222
//   q5_k 0.0361 / 0.0206   q5_0 0.0430 / 0.0335   q4_k 0.0720 / 0.0415   q4_1 0.0785 / 0.0458
//   q4_0 0.0868 / 0.0673   q3_k 0.1488 / 0.1159   q2_k 0.2891 / 0.1721
//   iq4_nl 0.0765 / 0.0637 iq4_xs 0.0770 / 0.0642
// (For scale: a uniform quantiser of step s has RMS error s / sqrt(12); q4_0's step is max|x| / 8 of its
// block, ~0.26 sigma for 32 gaussians, 0.076 -- the types land where their bits put them.)
// Bounds: about 1.1x the measured value (the data and the quantisers are deterministic).
const Bound kBounds[] = {
    {DType::Q8_0, 0.006, 0.0047},  {DType::Q8_K, 0.0078, 0.0049}, {DType::Q6_K, 0.0195, 0.016},
    {DType::Q5_1, 0.042, 0.0245},  {DType::Q5_0, 0.048, 0.037},   {DType::Q5_K, 0.040, 0.023},
    {DType::Q4_1, 0.087, 0.051},   {DType::Q4_0, 0.096, 0.075},   {DType::Q4_K, 0.080, 0.046},
    {DType::Q3_K, 0.165, 0.128},   {DType::Q2_K, 0.32, 0.19},     {DType::IQ4_NL, 0.084, 0.070},
    {DType::IQ4_XS, 0.085, 0.071},
};

TEST(Quant, RoundTripErrorPerType) {
  constexpr int64_t kN = 65536;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-1.0f, 3.0f);
  std::vector<float> g(kN), u(kN);
  for (auto& v : g) v = nd(rng);
  for (auto& v : u) v = ud(rng);
  for (const Bound& b : kBounds) {
    const double eg = nrmse(g, round_trip(b.type, g)), eu = nrmse(u, round_trip(b.type, u));
    std::printf("%-5s nrmse gaussian %.4f uniform %.4f\n", std::string(dtype_name(b.type)).c_str(), eg, eu);
    EXPECT_LE(eg, b.gauss) << dtype_name(b.type);
    EXPECT_LE(eu, b.uniform) << dtype_name(b.type);
    EXPECT_GT(eg, b.gauss / 4) << dtype_name(b.type) << ": suspiciously exact for its bits";
  }
}

// More bits, less error: the K-quants order as their bits per weight.
TEST(Quant, KQuantErrorFallsWithBits) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(16384);
  for (auto& v : x) v = nd(rng);
  double prev = 1.0;
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K}) {
    const double e = nrmse(x, round_trip(t, x));
    EXPECT_LT(e, prev * 0.6) << dtype_name(t);
    prev = e;
  }
}

// IQ4_NL and IQ4_XS spend their 4 bits on a non-uniform grid fitted by least squares: on gaussian data they
// beat Q4_0 (same 4.5 bits as IQ4_NL; IQ4_XS has 4.25).
TEST(Quant, IQ4BeatsQ4_0OnGaussians) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(32768);
  for (auto& v : x) v = nd(rng);
  const double q4 = nrmse(x, round_trip(DType::Q4_0, x));
  for (DType t : {DType::IQ4_NL, DType::IQ4_XS}) {
    const double e = nrmse(x, round_trip(t, x));
    std::printf("%-6s nrmse %.4f, q4_0 %.4f\n", std::string(dtype_name(t)).c_str(), e, q4);
    EXPECT_LT(e, q4 * 0.95) << dtype_name(t);  // measured: 0.886 (iq4_nl), 0.893 (iq4_xs)
  }
}

// A value that is exactly a grid point times a representable scale decodes exactly: a block holding
// every IQ4 value once (twice), scaled by 2^-6, is found at that scale.
TEST(Quant, IQ4ExactOnItsGrid) {
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(iq::kIq4nlValues[(i * 7) % 16]) * 0.015625f;
  for (DType t : {DType::IQ4_NL, DType::IQ4_XS}) {
    const auto y = round_trip(t, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << dtype_name(t) << " elem " << i;
  }
}

// With importance weights the IQ4 quantizers lower the importance-weighted error (the error the weights
// say matters) against the plain quantizer, and weights that are all equal change little.
TEST(Quant, IQ4ImportanceWeightsLowerTheWeightedError) {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  constexpr int64_t kCols = 1024, kRows = 32;
  std::vector<float> qw(kCols);  // [kCols] log-normal: a few columns matter far more than the rest
  for (auto& v : qw) v = std::exp(2.0f * nd(rng));
  std::vector<float> x(kCols * kRows);  // [kRows, kCols]
  for (auto& v : x) v = nd(rng);
  for (DType t : {DType::IQ4_NL, DType::IQ4_XS}) {
    EXPECT_TRUE(uses_importance(t));
    double plain = 0.0, weighted = 0.0;
    std::vector<uint8_t> q(row_bytes(t, kCols));
    std::vector<float> y(kCols);
    for (int64_t r = 0; r < kRows; ++r) {
      const float* row = x.data() + r * kCols;
      for (const float* w : {static_cast<const float*>(nullptr), static_cast<const float*>(qw.data())}) {
        quantize_row_weighted(t, row, q.data(), kCols, w);
        dequantize_row(t, q.data(), y.data(), kCols);
        double e = 0.0;
        for (int64_t c = 0; c < kCols; ++c) e += qw[c] * (y[c] - row[c]) * (y[c] - row[c]);
        (w ? weighted : plain) += e;
      }
    }
    std::printf("%-6s importance-weighted squared error: weighted %.4g, plain %.4g (ratio %.3f)\n",
                std::string(dtype_name(t)).c_str(), weighted, plain, weighted / plain);
    EXPECT_LT(weighted, 0.85 * plain) << dtype_name(t);
  }
}

// Blocks are independent: a row of many blocks encodes each block as a row of one would.
TEST(Quant, BlocksEncodeIndependently) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const Bound& b : kBounds) {
    const int64_t bs = traits(b.type).block_size;
    std::vector<float> x(static_cast<size_t>(4 * bs));
    for (auto& v : x) v = nd(rng);
    const auto whole = encode(b.type, x);
    const std::vector<float> third(x.begin() + 2 * bs, x.begin() + 3 * bs);
    const auto one = encode(b.type, third);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), whole.begin() + 2 * traits(b.type).block_bytes))
        << dtype_name(b.type);
  }
}

// Degenerate blocks decode exactly: all zeros, and a constant (non-negative constants are exact for the
// types with a min; for the symmetric ones the extreme is a quantisation level).
TEST(Quant, ZeroAndConstantBlocks) {
  for (const Bound& b : kBounds) {
    const size_t n = static_cast<size_t>(traits(b.type).block_size) * 2;
    const auto z = round_trip(b.type, std::vector<float>(n, 0.0f));
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(z[i], 0.0f) << dtype_name(b.type) << " elem " << i;
    const auto c = round_trip(b.type, std::vector<float>(n, -0.75f));
    for (size_t i = 0; i < n; ++i)
      ASSERT_NEAR(c[i], -0.75f, 0.75f * 2e-3f) << dtype_name(b.type) << " elem " << i;
  }
}

// Extreme-value handling: a lone outlier keeps its block's error bounded and does not leak into others.
TEST(Quant, OutlierStaysInItsBlock) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const Bound& b : kBounds) {
    const int64_t bs = traits(b.type).block_size;
    std::vector<float> x(static_cast<size_t>(3 * bs));
    for (auto& v : x) v = nd(rng);
    const auto before = round_trip(b.type, x);
    x[static_cast<size_t>(bs + 5)] = 1000.0f;
    const auto after = round_trip(b.type, x);
    for (int64_t i = 0; i < bs; ++i) {
      ASSERT_EQ(before[i], after[i]) << dtype_name(b.type);
      ASSERT_EQ(before[2 * bs + i], after[2 * bs + i]) << dtype_name(b.type);
    }
    EXPECT_NEAR(after[bs + 5], 1000.0f, 1000.0f * 0.02f) << dtype_name(b.type);
  }
}

TEST(Quant, Q8KSumsAndRange) {
  std::mt19937 rng(13);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(512);
  for (auto& v : x) v = nd(rng);
  x[17] = 9.0f;     // the extreme of block 0: GGML (quantize_row_q8_K_ref) maps it to -127 whatever its sign
  x[18] = -9.0f;    // the opposite extreme: +127 (the older GGML rule, -128, clamped it from +128)
  x[300] = -12.0f;  // the extreme of block 1, negative
  std::vector<BlockQ8_K> b(2);
  quantize_row(DType::Q8_K, x.data(), b.data(), 512);
  EXPECT_EQ(b[0].qs[17], -127);
  EXPECT_EQ(b[0].qs[18], 127);
  EXPECT_FLOAT_EQ(b[0].d, -9.0f / 127.0f);
  EXPECT_EQ(b[1].qs[300 - 256], -127);
  EXPECT_FLOAT_EQ(b[1].d, 12.0f / 127.0f);
  for (const auto& blk : b)
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += blk.qs[16 * g + j];
      EXPECT_EQ(blk.bsums[g], s);
    }
}

// The 6-bit scale/min packing of Q4_K/Q5_K: sub-block j holds every level of the type's grid on
// [-(j + 1), 0], so its only exact fit is scale (j + 1) / nmax, min j + 1; stored against the largest
// (sub-block 7) as round(63 (j + 1) / 8) in every slot, including the top two bits that slots 4..7 keep
// in the bytes of slots 0..3.
TEST(Quant, KScaleMinPacking) {
  for (auto [t, nmax] : {std::pair{DType::Q4_K, 15}, std::pair{DType::Q5_K, 31}}) {
    std::vector<float> x(256);
    for (int j = 0; j < 8; ++j)
      for (int l = 0; l < 32; ++l)
        x[32 * j + l] =
            -static_cast<float>(j + 1) * static_cast<float>(l % (nmax + 1)) / static_cast<float>(nmax);
    const auto q = encode(t, x);
    const uint8_t* scales = q.data() + 4;  // after d and dmin in both layouts
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      k_scale_min(j, scales, &sc, &mn);
      const int want = static_cast<int>(std::lrint(63.0 * (j + 1) / 8.0));
      EXPECT_EQ(sc, want) << dtype_name(t) << " sub-block " << j;
      EXPECT_EQ(mn, want) << dtype_name(t) << " sub-block " << j;
    }
    // Quantising the scales and mins to 6 bits moves each value by about half of dmin = 8 / 63.
    const auto y = round_trip(t, x);
    for (int i = 0; i < 256; ++i) ASSERT_NEAR(y[i], x[i], 0.07f) << dtype_name(t) << " elem " << i;
  }
}

}  // namespace
}  // namespace mixtral
