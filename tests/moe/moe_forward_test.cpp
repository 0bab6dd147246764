// MoeLayer::forward against a float64 computation from the definition
//   y[t] = sum over the chosen experts e of w(t, e) * W2_e(silu(W1_e x[t]) * W3_e x[t]),
// for a batch (tokens grouped by expert, one GEMM per expert, weighted scatter) and token by token
// (the decode path), with f32 expert weights so the only differences are f32 summation orders.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "moe/moe.h"
#include "tensor/quant.h"

namespace mixtral {
namespace {

TensorView f32_view(std::vector<float>& v, int64_t rows, int64_t cols) {
  TensorView t;
  t.data = v.data();
  t.dtype = DType::F32;
  t.ndim = 2;
  t.shape = {rows, cols, 1, 1};
  return t;
}

// A layer of c.n_experts random experts, values N(0, 0.3): router [E, dim] f32; W1, W3 [ffn, dim] of type
// t13 and W2 [dim, ffn] of type t2, each quantized in its file layout and repacked as the loader does where
// the type is a repacked one (Q4_0_G8, Q8_0_G8).
struct RandomExperts {
  LayerWeights w;
  std::vector<std::vector<uint8_t>> bytes;  // [3 E] W1, W3, W2 of each expert (w's views point here)

  RandomExperts(DType t13, DType t2, const ModelConfig& c, std::mt19937& rng)
      : bytes(static_cast<size_t>(3 * c.n_experts)) {
    std::normal_distribution<float> nd(0.0f, 0.3f);
    const int64_t dim = c.dim, ffn = c.ffn_dim;
    auto quantized = [&](DType t, int64_t rows, int64_t cols, std::vector<uint8_t>& out) {
      const DType file = file_layout(t);
      const size_t rb = row_bytes(file, cols);
      out.resize(rb * static_cast<size_t>(rows));
      std::vector<float> row(static_cast<size_t>(cols));  // [cols]
      for (int64_t r = 0; r < rows; ++r) {
        for (auto& v : row) v = nd(rng);
        quantize_row(file, row.data(), out.data() + static_cast<size_t>(r) * rb, cols);
      }
      if (file != t) repack(file, t, out.data(), out.data(), rows, cols);
      TensorView v;
      v.data = out.data();
      v.dtype = t;
      v.ndim = 2;
      v.shape = {rows, cols, 1, 1};
      return v;
    };
    w.router.resize(static_cast<size_t>(c.n_experts * dim));  // [E, dim]
    for (auto& v : w.router) v = nd(rng);
    for (int64_t e = 0; e < c.n_experts; ++e) {
      w.w1.push_back(quantized(t13, ffn, dim, bytes[static_cast<size_t>(3 * e)]));
      w.w3.push_back(quantized(t13, ffn, dim, bytes[static_cast<size_t>(3 * e + 1)]));
      w.w2.push_back(quantized(t2, dim, ffn, bytes[static_cast<size_t>(3 * e + 2)]));
    }
  }
};
TEST(MoeLayer, BatchAndSingleTokensMatchFloat64Definition) {
  ModelConfig c;
  c.dim = 64;
  c.ffn_dim = 96;
  c.n_experts = 4;
  c.n_experts_used = 2;
  const int64_t E = c.n_experts, dim = c.dim, ffn = c.ffn_dim, n = 23;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  LayerWeights w;
  w.router.resize(static_cast<size_t>(E * dim));  // [E, dim]
  for (auto& v : w.router) v = nd(rng);
  std::vector<std::vector<float>> w1(E), w3(E), w2(E);  // [ffn, dim], [ffn, dim], [dim, ffn] per expert
  for (int64_t e = 0; e < E; ++e) {
    for (auto* m : {&w1[e], &w3[e], &w2[e]}) {
      m->resize(static_cast<size_t>(ffn * dim));
      for (auto& v : *m) v = nd(rng);
    }
    w.w1.push_back(f32_view(w1[e], ffn, dim));
    w.w3.push_back(f32_view(w3[e], ffn, dim));
    w.w2.push_back(f32_view(w2[e], dim, ffn));
  }
  std::vector<float> x(static_cast<size_t>(n * dim));  // [n, dim]
  for (auto& v : x) v = nd(rng);

  ThreadPool pool(2);
  MoeLayer layer(c);
  std::vector<float> y(x.size());  // [n, dim]
  layer.forward(w, x.data(), n, y.data(), pool);
  const Routing routing = layer.routing();

  std::vector<float> y1(x.size());  // [n, dim] one token at a time
  for (int64_t t = 0; t < n; ++t) layer.forward(w, x.data() + t * dim, 1, y1.data() + t * dim, pool);

  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> want(static_cast<size_t>(dim), 0.0), mag(static_cast<size_t>(dim), 0.0);
    for (int64_t j = 0; j < c.n_experts_used; ++j) {
      const auto e = static_cast<size_t>(routing.experts[static_cast<size_t>(t * 2 + j)]);
      const double we = routing.weights[static_cast<size_t>(t * 2 + j)];
      std::vector<double> h(static_cast<size_t>(ffn));
      for (int64_t f = 0; f < ffn; ++f) {
        double g = 0.0, u = 0.0;
        for (int64_t d = 0; d < dim; ++d) {
          g += double(w1[e][static_cast<size_t>(f * dim + d)]) * x[static_cast<size_t>(t * dim + d)];
          u += double(w3[e][static_cast<size_t>(f * dim + d)]) * x[static_cast<size_t>(t * dim + d)];
        }
        h[static_cast<size_t>(f)] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t d = 0; d < dim; ++d) {
        double s = 0.0, m = 0.0;
        for (int64_t f = 0; f < ffn; ++f) {
          s += double(w2[e][static_cast<size_t>(d * ffn + f)]) * h[static_cast<size_t>(f)];
          m += std::fabs(double(w2[e][static_cast<size_t>(d * ffn + f)]) * h[static_cast<size_t>(f)]);
        }
        want[static_cast<size_t>(d)] += we * s;
        mag[static_cast<size_t>(d)] += we * m;
      }
    }
    const double scale = *std::max_element(mag.begin(), mag.end());
    for (int64_t d = 0; d < dim; ++d) {
      const size_t i = static_cast<size_t>(t * dim + d);
      // f32 products of 64- and 96-term sums in another order, relative to sum |terms|: bound 1e-5
      EXPECT_LE(std::fabs(y[i] - want[static_cast<size_t>(d)]) / scale, 1e-5) << "batch, token " << t;
      EXPECT_LE(std::fabs(y1[i] - want[static_cast<size_t>(d)]) / scale, 1e-5) << "single, token " << t;
    }
  }
}

// Quantized experts: the layer quantizes its input once and gives each expert its rows (quantized rows
// copied); the result must be bit-identical to the per-expert path written with the float* kernels (each
// expert's gathered f32 rows quantized afresh), batched and token by token. W1/W3 and W2 types as in
// Q8_0, Q4_0 and Q4_K_M files, under every instruction set the machine runs.
TEST(MoeLayer, QuantizedExpertsMatchPerExpertFloatPath) {
  ModelConfig c;
  c.dim = 256;
  c.ffn_dim = 512;
  c.n_experts = 4;
  c.n_experts_used = 2;
  const int64_t E = c.n_experts, k = c.n_experts_used, dim = c.dim, ffn = c.ffn_dim, n = 19;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  const DType types[][2] = {
      {DType::Q8_0, DType::Q8_0}, {DType::Q4_0, DType::Q4_0}, {DType::Q4_K, DType::Q6_K}};
  ThreadPool pool(2);
  for (const auto& [t13, t2] : types) {
    SCOPED_TRACE(std::string(dtype_name(t13)) + "/" + std::string(dtype_name(t2)));
    const RandomExperts layer_w(t13, t2, c, rng);
    const LayerWeights& w = layer_w.w;
    std::vector<float> x(static_cast<size_t>(n * dim));  // [n, dim]
    for (auto& v : x) v = nd(rng);

    const kernels::Isa best = kernels::detect_isa();
    for (kernels::Isa isa : {kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
      if (static_cast<int>(isa) > static_cast<int>(best)) continue;
      kernels::set_isa(isa);
      SCOPED_TRACE(kernels::isa_name(isa));
      MoeLayer layer(c);
      for (int64_t nt : {n, int64_t{1}}) {  // the batch, then its first token alone (decode)
        std::vector<float> y(static_cast<size_t>(nt * dim));  // [nt, dim]
        layer.forward(w, x.data(), nt, y.data(), pool);
        const Routing& r = layer.routing();
        std::vector<float> want(y.size(), 0.0f);  // [nt, dim] per expert, its tokens in order
        for (int64_t e = 0; e < E; ++e) {
          std::vector<int64_t> toks;
          std::vector<float> wts;
          for (int64_t t = 0; t < nt; ++t)
            for (int64_t j = 0; j < k; ++j)
              if (r.experts[static_cast<size_t>(t * k + j)] == e) {
                toks.push_back(t);
                wts.push_back(r.weights[static_cast<size_t>(t * k + j)]);
              }
          const auto m = static_cast<int64_t>(toks.size());
          if (m == 0) continue;
          std::vector<float> xe(static_cast<size_t>(m * dim)), h(static_cast<size_t>(m * ffn)),
              ye(static_cast<size_t>(m * dim));  // [m, dim], [m, ffn], [m, dim]
          for (int64_t i = 0; i < m; ++i)
            std::memcpy(xe.data() + i * dim, x.data() + toks[static_cast<size_t>(i)] * dim,
                        sizeof(float) * dim);
          kernels::matmul_swiglu(w.w1[static_cast<size_t>(e)], w.w3[static_cast<size_t>(e)], xe.data(), m,
                                 h.data(), pool);
          kernels::matmul(w.w2[static_cast<size_t>(e)], h.data(), m, ye.data(), dim, pool);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t d = 0; d < dim; ++d)
              want[static_cast<size_t>(toks[static_cast<size_t>(i)] * dim + d)] +=
                  wts[static_cast<size_t>(i)] * ye[static_cast<size_t>(i * dim + d)];
        }
        EXPECT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float))) << nt << " tokens";
      }
    }
    kernels::set_isa(best);
  }
}

