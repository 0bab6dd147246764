// kernels::matmul_groups and matmul_swiglu_groups (several matmuls in one parallel region, the MoE experts
// of a step): every group's output must be bit-identical to kernels::matmul / matmul_swiglu on that group
// alone and to each of its tokens alone (batch invariance), whatever the token counts (including 0), the
// thread count and the instruction set, for table types, a repacked layout and a dequantizing fallback
// type; and within rounding of ref::matmul.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// A weight matrix [rows, cols] of type t (a G8 layout: quantized as its file type, then repacked, as the
// loader does), from Gaussian values.
struct Weights {
  std::vector<uint8_t> bytes;  // [rows, row bytes]
  TensorView view;
};

Weights make_weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  const DType file = file_layout(t);
  const std::vector<float> f = randn(rows * cols, seed, 0.05f);
  Weights w;
  const size_t rb = row_bytes(file, cols);
  w.bytes.resize(rb * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) quantize_row(file, f.data() + r * cols, w.bytes.data() + r * rb, cols);
  if (file != t) repack(file, t, w.bytes.data(), w.bytes.data(), rows, cols);
  w.view.data = w.bytes.data();
  w.view.dtype = t;
  w.view.ndim = 2;
  w.view.shape = {rows, cols, 1, 1};
  return w;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    set_isa(isa);
    if (active_isa() == isa) out.push_back(isa);
  }
  set_isa(detect_isa());
  return out;
}

// max over tokens of max_r |a - b| / max_r |b|; a, b: [n, ld] with `rows` valid columns.
// Whether two float buffers hold the same bits (a 0-token group's buffers are empty: data() may be null).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

double norm_err(const float* a, const float* b, int64_t n, int64_t rows, int64_t ld) {
  double worst = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      num = std::max(num, std::fabs(static_cast<double>(a[t * ld + r]) - b[t * ld + r]));
      den = std::max(den, std::fabs(static_cast<double>(b[t * ld + r])));
    }
    worst = std::max(worst, den > 0 ? num / den : num);
  }
  return worst;
}

// Tolerance against ref::matmul (f32 activations): the types reading quantized activations differ by
// their 8-bit rounding (about 1% of the largest output on Gaussian data, as in kernels_test); the float
// ones (and the fallback, which reads the f32 rows) only by the f32 summation order.
double ref_tol(DType t) {
  switch (t) {
    case DType::F32:
    case DType::Q5_0:
      return 1e-5;
    default:
      return 3e-2;
  }
}

constexpr DType kTypes[] = {DType::F32, DType::Q8_0, DType::Q4_0, DType::Q4_0_G8, DType::Q4_K, DType::Q5_0};
constexpr int64_t kTokens[] = {0, 1, 3, 8, 17};  // per group, uneven as an MoE step's experts
constexpr int64_t kCols = 512;                   // whole Q8_K super-blocks and G8 groups

class MatmulGroupsTest : public ::testing::Test {
 protected:
  void TearDown() override { set_isa(detect_isa()); }
  ThreadPool pool1_{1};
};

