// Sparse mixture-of-experts feed-forward: an fp32 router (softmax over all experts, top-k,
// renormalised), then SwiGLU experts. Tokens of a batch are grouped by expert so each chosen
// expert runs one GEMM over its tokens, all chosen experts in one parallel region per stage
// (kernels::matmul_swiglu_groups, matmul_groups); a single token is the same path with one row per
// expert (decode: two expert mat-vecs). A dense FFN is one expert of weight 1.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "model/weights.h"

namespace mixtral {

struct Routing {
  int64_t k = 0;
  std::vector<int32_t> experts;  // [n, k] chosen experts, best first
  std::vector<float> weights;    // [n, k] renormalised weights (sum 1 per token)
};

// Which weight of a layer a matmul multiplies by (attention; the experts' gate, up and down).
enum class MatmulWeight { kWq, kWk, kWv, kWo, kW1, kW3, kW2 };

// Sees the input rows of every weight matmul of a forward step (importance matrices: `mixtral imatrix`).
// Runtime::set_matmul_observer; none by default, and then nothing is called.
class MatmulObserver {
 public:
  virtual ~MatmulObserver() = default;
  // The input of weight w of layer `layer`, for expert `expert` (W1, W3, W2; -1 for attention): its row i
  // (i in [0, n)) is x + rows[i] * cols, or x + i * cols when rows is null.
  virtual void observe(int64_t layer, MatmulWeight w, int32_t expert, const float* x, const int32_t* rows,
                       int64_t n, int64_t cols) = 0;
};

// Router only: fills r for n tokens. x: [n, dim]
void route(const LayerWeights& w, const ModelConfig& c, const float* x, int64_t n, Routing& r,
           ThreadPool& pool);

class MoeLayer {
 public:
  // Expert parallelism: this process is `rank` of n_ranks (Model::rank, n_ranks) and computes only its
  // experts, or its parts of them (LayerWeights::expert_parts); the ranks exchange the expert outputs before
  // the weighted sum.
  explicit MoeLayer(const ModelConfig& c, int rank = 0, int n_ranks = 1)
      : c_(c), rank_(rank), n_ranks_(n_ranks) {}
  // y[t, :] = sum over chosen e of weight(t, e) * W2_e(silu(W1_e x[t]) * W3_e x[t])
  //   x: [n, dim]; y: [n, dim] (overwritten); routing is left in routing() for introspection.
  // The sum runs in expert index order whichever rank computed each term, so y is bitwise the same as in
  // one process. Under mpirun every rank calls forward with the same x at the same time.
  void forward(const LayerWeights& w, const float* x, int64_t n, float* y, ThreadPool& pool);
  const Routing& routing() const { return routing_; }
  // After forward(w, x, n, ...): shows obs each chosen expert's matmul inputs, experts in index order: W1
  // and W3 its tokens' rows of x, W2 its rows of silu(W1 x) * W3 x. One process only (n_ranks 1).
  void observe_inputs(const float* x, int64_t layer, MatmulObserver& obs) const;

 private:
  void forward_whole(const LayerWeights& w, int64_t n, ThreadPool& pool);
  void forward_parts(const LayerWeights& w, int64_t n, ThreadPool& pool);

  const ModelConfig& c_;
  int rank_, n_ranks_;
  Routing routing_;
  std::vector<int32_t> order_;  // [E] the experts by rank, then index (0, 1, ... in one process)
  std::vector<int64_t> count_;  // [E] entries per expert
  std::vector<int64_t> start_;  // [E] expert e's entries of tokens_ are [start_[e], start_[e] + count_[e])
  std::vector<size_t> seg_bytes_,
      seg_at_;  // [n_ranks] each rank's segment of ye_ (yx_ with parts): bytes, offset
  // Experts cut into parts (forward_parts): the exchange buffers, (expert, part) blocks rank by rank.
  std::vector<float> hx_;                     // blocks [m_e, part's ffn rows] of h
  std::vector<float> yx_;                     // blocks [m_e, part's dim rows] of the expert outputs
  std::vector<int64_t> hoff_, yoff_;          // [E * parts] each block's offset (floats)
  std::vector<size_t> hseg_bytes_, hseg_at_;  // [n_ranks] each rank's segment of hx_
  std::vector<int32_t> tokens_;               // [n * k] token indices grouped by expert, experts in order_
  std::vector<float> tok_w_;                  // [n * k] matching routing weights
  kernels::PreparedInput xb_;                 // [n, dim] the batch input x and its formats, quantized once
  std::vector<kernels::PreparedInput>
      xe_;                // [E] expert e's tokens [m_e, dim], gathered from xb_ with its formats
  std::vector<float> h_;  // [n * k, ffn] silu(W1 x) * W3 x, rows grouped by expert like tokens_
  std::vector<kernels::PreparedInput> he_;  // [E] expert e's rows of h_ [m_e, ffn] as W2's input
  std::vector<float> ye_;                   // [n * k, dim] expert outputs before scatter, grouped like h_
  std::vector<kernels::SwigluGroup> up_;    // the chosen experts' W1/W3 stage, one region
  std::vector<kernels::MatmulGroup> down_;  // their W2 stage, one region
};

}  // namespace mixtral
