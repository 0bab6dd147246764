// The grid i-quant matmul kernels (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M: x86/iq_grid.inc and
// the scalar table's) on each kernel table selected explicitly, from random valid blocks in which every
// entry of the type's grid is indexed, against two oracles:
//  - float64 of the decoded weights (tensor/quant_iq.h's scalar decoders) with the Q8_K-decoded activations:
//    the same dot inputs, so only the f32 scaling and summation of exact int32 sums differ; bound 1e-5
//    relative to sum |w x| (as KQuantsMatchReference in kernels_test);
//  - ref::matmul (decoded weights times the f32 activations): differs by the Q8_K rounding of x, at most
//    half a step per value; bound 2e-2 relative to sum |w x| (kernels_test's bound for Q8_K readers).
// And batch invariance: each token alone gives the bits it gives inside the batch, at 1 and 2 threads.
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

constexpr DType kGridTypes[] = {DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS,
                                DType::IQ3_S,   DType::IQ1_S,  DType::IQ1_M};

// Grid indices per 256-element block (8 points each; the IQ3 types: 4).
int units_per_block(DType t) {
  return t == DType::IQ3_XXS || t == DType::IQ3_S ? 64 : 32;
}

// Sets grid index idx for unit k (elements 8k .. 8k + 7, or 4k .. 4k + 3 for IQ3) of one block, keeping its
// other fields (tensor/quant_iq.h's layouts).
void set_index(DType t, uint8_t* blk, int k, unsigned idx) {
  switch (t) {
    case DType::IQ2_XXS: {
      auto& b = *reinterpret_cast<BlockIQ2_XXS*>(blk);
      reinterpret_cast<uint8_t*>(b.qs)[8 * (k / 4) + k % 4] = static_cast<uint8_t>(idx);
      break;
    }
    case DType::IQ2_XS: {
      auto& b = *reinterpret_cast<BlockIQ2_XS*>(blk);
      b.qs[k] = static_cast<uint16_t>((b.qs[k] & 0xfe00) | idx);
      break;
    }
    case DType::IQ2_S: {
      auto& b = *reinterpret_cast<BlockIQ2_S*>(blk);
      b.qs[k] = static_cast<uint8_t>(idx);
      const int sh = 2 * (k % 4);
      b.qh[k / 4] = static_cast<uint8_t>((b.qh[k / 4] & ~(3 << sh)) | (idx >> 8) << sh);
      break;
    }
    case DType::IQ3_XXS:
      reinterpret_cast<BlockIQ3_XXS*>(blk)->qs[k] = static_cast<uint8_t>(idx);
      break;
    case DType::IQ3_S: {
      auto& b = *reinterpret_cast<BlockIQ3_S*>(blk);
      b.qs[k] = static_cast<uint8_t>(idx);
      b.qh[k / 8] = static_cast<uint8_t>((b.qh[k / 8] & ~(1 << (k % 8))) | (idx >> 8) << (k % 8));
      break;
    }
    case DType::IQ1_S: {
      auto& b = *reinterpret_cast<BlockIQ1_S*>(blk);
      b.qs[k] = static_cast<uint8_t>(idx);
      const int sh = 3 * (k % 4);
      b.qh[k / 4] = static_cast<uint16_t>((b.qh[k / 4] & ~(7 << sh)) | (idx >> 8) << sh);
      break;
    }
    case DType::IQ1_M: {
      auto& b = *reinterpret_cast<BlockIQ1_M*>(blk);
      b.qs[k] = static_cast<uint8_t>(idx);
      const int sh = 4 * (k % 2);
      b.qh[k / 2] = static_cast<uint8_t>((b.qh[k / 2] & ~(7 << sh)) | (idx >> 8) << sh);
      break;
    }
    default:
      FAIL() << "not a grid type";
  }
}

// Sets a block's fp16 d (IQ1_M: the top nibbles of its four scale words).
void set_d(DType t, uint8_t* blk, uint16_t d) {
  if (t != DType::IQ1_M) {
    std::memcpy(blk, &d, 2);
    return;
  }
  auto& b = *reinterpret_cast<BlockIQ1_M*>(blk);
  uint16_t w[4];
  std::memcpy(w, b.scales, sizeof(w));
  for (int i = 0; i < 4; ++i) w[i] = static_cast<uint16_t>((w[i] & 0x0fff) | ((d >> (4 * i)) & 0xf) << 12);
  std::memcpy(b.scales, w, sizeof(w));
}

// [rows, cols] of random blocks (every sign code, scale code and delta), d of either sign and about the size
// that gives 0.05-scale weights, and the grid indices of consecutive units running through the whole grid
// (a stride coprime with its size, from a random start), so every entry is used once the matrix has as
// many units.
struct GridWeights {
  std::vector<uint8_t> bytes;
  TensorView view;
  std::vector<double> deq;  // [rows, cols]
};
GridWeights make_grid_weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  const DTypeTraits& tr = traits(t);
  GridWeights w;
  w.bytes.resize(static_cast<size_t>(rows) * row_bytes(t, cols));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(0.5f, 1.5f);
  for (auto& b : w.bytes) b = static_cast<uint8_t>(byte(rng));
  const int size = iq::grid_entries(t), units = units_per_block(t);
  unsigned next = static_cast<unsigned>(byte(rng));
  const int64_t blocks = rows * cols / kQK_IQ;
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = w.bytes.data() + i * static_cast<int64_t>(tr.block_bytes);
    for (int k = 0; k < units; ++k, next += 7) set_index(t, blk, k, next % static_cast<unsigned>(size));
    set_d(t, blk, f32_to_fp16(0.05f / 64.0f * mag(rng) * (byte(rng) < 128 ? -1.0f : 1.0f)));
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

const char* dname(DType t) {
  return dtype_name(t).data();
}

class IqGridKernels : public test::TableTest {
 protected:
  void check(DType t, int64_t rows, int64_t cols, int64_t n) {
    SCOPED_TRACE(std::string(dname(t)) + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                 " n=" + std::to_string(n));
    const GridWeights w = make_grid_weights(t, rows, cols, static_cast<uint32_t>(rows * 131 + cols * 7 + n));
    check_matmul(w.view, w.deq, DType::Q8_K, rows, cols, n, 1e-5);
  }
};

// Every token count the brief names (decode, tile widths and remainders, two runs of 16 and one more) on
// 21 rows (4-row decode parts plus a remainder row; 2- and 4-row tiles plus remainders), 1024 columns
// (4 super-blocks: 84 blocks, enough units for every grid entry, IQ1's 2048 included).
TEST_P(IqGridKernels, TokenCountsAgainstReferences) {
  for (DType t : kGridTypes)
    for (int64_t n : {1, 2, 3, 5, 8, 16, 33}) check(t, 21, 1024, n);
}

// A model-width row (4096 columns) and a lone row.
TEST_P(IqGridKernels, WideAndSingleRows) {
  for (DType t : kGridTypes) {
    check(t, 9, 4096, 1);
    check(t, 9, 4096, 5);
    check(t, 1, 2048, 3);
  }
}

INSTANTIATE_TEST_SUITE_P(Tables, IqGridKernels, ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512),
                         [](const ::testing::TestParamInfo<Isa>& i) {
                           return std::string(isa_name(i.param));
                         });

}  // namespace
}  // namespace mixtral::kernels
