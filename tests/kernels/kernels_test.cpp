// Every dispatched kernel against the scalar reference (kernels::ref) for every instruction set this CPU
// has (set_isa over kScalar, kAvx2, kAvx512), and the references against independent float64
// computations.
//
// Error measures (bounds stated where used):
//  - normalised error: max over a token's outputs of |fast - ref| / max over the same outputs of |ref|;
//  - for matmul, errors relative to max sum_c |W[r, c] x[t, c]| instead, which a single output that
//    happens to cancel cannot inflate, plus a rigorous per-output bound for the Q8_0 rounding of the
//    activations (quant_bound).
#include "kernels/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/thread_pool.h"
#include "kernels/internal.h"
#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (static_cast<int>(i) <= static_cast<int>(detect_isa())) v.push_back(i);
#if defined(MX_TEST_AVX512_EMULATED)
  // This build also holds the AVX-512 kernels over SIMDe (runs on AVX2 machines).
  if (v.back() != Isa::kAvx512 && __builtin_cpu_supports("avx2")) v.push_back(Isa::kAvx512);
#endif
  return v;
}

// The kernel table of an ISA in supported_isas() (the emulated one where the CPU lacks AVX-512).
const detail::KernelTable* table_of(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return &detail::generic_table();
    case Isa::kAvx2:
      return detail::avx2_table();
    case Isa::kAvx512:
#if defined(MX_TEST_AVX512_EMULATED)
      // MX_TEST_EMULATED=1: the emulated table on an AVX-512 machine too (checks the SIMDe build's results).
      if (const char* e = std::getenv("MX_TEST_EMULATED"); detect_isa() != Isa::kAvx512 || (e && *e == '1'))
        return detail::avx512_emulated_table();
#endif
      return detail::avx512_table();
  }
  return nullptr;
}

// t's entry in detail::kWeightTypes and its index there (every table's order); nullptr and -1 for the types
// without table kernels (dispatch.cpp's dequantizing fallback).
const detail::WeightType* weight_type(DType t, int* index = nullptr) {
  for (int i = 0; i < detail::kNumWeightTypes; ++i)
    if (detail::kWeightTypes[i].dtype == t) {
      if (index != nullptr) *index = i;
      return &detail::kWeightTypes[i];
    }
  if (index != nullptr) *index = -1;
  return nullptr;
}

// Table k's kernels for weight type t (one with table kernels).
const detail::MatmulKernel& kernel_of(const detail::KernelTable& k, DType t) {
  int i = -1;
  weight_type(t, &i);
  MX_CHECK(i >= 0, "%s has no table kernels", std::string(dtype_name(t)).c_str());
  return k.matmul[i];
}

// The activations t's kernels read (f32 for the fallback types).
detail::Activations reads(DType t) {
  const detail::WeightType* wt = weight_type(t);
  return wt != nullptr ? wt->reads : detail::Activations::kF32;
}

// Dispatches the public ops to `isa`'s kernels.
void use_isa(Isa isa) {
  set_isa(isa);
  if (active_isa() != isa || table_of(isa) != &detail::active_table())
    detail::set_table_for_testing(isa, table_of(isa));
}

// Restores the best ISA when a test ends.
struct IsaGuard {
  ~IsaGuard() { set_isa(detect_isa()); }
};

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// A weight matrix [rows, cols] in dtype t, encoded from Gaussian values by the reference quantizer.
struct Weights {
  std::vector<uint8_t> bytes;  // [rows, row_bytes(t, cols)]
  TensorView view;
  std::vector<double> deq;  // [rows, cols] the decoded values, for float64 checks
};

// IQ4_NL / IQ4_XS blocks of random bytes (every nibble, and for IQ4_XS every 6-bit scale code, negative
// scales included: more than the quantizer writes), each fp16 d set to a random value of the size the
// quantizer gives 0.05-scale weights.
void random_iq4_blocks(DType t, uint8_t* row, int64_t cols, std::mt19937& rng) {
  const DTypeTraits& tr = traits(t);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(0.5f, 1.5f);
  const float d0 = t == DType::IQ4_XS ? 0.05f / (127.0f * 8.0f) : 0.05f / 64.0f;
  for (int64_t b = 0; b < cols / tr.block_size; ++b) {
    uint8_t* blk = row + b * static_cast<int64_t>(tr.block_bytes);
    for (size_t i = 0; i < tr.block_bytes; ++i) blk[i] = static_cast<uint8_t>(byte(rng));
    const uint16_t d = f32_to_fp16(d0 * mag(rng) * (byte(rng) < 128 ? -1.0f : 1.0f));
    std::memcpy(blk, &d, 2);
  }
}

Weights make_weights(DType t, int64_t rows, int64_t cols, uint32_t seed, bool random_blocks = false) {
  Weights w;
  const std::vector<float> f = randn(rows * cols, seed, 0.05f);
  const DType file = file_layout(t);  // a repacked layout: quantized as its file type, then repacked
  const size_t rb = row_bytes(file, cols);
  w.bytes.resize(rb * static_cast<size_t>(rows));
  std::vector<float> tmp(static_cast<size_t>(cols));
  std::mt19937 rng(seed);
  for (int64_t r = 0; r < rows; ++r) {
    if (random_blocks) {
      random_iq4_blocks(file, w.bytes.data() + r * rb, cols, rng);
    } else {
      quantize_row(file, f.data() + r * cols, w.bytes.data() + r * rb, cols);
    }
    dequantize_row(file, w.bytes.data() + r * rb, tmp.data(), cols);
    w.deq.insert(w.deq.end(), tmp.begin(), tmp.end());
  }
  if (file != t) repack(file, t, w.bytes.data(), w.bytes.data(), rows, cols);
  w.view.data = w.bytes.data();
  w.view.dtype = t;
  w.view.ndim = 2;
  w.view.shape = {rows, cols, 1, 1};
  return w;
}

// max over tokens of (max_r |a - b| / max_r |b|); a, b: [n, ld] with `rows` valid columns.
// With `scale`, the denominator is max_r scale instead (e.g. sum |w x|, what rounding errors scale with,
// which a single output that happens to cancel does not shrink).
double norm_err(const float* a, const float* b, int64_t n, int64_t rows, int64_t ld,
                const float* scale = nullptr) {
  double worst = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      num = std::max(num, std::fabs(static_cast<double>(a[t * ld + r]) - b[t * ld + r]));
      den = std::max(den, std::fabs(static_cast<double>(scale ? scale[t * ld + r] : b[t * ld + r])));
    }
    worst = std::max(worst, den > 0 ? num / den : num);
  }
  return worst;
}

// Tolerances for matmul, by weight type.
struct MatmulTol {
  double vs_ref;  // fast vs ref, relative to sum |w x|: same dot inputs, only the f32 summation order differs
  double vs_f64;  // fast vs float64 dot of the decoded weights with the unrounded f32 activations
};
MatmulTol tol_for(DType t) {
  switch (reads(t)) {
    case detail::Activations::kQ8_0:
      // vs_ref: integer block dots are exact; the f32 sum of the scaled block terms runs in another order
      // (8 lanes per block, then a horizontal sum; the c . x correction summed apart): observed <= 1.3e-7.
      // vs_f64: dominated by rounding the activations to Q8_0: observed <= 1.4% of the largest output for
      // >= 8 blocks of Gaussian data (checked with >= 16 rows); the rigorous per-output bound is quant_bound.
      return {2e-6, 2.5e-2};
    case detail::Activations::kQ8_K:
      // Both differ from the f32 activations of ref and float64 by the Q8_K rounding of x (half a step,
      // amax / 254, per value): bound 2e-2 relative to sum |w x| as in KQuantsMatchReference, which checks
      // these types against the Q8_K-decoded activations to 1e-5.
      return {2e-2, 2e-2};
    case detail::Activations::kF32:
      break;
  }
  // f32 accumulation of up to 4096 products in another order (8/16 lanes + FMA vs serial), both relative
  // to sum |w x|: observed <= 2.4e-7 vs ref and vs float64. The same for the fallback types (their
  // dequantized rows times the f32 activations, as ref computes them).
  return {2e-6, 2e-6};
}

