// The grid i-quant quantizers (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S): what they write
// decodes (by the reference decoders, themselves checked against NumPy in test_quant_layouts.py) to
// finite values near the input, the types rank by error as their bit rates do, importance weights lower
// the error they weigh, the decoded rows are not x scaled down, and each unit's grid entry is checked
// against an exhaustive search of its grid.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tensor/quant.h"
#include "tensor/quant_iq.h"

namespace mixtral {
namespace {

// In order of bits per weight.
const DType kTypes[] = {DType::IQ1_S, DType::IQ1_M,   DType::IQ2_XXS, DType::IQ2_XS,
                        DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S};

std::string name(DType t) {
  return std::string(dtype_name(t));
}

std::vector<float> gaussian(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  return x;
}

// Student's t with 3 degrees of freedom: the heavy tails of real weight rows.
std::vector<float> heavy_tailed(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::chi_squared_distribution<float> chi(3.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng) / std::sqrt(chi(rng) / 3.0f);
  return x;
}

std::vector<uint8_t> encode(DType t, const std::vector<float>& x, const float* qw = nullptr) {
  std::vector<uint8_t> q(row_bytes(t, static_cast<int64_t>(x.size())));
  quantize_row_weighted(t, x.data(), q.data(), static_cast<int64_t>(x.size()), qw);
  return q;
}

std::vector<float> decode(DType t, const std::vector<uint8_t>& q, size_t n) {
  std::vector<float> y(n);
  dequantize_row(t, q.data(), y.data(), static_cast<int64_t>(n));
  return y;
}

// sqrt(sum w (y - x)^2 / sum w x^2), w = 1 without weights.
double rel_rms(const std::vector<float>& x, const std::vector<float>& y, const float* w = nullptr) {
  double e = 0.0, s = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double wi = w ? w[i] : 1.0;
    e += wi * (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
    s += wi * static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(e / s);
}

// Relative RMS error on 8 Gaussian rows of 4096 (seeds 1..8), without importance weights.
double gaussian_error(DType t) {
  double e = 0.0;
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    const auto x = gaussian(4096, seed);
    const double r = rel_rms(x, decode(t, encode(t, x), x.size()));
    e += r * r;
  }
  return std::sqrt(e / 8.0);
}

// First use from several threads at once (this test runs first in the binary, so it builds the grids'
// tables): each thread writes what a later single-threaded call writes.
TEST(IqQuantize, FirstUseFromManyThreads) {
  const auto x = gaussian(512, 41);
  std::vector<std::vector<uint8_t>> out(2 * std::size(kTypes));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < out.size(); ++i)
    threads.emplace_back([&, i] { out[i] = encode(kTypes[i % std::size(kTypes)], x); });
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < out.size(); ++i)
    EXPECT_EQ(out[i], encode(kTypes[i % std::size(kTypes)], x)) << name(kTypes[i % std::size(kTypes)]);
}

TEST(IqQuantize, EveryGridTypeIsQuantizable) {
  for (DType t : kTypes) {
    EXPECT_TRUE(traits(t).quantizable) << name(t);
    EXPECT_TRUE(uses_importance(t)) << name(t);
  }
  for (DType t : {DType::IQ1_S, DType::IQ1_M, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS})
    EXPECT_TRUE(needs_importance(t)) << name(t);
  for (DType t : {DType::IQ3_S, DType::IQ4_NL, DType::IQ4_XS, DType::Q2_K, DType::Q4_0})
    EXPECT_FALSE(needs_importance(t)) << name(t);
}

// Measured relative RMS errors on Gaussian rows (8 x 4096, no importance weights), bounds ~8% above:
//   iq1_s 0.518  iq1_m 0.470  iq2_xxs 0.351  iq2_xs 0.304  iq2_s 0.252  iq3_xxs 0.185  iq3_s 0.132
// The groups' least-squares scales gave 0.452 0.420 0.331 0.291 0.244 0.182 0.131, and GGML's quantizers
// with unit importance weights 0.486 0.451 0.343 0.300 0.249 0.181 0.137: the unshrunk scale (NoShrinkage)
// costs RMS error and buys a smaller KL divergence in the model.
struct Bound {
  DType t;
  double max_error;
};
const Bound kBounds[] = {{DType::IQ1_S, 0.56},  {DType::IQ1_M, 0.51}, {DType::IQ2_XXS, 0.38},
                         {DType::IQ2_XS, 0.33}, {DType::IQ2_S, 0.27}, {DType::IQ3_XXS, 0.20},
                         {DType::IQ3_S, 0.143}};

