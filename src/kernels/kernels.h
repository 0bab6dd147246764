// The narrow kernel interface the forward pass calls. Every op has a scalar reference in kernels/ref (the
// oracle for tests). matmul, rmsnorm, silu_mul and softmax run a table of kernels chosen at run
// time by CPUID (one translation unit per instruction set, kernels/internal.h); rope is one portable loop.
// Matmul weight types outside the tables' list (internal.h kWeightTypes: F32, F16, BF16, Q8_0, Q4_0,
// Q4_K, Q5_K, Q6_K and the repacked G8 layouts) are dequantized to f32 tiles on the way. All buffers are
// f32 unless a TensorView says otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "tensor/quant.h"
#include "tensor/tensor.h"

namespace mixtral::kernels {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect_isa();       // best the CPU supports
Isa active_isa();       // what the dispatched ops use now
void set_isa(Isa isa);  // force (tests, benchmarks); clamped to what the CPU supports
const char* isa_name(Isa isa);

// The in-memory layout the active kernels read fastest for a [rows, cols] matmul weight stored as t: the
// active table's choice (internal.h, MatmulKernel::layout: on AVX-512 Q4_0 -> Q4_0_R16 and Q8_0 -> Q8_0_R16,
// 16 rows interleaved; on AVX2 Q4_0 -> Q4_0_G8 and Q8_0 -> Q8_0_G8, each 8-block group in the kernels'
// grouped order: tensor/quant.h) where the shape fits it (R16: rows a multiple of 16; G8: cols a multiple
// of 256); otherwise t. The values and the activation rounding are the same, so results agree within the
// float summation order.
DType preferred_layout(DType t, int64_t rows, int64_t cols);

namespace detail {
struct PreparedAccess;  // dispatch.cpp: finds or makes a format
}  // namespace detail

// Activations x: [n, cols] f32 plus their dot formats, each made lazily on the first matmul that needs
// it and kept until the contents change, so one layer input read by several weights (Wq, Wk, Wv; an
// expert's W1 and W3; the experts of a decode step) is quantized once:
//  - Q8_0/Q4_0 weights (either layout): Q8_0 values with per-block scales and sums, in the active kernel
//    table's order for that weight type (its arrange function; none = column order);
//  - K-quant weights: Q8_K super-blocks, and for several tokens under a table whose kernels read them
//    so, the same blocks 8 tokens side by side (BlockQ8_KX8, made from the Q8_K ones);
//  - float weights, and the types without a table kernel (dequantized to f32): the f32 rows themselves.
// A format is looked up by what its bytes depend on (Q8_K, or Q8_0 with the table's quantizer and arrange
// function), so after set_isa a format made for another table's order is not used. Every quantized
// format is per row, so the rows of a gather() are bit-identical to quantizing the gathered f32 rows;
// gather() does not copy the 8-token one, which is remade from the gathered Q8_K rows when needed.
// Buffers are owned and only grow, so an object kept per call site is reused across layers and steps.
// Not thread-safe by design: one object per call site, used from the calling thread (the matmuls it
// feeds split their work over the pool inside).
class PreparedInput {
 public:
  PreparedInput() = default;
  PreparedInput(PreparedInput&&) = default;
  PreparedInput& operator=(PreparedInput&&) = default;
  PreparedInput(const PreparedInput&) = delete;  // x_ may point into own_
  PreparedInput& operator=(const PreparedInput&) = delete;

  // New contents: x: [n, cols], borrowed (must stay valid and unchanged while this object is used with
  // them). Drops every prepared format.
  void reset(const float* x, int64_t n, int64_t cols);
  // New contents: rows rows[0..m) of src (m may repeat or reorder rows), copied: the f32 rows and every
  // format src has prepared, so the subset reuses src's quantization. src must not be this object.
  void gather(const PreparedInput& src, const int32_t* rows, int64_t m);
  // Makes the format weight w's matmul reads under the active kernel table, if it needs one and it is
  // not there yet (e.g. before gather(), so the gathered rows copy it instead of quantizing again).
  void prepare_for(const TensorView& w, ThreadPool& pool);

  const float* data() const { return x_; }  // [n, cols]
  int64_t n() const { return n_; }
  int64_t cols() const { return cols_; }
  // Formats quantized from the f32 rows since the last reset() or gather() (gather's copies not counted).
  int64_t formats_made() const { return made_; }

 private:
  friend struct detail::PreparedAccess;
  using ArrangeFn = void (*)(int8_t* qs, int64_t cols);                             // detail::ArrangeQ8Fn
  using QuantizeFn = void (*)(const float* x, int64_t cols, int8_t* qs, float* d);  // detail::QuantizeQ8Fn
  struct Format {
    // Key: Q8_K blocks (8 tokens side by side in lanes of tokens8 bytes if tokens8 != 0), or Q8_0 made by
    // `quantize` and then (unless nullptr) `arrange`.
    bool k_quant = false;
    int tokens8 = 0;
    QuantizeFn quantize = nullptr;
    ArrangeFn arrange = nullptr;
    // Q8_0 (k_quant false):
    std::vector<int8_t> qs;    // [n, cols] values, column order or arranged per row
    std::vector<float> d;      // [n, cols / 32] block scales (fp16 widened)
    std::vector<int32_t> sum;  // [n, cols / 32] sum(qs) per block
    // Q8_K (k_quant true):
    std::vector<BlockQ8_K> xk;  // [n, cols / 256]
    // Q8_K, tokens8:
    std::vector<BlockQ8_KX8> xk8;  // [ceil(n / 8), cols / 256]
  };