// Batch invariance through the grouped expert regions: a batch of many tokens over 8 experts (uneven token
// counts per expert, some experts with none) gives each token bit for bit what it gets alone (the decode
// step), whatever the thread count, for weights as the loader leaves them (Q4_0 repacked to Q4_0_G8; Q4_K
// with Q6_K W2; a dequantizing fallback type, Q5_0).
TEST(MoeLayer, ManyTokensMatchEachTokenAlone) {
  ModelConfig c;
  c.dim = 256;
  c.ffn_dim = 512;
  c.n_experts = 8;
  c.n_experts_used = 2;
  const int64_t E = c.n_experts, dim = c.dim, n = 29;
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  const DType types[][2] = {
      {DType::Q4_0_G8, DType::Q4_0_G8}, {DType::Q4_K, DType::Q6_K}, {DType::Q5_0, DType::Q5_0}};
  for (const auto& [t13, t2] : types) {
    SCOPED_TRACE(std::string(dtype_name(t13)) + "/" + std::string(dtype_name(t2)));
    const RandomExperts layer_w(t13, t2, c, rng);
    const LayerWeights& w = layer_w.w;
    std::vector<float> x(static_cast<size_t>(n * dim));  // [n, dim]
    for (auto& v : x) v = nd(rng);

    ThreadPool pool1(1);
    MoeLayer single(c);
    std::vector<float> alone(x.size());  // [n, dim] each token on its own
    for (int64_t t = 0; t < n; ++t) single.forward(w, x.data() + t * dim, 1, alone.data() + t * dim, pool1);
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      MoeLayer layer(c);                      // fresh scratch buffers: no earlier call's results left in them
      std::vector<float> y(x.size(), -1.0f);  // [n, dim]
      layer.forward(w, x.data(), n, y.data(), pool);
      std::vector<int64_t> per_expert(static_cast<size_t>(E), 0);
      for (int32_t e : layer.routing().experts) ++per_expert[static_cast<size_t>(e)];
      EXPECT_GT(*std::max_element(per_expert.begin(), per_expert.end()),
                *std::min_element(per_expert.begin(), per_expert.end()))
          << "uneven token counts per expert";
      for (int64_t t = 0; t < n; ++t)
        EXPECT_EQ(0, std::memcmp(y.data() + t * dim, alone.data() + t * dim, sizeof(float) * dim))
            << "token " << t << ", " << threads << " threads";
    }
  }
}

}  // namespace
}  // namespace mixtral
