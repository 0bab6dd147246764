// K-quant matmuls (Q4_K, Q5_K, Q6_K) over small batches, on every x86 kernel table this CPU runs: each
// (row, token) output against a scalar model of the x86 kernels' arithmetic, bit for bit, and against
// ref::matmul (f32 activations) within the Q8_K rounding of the activations.
//
// The model (docs/architecture.md "Kernels"): per super-block b, the exact integer sums
// sq = sum_g sc[g] (q . x_q)_g and sm = sum_g mi[g] bsums[g] over the Q8_K activations, then
//   acc = fma(float(sq), d * d_x, acc);  acc = fma(-float(sm), dm * d_x, acc)
// in super-block order. Every tile form (decode, the small-batch groups, the 8-token prefill tiles) must
// give exactly these bits, so a token's outputs cannot depend on its batch, the thread count or which
// tile it fell in.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// One super-block of weights as the model reads it: w[i] = d * sc[i / 16] * q[i] - dm * mi[i / 16].
struct KBlock {
  int q[kQK_K];
  int sc[16], mi[16];  // [16] per 16 values
  float d, dm;
};

KBlock decode_block(DType t, const uint8_t* p) {
  KBlock k{};
  if (t == DType::Q4_K || t == DType::Q5_K) {
    const bool q5 = t == DType::Q5_K;
    const uint16_t d =
        q5 ? reinterpret_cast<const BlockQ5_K*>(p)->d : reinterpret_cast<const BlockQ4_K*>(p)->d;
    const uint16_t dmin =
        q5 ? reinterpret_cast<const BlockQ5_K*>(p)->dmin : reinterpret_cast<const BlockQ4_K*>(p)->dmin;
    const uint8_t* scales =
        q5 ? reinterpret_cast<const BlockQ5_K*>(p)->scales : reinterpret_cast<const BlockQ4_K*>(p)->scales;
    const uint8_t* qs =
        q5 ? reinterpret_cast<const BlockQ5_K*>(p)->qs : reinterpret_cast<const BlockQ4_K*>(p)->qs;
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l) {
        k.q[64 * j + l] = qs[32 * j + l] & 15;
        k.q[64 * j + 32 + l] = qs[32 * j + l] >> 4;
        if (q5) {
          const uint8_t h = reinterpret_cast<const BlockQ5_K*>(p)->qh[l];
          k.q[64 * j + l] |= ((h >> (2 * j)) & 1) << 4;
          k.q[64 * j + 32 + l] |= ((h >> (2 * j + 1)) & 1) << 4;
        }
      }
    for (int s = 0; s < 8; ++s) {
      int sc, mn;
      k_scale_min(s, scales, &sc, &mn);
      k.sc[2 * s] = k.sc[2 * s + 1] = sc;
      k.mi[2 * s] = k.mi[2 * s + 1] = mn;
    }
    k.d = fp16_to_f32(d);
    k.dm = fp16_to_f32(dmin);
  } else {
    const auto& b = *reinterpret_cast<const BlockQ6_K*>(p);
    for (int h = 0; h < 2; ++h)
      for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
          const uint8_t lb = b.ql[64 * h + l + 32 * (c & 1)];
          k.q[128 * h + 32 * c + l] = (c < 2 ? lb & 15 : lb >> 4) | ((b.qh[32 * h + l] >> (2 * c)) & 3) << 4;
        }
    for (int g = 0; g < 16; ++g) {
      k.sc[g] = b.scales[g];
      k.mi[g] = 32 * b.scales[g];
    }
    k.d = k.dm = fp16_to_f32(b.d);
  }
  return k;
}

// The model's y [n, rows] for weights w [rows, cols] (row stride rb) and activations x [n, cols].
std::vector<float> model_matmul(DType t, const std::vector<uint8_t>& w, size_t rb, int64_t rows,
                                const std::vector<float>& x, int64_t n, int64_t cols) {
  const int64_t nb = cols / kQK_K;
  std::vector<BlockQ8_K> xq(static_cast<size_t>(n * nb));  // [n, nb]
  for (int64_t tk = 0; tk < n; ++tk)
    quantize_row(DType::Q8_K, x.data() + tk * cols, xq.data() + tk * nb, cols);
  const size_t bb = rb / static_cast<size_t>(nb);
  std::vector<float> y(static_cast<size_t>(n * rows));
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<KBlock> blocks(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) blocks[b] = decode_block(t, w.data() + r * rb + b * bb);
    for (int64_t tk = 0; tk < n; ++tk) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const KBlock& k = blocks[b];
        const BlockQ8_K& xb = xq[tk * nb + b];
        int32_t sq = 0, sm = 0;
        for (int g = 0; g < 16; ++g) {
          int32_t dot = 0;
          for (int i = 0; i < 16; ++i) dot += k.q[16 * g + i] * xb.qs[16 * g + i];
          sq += k.sc[g] * dot;
          sm += k.mi[g] * xb.bsums[g];
        }
        acc = std::fma(static_cast<float>(sq), k.d * xb.d, acc);
        acc = std::fma(-static_cast<float>(sm), k.dm * xb.d, acc);
      }
      y[tk * rows + r] = acc;
    }
  }
  return y;
}

