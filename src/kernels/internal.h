// Private interface between the dispatcher (dispatch.cpp: argument checks, threading, scratch buffers)
// and the per-instruction-set kernel tables (generic/, avx2/, avx512/).
//
// Only declarations, plain structs, constants and consteval checks live here: the per-ISA translation units
// are compiled with their own -m flags, so an inline function shared through a header could be emitted with
// AVX-512 instructions and picked by the linker for a generic caller. Each ISA file keeps its helpers in an
// anonymous namespace and uses no std:: templates that could be emitted out of line.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tensor/dtype.h"

namespace mixtral {
struct BlockQ8_K;    // tensor/quant.h
struct BlockQ8_KX8;  // tensor/quant.h
}  // namespace mixtral

namespace mixtral::kernels {
enum class Isa;  // kernels.h
}  // namespace mixtral::kernels

namespace mixtral::kernels::detail {

// The activation format a weight type's matmul kernels read (MatmulArgs).
enum class Activations {
  kF32,   // the f32 rows as given
  kQ8_0,  // Q8_0 blocks (values, scales, sums), in the table's order for the type (MatmulKernel::arrange)
  kQ8_K,  // Q8_K super-blocks, and for several tokens the 8-token layout (KernelTable::k_tokens8_lane)
};

// One weight type with matmul kernels in every table: the type and the activations its kernels read.
struct WeightType {
  DType dtype;
  Activations reads;
};

// The weight types with table kernels, in table order: every KernelTable has one MatmulKernel per entry,
// checked when the table compiles (lists_every_weight_type). Any other supported type runs through the
// dequantizing fallback of dispatch.cpp.
constexpr WeightType kWeightTypes[] = {
    {DType::F32, Activations::kF32},       {DType::F16, Activations::kF32},
    {DType::BF16, Activations::kF32},      {DType::Q8_0, Activations::kQ8_0},
    {DType::Q4_0, Activations::kQ8_0},     {DType::Q4_K, Activations::kQ8_K},
    {DType::Q5_K, Activations::kQ8_K},     {DType::Q6_K, Activations::kQ8_K},
    {DType::Q4_0_G8, Activations::kQ8_0},   // the repacked layouts (tensor/quant.h), made at load
    {DType::Q8_0_G8, Activations::kQ8_0},   // where a table's MatmulKernel::layout asks for them
    {DType::Q4_0_R16, Activations::kQ8_0},  //
    {DType::Q8_0_R16, Activations::kQ8_0},  //
    {DType::Q4_K_R16, Activations::kQ8_K},  //
    {DType::Q6_K_R16, Activations::kQ8_K},  //
    {DType::IQ4_NL, Activations::kQ8_0},    // 32-value blocks, each against one Q8_0 activation block
    {DType::IQ4_XS, Activations::kQ8_0},    // (IQ4_XS: 8 per super-block, x86/iq4.inc says why)
    {DType::IQ2_XXS, Activations::kQ8_K},   // the grid i-quants: scales per 16 or 32 values inside
    {DType::IQ2_XS, Activations::kQ8_K},    // 256-value super-blocks (x86/iq_grid.inc)
    {DType::IQ2_S, Activations::kQ8_K},     //
    {DType::IQ3_XXS, Activations::kQ8_K},   //
    {DType::IQ3_S, Activations::kQ8_K},     //
    {DType::IQ1_S, Activations::kQ8_K},     //
    {DType::IQ1_M, Activations::kQ8_K},     //
};
constexpr int kNumWeightTypes = static_cast<int>(sizeof(kWeightTypes) / sizeof(kWeightTypes[0]));

// Everything one matmul call's tiles share.
struct MatmulArgs {
  const uint8_t* w = nullptr;  // W row 0; row r at w + r * w_stride
  size_t w_stride = 0;         // bytes per W row
  int64_t cols = 0;
  // Activations::kF32 types: the activations as given.
  const float* x = nullptr;  // [n, cols]
  // Activations::kQ8_0 types: the activations rounded to Q8_0 (quantize_row's rule), values and scales
  // apart; xq in the table's grouped order (ArrangeQ8Fn) where it has an arrange function for the weight
  // type (for every token count, so decode and prefill of a kernel sum in the same order), else column order.
  const int8_t* xq = nullptr;     // [n, cols]
  const float* xd = nullptr;      // [n, cols / 32], the fp16 block scales widened to f32
  const int32_t* xsum = nullptr;  // [n, cols / 32], sum(q_x) per block (exact, for integer corrections)
  // Activations::kQ8_K types: the activations rounded to Q8_K (quantize_row's rule), with their 16-value
  // sums.
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

// out[t, :] = x[t, :] * inv_rms * w for n rows of dim (x may alias out).
using RmsnormFn = void (*)(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out);
using SiluMulFn = void (*)(float* x, const float* g, int64_t n);
using SoftmaxFn = void (*)(float* x, int64_t n);

// One weight type's matmul in a table.
struct MatmulKernel {
  DType dtype;          // kWeightTypes[i].dtype for entry i (checked by lists_every_weight_type)
  MatmulTileFn tile;    // never nullptr
  ArrangeQ8Fn arrange;  // Activations::kQ8_0 types: the order its tile reads the activations in (nullptr:
                        // column order); nullptr for the others
  DType layout;         // the layout this table's kernels read weights stored as `dtype` fastest in: a
                        // repacked one of the same values (kernels::preferred_layout), or dtype itself
};

// Whether k lists every weight type of kWeightTypes, in order. Each table asserts it where it is defined,
// so a type added to kWeightTypes does not compile until every table has its entry. (consteval: no code of
// it is emitted into an ISA file, see above.) That each entry has a tile, and an arrange function only where
// it reads Q8_0, is checked by MatmulTest.EveryWeightTypeOnEveryTable: GCC 12 under -fsanitize cannot
// compare function addresses in a constant expression.
template <size_t N>
consteval bool lists_every_weight_type(const MatmulKernel (&k)[N]) {
  if (static_cast<int>(N) != kNumWeightTypes) return false;
  for (int i = 0; i < kNumWeightTypes; ++i)
    if (k[i].dtype != kWeightTypes[i].dtype) return false;
  return true;
}

// Tokens an R16 kernel (AVX-512) takes in one pass over the weights: fewer read each row once, so the
// dispatcher need not cut their rows into L2-sized chunks.
constexpr int kR16TileTokens = 8;

// A MatmulTileFn body for an R16 weight (Q4_0_R16, Q8_0_R16, Q4_K_R16, Q6_K_R16) on a table without kernels
// for the layout (a model repacked for AVX-512, then run on another table): each row unpacked back to the
// file type and computed by file_tile, the table's kernel for it, which reads the activations as that
// kernel's entry does. Rows [r0, r0 + nr) as for any tile.
void r16_by_rows(DType packed, MatmulTileFn file_tile, const MatmulArgs& a, int64_t r0, int64_t nr,
                 int64_t t0, int64_t nt, float* y, int64_t ldy);

struct KernelTable {
  const char* name;
  const MatmulKernel* matmul;  // [kNumWeightTypes] in kWeightTypes order
  QuantizeQ8Fn quantize_q8;
  QuantizeQ8KFn quantize_q8_k;
  int k_tokens8_lane;  // the Q8_K readers take MatmulArgs::xk8 (lanes of 4 or 8 bytes) when n > 1; 0: never
  RmsnormFn rmsnorm;
  SiluMulFn silu_mul;
  SoftmaxFn softmax;
};

// The table the dispatched ops use now.
const KernelTable& active_table();

// The portable table (always present) and the per-ISA ones (nullptr where this build has none). Every
// table has its own matmul kernel for every weight type; the AVX2 table takes its Q8_K quantizer from
// the generic one. (Attention is not in the tables: kernels/paged_attention.cpp dispatches its own.)
const KernelTable& generic_table();
const KernelTable* avx2_table();
const KernelTable* avx512_table();

// Tests only: makes the dispatched ops use `table`, reported as `isa`, whatever the CPU has (for the
// AVX-512 kernels built over SIMDe on machines without AVX-512, see avx512_emulated_table()).
void set_table_for_testing(Isa isa, const KernelTable* table);
// Defined only in the SIMDe test build of avx512/avx512.cpp.
const KernelTable* avx512_emulated_table();

}  // namespace mixtral::kernels::detail