  const float* x_ = nullptr;  // [n_, cols_] the f32 rows: the caller's (reset) or own_ (gather)
  int64_t n_ = 0, cols_ = 0;
  std::vector<float> own_;       // [n_, cols_] gathered f32 rows
  std::vector<Format> formats_;  // slots; [0, live_) hold formats of the current contents, the rest spare
  size_t live_ = 0;
  int64_t made_ = 0;
};

// y[t, r] = sum_c W[r, c] * x[t, c]
//   W: [rows, cols] any supported dtype; x: [n, cols]; y: [n, rows] (row stride ldy >= rows)
// Activations go through their weight type's dot format (Q8_0 blocks for Q8_0/Q4_0, Q8_K for the
// K-quants, none for float weights and the fallback types); each weight row is read once for all n tokens.
// The PreparedInput form makes that format only if x does not hold it yet (x.cols() == cols), so several
// weights reading the same input share one quantization; the float* form prepares x afresh on every call (a
// thread-local PreparedInput).
void matmul(const TensorView& w, PreparedInput& x, float* y, int64_t ldy, ThreadPool& pool);
void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy, ThreadPool& pool);

// out[t, f] = silu((W1 x)[t, f]) * (W3 x)[t, f]        W1, W3: [ffn, cols]; x: [n, cols]; out: [n, ffn]
// W1 and W3 share x's format when they read the same one.
void matmul_swiglu(const TensorView& w1, const TensorView& w3, PreparedInput& x, float* out,
                   ThreadPool& pool);
void matmul_swiglu(const TensorView& w1, const TensorView& w3, const float* x, int64_t n, float* out,
                   ThreadPool& pool);

// Several independent matmuls run as one parallel region (the experts of an MoE step): every group's
// input format is made first (on the calling thread, or one region over the distinct inputs), then one
// pool.run hands the threads runs of (group, 16-row range) work by estimated cost (weight bytes x a
// factor growing with the group's token count): guided runs as they ask where every group streams its
// weights once, else one contiguous run of equal cost each; a run may span several groups and no thread
// idles on an unbalanced one. Each (token, row) output runs the same tile code as matmul /
// matmul_swiglu on that group alone: bit-identical to them, whatever the grouping and thread count.
// Groups of the fallback types (no table kernel) run one after another through matmul / matmul_swiglu.
// Inputs may be shared between groups; outputs must not overlap.
struct MatmulGroup {
  TensorView w;                // [rows, cols]
  PreparedInput* x = nullptr;  // [n, cols]
  float* y = nullptr;          // [n, ldy]: y[t, r] = sum_c W[r, c] * x[t, c]
  int64_t ldy = 0;             // >= rows
};
void matmul_groups(const MatmulGroup* g, int64_t n_groups, ThreadPool& pool);

struct SwigluGroup {
  TensorView w1, w3;           // [ffn, cols] each
  PreparedInput* x = nullptr;  // [n, cols]
  float* out = nullptr;        // [n, ffn]: silu((W1 x)[t, f]) * (W3 x)[t, f]
};
void matmul_swiglu_groups(const SwigluGroup* g, int64_t n_groups, ThreadPool& pool);

// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w      x, out: [n, dim]; w: [dim]
void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);

struct RopeParams {
  int64_t n_heads;  // heads in x
  int64_t head_dim;
  float theta;
  RopeLayout layout;
};
// Rotates x[t, h, :] in place by position pos[t].     x: [n, n_heads, head_dim]; pos: [n]
void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p);

struct AttentionParams {
  int64_t n_heads;     // query heads
  int64_t n_kv_heads;  // kv heads; query head h reads kv head h / (n_heads / n_kv_heads)
  int64_t head_dim;
  int64_t window;  // 0: full causal; else keys in (pos - window, pos]
  float scale;     // usually 1 / sqrt(head_dim)
};
// Attention itself: kernels/paged_attention.h (over the paged KV cache, its own SIMD per ISA).

// x[i] = silu(x[i]) * g[i]
void silu_mul(float* x, const float* g, int64_t n);
// In-place softmax over n values (max-subtracted, f32).
void softmax(float* x, int64_t n);

// Scalar references (single-threaded, straightforward loops): the oracle for every fast path.
namespace ref {
void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy);
void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p);
void silu_mul(float* x, const float* g, int64_t n);
void softmax(float* x, int64_t n);
}  // namespace ref

}  // namespace mixtral::kernels