std::vector<Isa> x86_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kAvx2, Isa::kAvx512})
    if (static_cast<int>(i) <= static_cast<int>(detect_isa())) v.push_back(i);
  return v;
}

struct IsaGuard {
  ~IsaGuard() { set_isa(detect_isa()); }
};

class KQuantBatchTest : public ::testing::Test {
 protected:
  ThreadPool pool1_{1};
  ThreadPool pool2_{2};
  IsaGuard guard_;

  // Every n in ns for weight type t, [rows, cols]: the model bit for bit at 1 and 2 threads, each token
  // alone the same bits, and ref::matmul within 2e-2 of sum |w x| (the Q8_K rounding of x, as in
  // kernels_test's KQuantsMatchReference). With `packed` (a repacked layout of t, e.g. Q4_K_R16), the
  // matmuls read the weights repacked into it and must still give the model's bits of the file layout.
  void check(DType t, int64_t rows, int64_t cols, const std::vector<int64_t>& ns, DType packed = DType::F32) {
    const size_t rb = row_bytes(t, cols);
    std::vector<uint8_t> w(rb * static_cast<size_t>(rows));  // [rows, rb]
    const std::vector<float> wf = randn(rows * cols, static_cast<uint32_t>(rows * 7 + cols), 0.05f);
    for (int64_t r = 0; r < rows; ++r) quantize_row(t, wf.data() + r * cols, w.data() + r * rb, cols);
    const bool repacked = packed != DType::F32;
    std::vector<uint8_t> wp(w);  // [rows, rb] the weights as the matmuls read them
    if (repacked) repack(t, packed, w.data(), wp.data(), rows, cols);
    TensorView v;
    v.data = wp.data();
    v.dtype = repacked ? packed : t;
    v.ndim = 2;
    v.shape = {rows, cols, 1, 1};
    std::vector<float> wd(static_cast<size_t>(rows * cols));  // [rows, cols] decoded, for sum |w x|
    for (int64_t r = 0; r < rows; ++r) dequantize_row(t, w.data() + r * rb, wd.data() + r * cols, cols);
    for (int64_t n : ns) {
      SCOPED_TRACE(std::string(dtype_name(v.dtype)) + " rows=" + std::to_string(rows) +
                   " cols=" + std::to_string(cols) + " n=" + std::to_string(n));
      std::vector<float> x = randn(n * cols, static_cast<uint32_t>(n * 13 + cols));  // [n, cols]
      std::fill(x.begin(), x.begin() + kQK_K, 0.0f);  // an all-zero super-block: d_x = 0
      const std::vector<float> want = model_matmul(t, w, rb, rows, x, n, cols);  // [n, rows]
      std::vector<float> ref(want.size());                                       // [n, rows]
      ref::matmul(v, x.data(), n, ref.data(), rows);
      for (Isa isa : x86_isas()) {
        set_isa(isa);
        ASSERT_EQ(active_isa(), isa);
        SCOPED_TRACE(isa_name(isa));
        for (ThreadPool* pool : {&pool1_, &pool2_}) {
          std::vector<float> y(want.size(), -7.0f);  // [n, rows]
          matmul(v, x.data(), n, y.data(), rows, *pool);
          ASSERT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float)))
              << "not the model's bits at " << pool->size() << " threads";
        }
        for (int64_t tk = 0; tk < n; ++tk) {  // alone: the decode kernel
          std::vector<float> y1(static_cast<size_t>(rows));
          matmul(v, x.data() + tk * cols, 1, y1.data(), rows, pool2_);
          ASSERT_EQ(0, std::memcmp(y1.data(), want.data() + tk * rows, y1.size() * sizeof(float)))
              << "token " << tk << " alone differs from its batch";
        }
      }
      for (int64_t tk = 0; tk < n; ++tk) {
        double err = 0.0, mag = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
          double m = 0.0;
          for (int64_t c = 0; c < cols; ++c)
            m += std::fabs(wd[r * cols + c] * static_cast<double>(x[tk * cols + c]));
          mag = std::max(mag, m);
          err = std::max(err, std::fabs(static_cast<double>(want[tk * rows + r]) - ref[tk * rows + r]));
        }
        EXPECT_LE(err, 2e-2 * mag) << "model vs ref::matmul at token " << tk;
      }
    }
  }
};

std::vector<int64_t> one_to(int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 1; i <= n; ++i) v.push_back(i);
  return v;
}

// Every token count 1..17 (the decode groups of up to 8 tokens, their remainders, the 8-token prefill
// tiles), rows that leave 1..3 over the 4-row groups and a part of a 16-row panel.
TEST_F(KQuantBatchTest, SmallBatchesMatchTheModel) {
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    check(t, 37, 768, one_to(17));
    check(t, 6, 256, {1, 2, 3, 5, 9});
  }
}

