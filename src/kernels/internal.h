// Private interface between the dispatcher (dispatch.cpp: argument checks, threading, scratch buffers)
// and the per-instruction-set kernel tables (generic/, avx2/, avx512/).
//
// Only declarations and plain structs live here: the per-ISA translation units are compiled with
// their own -m flags, so an inline function shared through a header could be emitted with AVX-512
// instructions and picked by the linker for a generic caller. Each ISA file keeps its helpers in an
// anonymous namespace and uses no std:: templates that could be emitted out of line.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mixtral::kernels::detail {

// Weight dtypes the matmul kernels handle, as table indices.
enum WeightKind { kWF32 = 0, kWF16 = 1, kWBF16 = 2, kWQ8_0 = 3, kWQ4_0 = 4, kNumWeightKinds = 5 };

// Everything one matmul call's tiles share.
struct MatmulArgs {
  const uint8_t* w = nullptr;  // W row 0; row r at w + r * w_stride
  size_t w_stride = 0;         // bytes per W row
  int64_t cols = 0;
  // F32/F16/BF16 weights: the activations as given.
  const float* x = nullptr;  // [n, cols]
  // Q8_0/Q4_0 weights: the activations rounded to Q8_0 (quantize_row's rule), values and scales apart.
  const int8_t* xq = nullptr;  // [n, cols]
  const float* xd = nullptr;   // [n, cols / 32], the fp16 block scales widened to f32
};

// y[t, r] = sum_c W[r, c] x[t, c] for rows [r0, r0 + nr) and tokens [t0, t0 + nt).
// y points at element (t0, r0); ldy is its row stride. Every (t, r) is computed in the same order
// whatever the tile bounds, so results do not depend on the thread count.
using MatmulTileFn = void (*)(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y,
                              int64_t ldy);

// One activation row to Q8_0 values and f32 scales, bit-identical to quantize_row(DType::Q8_0).
//   x: [cols] (cols % 32 == 0); qs: [cols]; d: [cols / 32]
using QuantizeQ8Fn = void (*)(const float* x, int64_t cols, int8_t* qs, float* d);

// Attention of the g query heads sharing one kv head, for one query, over keys [j0, j1).
//   q: [g, head_dim]; key j at k + j * kv_stride, value j at v + j * kv_stride (head_dim floats each);
//   out: [g, head_dim]; scratch: [g, j1 - j0] floats.
struct AttnGroupArgs {
  const float* q;
  const float* k;
  const float* v;
  int64_t kv_stride;
  int64_t g;
  int64_t head_dim;
  int64_t j0, j1;
  float scale;
  float* out;
  float* scratch;
};
using AttnGroupFn = void (*)(const AttnGroupArgs& a);

// out[t, :] = x[t, :] * inv_rms * w for n rows of dim (x may alias out).
using RmsnormFn = void (*)(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
using SiluMulFn = void (*)(float* x, const float* g, int64_t n);
using SoftmaxFn = void (*)(float* x, int64_t n);

struct KernelTable {
  const char* name;
  MatmulTileFn matmul[kNumWeightKinds];
  QuantizeQ8Fn quantize_q8;
  AttnGroupFn attn_group;
  RmsnormFn rmsnorm;
  SiluMulFn silu_mul;
  SoftmaxFn softmax;
};

// The portable table (always present) and the per-ISA ones (nullptr where this build has none).
// The ISA tables fill the entries they do not accelerate from the generic one.
const KernelTable& generic_table();
const KernelTable* avx2_table();
const KernelTable* avx512_table();

}  // namespace mixtral::kernels::detail
