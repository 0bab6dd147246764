#include "moe/moe.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/dist.h"
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

  // Group (token, weight) pairs by expert: a counting sort over the n*k choices, the experts taken by rank
  // (then index), so that each rank's experts' rows form one segment of h_ and ye_.
  const auto rank_of = [&](int64_t e) { return n_ranks_ == 1 ? 0 : w.expert_rank[static_cast<size_t>(e)]; };
  order_.resize(static_cast<size_t>(E));
  std::iota(order_.begin(), order_.end(), 0);
  if (n_ranks_ > 1)
    std::stable_sort(order_.begin(), order_.end(),
                     [&](int32_t a, int32_t b) { return rank_of(a) < rank_of(b); });
  count_.assign(static_cast<size_t>(E), 0);
  for (int32_t e : routing_.experts) ++count_[static_cast<size_t>(e)];
  start_.resize(static_cast<size_t>(E));
  seg_bytes_.assign(static_cast<size_t>(n_ranks_), 0);
  seg_at_.assign(static_cast<size_t>(n_ranks_), 0);
  int64_t at = 0;
  for (int32_t e : order_) {
    const auto r = static_cast<size_t>(rank_of(e));
    if (seg_bytes_[r] == 0) seg_at_[r] = sizeof(float) * static_cast<size_t>(at * dim);
    start_[static_cast<size_t>(e)] = at;
    at += count_[static_cast<size_t>(e)];
    seg_bytes_[r] += sizeof(float) * static_cast<size_t>(count_[static_cast<size_t>(e)] * dim);
  }
  tokens_.resize(static_cast<size_t>(n * k));
  tok_w_.resize(static_cast<size_t>(n * k));
  std::vector<int64_t> fill(start_);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const auto e = static_cast<size_t>(routing_.experts[static_cast<size_t>(t * k + j)]);
      tokens_[static_cast<size_t>(fill[e])] = static_cast<int32_t>(t);
      tok_w_[static_cast<size_t>(fill[e]++)] = routing_.weights[static_cast<size_t>(t * k + j)];
    }

  // The batch input's dot formats are made once and shared by every expert: an expert that takes every
  // token reads the batch input itself, the others gather their rows from it, quantized rows included (so
  // x is quantized once per call, not once per expert). Then every chosen expert of this rank runs in one
  // parallel region per stage (W1/W3 with SwiGLU; W2), the work split over the threads by (expert, row
  // range).
  std::memset(y, 0, sizeof(float) * static_cast<size_t>(n * dim));
  xb_.reset(x, n, dim);
  if (xe_.size() < static_cast<size_t>(E)) xe_.resize(static_cast<size_t>(E));
  if (he_.size() < static_cast<size_t>(E)) he_.resize(static_cast<size_t>(E));
  h_.resize(static_cast<size_t>(n * k * ffn));
  ye_.resize(static_cast<size_t>(n * k * dim));
  up_.clear();
  down_.clear();
  for (int32_t ex : order_) {
    const auto e = static_cast<size_t>(ex);
    const int64_t b = start_[e], m = count_[e];
    if (m == 0 || rank_of(ex) != rank_) continue;
    const TensorView& w1 = w.w1[e];
    const TensorView& w3 = w.w3[e];
    kernels::PreparedInput* xin = &xb_;
    if (m != n) {  // gather this expert's tokens (the whole batch is already in token order: no copy)
      xb_.prepare_for(w1, pool);
      xb_.prepare_for(w3, pool);
      xin = &xe_[e];
      xin->gather(xb_, tokens_.data() + b, m);
    }
    up_.push_back({w1, w3, xin, h_.data() + b * ffn});
    he_[e].reset(h_.data() + b * ffn, m, ffn);
    down_.push_back({w.w2[e], &he_[e], ye_.data() + b * dim, dim});
  }
  kernels::matmul_swiglu_groups(up_.data(), static_cast<int64_t>(up_.size()), pool);
  kernels::matmul_groups(down_.data(), static_cast<int64_t>(down_.size()), pool);  // quantizes each h first
  // Every rank's expert outputs to every rank: the sum below then runs on the same terms in every process.
  if (n_ranks_ > 1) dist::allgather_in_place(ye_.data(), seg_bytes_.data(), seg_at_.data());
  for (int64_t e = 0; e < E; ++e) {  // scatter, weighted by the router, experts in index order
    const int64_t b = start_[static_cast<size_t>(e)];
    for (int64_t i = b; i < b + count_[static_cast<size_t>(e)]; ++i) {
      const float wt = tok_w_[static_cast<size_t>(i)];
      float* yt = y + tokens_[static_cast<size_t>(i)] * dim;
      const float* src = ye_.data() + i * dim;
      for (int64_t d = 0; d < dim; ++d) yt[d] += wt * src[d];
    }
  }
}

void MoeLayer::observe_inputs(const float* x, int64_t layer, MatmulObserver& obs) const {
  MX_CHECK(n_ranks_ == 1, "observe_inputs: every expert's inputs are in one process only");
  const int64_t E = c_.n_experts, dim = c_.dim, ffn = c_.ffn_dim;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = start_[static_cast<size_t>(e)], m = count_[static_cast<size_t>(e)];
    if (m == 0) continue;
    const auto ex = static_cast<int32_t>(e);
    obs.observe(layer, MatmulWeight::kW1, ex, x, tokens_.data() + b, m, dim);
    obs.observe(layer, MatmulWeight::kW3, ex, x, tokens_.data() + b, m, dim);
    obs.observe(layer, MatmulWeight::kW2, ex, h_.data() + b * ffn, nullptr, m, ffn);
  }
}

}  // namespace mixtral
