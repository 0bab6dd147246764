#include "moe/moe.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels/kernels.h"

namespace mixtral {

void route(const LayerWeights& w, const ModelConfig& c, const float* x, int64_t n, Routing& r,
           ThreadPool& pool) {
  const int64_t E = c.n_experts, k = c.n_experts_used;
  r.k = k;
  r.experts.resize(static_cast<size_t>(n * k));
  r.weights.resize(static_cast<size_t>(n * k));
  if (w.router.empty()) {  // dense: the only expert, weight 1
    std::fill(r.experts.begin(), r.experts.end(), 0);
    std::fill(r.weights.begin(), r.weights.end(), 1.0f);
    return;
  }
  TensorView gate;  // [E, dim] f32
  gate.data = w.router.data();
  gate.dtype = DType::F32;
  gate.ndim = 2;
  gate.shape = {E, c.dim, 1, 1};
  std::vector<float> logits(static_cast<size_t>(n * E));  // [n, E]
  kernels::matmul(gate, x, n, logits.data(), E, pool);
  std::vector<int32_t> idx(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    float* p = logits.data() + t * E;
    kernels::softmax(p, E);  // probabilities over all experts, fp32
    std::iota(idx.begin(), idx.end(), 0);
    // Top-k by probability; ties go to the lower expert index.
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += p[idx[static_cast<size_t>(j)]];
    for (int64_t j = 0; j < k; ++j) {
      r.experts[static_cast<size_t>(t * k + j)] = idx[static_cast<size_t>(j)];
      r.weights[static_cast<size_t>(t * k + j)] = p[idx[static_cast<size_t>(j)]] / sum;
    }
  }
}

void MoeLayer::forward(const LayerWeights& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  const int64_t E = c_.n_experts, k = c_.n_experts_used, dim = c_.dim, ffn = c_.ffn_dim;
  route(w, c_, x, n, routing_, pool);

  // Group (token, weight) pairs by expert: a counting sort over the n*k choices.
  std::vector<int64_t> start(static_cast<size_t>(E + 1), 0);  // [E + 1] offsets into tokens_
  for (int32_t e : routing_.experts) ++start[static_cast<size_t>(e) + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  tokens_.resize(static_cast<size_t>(n * k));
  tok_w_.resize(static_cast<size_t>(n * k));
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const auto e = static_cast<size_t>(routing_.experts[static_cast<size_t>(t * k + j)]);
      tokens_[static_cast<size_t>(fill[e])] = static_cast<int32_t>(t);
      tok_w_[static_cast<size_t>(fill[e]++)] = routing_.weights[static_cast<size_t>(t * k + j)];
    }

  std::memset(y, 0, sizeof(float) * static_cast<size_t>(n * dim));
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = start[static_cast<size_t>(e)], m = start[static_cast<size_t>(e) + 1] - b;
    if (m == 0) continue;
    const float* xin = x;
    if (m != n) {  // gather this expert's tokens (a single token or the whole batch needs no copy)
      xe_.resize(static_cast<size_t>(m * dim));
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(xe_.data() + i * dim, x + tokens_[static_cast<size_t>(b + i)] * dim, sizeof(float) * dim);
      xin = xe_.data();
    }
    h_.resize(static_cast<size_t>(m * ffn));
    ye_.resize(static_cast<size_t>(m * dim));
    kernels::matmul_swiglu(w.w1[static_cast<size_t>(e)], w.w3[static_cast<size_t>(e)], xin, m, h_.data(),
                           pool);
    kernels::matmul(w.w2[static_cast<size_t>(e)], h_.data(), m, ye_.data(), dim, pool);
    for (int64_t i = 0; i < m; ++i) {  // scatter, weighted by the router
      const float wt = tok_w_[static_cast<size_t>(b + i)];
      float* yt = y + tokens_[static_cast<size_t>(b + i)] * dim;
      const float* src = ye_.data() + i * dim;
      for (int64_t d = 0; d < dim; ++d) yt[d] += wt * src[d];
    }
  }
}

}  // namespace mixtral