TEST_F(MatmulGroupsTest, MatchPerGroupMatmulAndEachTokenAlone) {
  const int64_t rows = 72, ldy = rows + 5;  // rows not a multiple of the 16-row split; ldy > rows
  for (DType t : kTypes) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    const auto n_groups = static_cast<int64_t>(std::size(kTokens));
    std::vector<Weights> w;
    std::vector<std::vector<float>> x(n_groups), want(n_groups),
        ref(n_groups);  // [n_g, kCols], [n_g, ldy] x2
    for (int64_t g = 0; g < n_groups; ++g) {
      w.push_back(make_weights(t, rows, kCols, 100 + static_cast<uint32_t>(g)));
      const int64_t n = kTokens[g];
      x[g] = randn(n * kCols, 200 + static_cast<uint32_t>(g), 1.0f);
      ref[g].assign(static_cast<size_t>(n * ldy), 0.0f);
      ref::matmul(w[g].view, x[g].data(), n, ref[g].data(), ldy);
    }
    for (Isa isa : supported_isas()) {
      set_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t n = kTokens[g];
        want[g].assign(static_cast<size_t>(n * ldy), -1.0f);
        matmul(w[g].view, x[g].data(), n, want[g].data(), ldy, pool1_);
        for (int64_t i = 0; i < n; ++i) {  // each token alone (decode) gives the same bits
          std::vector<float> one(static_cast<size_t>(rows));
          matmul(w[g].view, x[g].data() + i * kCols, 1, one.data(), rows, pool1_);
          ASSERT_EQ(0, std::memcmp(one.data(), want[g].data() + i * ldy, one.size() * sizeof(float)))
              << "group " << g << " token " << i << ": batch != alone";
        }
        EXPECT_LE(norm_err(want[g].data(), ref[g].data(), n, rows, ldy), ref_tol(t)) << "group " << g;
      }
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        ThreadPool pool(threads);
        std::vector<PreparedInput> in(static_cast<size_t>(n_groups));
        std::vector<std::vector<float>> got(n_groups);
        std::vector<MatmulGroup> groups;
        for (int64_t g = 0; g < n_groups; ++g) {
          in[g].reset(x[g].data(), kTokens[g], kCols);
          got[g].assign(static_cast<size_t>(kTokens[g] * ldy), -1.0f);
          groups.push_back({w[g].view, &in[g], got[g].data(), ldy});
        }
        matmul_groups(groups.data(), n_groups, pool);
        for (int64_t g = 0; g < n_groups; ++g)
          EXPECT_TRUE(same_bits(got[g], want[g])) << "group " << g << " (" << kTokens[g] << " tokens)";
      }
    }
  }
}

// Two single-token groups (a decode step's two experts) and groups sharing one input (experts that take
// every token of the batch), in one call.
TEST_F(MatmulGroupsTest, SingleTokenGroupsAndSharedInputs) {
  const int64_t rows = 96;
  const Weights w0 = make_weights(DType::Q4_0_G8, rows, kCols, 1),
                w1 = make_weights(DType::Q4_0_G8, rows, kCols, 2);
  for (int64_t n : {1, 5}) {
    SCOPED_TRACE("tokens " + std::to_string(n));
    const std::vector<float> x = randn(n * kCols, 3, 1.0f);                        // [n, kCols]
    std::vector<float> want0(static_cast<size_t>(n * rows)), want1(want0.size());  // [n, rows]
    matmul(w0.view, x.data(), n, want0.data(), rows, pool1_);
    matmul(w1.view, x.data(), n, want1.data(), rows, pool1_);
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      PreparedInput in;
      in.reset(x.data(), n, kCols);
      std::vector<float> got0(want0.size(), -1.0f), got1(want0.size(), -1.0f);
      const MatmulGroup groups[] = {{w0.view, &in, got0.data(), rows}, {w1.view, &in, got1.data(), rows}};
      matmul_groups(groups, 2, pool);
      EXPECT_EQ(0, std::memcmp(got0.data(), want0.data(), want0.size() * sizeof(float))) << threads;
      EXPECT_EQ(0, std::memcmp(got1.data(), want1.data(), want1.size() * sizeof(float))) << threads;
      EXPECT_EQ(1, in.formats_made()) << "the shared input is quantized once";
    }
  }
}