// For quantized weights, a rigorous per-output bound on |y - y64|: rounding x to Q8_0 moves each element
// by at most d/2 + 127 |d - fp16(d)| (d = block amax / 127; q uses the unrounded 1/d, the dot the fp16
// d), plus f32 rounding of the block products and their sum (1e-6 of sum |w x|, far above (nb+2) eps).
// Empty for float weights.
std::vector<double> quant_bound(DType t, const Weights& w, const std::vector<float>& x, int64_t n,
                                int64_t ldy) {
  if (reads(t) != detail::Activations::kQ8_0) return {};
  const int64_t rows = w.view.rows(), cols = w.view.cols();
  std::vector<double> bound(static_cast<size_t>(n * ldy), 0.0);
  for (int64_t tk = 0; tk < n; ++tk) {
    for (int64_t b = 0; b < cols / 32; ++b) {
      const float* xb = x.data() + tk * cols + b * 32;
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const double d = amax / 127.0f,
                   e = d / 2 + 127 * std::fabs(d - fp16_to_f32(f32_to_fp16(amax / 127.0f)));
      for (int64_t r = 0; r < rows; ++r)
        for (int j = 0; j < 32; ++j) {
          const double wv = std::fabs(w.deq[r * cols + b * 32 + j]);
          bound[tk * ldy + r] += wv * e + 1e-6 * wv * std::fabs(xb[j]);
        }
    }
  }
  return bound;
}

// y = W x with x rounded to Q8_0 (quantize_row), in float64: sum over blocks of d_x * (decoded w . q_x).
// The reference for the weight types whose kernels read Q8_0 activations but ref::matmul computes with the
// f32 activations (IQ4_NL, IQ4_XS: their decoded weights d * (s - 32) * v are exact in f32).
std::vector<float> q8_activation_reference(const Weights& w, const std::vector<float>& x, int64_t n,
                                           int64_t ldy) {
  const int64_t rows = w.view.rows(), cols = w.view.cols(), nb = cols / kQK8_0;
  std::vector<BlockQ8_0> xq(static_cast<size_t>(n * nb));  // [n, nb]
  for (int64_t t = 0; t < n; ++t) quantize_row(DType::Q8_0, x.data() + t * cols, xq.data() + t * nb, cols);
  std::vector<float> y(static_cast<size_t>(n * ldy), 0.0f);  // [n, ldy]
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        double dot = 0.0;
        for (int j = 0; j < kQK8_0; ++j) dot += w.deq[r * cols + b * kQK8_0 + j] * xq[t * nb + b].qs[j];
        s += dot * fp16_to_f32(xq[t * nb + b].d);
      }
      y[t * ldy + r] = static_cast<float>(s);
    }
  return y;
}

const char* dname(DType t) {
  return dtype_name(t).data();
}

class MatmulTest : public ::testing::Test {
 protected:
  ThreadPool pool1_{1};
  ThreadPool pool2_{2};
  IsaGuard guard_;

  // Batch invariance: a token's outputs are bit-identical alone (the decode kernels) and inside a batch
  // of n (whatever token tile and row tile it fell in), so a served answer cannot depend on its batch.
  //   x: [n, cols]; y: [n, ldy] the batch's outputs
  void expect_batch_invariant(const TensorView& w, const std::vector<float>& x, int64_t n, int64_t cols,
                              const std::vector<float>& y, int64_t ldy) {
    if (n == 1) return;
    const int64_t rows = w.rows();
    std::vector<float> one(static_cast<size_t>(rows));  // [rows]
    for (int64_t tk = 0; tk < n; ++tk) {
      matmul(w, x.data() + tk * cols, 1, one.data(), rows, pool1_);
      ASSERT_EQ(0, std::memcmp(one.data(), y.data() + tk * ldy, one.size() * sizeof(float)))
          << "token " << tk << " alone differs from the same token in a batch of " << n;
    }
  }

  bool random_blocks_ = false;  // check(): IQ4 weights from random_iq4_blocks, not the quantizer

  // A repacked view `packed` of the file-layout weights `file` against them, x: [n, cols]: ref bit for bit,
  // and every table whose kernel for the repacked layout reads the activations in the order of its kernel
  // for the file type (the other tables' repacked kernels are checked by check()).
  void expect_as_file(const TensorView& file, const TensorView& packed, const std::vector<float>& x,
                      int64_t n, int64_t ldy) {
    std::vector<float> want(static_cast<size_t>(n * ldy), 0.0f), got(want);  // [n, ldy]
    ref::matmul(file, x.data(), n, want.data(), ldy);
    ref::matmul(packed, x.data(), n, got.data(), ldy);
    ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float))) << "ref";
    for (Isa isa : supported_isas()) {
      const detail::KernelTable* k = table_of(isa);
      if (kernel_of(*k, file.dtype).arrange != kernel_of(*k, packed.dtype).arrange) continue;
      use_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      matmul(file, x.data(), n, want.data(), ldy, pool2_);
      matmul(packed, x.data(), n, got.data(), ldy, pool2_);
      ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));
    }
  }

  void check(DType t, int64_t rows, int64_t cols, int64_t n, int64_t ldy_pad = 0) {
    SCOPED_TRACE(std::string(dname(t)) + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                 " n=" + std::to_string(n) + " ldy=rows+" + std::to_string(ldy_pad));
    const Weights w =
        make_weights(t, rows, cols, static_cast<uint32_t>(rows * 131 + cols * 7 + n), random_blocks_);
    std::vector<float> x = randn(n * cols, static_cast<uint32_t>(n + 17));  // [n, cols]
    if (cols >= 64) std::fill(x.begin(), x.begin() + 32, 0.0f);             // an all-zero block: d = 0
    const int64_t ldy = rows + ldy_pad;
    std::vector<float> ref(static_cast<size_t>(n * ldy), 0.0f);  // [n, ldy]
    ref::matmul(w.view, x.data(), n, ref.data(), ldy);
    if (t == DType::IQ4_NL || t == DType::IQ4_XS) ref = q8_activation_reference(w, x, n, ldy);

    // Float64 of the decoded weights with the f32 activations.
    std::vector<float> y64(static_cast<size_t>(n * ldy), 0.0f);  // [n, ldy]
    std::vector<float> mag(y64.size(), 0.0f);                    // [n, ldy] sum_c |W[r, c] x[t, c]|
    for (int64_t tk = 0; tk < n; ++tk)
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0.0, m = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          s += w.deq[r * cols + c] * static_cast<double>(x[tk * cols + c]);
          m += std::fabs(w.deq[r * cols + c] * static_cast<double>(x[tk * cols + c]));
        }
        y64[tk * ldy + r] = static_cast<float>(s);
        mag[tk * ldy + r] = static_cast<float>(m);
      }
    const MatmulTol tol = tol_for(t);
    const std::vector<double> bound = quant_bound(t, w, x, n, ldy);
    // The normalised float64 check needs enough rows for max |y| to be typical, and for quantized weights
    // enough blocks for the activation rounding errors to average; below that only quant_bound applies.
    // Float weights: the error relative to sum |w x| (no cancellation can inflate it).
    const bool check_f64 = bound.empty() || (rows >= 16 && cols >= 256);
    const float* f64_scale = bound.empty() ? mag.data() : nullptr;
    if (check_f64) {
      EXPECT_LE(norm_err(ref.data(), y64.data(), n, rows, ldy, f64_scale), tol.vs_f64)
          << "ref::matmul vs float64: error bound " << tol.vs_f64;
    }
    for (size_t i = 0; i < bound.size(); ++i)
      if (static_cast<int64_t>(i) % ldy < rows) {
        ASSERT_LE(std::fabs(static_cast<double>(ref[i]) - y64[i]), bound[i])
            << "ref vs float64 outside the Q8_0 activation rounding bound";
      }

    for (Isa isa : supported_isas()) {
      use_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      std::vector<float> y1(static_cast<size_t>(n * ldy), -7.0f), y2(y1);  // [n, ldy]
      matmul(w.view, x.data(), n, y1.data(), ldy, pool1_);
      matmul(w.view, x.data(), n, y2.data(), ldy, pool2_);
      EXPECT_LE(norm_err(y1.data(), ref.data(), n, rows, ldy, mag.data()), tol.vs_ref)
          << "fast vs ref: error relative to sum |w x|, bound " << tol.vs_ref;
      if (check_f64) {
        EXPECT_LE(norm_err(y1.data(), y64.data(), n, rows, ldy, f64_scale), tol.vs_f64)
            << "fast vs float64: error bound " << tol.vs_f64;
      }
      if (!bound.empty()) {
        for (int64_t i = 0; i < n * ldy; ++i)
          if (i % ldy < rows) {
            ASSERT_LE(std::fabs(static_cast<double>(y1[i]) - y64[i]), bound[i])
                << "fast vs float64 outside the Q8_0 activation rounding bound at token " << i / ldy
                << " row " << i % ldy;
          }
      }
      // Each output is computed in the same order whatever the split: thread counts agree bit for bit.
      EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << "1 vs 2 threads differ";
      for (int64_t tk = 0; tk < n; ++tk)
        for (int64_t r = rows; r < ldy; ++r) ASSERT_EQ(y1[tk * ldy + r], -7.0f) << "wrote past rows";
      expect_batch_invariant(w.view, x, n, cols, y1, ldy);
    }
  }
};

