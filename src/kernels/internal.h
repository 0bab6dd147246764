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

namespace mixtral {
struct BlockQ8_K;    // tensor/quant.h
struct BlockQ8_KX8;  // tensor/quant.h
}  // namespace mixtral

namespace mixtral::kernels {
enum class Isa;  // kernels.h
}  // namespace mixtral::kernels

namespace mixtral::kernels::detail {

// Weight dtypes the matmul kernels handle, as table indices.
enum WeightKind {
  kWF32 = 0,
  kWF16 = 1,
  kWBF16 = 2,
  kWQ8_0 = 3,
  kWQ4_0 = 4,
  kWQ4_K = 5,
  kWQ5_K = 6,
  kWQ6_K = 7,
  kWQ4_0G8 = 8,  // DType::Q4_0_G8: Q4_0 repacked at load (tensor/quant.h); reads Q4_0's activation format
  kWQ8_0G8 = 9,  // DType::Q8_0_G8: Q8_0 repacked at load; likewise
  kNumWeightKinds = 10
};

// Everything one matmul call's tiles share.
struct MatmulArgs {
  const uint8_t* w = nullptr;  // W row 0; row r at w + r * w_stride
  size_t w_stride = 0;         // bytes per W row
  int64_t cols = 0;
  // F32/F16/BF16 weights: the activations as given.
  const float* x = nullptr;  // [n, cols]
  // Q8_0/Q4_0 weights: the activations rounded to Q8_0 (quantize_row's rule), values and scales apart;
  // xq in the table's grouped order (ArrangeQ8Fn) where it has an arrange function for the weight kind
  // (for every token count, so decode and prefill of a kernel sum in the same order), else column order.
  const int8_t* xq = nullptr;     // [n, cols]
  const float* xd = nullptr;      // [n, cols / 32], the fp16 block scales widened to f32
  const int32_t* xsum = nullptr;  // [n, cols / 32], sum(q_x) per block (exact, for integer corrections)
  // K-quant weights: the activations rounded to Q8_K (quantize_row's rule), with their 16-value sums.
  const BlockQ8_K* xk = nullptr;  // [n, cols / 256]
  // The same, 8 tokens side by side in lanes of the table's width, where it reads them
  // (KernelTable::k_tokens8_lane != 0) and n > 1.
  const BlockQ8_KX8* xk8 = nullptr;  // [ceil(n / 8), cols / 256]
};

// Grouped activation order, the layout of the prefill kernels that add the integer dots of 8 blocks
// before converting them (one int32 lane per block): each full group of 8 blocks (256 values) becomes
// 8 vectors of 32 bytes, vector 2k + h (k = 0..3, h = 0..1) holding at bytes 4j..4j+3 the values
// 16h + 4k .. 16h + 4k + 3 of block j of the group (j = 0..7). Blocks after the last full group stay in
// column order. This is a 4x4 dword transpose per 128-bit half, so a weight group transposed the same
// way lines up with it.
constexpr int kGroupBlocks = 8;
// Rearranges one quantized activation row in place: qs: [cols] (cols % 32 == 0).
using ArrangeQ8Fn = void (*)(int8_t* qs, int64_t cols);

// y[t, r] = sum_c W[r, c] x[t, c] for rows [r0, r0 + nr) and tokens [t0, t0 + nt).
// y points at element (t0, r0); ldy is its row stride. Every (t, r) is computed in the same order
// whatever the tile bounds, so results do not depend on the thread count.
using MatmulTileFn = void (*)(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y,
                              int64_t ldy);

// One activation row to Q8_0 values and f32 scales, bit-identical to quantize_row(DType::Q8_0).
//   x: [cols] (cols % 32 == 0); qs: [cols]; d: [cols / 32]
using QuantizeQ8Fn = void (*)(const float* x, int64_t cols, int8_t* qs, float* d);
// One activation row to Q8_K blocks, bit-identical to quantize_row(DType::Q8_K).
//   x: [cols] (cols % 256 == 0); out: [cols / 256]
using QuantizeQ8KFn = void (*)(const float* x, int64_t cols, BlockQ8_K* out);

// Attention of one query (all heads) over the keys [j0, j1) of the cache, unnormalised, so chunks of one
// query's keys can run on different threads and be merged (flash-decoding):
//   out[h, :] = sum_j e^(s[h, j] - m[h]) v[j, kv(h), :],  l[h] = sum_j e^(s[h, j] - m[h]),  m[h] = max_j s[h,
//   j]
// with s[h, j] = scale * q[h, :] . k[j, kv(h), :] and kv(h) = h / (n_heads / n_kv_heads).
// Keys are walked in blocks with the kv heads inner, so each cache row (the call's kv heads of a
// position, contiguous) is read whole while its block is in cache.
// A call may take a group of whole kv heads (their query heads alike): k and v then point at the
// group's first kv head and kv_stride still spans every kv head of a cache position.
struct AttnChunkArgs {
  const float* q;     // [n_heads, head_dim]
  const float* k;     // key j, kv head i at k + j * kv_stride + i * head_dim
  const float* v;     // the same for values
  int64_t kv_stride;  // floats per cache position (>= n_kv_heads * head_dim)
  int64_t n_heads, n_kv_heads, head_dim;
  int64_t j0, j1;  // keys [j0, j1), j1 > j0
  float scale;
  float* out;      // [n_heads, head_dim]
  float* m;        // [n_heads]
  float* l;        // [n_heads]
  float* scratch;  // [n_heads, j1 - j0] scores, then their exponentials
};
using AttnChunkFn = void (*)(const AttnChunkArgs& a);

// Paged attention of one (token, kv head): the `group` query heads that read kv head kvh attend over
// keys [lo, pos], row j of the token's sequence being row j % block_size of block table[j / block_size].
// Every head's scores, softmax and weighted sum of values run in a fixed order, so the result depends on
// nothing but this item's inputs (not on the thread, nor on other tokens of the batch).
struct PagedAttnArgs {
  const float* q;        // [group, head_dim] query heads kvh * group .. (kvh + 1) * group - 1
  const float* k;        // block pool [n_blocks, block_size, n_kv_heads, head_dim]
  const float* v;        // the same for values
  const int32_t* table;  // [ceil((pos + 1) / block_size)] the sequence's blocks
  int64_t block_size, n_kv_heads, head_dim, group, kvh;
  int64_t lo, pos;  // keys [lo, pos]
  float scale;
  float* out;      // [group, head_dim]
  float* scratch;  // [group, pos - lo + 1] scores, then their exponentials
};
// nullptr in a table: the portable per-(token, head) loop of kernels/paged_attention.cpp.
// Only called with head_dim % 8 == 0.
using PagedAttnFn = void (*)(const PagedAttnArgs& a);

// out[t, :] = x[t, :] * inv_rms * w for n rows of dim (x may alias out).
using RmsnormFn = void (*)(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
using SiluMulFn = void (*)(float* x, const float* g, int64_t n);
using SoftmaxFn = void (*)(float* x, int64_t n);

struct KernelTable {
  const char* name;
  MatmulTileFn matmul[kNumWeightKinds];
  QuantizeQ8Fn quantize_q8;
  QuantizeQ8KFn quantize_q8_k;
  ArrangeQ8Fn arrange_q8[kNumWeightKinds];  // per weight kind: grouped order for prefill, or nullptr
  int k_tokens8_lane;  // the K-quant kernels read MatmulArgs::xk8 (lanes of 4 or 8 bytes) when n > 1; 0:
                       // never
  AttnChunkFn attn_chunk;
  PagedAttnFn paged_attn;
  RmsnormFn rmsnorm;
  SiluMulFn silu_mul;
  SoftmaxFn softmax;
};

// The table the dispatched ops use now.
const KernelTable& active_table();

// The portable table (always present) and the per-ISA ones (nullptr where this build has none).
// The ISA tables fill the entries they do not accelerate from the generic one.
const KernelTable& generic_table();
const KernelTable* avx2_table();
const KernelTable* avx512_table();

// Tests only: makes the dispatched ops use `table`, reported as `isa`, whatever the CPU has (for the
// AVX-512 kernels built over SIMDe on machines without AVX-512, see avx512_emulated_table()).
void set_table_for_testing(Isa isa, const KernelTable* table);
// Defined only in the SIMDe test build of avx512/avx512.cpp.
const KernelTable* avx512_emulated_table();

}  // namespace mixtral::kernels::detail