TEST_F(MatmulGroupsTest, SwigluMatchesPerGroupAndReference) {
  const int64_t ffn = 88;
  for (DType t : kTypes) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    const auto n_groups = static_cast<int64_t>(std::size(kTokens));
    std::vector<Weights> w1, w3;
    std::vector<std::vector<float>> x(n_groups), want(n_groups),
        ref(n_groups);  // [n_g, kCols], [n_g, ffn] x2
    for (int64_t g = 0; g < n_groups; ++g) {
      w1.push_back(make_weights(t, ffn, kCols, 300 + static_cast<uint32_t>(g)));
      w3.push_back(make_weights(t, ffn, kCols, 400 + static_cast<uint32_t>(g)));
      const int64_t n = kTokens[g];
      x[g] = randn(n * kCols, 500 + static_cast<uint32_t>(g), 1.0f);
      ref[g].resize(static_cast<size_t>(n * ffn));
      std::vector<float> u(ref[g].size());  // [n, ffn]
      ref::matmul(w1[g].view, x[g].data(), n, ref[g].data(), ffn);
      ref::matmul(w3[g].view, x[g].data(), n, u.data(), ffn);
      ref::silu_mul(ref[g].data(), u.data(), n * ffn);
    }
    for (Isa isa : supported_isas()) {
      set_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t n = kTokens[g];
        want[g].assign(static_cast<size_t>(n * ffn), -1.0f);
        matmul_swiglu(w1[g].view, w3[g].view, x[g].data(), n, want[g].data(), pool1_);
        EXPECT_LE(norm_err(want[g].data(), ref[g].data(), n, ffn, ffn), 2 * ref_tol(t)) << "group " << g;
      }
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        ThreadPool pool(threads);
        std::vector<PreparedInput> in(static_cast<size_t>(n_groups));
        std::vector<std::vector<float>> got(n_groups);
        std::vector<SwigluGroup> groups;
        for (int64_t g = 0; g < n_groups; ++g) {
          in[g].reset(x[g].data(), kTokens[g], kCols);
          got[g].assign(static_cast<size_t>(kTokens[g] * ffn), -1.0f);
          groups.push_back({w1[g].view, w3[g].view, &in[g], got[g].data()});
        }
        matmul_swiglu_groups(groups.data(), n_groups, pool);
        for (int64_t g = 0; g < n_groups; ++g)
          EXPECT_TRUE(same_bits(got[g], want[g])) << "group " << g << " (" << kTokens[g] << " tokens)";
      }
    }
  }
}

// Regions large enough that the threads take many runs of rows as they ask (decode and small batches:
// long runs first, then shorter ones down to about 256 KiB of weights): every row is computed once, by
// whichever thread, with the same bits as one thread gives, plain matmul and grouped, SwiGLU included.
TEST_F(MatmulGroupsTest, GuidedRunsCoverEveryRowOnce) {
  const int64_t rows = 4144, cols = 512;  // 259 blocks of 16 rows, 4.6 KiB each in Q4_K: dozens of runs
  for (DType t : {DType::Q4_K_R16, DType::Q4_0_G8}) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    const Weights w0 = make_weights(t, rows, cols, 11), w1 = make_weights(t, rows, cols, 12);
    for (int64_t n : {1, 2, 5}) {
      SCOPED_TRACE("tokens " + std::to_string(n));
      const std::vector<float> x = randn(n * cols, 13, 1.0f);  // [n, cols]
      std::vector<float> want0(static_cast<size_t>(n * rows)), want1(want0.size()),
          swiglu(want0.size());  // [n, rows]
      matmul(w0.view, x.data(), n, want0.data(), rows, pool1_);
      matmul(w1.view, x.data(), n, want1.data(), rows, pool1_);
      matmul_swiglu(w0.view, w1.view, x.data(), n, swiglu.data(), pool1_);
      for (int threads : {2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        ThreadPool pool(threads);
        std::vector<float> got0(want0.size(), -1.0f), got1(want0.size(), -1.0f), got_s(want0.size(), -1.0f);
        matmul(w0.view, x.data(), n, got0.data(), rows, pool);
        EXPECT_TRUE(same_bits(got0, want0)) << "matmul";
        PreparedInput in;
        in.reset(x.data(), n, cols);
        std::fill(got0.begin(), got0.end(), -1.0f);
        const MatmulGroup groups[] = {{w0.view, &in, got0.data(), rows}, {w1.view, &in, got1.data(), rows}};
        matmul_groups(groups, 2, pool);
        EXPECT_TRUE(same_bits(got0, want0)) << "group 0";
        EXPECT_TRUE(same_bits(got1, want1)) << "group 1";
        const SwigluGroup sg[] = {{w0.view, w1.view, &in, got_s.data()}};
        matmul_swiglu_groups(sg, 1, pool);
        EXPECT_TRUE(same_bits(got_s, swiglu)) << "swiglu";
      }
    }
  }
}

}  // namespace
}  // namespace mixtral::kernels