constexpr DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

TEST_F(MatmulTest, SmallShapesAllTypes) {
  const int64_t shapes[][2] = {{1, 32}, {5, 64}, {17, 96}, {67, 256}, {20, 512}};
  for (DType t : kAllTypes)
    for (const auto& s : shapes)
      for (int64_t n : {1, 2, 3, 7, 16, 33}) check(t, s[0], s[1], n);
}

TEST_F(MatmulTest, OddColumnsFloatTypes) {
  // Column tails that are not a multiple of the 8/16-lane steps.
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t cols : {1, 7, 40, 100, 129})
      for (int64_t n : {1, 3, 5}) check(t, 9, cols, n);
}

TEST_F(MatmulTest, LargeColumns) {
  for (DType t : kAllTypes) {
    check(t, 35, 4096, 1);
    check(t, 19, 4096, 7, 3);
  }
}

// Prefill kernels that read the activations in groups of 8 blocks (internal.h): whole groups, groups
// followed by 1..7 column-order tail blocks, and every token-tile remainder.
TEST_F(MatmulTest, GroupedPrefillGroupsAndTails) {
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t cols : {256, 288, 480, 800, 2272})
      for (int64_t n : {2, 3, 4, 5, 6, 8, 9}) check(t, 21, cols, n, 2);
}

// Every token count of a serving step's per-expert groups and a little beyond (n = 1..17: decode, each
// micro-tile width, one tile plus a remainder, two and more passes) on 22 rows (3-row tiles and a remainder
// row), with odd group counts (768 and 1280 columns: 3 and 5 groups of 8 blocks, a lone last group next to
// the pairs) and, in the file layouts, blocks after the last group (288: 9 blocks, 800: 25 blocks).
TEST_F(MatmulTest, GroupedSmallTokenCountsAndTails) {
  const std::pair<DType, std::vector<int64_t>> cases[] = {{DType::Q4_0, {288, 768, 800}},
                                                          {DType::Q8_0, {288, 768, 800}},
                                                          {DType::Q4_0_G8, {256, 768, 1280}},
                                                          {DType::Q8_0_G8, {256, 768, 1280}}};
  for (const auto& [t, all_cols] : cases)
    for (int64_t cols : all_cols)
      for (int64_t n = 1; n <= 17; ++n) check(t, 22, cols, n);
}

// IQ4_NL and IQ4_XS (x86/iq4.inc) at every token count of a serving step and a little beyond (n = 1..17:
// decode's rows in lockstep, each prefill tile width and remainder) on 21 rows (AVX2: 4-row decode parts plus
// a remainder row, 2-row prefill tiles plus one; AVX-512: 3-row parts and tiles; iq4_kernels_test has
// remainder rows for both), over whole super-blocks (256, 512 and, for a
// few token counts, 4096 columns) and, for IQ4_NL, 1..7 blocks after the last 8 (288, 800), from the
// quantizer and from random blocks (every nibble and scale code).
TEST_F(MatmulTest, Iq4SmallTokenCountsAndTails) {
  const std::pair<DType, std::vector<int64_t>> cases[] = {{DType::IQ4_NL, {256, 288, 800, 4096}},
                                                          {DType::IQ4_XS, {256, 512, 4096}}};
  for (bool random : {false, true}) {
    random_blocks_ = random;
    SCOPED_TRACE(random ? "random blocks" : "quantized");
    for (const auto& [t, all_cols] : cases)
      for (int64_t cols : all_cols)
        for (int64_t n = 1; n <= 17; ++n)
          if (cols < 4096 || n == 1 || n == 3 || n == 8 || n == 17) check(t, 21, cols, n);
  }
  random_blocks_ = false;
}

// The row-interleaved layouts (AVX-512's choice for Q4_0, Q8_0, Q4_K and Q6_K; the K-quants' on 4096 columns
// only) at every token count of a serving step and a little beyond (n = 1..17: each tile width, a full
// 8-token tile plus a remainder) on 5 groups of 16 rows, so that each tile shape (4, 3 and 2 groups side by
// side) runs with lone groups after it, and on one group alone.
TEST_F(MatmulTest, RowInterleavedTokenCounts) {
  for (DType t : {DType::Q4_0_R16, DType::Q8_0_R16, DType::Q4_K_R16, DType::Q6_K_R16})
    for (int64_t rows : {80, 16})
      for (int64_t cols : {32, 288, 4096})
        if (cols % traits(t).block_size == 0)
          for (int64_t n = 1; n <= 17; ++n) check(t, rows, cols, n);
}