TEST(IqQuantize, GaussianErrorIsBoundedAndRanksByBitRate) {
  double previous = 1.0;
  for (const Bound& b : kBounds) {
    const double e = gaussian_error(b.t);
    std::printf("%s: relative RMS error %.4f on Gaussian rows\n", name(b.t).c_str(), e);
    EXPECT_LT(e, b.max_error) << name(b.t);
    EXPECT_GT(e, 0.3 * b.max_error) << name(b.t);  // not a vacuous bound
    EXPECT_LT(e, previous) << name(b.t) << " is no better than the type below it";
    previous = e;
  }
}

// Rows of every kind decode to finite values near the input; an all-zero row or block to zeros; and a
// decoded row quantizes again to nearly itself (it is on the grid already; only the scale search can move
// it). An outlier keeps its value and spoils only its own block: its scale group has no zero level (IQ2 and
// IQ3 points are magnitudes of at least 1/5 of the largest), so its neighbours there take values near
// that smallest level times the outlier's scale.
TEST(IqQuantize, RowsOfEveryKindRoundTrip) {
  const int64_t n = 1024;
  std::vector<std::pair<std::string, std::vector<float>>> rows;
  for (uint32_t seed : {11u, 12u}) {
    rows.emplace_back("gaussian", gaussian(n, seed));
    rows.emplace_back("heavy-tailed", heavy_tailed(n, seed));
  }
  auto zeros = gaussian(n, 13);
  for (size_t i = 0; i < zeros.size(); i += 3) zeros[i] = 0.0f;         // a third of the elements zero
  std::fill(zeros.begin() + 256, zeros.begin() + 512, 0.0f);            // and a whole block
  std::fill(zeros.begin() + 512 + 32, zeros.begin() + 512 + 64, 0.0f);  // and a whole group
  rows.emplace_back("zeros", zeros);
  auto outlier = gaussian(n, 14);
  outlier[300] = 200.0f;    // block 1
  outlier[700] = -1000.0f;  // block 2
  rows.emplace_back("outlier", outlier);
  auto small = gaussian(n, 15);
  for (auto& v : small) v *= 3e-3f;  // d near fp16's smallest normal numbers
  rows.emplace_back("small", small);
  for (DType t : kTypes) {
    const double bound = std::find_if(std::begin(kBounds), std::end(kBounds), [&](const Bound& b) {
                           return b.t == t;
                         })->max_error;
    for (const auto& [kind, x] : rows) {
      const auto y = decode(t, encode(t, x), x.size());
      for (float v : y) ASSERT_TRUE(std::isfinite(v)) << name(t) << " " << kind;
      const double e = rel_rms(x, y);
      if (kind == "outlier") {
        EXPECT_NEAR(y[700], -1000.0f, 250.0f) << name(t);
        EXPECT_NEAR(y[300], 200.0f, 50.0f) << name(t);
        for (int64_t b : {0, 3}) {  // the blocks without an outlier
          const std::vector<float> xb(x.begin() + 256 * b, x.begin() + 256 * (b + 1));
          const std::vector<float> yb(y.begin() + 256 * b, y.begin() + 256 * (b + 1));
          EXPECT_LT(rel_rms(xb, yb), 1.3 * bound) << name(t) << " block " << b;
        }
      } else {
        // Heavy tails cost more: their bound doubles.
        EXPECT_LT(e, (kind == "heavy-tailed" ? 2.0 : 1.3) * bound) << name(t) << " " << kind;
      }
      if (kind == "zeros") {
        for (int64_t i = 256; i < 512; ++i) ASSERT_EQ(y[static_cast<size_t>(i)], 0.0f) << name(t) << " " << i;
      }
      const auto z = decode(t, encode(t, y), y.size());
      EXPECT_LT(rel_rms(y, z), 0.5 * e) << name(t) << " " << kind << ": re-encoding moves a decoded row";
    }
    const std::vector<float> zero(256, 0.0f);
    const auto q = encode(t, zero);
    for (uint8_t b : q) ASSERT_EQ(b, 0) << name(t) << ": an all-zero row is not all-zero bytes";
  }
}

// Importance weights concentrated on some columns: the error weighed by them is lower when the quantizer
// is given them than when it is not, and so is the error of those columns alone.
TEST(IqQuantize, ImportanceWeightsLowerTheWeightedError) {
  const int64_t n = 4096;
  const auto x = gaussian(n, 21);
  std::vector<float> qw(static_cast<size_t>(n), 0.05f);
  std::mt19937 rng(22);
  for (auto& v : qw)
    if (rng() % 8 == 0) v = 20.0f;
  for (DType t : kTypes) {
    const auto plain = decode(t, encode(t, x), x.size());
    const auto weighted = decode(t, encode(t, x, qw.data()), x.size());
    const double e_plain = rel_rms(x, plain, qw.data()), e_weighted = rel_rms(x, weighted, qw.data());
    EXPECT_LT(e_weighted, 0.85 * e_plain) << name(t);
  }
}