// Wide rows: the decode kernels lay out the activations in spans of super-blocks (fewer the more tokens),
// so 40 super-blocks cross span ends for every group size.
TEST_F(KQuantBatchTest, SpansOfSuperBlocks) {
  for (DType t : {DType::Q4_K, DType::Q6_K}) check(t, 9, 40 * kQK_K, {1, 2, 3, 4, 7, 8, 12});
}

// A batch large enough for the prefill tiles' token blocks (64 tokens) and several row chunks.
TEST_F(KQuantBatchTest, PrefillMatchesTheModel) {
  check(DType::Q4_K, 300, 512, {70});
  check(DType::Q6_K, 21, 512, {65});
}

// Q4_K_R16 and Q6_K_R16 (AVX-512's layouts for Q4_K and Q6_K: 16 rows interleaved, made at load) give
// the model's bits of the file layout at every token count of a serving step and beyond (n = 1..17: each
// token tile, a full 8-token tile plus a remainder), on one group of 16 rows and on several (the decode
// tiles take groups from 2 parts, then the rest alone), on wide rows, and for a batch of prefill size over
// several row chunks. Every table runs them (AVX2 and generic row by row, unpacked back).
TEST_F(KQuantBatchTest, RowInterleavedKQuantsMatchTheModel) {
  for (const auto& [file, packed] :
       {std::pair{DType::Q4_K, DType::Q4_K_R16}, {DType::Q6_K, DType::Q6_K_R16}}) {
    check(file, 48, 768, one_to(17), packed);
    check(file, 16, 256, {1, 2, 5, 9}, packed);
    check(file, 16, 40 * kQK_K, {1, 4, 8, 12}, packed);
    check(file, 304, 512, {70}, packed);
  }
}

// The R16 K-quant bytes against their definition (tensor/quant.h): in block (g, b), row 16g + r's fp16
// fields at index r and every byte field's 4-byte word w at lanes [64w + 4r, 64w + 4r + 4); repacked in
// place and back, the file bytes again.
TEST(KQuantLayout, RowInterleavedBytesAsDefined) {
  const int64_t rows = 32, cols = 3 * kQK_K, nb = cols / kQK_K;
  const auto lanes = [](const uint8_t* group_field, const uint8_t* row_field, int r, int n) {
    for (int j = 0; j < n; ++j)
      if (group_field[64 * (j / 4) + 4 * r + j % 4] != row_field[j]) return j;
    return -1;
  };
  for (DType file : {DType::Q4_K, DType::Q6_K}) {
    const DType packed = file == DType::Q4_K ? DType::Q4_K_R16 : DType::Q6_K_R16;
    SCOPED_TRACE(std::string(dtype_name(packed)));
    const size_t rb = row_bytes(file, cols), bb = traits(file).block_bytes;
    std::vector<uint8_t> w(rb * static_cast<size_t>(rows));  // [rows, rb]
    const std::vector<float> wf = randn(rows * cols, 11, 0.05f);
    for (int64_t r = 0; r < rows; ++r) quantize_row(file, wf.data() + r * cols, w.data() + r * rb, cols);
    std::vector<uint8_t> p(w);
    repack(file, packed, p.data(), p.data(), rows, cols);
    ASSERT_NE(p, w) << "the repack moved nothing";
    for (int64_t g = 0; g < rows / 16; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* out = p.data() + (g * nb + b) * 16 * bb;
        for (int r = 0; r < 16; ++r) {
          const uint8_t* in = w.data() + (g * 16 + r) * rb + b * bb;
          if (file == DType::Q4_K) {
            const auto& o = *reinterpret_cast<const BlockQ4_KR16*>(out);
            const auto& i = *reinterpret_cast<const BlockQ4_K*>(in);
            ASSERT_EQ(o.d[r], i.d) << "row " << r;
            ASSERT_EQ(o.dmin[r], i.dmin) << "row " << r;
            ASSERT_EQ(lanes(o.scales, i.scales, r, kKScaleBytes), -1) << "row " << r << " scales";
            ASSERT_EQ(lanes(o.qs, i.qs, r, kQK_K / 2), -1) << "row " << r << " qs";
          } else {
            const auto& o = *reinterpret_cast<const BlockQ6_KR16*>(out);
            const auto& i = *reinterpret_cast<const BlockQ6_K*>(in);
            ASSERT_EQ(o.d[r], i.d) << "row " << r;
            ASSERT_EQ(lanes(reinterpret_cast<const uint8_t*>(o.scales),
                            reinterpret_cast<const uint8_t*>(i.scales), r, kQK_K / 16),
                      -1)
                << "row " << r << " scales";
            ASSERT_EQ(lanes(o.ql, i.ql, r, kQK_K / 2), -1) << "row " << r << " ql";
            ASSERT_EQ(lanes(o.qh, i.qh, r, kQK_K / 4), -1) << "row " << r << " qh";
          }
        }
      }
    repack(packed, file, p.data(), p.data(), rows, cols);
    EXPECT_EQ(p, w);
  }
}

}  // namespace
}  // namespace mixtral::kernels