// K-quant weights with Q8_K activations, every ISA vs two oracles:
//  - float64 of the decoded weights with the Q8_K-decoded activations (the same dot inputs): only the f32
//    scaling and summation of exact int32 group dots differ; bound 1e-5 relative to sum |w x|
//    (observed about 1e-7);
//  - ref::matmul (decoded weights times the f32 activations): differs by the Q8_K rounding of x, at most
//    half a step (amax / 254) per value; bound 2e-2 relative to sum |w x| (observed below 4e-3 for
//    Gaussian data).
// Shapes cover the prefill kernels' row panels (12 or 16 rows) and groups (4 or 8 rows, and fewer left),
// column chunks (4 super-blocks and a shorter last one: 768, 4096 + 1280), 8-token tiles (n = 8, 9, 17)
// and blocks of 8 tiles followed by more (n = 261), besides the per-token path of n < 4 and its spans of 64
// super-blocks (16640 columns: 65).
TEST_F(MatmulTest, KQuantsMatchReference) {
  struct Case {
    int64_t rows, cols;
    std::vector<int64_t> ns;
  };
  const std::vector<int64_t> ns = {1, 2, 3, 4, 5, 8, 9, 17};
  const Case cases[] = {{1, 256, ns},      {7, 512, ns},    {21, 768, ns},     {37, 4096, ns},
                        {6, 5376, {1, 9}}, {5, 512, {261}}, {9, 16640, {1, 9}}};
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K})
    for (const Case& s : cases)
      for (int64_t n : s.ns) {
        const int64_t rows = s.rows, cols = s.cols, ldy = rows + 1;
        SCOPED_TRACE(std::string(dname(t)) + " rows=" + std::to_string(rows) +
                     " cols=" + std::to_string(cols) + " n=" + std::to_string(n));
        const Weights w = make_weights(t, rows, cols, static_cast<uint32_t>(rows * 31 + cols + n));
        const std::vector<float> x = randn(n * cols, static_cast<uint32_t>(n + 5));  // [n, cols]
        std::vector<float> xr(x.size());  // [n, cols] x through Q8_K and back
        std::vector<BlockQ8_K> xb(static_cast<size_t>(cols / kQK_K));
        for (int64_t tk = 0; tk < n; ++tk) {
          quantize_row(DType::Q8_K, x.data() + tk * cols, xb.data(), cols);
          dequantize_row(DType::Q8_K, xb.data(), xr.data() + tk * cols, cols);
        }
        std::vector<float> y64(static_cast<size_t>(n * ldy), 0.0f), mag(y64.size(), 0.0f);  // [n, ldy]
        for (int64_t tk = 0; tk < n; ++tk)
          for (int64_t r = 0; r < rows; ++r) {
            double sum = 0.0, m = 0.0;
            for (int64_t c = 0; c < cols; ++c) {
              const double p = w.deq[r * cols + c] * static_cast<double>(xr[tk * cols + c]);
              sum += p;
              m += std::fabs(p);
            }
            y64[tk * ldy + r] = static_cast<float>(sum);
            mag[tk * ldy + r] = static_cast<float>(m);
          }
        std::vector<float> ref(y64.size(), 0.0f);  // [n, ldy]
        ref::matmul(w.view, x.data(), n, ref.data(), ldy);
        for (Isa isa : supported_isas()) {
          use_isa(isa);
          SCOPED_TRACE(isa_name(isa));
          std::vector<float> y1(y64.size(), -7.0f), y2(y1);  // [n, ldy]
          matmul(w.view, x.data(), n, y1.data(), ldy, pool1_);
          matmul(w.view, x.data(), n, y2.data(), ldy, pool2_);
          EXPECT_LE(norm_err(y1.data(), y64.data(), n, rows, ldy, mag.data()), 1e-5)
              << "fast vs float64 with the Q8_K activations: bound 1e-5";
          EXPECT_LE(norm_err(y1.data(), ref.data(), n, rows, ldy, mag.data()), 2e-2)
              << "fast vs ref::matmul (f32 activations): bound 2e-2";
          EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)))
              << "1 vs 2 threads differ";
          for (int64_t tk = 0; tk < n; ++tk) ASSERT_EQ(y1[tk * ldy + rows], -7.0f) << "wrote past rows";
          expect_batch_invariant(w.view, x, n, cols, y1, ldy);
        }
      }
}

// K-quant weights on hidden-state-like activations: Gaussian weights through quantize_row, activations
// with a few channels 10..60x the rest (as real residual streams have, so most of each Q8_K block sits in
// a few levels around 0), prefill and decode token counts (every token-tile remainder), many shapes; every
// ISA vs float64 of the decoded weights with the Q8_K-decoded activations (the same dot inputs), per output,
// relative to sum |w x|: only the f32 scaling and summation of exact int32 group dots differ (observed
// about 1e-7). The Q8_K activations are checked to be GGML's (quantize_row_q8_K_ref: extreme -> -127).
TEST_F(MatmulTest, KQuantsWithOutlierActivations) {
  const int64_t shapes[][2] = {{16, 256}, {33, 512}, {64, 1024}, {19, 1536}, {40, 2048}};
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K})
    for (const auto& s : shapes)
      for (int64_t n : {1, 4, 7, 16, 33}) {
        const int64_t rows = s[0], cols = s[1], ldy = rows;
        SCOPED_TRACE(std::string(dname(t)) + " rows=" + std::to_string(rows) +
                     " cols=" + std::to_string(cols) + " n=" + std::to_string(n));
        const Weights w = make_weights(t, rows, cols, static_cast<uint32_t>(rows * 7 + cols + n));
        std::vector<float> x = randn(n * cols, static_cast<uint32_t>(3 * n + cols));  // [n, cols]
        std::mt19937 rng(static_cast<uint32_t>(n * 1000 + cols));
        std::uniform_int_distribution<int64_t> ch(0, cols - 1);
        std::uniform_real_distribution<float> big(10.0f, 60.0f);
        const int64_t outliers[] = {ch(rng), ch(rng), ch(rng), ch(rng)};  // the same channels every token
        for (int64_t tk = 0; tk < n; ++tk)
          for (size_t o = 0; o < 4; ++o) x[tk * cols + outliers[o]] = (o % 2 == 0 ? 1.0f : -1.0f) * big(rng);
        std::vector<double> xr(x.size());  // [n, cols] x through Q8_K and back
        std::vector<BlockQ8_K> xb(static_cast<size_t>(cols / kQK_K));
        for (int64_t tk = 0; tk < n; ++tk) {
          quantize_row(DType::Q8_K, x.data() + tk * cols, xb.data(), cols);
          for (int64_t b = 0; b < cols / kQK_K; ++b) {
            const float* xs = x.data() + tk * cols + b * kQK_K;
            float mx = 0.0f;
            for (int j = 0; j < kQK_K; ++j)
              if (std::fabs(xs[j]) > std::fabs(mx)) mx = xs[j];
            const float iscale = -127.0f / mx;
            ASSERT_EQ(xb[b].d, 1.0f / iscale);
            for (int j = 0; j < kQK_K; ++j) {
              ASSERT_EQ(xb[b].qs[j], std::lrint(iscale * xs[j])) << "Q8_K value " << j << " of block " << b;
              xr[tk * cols + b * kQK_K + j] = static_cast<double>(xb[b].d) * xb[b].qs[j];
            }
          }
        }
        std::vector<double> y64(static_cast<size_t>(n * ldy)), mag(y64.size());  // [n, ldy]
        for (int64_t tk = 0; tk < n; ++tk)
          for (int64_t r = 0; r < rows; ++r) {
            double sum = 0.0, m = 0.0;
            for (int64_t c = 0; c < cols; ++c) {
              const double p = w.deq[r * cols + c] * xr[tk * cols + c];
              sum += p;
              m += std::fabs(p);
            }
            y64[tk * ldy + r] = sum;
            mag[tk * ldy + r] = m;
          }
        for (Isa isa : supported_isas()) {
          use_isa(isa);
          SCOPED_TRACE(isa_name(isa));
          std::vector<float> y(y64.size(), 0.0f);  // [n, ldy]
          matmul(w.view, x.data(), n, y.data(), ldy, pool2_);
          double worst = 0.0;
          for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(y[i] - y64[i]) / mag[i]);
          EXPECT_LE(worst, 1e-5) << "fast vs float64 with the Q8_K activations, per output / sum |w x|";
        }
      }
}

// Q4_0_G8 and Q8_0_G8 (repacked at load, whole 256-value groups): the full check (ref, float64, the Q8_0
// bound, threads, batch invariance), and bit-identical outputs to the same weights in the file's layout
// wherever a table reads both in the same order (the same arrange function: Q4_0 on every ISA, Q8_0 on
// the scalar and AVX-512 ones; AVX2 runs file-layout Q8_0 through a column-order kernel), for decode and
// every prefill tile remainder: the repack changes where the kernels read, never what they sum.
TEST_F(MatmulTest, RepackedLayoutsMatchTheFileLayouts) {
  const int64_t shapes[][2] = {{1, 256}, {5, 512}, {21, 768}, {67, 256}, {35, 4096}, {18, 2304}};
  for (const auto& [file, packed] :
       {std::pair{DType::Q4_0, DType::Q4_0_G8}, std::pair{DType::Q8_0, DType::Q8_0_G8}})
    for (const auto& s : shapes)
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 9, 16, 33}) {
        const int64_t rows = s[0], cols = s[1], ldy = rows + 1;
        SCOPED_TRACE(std::string(dname(packed)) + " rows=" + std::to_string(rows) +
                     " cols=" + std::to_string(cols) + " n=" + std::to_string(n));
        if (n <= 7) check(packed, rows, cols, n, 1);
        const Weights q = make_weights(file, rows, cols, static_cast<uint32_t>(rows * 13 + cols + n));
        std::vector<uint8_t> g8(q.bytes);  // repacked in place, as the loader does it
        repack(file, packed, g8.data(), g8.data(), rows, cols);
        ASSERT_NE(0, std::memcmp(g8.data(), q.bytes.data(), g8.size())) << "the repack moved nothing";
        TensorView v = q.view;
        v.dtype = packed;
        v.data = g8.data();
        expect_as_file(q.view, v, randn(n * cols, static_cast<uint32_t>(n * 3 + 1)), n, ldy);
      }
}

