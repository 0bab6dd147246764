#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tensor/quant.h"
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
