// Test-only: what the per-family kernel tests (iq_grid_kernels_test, iq4_kernels_test) share: a fixture
// that runs each test on one kernel table (skipped where the CPU or build lacks it), Gaussian inputs, and
// the error norm they bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels::test {

inline const detail::KernelTable* table_of(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return &detail::generic_table();
    case Isa::kAvx2:
      return detail::avx2_table();
    case Isa::kAvx512:
      return detail::avx512_table();
  }
  return nullptr;
}

inline std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// max over tokens of (max_r |a - b| / max_r scale); a, b, scale: [n, ld], `rows` valid columns.
inline double norm_err(const float* a, const float* b, const float* scale, int64_t n, int64_t rows,
                       int64_t ld) {
  double worst = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      num = std::max(num, std::fabs(static_cast<double>(a[t * ld + r]) - b[t * ld + r]));
      den = std::max(den, std::fabs(static_cast<double>(scale[t * ld + r])));
    }
    worst = std::max(worst, den > 0 ? num / den : num);
  }
  return worst;
}

// Runs each test with GetParam()'s table active.
class TableTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    const Isa isa = GetParam();
    if (static_cast<int>(isa) > static_cast<int>(detect_isa()) || table_of(isa) == nullptr)
      GTEST_SKIP() << "this CPU (or build) has no " << isa_name(isa) << ": its kernels are not run";
    set_isa(isa);
    if (active_isa() != isa || table_of(isa) != &detail::active_table())
      detail::set_table_for_testing(isa, table_of(isa));
  }
  void TearDown() override { set_isa(detect_isa()); }

  // w (values deq: [rows, cols]) times n Gaussian tokens (the first block all zero), against float64 over
  // the activations rounded to `act` (within tol_f64 of sum |w x|) and ref::matmul (2e-2); the same bits at
  // 1 and 2 threads and for each token alone; nothing written past the rows.
  void check_matmul(const TensorView& w, const std::vector<double>& deq, DType act, int64_t rows,
                    int64_t cols, int64_t n, double tol_f64) {
    std::vector<float> x = randn(n * cols, static_cast<uint32_t>(n + 17));  // [n, cols]
    std::fill(x.begin(), x.begin() + traits(act).block_size, 0.0f);         // an all-zero block: d = 0
    const int64_t ldy = rows + 1;
    std::vector<float> xr(x.size());  // [n, cols] x through `act` and back: the kernels' dot inputs
    std::vector<uint8_t> xb(static_cast<size_t>(cols / traits(act).block_size * traits(act).block_bytes));
    for (int64_t tk = 0; tk < n; ++tk) {
      quantize_row(act, x.data() + tk * cols, xb.data(), cols);
      dequantize_row(act, xb.data(), xr.data() + tk * cols, cols);
    }
    std::vector<float> y64(static_cast<size_t>(n * ldy), 0.0f), mag(y64.size(), 0.0f);  // [n, ldy]
    for (int64_t tk = 0; tk < n; ++tk)
      for (int64_t r = 0; r < rows; ++r) {
        double sum = 0.0, m = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          sum += deq[r * cols + c] * static_cast<double>(xr[tk * cols + c]);
          m += std::fabs(deq[r * cols + c] * static_cast<double>(x[tk * cols + c]));
        }
        y64[tk * ldy + r] = static_cast<float>(sum);
        mag[tk * ldy + r] = static_cast<float>(m);
      }
    std::vector<float> ref(y64.size(), 0.0f);  // [n, ldy]
    ref::matmul(w, x.data(), n, ref.data(), ldy);

    std::vector<float> y1(y64.size(), -7.0f), y2(y1);  // [n, ldy]
    matmul(w, x.data(), n, y1.data(), ldy, pool1_);
    matmul(w, x.data(), n, y2.data(), ldy, pool2_);
    EXPECT_LE(norm_err(y1.data(), y64.data(), mag.data(), n, rows, ldy), tol_f64)
        << "vs float64 with the rounded activations";
    EXPECT_LE(norm_err(y1.data(), ref.data(), mag.data(), n, rows, ldy), 2e-2) << "vs ref::matmul";
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << "1 vs 2 threads differ";
    for (int64_t tk = 0; tk < n; ++tk) ASSERT_EQ(y1[tk * ldy + rows], -7.0f) << "wrote past rows";
    if (n > 1) {
      std::vector<float> one(static_cast<size_t>(rows));  // [rows]
      for (int64_t tk = 0; tk < n; ++tk) {
        matmul(w, x.data() + tk * cols, 1, one.data(), rows, pool1_);
        ASSERT_EQ(0, std::memcmp(one.data(), y1.data() + tk * ldy, one.size() * sizeof(float)))
            << "token " << tk << " alone differs from the same token in a batch of " << n;
      }
    }
  }

  ThreadPool pool1_{1};
  ThreadPool pool2_{2};
};

}  // namespace mixtral::kernels::test