// The R16 layouts byte by byte against their definition (tensor/quant.h: block (g, b) holds the 16 rows'
// scales, then qs[64m + 4r + i] = byte 4m + i of row r's Q4_0 qs, or value 4m + i of row r's Q8_0 block
// + 128), in place and back; then ref and every table whose R16 kernel reads the activations in the file
// kernel's order (the row-by-row ones) agree bit for bit with the file layout.
TEST_F(MatmulTest, RowInterleavedLayoutsMatchTheFileLayouts) {
  for (DType file : {DType::Q4_0, DType::Q8_0}) {
    const DType packed = file == DType::Q4_0 ? DType::Q4_0_R16 : DType::Q8_0_R16;
    const size_t block = traits(file).block_bytes, value_bytes = block - 2;
    const int64_t rows = 48, cols = 288, nb = cols / 32, ldy = rows;
    SCOPED_TRACE(dname(packed));
    const Weights q = make_weights(file, rows, cols, 5);
    std::vector<uint8_t> r16(q.bytes);
    repack(file, packed, r16.data(), r16.data(), rows, cols);
    for (int64_t g = 0; g < rows / 16; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* out = r16.data() + (g * nb + b) * 16 * block;  // [32 scale bytes, 16 x value bytes]
        for (int r = 0; r < 16; ++r) {
          const uint8_t* in = q.bytes.data() + ((g * 16 + r) * nb + b) * block;  // fp16 d, then the values
          ASSERT_EQ(0, std::memcmp(out + 2 * r, in, 2)) << "scale of row " << r;
          for (size_t j = 0; j < value_bytes; ++j) {
            const uint8_t want = file == DType::Q8_0 ? static_cast<uint8_t>(in[2 + j] + 128) : in[2 + j];
            ASSERT_EQ(out[32 + 64 * (j / 4) + 4 * r + j % 4], want) << "row " << r << " byte " << j;
          }
        }
      }
    std::vector<uint8_t> back(r16);
    repack(packed, file, back.data(), back.data(), rows, cols);
    ASSERT_EQ(back, q.bytes);
    TensorView v = q.view;
    v.dtype = packed;
    v.data = r16.data();
    for (int64_t n : {1, 3, 9})
      expect_as_file(q.view, v, randn(n * cols, static_cast<uint32_t>(n + 40)), n, ldy);
  }
}

// The registration: every table has a kernel for every type of kWeightTypes (lists_every_weight_type checks
// it when a table compiles; this checks the tables this machine runs), an activation order only where the
// type reads Q8_0, and repacked layouts that are table types reading the same activations. Then every
// supported weight type, with table kernels or through the fallback, against ref on every ISA.
TEST_F(MatmulTest, EveryWeightTypeOnEveryTable) {
  for (Isa isa : supported_isas()) {
    const detail::KernelTable* k = table_of(isa);
    ASSERT_NE(k, nullptr);
    SCOPED_TRACE(k->name);
    for (int i = 0; i < detail::kNumWeightTypes; ++i) {
      const detail::WeightType& wt = detail::kWeightTypes[i];
      SCOPED_TRACE(dname(wt.dtype));
      EXPECT_EQ(k->matmul[i].dtype, wt.dtype);
      EXPECT_NE(k->matmul[i].tile, nullptr);
      if (wt.reads != detail::Activations::kQ8_0) {
        EXPECT_EQ(k->matmul[i].arrange, nullptr);
      }
      const DType layout = k->matmul[i].layout;
      const detail::WeightType* packed = weight_type(layout);
      ASSERT_NE(packed, nullptr) << "repacked into a type without table kernels";
      EXPECT_EQ(packed->reads, wt.reads);
      EXPECT_EQ(file_layout(layout), file_layout(wt.dtype)) << "a layout of other values";
      EXPECT_EQ(kernel_of(*k, layout).layout, layout) << "a layout repacked again";
    }
  }
  // Every type this build computes with and can write (Q8_K: the K-quants' activations only).
  std::vector<DType> types;
  for (uint32_t id = 0; id < kFirstInternal; ++id)
    if (const auto tr = dtype_traits(id);
        tr && tr->supported && tr->quantizable && static_cast<DType>(id) != DType::Q8_K)
      types.push_back(static_cast<DType>(id));
  for (DType t :
       {DType::Q4_0_G8, DType::Q8_0_G8, DType::Q4_0_R16, DType::Q8_0_R16, DType::Q4_K_R16, DType::Q6_K_R16})
    types.push_back(t);
  int with_kernels = 0;
  for (DType t : types) {
    with_kernels += weight_type(t) != nullptr;
    for (int64_t n : {1, 5}) check(t, row_group(t) > 1 ? 32 : 21, 512, n);
  }
  EXPECT_EQ(with_kernels, detail::kNumWeightTypes);
}

TEST_F(MatmulTest, RowStrideAndManyRows) {
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::F16}) check(t, 301, 128, 9, 5);
}

TEST_F(MatmulTest, ZeroTokensIsANoOp) {
  const Weights w = make_weights(DType::Q8_0, 4, 32, 1);
  float y = 3.0f;
  matmul(w.view, nullptr, 0, &y, 4, pool2_);
  EXPECT_EQ(y, 3.0f);
}

// silu(W1 x) * (W3 x) vs the reference matmuls and silu_mul. Tolerance: the matmul's vs_ref bound
// (silu is 1-Lipschitz-ish; its own error is ~1e-7 relative).
// Fused SwiGLU over K-quant weights (both share the Q8_K activations; Q4_K with Q6_K as in Q4_K_M
// files) and over weights that want different activation formats (Q4_K with Q8_0: two separate
// matmuls): bit for bit the unfused dispatched ops.
TEST_F(MatmulTest, SwigluKQuantsAndMixedFormats) {
  const std::pair<DType, DType> pairs[] = {{DType::Q4_K, DType::Q4_K},
                                           {DType::Q4_K, DType::Q6_K},
                                           {DType::Q5_K, DType::Q4_K},
                                           {DType::Q4_K, DType::Q8_0}};
  for (const auto& [t1, t3] : pairs)
    for (int64_t n : {1, 5, 70}) {
      SCOPED_TRACE(std::string(dname(t1)) + "/" + dname(t3) + " n=" + std::to_string(n));
      const int64_t ffn = 37, cols = 512;
      const Weights w1 = make_weights(t1, ffn, cols, 15), w3 = make_weights(t3, ffn, cols, 16);
      const std::vector<float> x = randn(n * cols, 19);  // [n, cols]
      for (Isa isa : supported_isas()) {
        use_isa(isa);
        SCOPED_TRACE(isa_name(isa));
        std::vector<float> out(static_cast<size_t>(n * ffn)), g(out.size()), u(out.size());  // [n, ffn]
        matmul_swiglu(w1.view, w3.view, x.data(), n, out.data(), pool2_);
        matmul(w1.view, x.data(), n, g.data(), ffn, pool2_);
        matmul(w3.view, x.data(), n, u.data(), ffn, pool2_);
        silu_mul(g.data(), u.data(), n * ffn);
        EXPECT_EQ(0, std::memcmp(out.data(), g.data(), g.size() * sizeof(float))) << "fused != unfused";
      }
    }
}

