// The narrow kernel interface the forward pass calls. Every op has a scalar reference in
// kernels/ref (the oracle for tests) and fast paths chosen at run time by CPUID
// (one translation unit per instruction set). All buffers are f32 unless a TensorView says otherwise.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"
#include "tensor/tensor.h"

namespace mixtral::kernels {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect_isa();             // best the CPU supports
Isa active_isa();             // what the dispatched ops use now
void set_isa(Isa isa);        // force (tests, benchmarks); clamped to what the CPU supports
const char* isa_name(Isa isa);

// y[t, r] = sum_c W[r, c] * x[t, c]
//   W: [rows, cols] any supported dtype; x: [n, cols]; y: [n, rows] (row stride ldy >= rows)
// Activations are converted once per call to the weight type's dot format (Q8_0 blocks for
// quantized weights); each weight row is read once for all n tokens.
void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy, ThreadPool& pool);

// out[t, f] = silu((W1 x)[t, f]) * (W3 x)[t, f]        W1, W3: [ffn, cols]; x: [n, cols]; out: [n, ffn]
void matmul_swiglu(const TensorView& w1, const TensorView& w3, const float* x, int64_t n, float* out,
                   ThreadPool& pool);

// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w      x, out: [n, dim]; w: [dim]
void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);

struct RopeParams {
  int64_t n_heads;   // heads in x
  int64_t head_dim;
  float theta;
  RopeLayout layout;
};
// Rotates x[t, h, :] in place by position pos[t].     x: [n, n_heads, head_dim]; pos: [n]
void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p);

struct AttentionParams {
  int64_t n_heads;      // query heads
  int64_t n_kv_heads;   // kv heads; query head h reads kv head h / (n_heads / n_kv_heads)
  int64_t head_dim;
  int64_t window;       // 0: full causal; else keys in (pos - window, pos]
  float scale;          // usually 1 / sqrt(head_dim)
};
// Causal attention of n queries at positions pos[t] over a KV cache holding positions [0, n_ctx).
//   q: [n, n_heads, head_dim]; k, v: [n_ctx, n_kv_heads, head_dim]; out: [n, n_heads, head_dim]
//   Query t sees keys at positions <= pos[t] (and inside the window).
void attention(const float* q, const float* k, const float* v, const int32_t* pos, int64_t n, int64_t n_ctx,
               const AttentionParams& p, float* out, ThreadPool& pool);

// x[i] = silu(x[i]) * g[i]
void silu_mul(float* x, const float* g, int64_t n);
// In-place softmax over n values (max-subtracted, f32).
void softmax(float* x, int64_t n);

// Scalar references (single-threaded, straightforward loops): the oracle for every fast path.
namespace ref {
void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy);
void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p);
void attention(const float* q, const float* k, const float* v, const int32_t* pos, int64_t n, int64_t n_ctx,
               const AttentionParams& p, float* out);
void silu_mul(float* x, const float* g, int64_t n);
void softmax(float* x, int64_t n);
}  // namespace ref

}  // namespace mixtral::kernels