// sum(w y x) / sum(w x^2), w = 1 without weights: how far the decoded row y is x scaled down.
double shrinkage(const std::vector<float>& x, const std::vector<float>& y, const float* w = nullptr) {
  double yx = 0.0, xx = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double wi = w ? w[i] : 1.0;
    yx += wi * static_cast<double>(y[i]) * x[i];
    xx += wi * static_cast<double>(x[i]) * x[i];
  }
  return yx / xx;
}

// Each group is stored at the scale that leaves its error orthogonal to x (not to the decoded values, as
// the least-squares scale does): the decoded row is not x shrunk. Measured sum(w y x) / sum(w x^2) on 8
// Gaussian rows of 4096, min .. max over rows, without importance weights (w = 1) / with them:
//   iq1_s 1.020 .. 1.034 / 0.999 .. 1.018   iq1_m 1.005 .. 1.023 / 0.997 .. 1.007
//   iq2_xxs 0.998 .. 1.006 / 0.998 .. 1.007   iq2_xs 0.998 .. 1.003 / 0.999 .. 1.008
//   iq2_s 1.002 .. 1.007 / 0.995 .. 1.007   iq3_xxs 0.998 .. 1.003 / 0.999 .. 1.004
//   iq3_s 0.997 .. 1.003 / 0.998 .. 1.005
// The least-squares scale gave, without weights, iq1_s 0.848 .. 0.857, iq2_xxs 0.907 .. 0.918, iq2_xs
// 0.931 .. 0.937, iq3_xxs 0.972 .. 0.978, iq3_s 0.984 .. 0.990 (and the mixes on the built-in model a KL
// divergence from F16 1.3-1.9x this scale's): the bounds below catch every one of them.
TEST(IqQuantize, NoShrinkage) {
  std::vector<float> qw(4096, 0.05f);
  std::mt19937 rng(23);
  for (auto& v : qw)
    if (rng() % 8 == 0) v = 20.0f;
  for (DType t : kTypes) {
    for (uint32_t seed = 1; seed <= 8; ++seed) {
      const auto x = gaussian(4096, seed);
      const double plain = shrinkage(x, decode(t, encode(t, x), x.size()));
      EXPECT_GT(plain, 0.99) << name(t) << " seed " << seed;
      EXPECT_LT(plain, 1.045) << name(t) << " seed " << seed;
      const double weighted = shrinkage(x, decode(t, encode(t, x, qw.data()), x.size()), qw.data());
      EXPECT_GT(weighted, 0.99) << name(t) << " seed " << seed << " weighted";
      EXPECT_LT(weighted, 1.03) << name(t) << " seed " << seed << " weighted";
    }
  }
}

// Sets the grid index of unit k (8 elements; IQ3: 4) in one block.
void set_index(DType t, uint8_t* block, int k, int index) {
  switch (t) {
    case DType::IQ2_XXS: {  // byte k % 4 of the index word of group k / 4
      auto* b = reinterpret_cast<BlockIQ2_XXS*>(block);
      uint8_t bytes[4];
      std::memcpy(bytes, &b->qs[4 * (k / 4)], 4);
      bytes[k % 4] = static_cast<uint8_t>(index);
      std::memcpy(&b->qs[4 * (k / 4)], bytes, 4);
      return;
    }
    case DType::IQ2_XS: {
      auto* b = reinterpret_cast<BlockIQ2_XS*>(block);
      b->qs[k] = static_cast<uint16_t>((b->qs[k] & ~511u) | static_cast<unsigned>(index));
      return;
    }
    case DType::IQ2_S: {
      auto* b = reinterpret_cast<BlockIQ2_S*>(block);
      b->qs[k] = static_cast<uint8_t>(index);
      const int sh = 2 * (k % 4);
      b->qh[k / 4] = static_cast<uint8_t>((b->qh[k / 4] & ~(3u << sh)) | (index >> 8) << sh);
      return;
    }
    case DType::IQ3_XXS:
      reinterpret_cast<BlockIQ3_XXS*>(block)->qs[k] = static_cast<uint8_t>(index);
      return;
    case DType::IQ3_S: {
      auto* b = reinterpret_cast<BlockIQ3_S*>(block);
      b->qs[k] = static_cast<uint8_t>(index);
      b->qh[k / 8] = static_cast<uint8_t>((b->qh[k / 8] & ~(1u << (k % 8))) | (index >> 8) << (k % 8));
      return;
    }
    case DType::IQ1_S: {
      auto* b = reinterpret_cast<BlockIQ1_S*>(block);
      b->qs[k] = static_cast<uint8_t>(index);
      const int sh = 3 * (k % 4);
      b->qh[k / 4] = static_cast<uint16_t>((b->qh[k / 4] & ~(7u << sh)) | (index >> 8) << sh);
      return;
    }
    default: {
      auto* b = reinterpret_cast<BlockIQ1_M*>(block);
      b->qs[k] = static_cast<uint8_t>(index);
      const int sh = 4 * (k % 2);
      b->qh[k / 2] = static_cast<uint8_t>((b->qh[k / 2] & ~(7u << sh)) | (index >> 8) << sh);
      return;
    }
  }
}