TEST_F(MatmulTest, SwigluMatchesReference) {
  for (DType t : kAllTypes) {
    for (int64_t n : {1, 3, 33, 70}) {
      SCOPED_TRACE(std::string(dname(t)) + " n=" + std::to_string(n));
      const int64_t ffn = 83, cols = 128;
      const Weights w1 = make_weights(t, ffn, cols, 5), w3 = make_weights(t, ffn, cols, 6);
      const std::vector<float> x = randn(n * cols, 9, 3.0f);            // [n, cols]
      std::vector<float> g(static_cast<size_t>(n * ffn)), u(g.size());  // [n, ffn]
      ref::matmul(w1.view, x.data(), n, g.data(), ffn);
      ref::matmul(w3.view, x.data(), n, u.data(), ffn);
      ref::silu_mul(g.data(), u.data(), n * ffn);
      for (Isa isa : supported_isas()) {
        use_isa(isa);
        SCOPED_TRACE(isa_name(isa));
        for (ThreadPool* pool : {&pool1_, &pool2_}) {
          std::vector<float> out(g.size());  // [n, ffn]
          matmul_swiglu(w1.view, w3.view, x.data(), n, out.data(), *pool);
          EXPECT_LE(norm_err(out.data(), g.data(), n, ffn, ffn), 5e-5) << "normalised error bound 5e-5";
          // Same as the unfused dispatched ops, bit for bit.
          std::vector<float> g2(g.size()), u2(g.size());
          matmul(w1.view, x.data(), n, g2.data(), ffn, *pool);
          matmul(w3.view, x.data(), n, u2.data(), ffn, *pool);
          silu_mul(g2.data(), u2.data(), n * ffn);
          EXPECT_EQ(0, std::memcmp(out.data(), g2.data(), out.size() * sizeof(float)));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// PreparedInput: activations with their dot formats made once and shared by several weights. Every result
// must be bit-identical to the float* matmul (which quantizes the same rows afresh on each call).

// Types with a table kernel, and one without (Q5_0: dequantized tiles with the f32 rows).
constexpr DType kPreparedTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0,
                                    DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q5_0};

bool needs_format(DType t) {
  return reads(t) != detail::Activations::kF32;
}

// y = W x through the float* form (its own, fresh quantization).  x: [n, cols]; returns [n, ldy]
std::vector<float> float_matmul(const TensorView& w, const float* x, int64_t n, int64_t ldy,
                                ThreadPool& pool) {
  std::vector<float> y(static_cast<size_t>(n * ldy), -7.0f);
  matmul(w, x, n, y.data(), ldy, pool);
  return y;
}

// y = W x through a PreparedInput.  returns [x.n(), ldy]
std::vector<float> prepared_matmul(const TensorView& w, PreparedInput& x, int64_t ldy, ThreadPool& pool) {
  std::vector<float> y(static_cast<size_t>(x.n() * ldy), -7.0f);
  matmul(w, x, y.data(), ldy, pool);
  return y;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(MatmulTest, PreparedInputMatchesFloatMatmul) {
  const int64_t rows = 37, cols = 512, ldy = rows + 3;
  for (DType t : kPreparedTypes)
    for (int64_t n : {1, 7}) {
      SCOPED_TRACE(std::string(dname(t)) + " n=" + std::to_string(n));
      const Weights w = make_weights(t, rows, cols, static_cast<uint32_t>(n + 3));
      const Weights w3 = make_weights(t, rows, cols, static_cast<uint32_t>(n + 4));
      const std::vector<float> x = randn(n * cols, static_cast<uint32_t>(n + 29));  // [n, cols]
      for (Isa isa : supported_isas()) {
        use_isa(isa);
        SCOPED_TRACE(isa_name(isa));
        for (ThreadPool* pool : {&pool1_, &pool2_}) {
          PreparedInput in;
          in.reset(x.data(), n, cols);
          EXPECT_TRUE(same_bits(prepared_matmul(w.view, in, ldy, *pool),
                                float_matmul(w.view, x.data(), n, ldy, *pool)))
              << "PreparedInput matmul != float* matmul";
          EXPECT_EQ(in.formats_made(), needs_format(t) ? 1 : 0);
          // Again from the cached format, then the fused SwiGLU on the same input.
          EXPECT_TRUE(same_bits(prepared_matmul(w.view, in, ldy, *pool),
                                float_matmul(w.view, x.data(), n, ldy, *pool)))
              << "second matmul from the cached format differs";
          std::vector<float> a(static_cast<size_t>(n * rows)), b(a.size());  // [n, rows]
          matmul_swiglu(w.view, w3.view, in, a.data(), *pool);
          matmul_swiglu(w.view, w3.view, x.data(), n, b.data(), *pool);
          EXPECT_TRUE(same_bits(a, b)) << "PreparedInput matmul_swiglu != float* matmul_swiglu";
          EXPECT_EQ(in.formats_made(), needs_format(t) ? 1 : 0) << "W1 and W3 of one type share the format";
        }
      }
    }
}

// One input read by weights of different kinds: each gets its own format (Q8_0 in its kernel's order, Q8_K)
// and the same bits as a separate call; a kind already seen reuses its format.
TEST_F(MatmulTest, PreparedInputSharedAcrossWeightKinds) {
  const int64_t cols = 768, n = 7;
  const DType order[] = {DType::Q4_0, DType::Q4_K, DType::Q8_0, DType::F16,
                         DType::Q6_K, DType::Q5_0, DType::Q4_0};
  std::vector<Weights> ws;
  for (size_t i = 0; i < std::size(order); ++i)
    ws.push_back(make_weights(order[i], 19 + static_cast<int64_t>(i), cols, static_cast<uint32_t>(40 + i)));
  const std::vector<float> x = randn(n * cols, 41);  // [n, cols]
  for (Isa isa : supported_isas()) {
    use_isa(isa);
    SCOPED_TRACE(isa_name(isa));
    const detail::KernelTable& k = detail::active_table();
    // Q8_0 for Q4_0 and for Q8_0 (one format when both kernels read the same order), Q8_K for the K-quants.
    const int64_t want = 2 + (kernel_of(k, DType::Q4_0).arrange != kernel_of(k, DType::Q8_0).arrange ? 1 : 0);
    PreparedInput in;
    in.reset(x.data(), n, cols);
    for (size_t i = 0; i < ws.size(); ++i) {
      SCOPED_TRACE(dname(order[i]));
      const int64_t rows = ws[i].view.rows();
      EXPECT_TRUE(same_bits(prepared_matmul(ws[i].view, in, rows, pool2_),
                            float_matmul(ws[i].view, x.data(), n, rows, pool2_)));
    }
    EXPECT_EQ(in.formats_made(), want);
  }
}

// A gathered subset (repeated and reordered rows, as an expert's tokens) equals the float rows gathered by
// hand; the formats the source had are copied (none quantized again), the others made on use.
TEST_F(MatmulTest, PreparedInputGatherMatchesGatheredRows) {
  const int64_t cols = 512, n = 9, rows = 23;
  const std::vector<float> x = randn(n * cols, 51);  // [n, cols]
  const std::vector<std::vector<int32_t>> subsets = {{7, 2, 2, 0, 8}, {4}, {0, 1, 2, 3, 4, 5, 6, 7, 8}};
  for (DType t : {DType::F32, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K, DType::Q5_0}) {
    SCOPED_TRACE(dname(t));
    const Weights w = make_weights(t, rows, cols, 52), w3 = make_weights(t, rows, cols, 53);
    for (Isa isa : supported_isas()) {
      use_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      for (const auto& sub : subsets) {
        const auto m = static_cast<int64_t>(sub.size());
        SCOPED_TRACE("m=" + std::to_string(m));
        std::vector<float> xs(static_cast<size_t>(m * cols));  // [m, cols] the rows gathered by hand
        for (int64_t i = 0; i < m; ++i) std::copy_n(x.begin() + sub[i] * cols, cols, xs.begin() + i * cols);
        const std::vector<float> want = float_matmul(w.view, xs.data(), m, rows, pool2_);
        for (bool prepared : {true, false}) {
          SCOPED_TRACE(prepared ? "source prepared" : "source not prepared");
          PreparedInput src, dst;
          src.reset(x.data(), n, cols);
          if (prepared) {
            src.prepare_for(w.view, pool2_);
            EXPECT_EQ(src.formats_made(), needs_format(t) ? 1 : 0);
          }
          dst.gather(src, sub.data(), m);
          ASSERT_EQ(dst.n(), m);
          EXPECT_EQ(0, std::memcmp(dst.data(), xs.data(), xs.size() * sizeof(float)));
          EXPECT_TRUE(same_bits(prepared_matmul(w.view, dst, rows, pool2_), want))
              << "gathered matmul differs";
          EXPECT_EQ(dst.formats_made(), !prepared && needs_format(t) ? 1 : 0)
              << "a gather must copy the source's formats, not quantize again";
          std::vector<float> a(static_cast<size_t>(m * rows)), b(a.size());  // [m, rows]
          matmul_swiglu(w.view, w3.view, dst, a.data(), pool2_);
          matmul_swiglu(w.view, w3.view, xs.data(), m, b.data(), pool2_);
          EXPECT_TRUE(same_bits(a, b)) << "gathered matmul_swiglu differs";
        }
      }
    }
  }
}

// wq/wk/wv-style reuse: three weights of one kind on one input make exactly one format; float weights none;
// the experts of a decode step (two SwiGLUs on one input) one; reset() starts over.
TEST_F(MatmulTest, PreparedInputQuantizesOncePerInput) {
  const int64_t cols = 512, n = 5;
  const std::vector<float> x = randn(n * cols, 61);  // [n, cols]
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::F16}) {
    SCOPED_TRACE(dname(t));
    const Weights wq = make_weights(t, 64, cols, 62), wk = make_weights(t, 16, cols, 63),
                  wv = make_weights(t, 16, cols, 64);
    for (Isa isa : supported_isas()) {
      use_isa(isa);
      SCOPED_TRACE(isa_name(isa));
      PreparedInput in;
      in.reset(x.data(), n, cols);
      EXPECT_EQ(in.formats_made(), 0);
      for (const Weights* w : {&wq, &wk, &wv}) {
        const int64_t rows = w->view.rows();
        EXPECT_TRUE(same_bits(prepared_matmul(w->view, in, rows, pool2_),
                              float_matmul(w->view, x.data(), n, rows, pool2_)));
      }
      EXPECT_EQ(in.formats_made(), t == DType::F16 ? 0 : 1) << "Wq, Wk, Wv: one quantization of their input";
      std::vector<float> h(static_cast<size_t>(n * 16));  // [n, 16]
      matmul_swiglu(wk.view, wv.view, in, h.data(), pool2_);
      matmul_swiglu(wv.view, wk.view, in, h.data(), pool2_);
      EXPECT_EQ(in.formats_made(), t == DType::F16 ? 0 : 1) << "two experts' SwiGLUs: still one";
      in.reset(x.data(), n, cols);
      EXPECT_EQ(in.formats_made(), 0);
      prepared_matmul(wq.view, in, 64, pool2_);
      EXPECT_EQ(in.formats_made(), t == DType::F16 ? 0 : 1) << "reset drops the formats";
    }
  }
}

// A format made under one kernel table is not used under another (set_isa between prepare and use): the
// result is the new table's float* result, for the input itself and for a subset gathered from it.
TEST_F(MatmulTest, PreparedInputFollowsTableChanges) {
  const std::vector<Isa> isas = supported_isas();
  if (isas.size() < 2) GTEST_SKIP() << "one instruction set on this machine";
  const int64_t cols = 512, n = 6, rows = 21;
  const std::vector<float> x = randn(n * cols, 71);  // [n, cols]
  const std::vector<int32_t> sub = {5, 1, 3};
  std::vector<float> xs(sub.size() * static_cast<size_t>(cols));  // [3, cols]
  for (size_t i = 0; i < sub.size(); ++i) std::copy_n(x.begin() + sub[i] * cols, cols, xs.begin() + i * cols);
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K}) {
    const Weights w = make_weights(t, rows, cols, 72);
    for (Isa from : isas)
      for (Isa to : isas) {
        if (from == to) continue;
        SCOPED_TRACE(std::string(dname(t)) + " " + isa_name(from) + " -> " + isa_name(to));
        use_isa(from);
        PreparedInput in, part;
        in.reset(x.data(), n, cols);
        in.prepare_for(w.view, pool2_);
        part.gather(in, sub.data(), static_cast<int64_t>(sub.size()));
        use_isa(to);
        EXPECT_TRUE(same_bits(prepared_matmul(w.view, in, rows, pool2_),
                              float_matmul(w.view, x.data(), n, rows, pool2_)));
        EXPECT_TRUE(
            same_bits(prepared_matmul(w.view, part, rows, pool2_),
                      float_matmul(w.view, xs.data(), static_cast<int64_t>(sub.size()), rows, pool2_)));
        // Q8_K is the scalar quantize_row's on every table: shared; Q8_0 is keyed by the table's functions.
        EXPECT_EQ(in.formats_made(), t == DType::Q4_K ? 1 : 2);
      }
  }
}

// The SIMD activation quantizers must round exactly like quantize_row (ties away from zero with the
// unrounded 1/d, d rounded to fp16 to the nearest even), including the tie cases.
TEST(QuantizeActivations, BitIdenticalToQuantizeRow) {
  std::vector<float> x = randn(32 * 64, 3, 2.0f);  // [64 blocks of 32]
  for (int j = 0; j < 32; ++j) {
    x[j] = j == 0 ? 127.0f : static_cast<float>(j % 7) - 3.5f + (j % 2 ? 0.0f : 0.49999997f);  // d = 1: ties
    x[32 + j] = 0.0f;                                                                          // d = 0
    x[64 + j] = (j % 2 ? -1.0f : 1.0f) * 1e-30f * static_cast<float>(j + 1);                   // tiny scale
    x[96 + j] = (j - 16) * 1e4f;                                                               // large values
  }
  std::vector<BlockQ8_0> want(64);
  quantize_row(DType::Q8_0, x.data(), want.data(), static_cast<int64_t>(x.size()));
  for (Isa isa : supported_isas()) {
    const detail::KernelTable* k = table_of(isa);
    ASSERT_NE(k, nullptr);
    SCOPED_TRACE(k->name);
    std::vector<int8_t> qs(x.size());  // [cols]
    std::vector<float> d(64);          // [blocks]
    k->quantize_q8(x.data(), static_cast<int64_t>(x.size()), qs.data(), d.data());
    for (int b = 0; b < 64; ++b) {
      ASSERT_EQ(d[b], fp16_to_f32(want[b].d)) << "block " << b;
      for (int j = 0; j < 32; ++j)
        ASSERT_EQ(qs[b * 32 + j], want[b].qs[j]) << "block " << b << " element " << j;
    }
  }
}

// The same for Q8_K (the K-quant kernels' activations): the extreme of each block maps to -127 (the first
// of equal magnitudes: +-a ties), ties of x * iscale round to even, zero blocks, tiny and huge scales.
TEST(QuantizeActivations, Q8KBitIdenticalToQuantizeRow) {
  std::vector<float> x = randn(256 * 12, 5, 2.0f);  // [12 blocks of 256]
  for (int j = 0; j < 256; ++j) {
    x[j] = j == 7 ? 127.0f : (j == 200 ? -127.0f : static_cast<float>(j % 9) - 4.5f);  // iscale -1: ties
    x[256 + j] = j == 40 ? -3.0f : (j == 41 ? 3.0f : 0.25f);                           // -a before +a
    x[512 + j] = 0.0f;                                                                 // d = 0
    x[768 + j] = (j % 2 ? -1.0f : 1.0f) * 1e-30f * static_cast<float>(j + 1);          // tiny scale
    x[1024 + j] = (j - 128) * 1e6f;                                                    // large values
  }
  std::vector<BlockQ8_K> want(12);
  quantize_row(DType::Q8_K, x.data(), want.data(), static_cast<int64_t>(x.size()));
  for (Isa isa : supported_isas()) {
    const detail::KernelTable* k = table_of(isa);
    ASSERT_NE(k, nullptr);
    SCOPED_TRACE(k->name);
    std::vector<BlockQ8_K> got(12);
    std::memset(static_cast<void*>(got.data()), 0x5a, got.size() * sizeof(BlockQ8_K));
    k->quantize_q8_k(x.data(), static_cast<int64_t>(x.size()), got.data());
    for (int b = 0; b < 12; ++b) {
      ASSERT_EQ(got[b].d, want[b].d) << "block " << b;
      for (int j = 0; j < 256; ++j)
        ASSERT_EQ(got[b].qs[j], want[b].qs[j]) << "block " << b << " element " << j;
      for (int g = 0; g < 16; ++g)
        ASSERT_EQ(got[b].bsums[g], want[b].bsums[g]) << "block " << b << " sum " << g;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise ops. Tolerance: 1e-6 relative per element (observed <= 5e-7): the vector exp is ~1-2 ulp,
// reciprocal multiply vs division, f32 lane sums vs the reference's double sums.

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    worst =
        std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]) / std::max(1e-30, std::fabs(1.0 * b[i])));
  return worst;
}

