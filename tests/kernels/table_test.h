// Test-only: what the per-family kernel tests (iq_grid_kernels_test, iq4_kernels_test) share: a fixture
// that runs each test on one kernel table (skipped where the CPU or build lacks it), Gaussian inputs, and
// the error norm they bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/internal.h"
#include "kernels/kernels.h"

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
};

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

}  // namespace mixtral::kernels::test
