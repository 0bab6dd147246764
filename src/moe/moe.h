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

// Router only: fills r for n tokens. x: [n, dim]
void route(const LayerWeights& w, const ModelConfig& c, const float* x, int64_t n, Routing& r,
           ThreadPool& pool);

class MoeLayer {
 public:
  explicit MoeLayer(const ModelConfig& c) : c_(c) {}
  // y[t, :] = sum over chosen e of weight(t, e) * W2_e(silu(W1_e x[t]) * W3_e x[t])
  //   x: [n, dim]; y: [n, dim] (overwritten); routing is left in routing() for introspection.
  void forward(const LayerWeights& w, const float* x, int64_t n, float* y, ThreadPool& pool);
  const Routing& routing() const { return routing_; }

 private:
  const ModelConfig& c_;
  Routing routing_;
  std::vector<int32_t> tokens_;  // [n * k] token indices grouped by expert
  std::vector<float> tok_w_;     // [n * k] matching routing weights
  kernels::PreparedInput xb_;    // [n, dim] the batch input x and its formats, quantized once
  std::vector<kernels::PreparedInput>
      xe_;                // [E] expert e's tokens [m_e, dim], gathered from xb_ with its formats
  std::vector<float> h_;  // [n * k, ffn] silu(W1 x) * W3 x, rows grouped by expert like tokens_
  std::vector<kernels::PreparedInput> he_;  // [E] expert e's rows of h_ [m_e, ffn] as W2's input
  std::vector<float> ye_;                   // [n * k, dim] expert outputs before scatter, grouped like h_
  std::vector<kernels::SwigluGroup> up_;    // the chosen experts' W1/W3 stage, one region
  std::vector<kernels::MatmulGroup> down_;  // their W2 stage, one region
};

}  // namespace mixtral