TEST(Elementwise, RmsnormSiluSoftmaxMatchReference) {
  IsaGuard guard;
  for (Isa isa : supported_isas()) {
    use_isa(isa);
    SCOPED_TRACE(isa_name(isa));
    for (int64_t dim : {1, 5, 16, 33, 4096}) {
      SCOPED_TRACE("dim=" + std::to_string(dim));
      const int64_t n = 3;
      const std::vector<float> x = randn(n * dim, 1, 4.0f), w = randn(dim, 2);  // x: [n, dim]; w: [dim]
      std::vector<float> want(x.size()), got(x.size()), inplace = x;
      ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      rmsnorm(x.data(), w.data(), n, dim, 1e-5f, got.data());
      EXPECT_LE(max_rel(got, want), 1e-6) << "rmsnorm relative error bound 1e-6";
      rmsnorm(inplace.data(), w.data(), n, dim, 1e-5f, inplace.data());
      EXPECT_EQ(0, std::memcmp(inplace.data(), got.data(), got.size() * sizeof(float))) << "in place differs";

      std::vector<float> s_want = x, s_got = x;
      ref::silu_mul(s_want.data(), w.data(), dim);
      silu_mul(s_got.data(), w.data(), dim);
      s_want.resize(dim);
      s_got.resize(dim);
      EXPECT_LE(max_rel(s_got, s_want), 1e-6) << "silu_mul relative error bound 1e-6";

      std::vector<float> m_want(x.begin(), x.begin() + dim), m_got = m_want;
      ref::softmax(m_want.data(), dim);
      softmax(m_got.data(), dim);
      EXPECT_LE(max_rel(m_got, m_want), 1e-6) << "softmax relative error bound 1e-6";
    }
    // Extremes: silu of large |x| and softmax with a huge spread.
    std::vector<float> big = {-200.0f, -90.0f, -30.0f, 0.0f, 30.0f, 90.0f, 200.0f}, ones(7, 1.0f);
    std::vector<float> want = big, got = big;
    ref::silu_mul(want.data(), ones.data(), 7);
    silu_mul(got.data(), ones.data(), 7);
    for (size_t i = 0; i < 7; ++i) EXPECT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i]) + 1e-30) << big[i];
    std::vector<float> sm = {0.0f, -1000.0f, -INFINITY, 5.0f};
    softmax(sm.data(), 4);
    EXPECT_NEAR(sm[0], 1.0 / (1.0 + std::exp(5.0)), 1e-7);
    EXPECT_EQ(sm[1], 0.0f);
    EXPECT_EQ(sm[2], 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------------
// RoPE.

TEST(Rope, MatchesReferenceAndFloat64) {
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalf}) {
    SCOPED_TRACE(layout == RopeLayout::kHalf ? "half" : "interleaved");
    const RopeParams p{3, 128, 1e6f, layout};
    const std::vector<int32_t> pos = {0, 1, 7, 4095, 32767};
    const int64_t n = static_cast<int64_t>(pos.size());
    const std::vector<float> x = randn(n * p.n_heads * p.head_dim, 11);  // [n, heads, head_dim]
    std::vector<float> want = x, got = x;
    ref::rope(want.data(), pos.data(), n, p);
    rope(got.data(), pos.data(), n, p);
    // Same double-precision angles and the same f32 rotation: identical up to FMA contraction.
    EXPECT_LE(max_rel(got, want), 1e-6);
    // Float64 rotation with angle = pos * theta^(-2i/hd): |err| <= ~1e-6 * |x| (cos/sin rounded to f32).
    const int64_t hd = p.head_dim, half = hd / 2;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < p.n_heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i0 = layout == RopeLayout::kHalf ? i : 2 * i,
                        i1 = layout == RopeLayout::kHalf ? i + half : 2 * i + 1;
          const size_t base = static_cast<size_t>((t * p.n_heads + h) * hd);
          const double ang = pos[t] * std::pow(1e6, -2.0 * i / hd);
          const double a = x[base + i0], b = x[base + i1];
          ASSERT_NEAR(want[base + i0], a * std::cos(ang) - b * std::sin(ang),
                      1e-6 * (std::fabs(a) + std::fabs(b)));
          ASSERT_NEAR(want[base + i1], a * std::sin(ang) + b * std::cos(ang),
                      1e-6 * (std::fabs(a) + std::fabs(b)));
        }
  }
}

