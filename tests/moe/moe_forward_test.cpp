// MoeLayer::forward against a float64 computation from the definition
//   y[t] = sum over the chosen experts e of w(t, e) * W2_e(silu(W1_e x[t]) * W3_e x[t]),
// for a batch (tokens grouped by expert, one GEMM per expert, weighted scatter) and token by token
// (the decode path), with f32 expert weights so the only differences are f32 summation orders.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "moe/moe.h"

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

}  // namespace
}  // namespace mixtral