// Each unit's entry against every entry of the grid (found by rewriting the unit's index bits and
// decoding), at the signs and delta the block stores and at the scale the entries were chosen at: the
// group's decoded values scaled by their weighted least-squares fit to x, r = sum(w y x) / sum(w y^2) (the
// quantizer chooses entries at the least-squares scale and stores the group stretched by 1 / r, see
// NoShrinkage). The error weights without qw are sqrt(sigma2 + x^2), sigma2 twice the block's mean
// square. Where rounding each element to its nearest level gives a grid entry the quantizer's choice is
// the best one; elsewhere it is the best of a short list of the entries nearest that rounded vector, so it
// can miss, and r as the test recovers it is that of the final entries, not quite the scale the quantizer
// projected at. Measured on these blocks (units at the exhaustive best, total error above the exhaustive
// total): iq1_s 63/64 0.004%, iq2_s 62/64 0.9%, iq3_xxs 124/128 0.9%, iq3_s 125/128 0.4%, every unit of
// iq1_m, iq2_xxs and iq2_xs.
TEST(IqQuantize, ChosenEntriesAgainstAnExhaustiveSearch) {
  for (DType t : kTypes) {
    const int dim = t == DType::IQ3_XXS || t == DType::IQ3_S ? 4 : 8;
    const int group = t == DType::IQ2_XS || t == DType::IQ2_S || t == DType::IQ1_M ? 16 : 32;
    int units = 0, best_units = 0;
    double chosen_total = 0.0, best_total = 0.0;
    for (uint32_t seed : {31u, 32u}) {
      const auto x = gaussian(256, seed);
      double sigma2 = 0.0;
      for (float v : x) sigma2 += static_cast<double>(v) * v;
      sigma2 *= 2.0 / 256.0;
      std::vector<double> w(256);
      for (size_t i = 0; i < 256; ++i) w[i] = std::sqrt(sigma2 + static_cast<double>(x[i]) * x[i]);
      auto q = encode(t, x);
      const auto y = decode(t, q, 256);
      std::vector<double> r(256 / group);  // [groups] least-squares factor of the decoded group
      for (int g = 0; g < 256 / group; ++g) {
        double yx = 0.0, yy = 0.0;
        for (int j = group * g; j < group * (g + 1); ++j) {
          yx += w[j] * y[j] * x[j];
          yy += w[j] * y[j] * y[j];
        }
        r[g] = yy > 0.0 ? yx / yy : 1.0;
      }
      auto unit_error = [&](const std::vector<float>& v, int k) {
        double e = 0.0;
        for (int j = dim * k; j < dim * (k + 1); ++j) {
          const double d = r[j / group] * v[j] - x[j];
          e += w[j] * d * d;
        }
        return e;
      };
      for (int k = 0; k < 256 / dim; ++k) {
        const double chosen = unit_error(y, k);
        double best = chosen;
        auto trial = q;
        for (int index = 0; index < iq::grid_entries(t); ++index) {
          set_index(t, trial.data(), k, index);
          best = std::min(best, unit_error(decode(t, trial, 256), k));
        }
        ++units;
        best_units += chosen <= best * (1.0 + 1e-6);
        chosen_total += chosen;
        best_total += best;
      }
    }
    EXPECT_GE(static_cast<double>(best_units) / units, 0.95) << name(t);
    EXPECT_LE(chosen_total, 1.02 * best_total) << name(t);
    std::printf("%s: %d of %d units at the exhaustive best, total error %.4f vs %.4f\n", name(t).c_str(),
                best_units, units, chosen_total, best_total);
  }
}

}  // namespace
}  // namespace mixtral
