// The IQ4_NL and IQ4_XS matmul kernels (x86/iq4.inc and the scalar table's) on each kernel table selected
// explicitly, from random blocks (every nibble, and for IQ4_XS every 6-bit scale code), against two oracles:
//  - float64 of the decoded weights (tensor/quant_iq.h's scalar decoders) with the Q8_0-rounded activations
//    (quantize_row's rule, the kernels' dot inputs): only the f32 scaling and summation of exact int32 block
//    dots differ; bound 2e-6 relative to sum |w x| (kernels_test's bound for Q8_0 readers vs ref);
//  - ref::matmul (decoded weights times the f32 activations): differs by the Q8_0 rounding of x, at most half
//    a step per value; bound 2e-2 relative to sum |w x|.
// And batch invariance: each token alone gives the bits it gives inside the batch, at 1 and 2 threads. The
// shapes run every tile path: decode's rows in lockstep with remainder rows, prefill tiles with remainder
// rows and tokens, pairs of groups and a lone last group (an odd group count), and for IQ4_NL the blocks
// after the last full group.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "table_test.h"
#include "tensor/quant.h"
#include "tensor/quant_iq.h"

namespace mixtral::kernels {
namespace {

using test::norm_err;
using test::randn;

struct Iq4Weights {
  std::vector<uint8_t> bytes;
  TensorView view;
  std::vector<double> deq;  // [rows, cols]
};

// [rows, cols] of random bytes with each fp16 d of either sign and about the size that gives 0.05-scale
// weights.
Iq4Weights make_weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  const DTypeTraits& tr = traits(t);
  Iq4Weights w;
  w.bytes.resize(static_cast<size_t>(rows) * row_bytes(t, cols));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(0.5f, 1.5f);
  for (auto& b : w.bytes) b = static_cast<uint8_t>(byte(rng));
  const float d0 = t == DType::IQ4_XS ? 0.05f / (127.0f * 8.0f) : 0.05f / 64.0f;
  const int64_t blocks = rows * cols / tr.block_size;
  for (int64_t i = 0; i < blocks; ++i) {
    const uint16_t d = f32_to_fp16(d0 * mag(rng) * (byte(rng) < 128 ? -1.0f : 1.0f));
    std::memcpy(w.bytes.data() + i * static_cast<int64_t>(tr.block_bytes), &d, 2);
  }
  std::vector<float> tmp(static_cast<size_t>(rows * cols));
  dequantize_row(t, w.bytes.data(), tmp.data(), rows * cols);
  w.deq.assign(tmp.begin(), tmp.end());
  w.view.data = w.bytes.data();
  w.view.dtype = t;
  w.view.ndim = 2;
  w.view.shape = {rows, cols, 1, 1};
  return w;
}

class Iq4Kernels : public test::TableTest {
 protected:
  void check(DType t, int64_t rows, int64_t cols, int64_t n) {
    SCOPED_TRACE(std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
                 " cols=" + std::to_string(cols) + " n=" + std::to_string(n));
    const Iq4Weights w = make_weights(t, rows, cols, static_cast<uint32_t>(rows * 131 + cols * 7 + n));
    check_matmul(w.view, w.deq, DType::Q8_0, rows, cols, n, 2e-6);
  }
};

// Token counts of decode, each tile width and remainder, and a run of several tiles, on row counts that
// leave remainder rows after 2-, 3- and 4-row tiles and decode parts (23, 22) and a lone row; 768 columns:
// a pair of groups and a lone group.
TEST_P(Iq4Kernels, TokenCountsAndRows) {
  for (DType t : {DType::IQ4_NL, DType::IQ4_XS})
    for (int64_t rows : {23, 22, 1})
      for (int64_t n : {1, 2, 3, 4, 5, 7, 13, 17}) check(t, rows, 768, n);
}

// Column counts: one lone group (256), whole pairs (4096), and for IQ4_NL blocks after the last full group
// (288: none before them; 800: a pair, then 1 block; 1248: a pair, a lone group, then 7 blocks).
TEST_P(Iq4Kernels, Columns) {
  for (int64_t n : {1, 6}) {
    for (int64_t cols : {256, 4096}) {
      check(DType::IQ4_NL, 7, cols, n);
      check(DType::IQ4_XS, 7, cols, n);
    }
    for (int64_t cols : {288, 800, 1248}) check(DType::IQ4_NL, 7, cols, n);
  }
}

INSTANTIATE_TEST_SUITE_P(Tables, Iq4Kernels, ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512),
                         [](const ::testing::TestParamInfo<Isa>& i) {
                           return std::string(isa_name(i.param));
                         });

}  // namespace
}  // namespace mixtral::kernels