// kHalf on a vector == permute to interleaved order, kInterleaved, permute back (exactly).
TEST(Rope, LayoutsAreAPermutationOfEachOther) {
  const RopeParams half{4, 64, 1e6f, RopeLayout::kHalf};
  RopeParams inter = half;
  inter.layout = RopeLayout::kInterleaved;
  const int64_t hd = half.head_dim, n = 3;
  const std::vector<int32_t> pos = {3, 100, 9999};
  const std::vector<float> x = randn(n * half.n_heads * hd, 12);  // [n, heads, head_dim], rotate-half order
  std::vector<float> perm(x.size());  // interleaved order: perm[2i] = x[i], perm[2i+1] = x[i + hd/2]
  for (size_t v = 0; v < x.size() / hd; ++v)
    for (int64_t i = 0; i < hd / 2; ++i) {
      perm[v * hd + 2 * i] = x[v * hd + i];
      perm[v * hd + 2 * i + 1] = x[v * hd + i + hd / 2];
    }
  for (bool use_ref : {true, false}) {
    std::vector<float> a = x, b = perm;
    if (use_ref) {
      ref::rope(a.data(), pos.data(), n, half);
      ref::rope(b.data(), pos.data(), n, inter);
    } else {
      rope(a.data(), pos.data(), n, half);
      rope(b.data(), pos.data(), n, inter);
    }
    for (size_t v = 0; v < x.size() / hd; ++v)
      for (int64_t i = 0; i < hd / 2; ++i) {
        ASSERT_EQ(a[v * hd + i], b[v * hd + 2 * i]) << (use_ref ? "ref" : "fast");
        ASSERT_EQ(a[v * hd + i + hd / 2], b[v * hd + 2 * i + 1]) << (use_ref ? "ref" : "fast");
      }
  }
}

TEST(Dispatch, SetIsaClampsAndNames) {
  IsaGuard guard;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    set_isa(isa);
    EXPECT_LE(static_cast<int>(active_isa()), static_cast<int>(detect_isa()));
    if (static_cast<int>(isa) <= static_cast<int>(detect_isa())) {
      EXPECT_EQ(active_isa(), isa);
    }
  }
  EXPECT_STREQ(isa_name(Isa::kScalar), "scalar");
  EXPECT_STREQ(isa_name(Isa::kAvx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::kAvx512), "avx512");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) {
    EXPECT_EQ(detect_isa(), Isa::kAvx512);
  }
#endif
}

}  // namespace
}  // namespace mixtral::kernels
