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
  // (Experts cut into parts across ranks, parts_per_expert > 1, exchange through buffers of their own:
  // forward_parts; their rows here stay in expert order.)
  const int64_t parts = n_ranks_ == 1 ? 1 : w.parts_per_expert;
  const auto rank_of = [&](int64_t e) {
    return parts == 1 && n_ranks_ > 1 ? w.expert_parts[static_cast<size_t>(e)].rank : 0;
  };
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
  if (parts > 1) {
    forward_parts(w, n, pool);
  } else {
    forward_whole(w, n, pool);
  }
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

// Every expert whole on one rank: this rank's experts' rows of ye_ are one segment (forward's order_), filled
// by its own experts, then the others' segments by the exchange.
void MoeLayer::forward_whole(const LayerWeights& w, int64_t n, ThreadPool& pool) {
  const int64_t ffn = c_.ffn_dim, dim = c_.dim;
  for (int32_t ex : order_) {
    const auto e = static_cast<size_t>(ex);
    const int64_t b = start_[e], m = count_[e];
    if (m == 0 || (n_ranks_ > 1 && w.expert_parts[e].rank != rank_)) continue;
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
}

// Experts cut into row parts across ranks (more ranks than experts): each rank computes its parts' columns
// of h for its experts' tokens, the ranks exchange them (hx_), every rank assembles h; then each its parts'
// columns of the W2 outputs, exchanged the same way (yx_) into ye_. A part's columns are the same arithmetic
// as the whole expert's, so ye_ is bitwise the one-process one.
void MoeLayer::forward_parts(const LayerWeights& w, int64_t n, ThreadPool& pool) {
  const int64_t E = c_.n_experts, P = w.parts_per_expert, ffn = c_.ffn_dim, dim = c_.dim;
  const auto part = [&](int64_t e, int64_t p) -> const ExpertPart& {
    return w.expert_parts[static_cast<size_t>(e * P + p)];
  };
  // Each exchange buffer holds the (expert, part) blocks [m_e, part columns] rank by rank: offsets in floats.
  hoff_.assign(static_cast<size_t>(E * P), 0);
  yoff_.assign(static_cast<size_t>(E * P), 0);
  seg_bytes_.assign(static_cast<size_t>(n_ranks_), 0);
  seg_at_.assign(static_cast<size_t>(n_ranks_), 0);
  hseg_bytes_.assign(static_cast<size_t>(n_ranks_), 0);
  hseg_at_.assign(static_cast<size_t>(n_ranks_), 0);
  int64_t hat = 0, yat = 0;
  for (int r = 0; r < n_ranks_; ++r) {
    const auto ri = static_cast<size_t>(r);
    hseg_at_[ri] = sizeof(float) * static_cast<size_t>(hat);
    seg_at_[ri] = sizeof(float) * static_cast<size_t>(yat);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t p = 0; p < P; ++p) {
        const ExpertPart& x = part(e, p);
        if (x.rank != r) continue;
        const int64_t m = count_[static_cast<size_t>(e)];
        hoff_[static_cast<size_t>(e * P + p)] = hat;
        yoff_[static_cast<size_t>(e * P + p)] = yat;
        hat += m * (x.ffn_end - x.ffn_begin);
        yat += m * (x.dim_end - x.dim_begin);
      }
    hseg_bytes_[ri] = sizeof(float) * static_cast<size_t>(hat) - hseg_at_[ri];
    seg_bytes_[ri] = sizeof(float) * static_cast<size_t>(yat) - seg_at_[ri];
  }
  hx_.resize(static_cast<size_t>(hat));
  yx_.resize(static_cast<size_t>(yat));

  for (int64_t e = 0; e < E; ++e) {  // this rank's parts: W1/W3 with SwiGLU
    const auto i = static_cast<size_t>(e);
    const int64_t b = start_[i], m = count_[i];
    if (m == 0 || !w.w1[i].data) continue;
    kernels::PreparedInput* xin = &xb_;
    if (m != n) {
      xb_.prepare_for(w.w1[i], pool);
      xb_.prepare_for(w.w3[i], pool);
      xin = &xe_[i];
      xin->gather(xb_, tokens_.data() + b, m);
    }
    for (int64_t p = 0; p < P; ++p)
      if (part(e, p).rank == rank_) up_.push_back({w.w1[i], w.w3[i], xin, hx_.data() + hoff_[i * P + p]});
  }
  kernels::matmul_swiglu_groups(up_.data(), static_cast<int64_t>(up_.size()), pool);
  dist::allgather_in_place(hx_.data(), hseg_bytes_.data(), hseg_at_.data());
  // Each (expert, part) block [m_e, end - begin] of src (at off[e * P + p]) into columns [begin, end) of the
  // expert's rows of dst [n * k, ld].
  const auto unpack = [&](const std::vector<float>& src, const std::vector<int64_t>& off, float* dst,
                          int64_t ld, int64_t ExpertPart::*begin, int64_t ExpertPart::*end) {
    for (int64_t e = 0; e < E; ++e) {
      const auto i = static_cast<size_t>(e);
      for (int64_t p = 0; p < P; ++p) {
        const ExpertPart& x = part(e, p);
        const int64_t cols = x.*end - x.*begin;
        for (int64_t t = 0; t < count_[i]; ++t)
          std::memcpy(dst + (start_[i] + t) * ld + x.*begin, src.data() + off[i * P + p] + t * cols,
                      sizeof(float) * static_cast<size_t>(cols));
      }
    }
  };
  unpack(hx_, hoff_, h_.data(), ffn, &ExpertPart::ffn_begin, &ExpertPart::ffn_end);  // every expert's h
  for (int64_t e = 0; e < E; ++e) {                                                  // this rank's parts: W2
    const auto i = static_cast<size_t>(e);
    const int64_t m = count_[i];
    if (m == 0 || !w.w2[i].data) continue;
    he_[i].reset(h_.data() + start_[i] * ffn, m, ffn);
    for (int64_t p = 0; p < P; ++p) {
      const ExpertPart& x = part(e, p);
      if (x.rank == rank_)
        down_.push_back({w.w2[i], &he_[i], yx_.data() + yoff_[i * P + p], x.dim_end - x.dim_begin});
    }
  }
  kernels::matmul_groups(down_.data(), static_cast<int64_t>(down_.size()), pool);
  dist::allgather_in_place(yx_.data(), seg_bytes_.data(), seg_at_.data());
  unpack(yx_, yoff_, ye_.data(), dim, &ExpertPart::dim_begin, &ExpertPart::dim_end);  // their outputs
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
