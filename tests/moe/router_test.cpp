// The router against a float64 computation written from the definition: p = softmax(gate x) over
// all experts, top-k, renormalised (equal to a softmax over the chosen logits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "moe/moe.h"

namespace mixtral {
namespace {

TEST(Router, MatchesFloat64DefinitionAndSoftmaxOfChosenLogits) {
  ModelConfig c;
  c.dim = 64;
  c.n_experts = 8;
  c.n_experts_used = 2;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  LayerWeights w;
  w.router.resize(static_cast<size_t>(c.n_experts * c.dim));  // [E, dim]
  for (auto& v : w.router) v = nd(rng);
  const int64_t n = 40;
  std::vector<float> x(static_cast<size_t>(n * c.dim));  // [n, dim]
  for (auto& v : x) v = nd(rng);
  ThreadPool pool(2);
  Routing r;
  route(w, c, x.data(), n, r, pool);
  ASSERT_EQ(r.experts.size(), static_cast<size_t>(n * 2));
  int checked = 0;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> logit(8);
    for (int e = 0; e < 8; ++e)
      for (int64_t d = 0; d < c.dim; ++d)
        logit[static_cast<size_t>(e)] += double(w.router[static_cast<size_t>(e * c.dim + d)]) * x[static_cast<size_t>(t * c.dim + d)];
    std::vector<int> idx(8);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) { return logit[size_t(a)] > logit[size_t(b)]; });
    if (logit[size_t(idx[1])] - logit[size_t(idx[2])] < 1e-3) continue;  // near-tie: skip, margin stated
    ++checked;
    EXPECT_EQ(r.experts[size_t(t * 2)], idx[0]);
    EXPECT_EQ(r.experts[size_t(t * 2 + 1)], idx[1]);
    // softmax over the two chosen logits
    const double w0 = 1.0 / (1.0 + std::exp(logit[size_t(idx[1])] - logit[size_t(idx[0])]));
    EXPECT_NEAR(r.weights[size_t(t * 2)], w0, 1e-5);
    EXPECT_NEAR(r.weights[size_t(t * 2 + 1)], 1.0 - w0, 1e-5);
  }
  EXPECT_GE(checked, 35);  // the margin rule skips only a few tokens
}

TEST(Router, DenseModelIsOneExpertOfWeightOne) {
  ModelConfig c;
  c.dim = 8;
  c.n_experts = 1;
  c.n_experts_used = 1;
  LayerWeights w;  // no router
  std::vector<float> x(3 * 8, 1.0f);
  ThreadPool pool(1);
  Routing r;
  route(w, c, x.data(), 3, r, pool);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{0, 0, 0}));
  EXPECT_EQ(r.weights, (std::vector<float>{1.0f, 1.0f, 1.0f}));
}

}  // namespace
}  // namespace mixtral
