// Block layouts (bit-compatible with GGUF) and the scalar reference (de)quantizers.
#pragma once

#include <cstdint>
#include <cstring>

#include "tensor/dtype.h"

namespace mixtral {

// IEEE half <-> float, exact in both directions (round-to-nearest-even on the way down).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);

// bfloat16 is the top half of an f32; rounding to nearest even, NaN kept quiet.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

constexpr int kQK8_0 = 32;
constexpr int kQK4_0 = 32;

// Q8_0: x[i] = d * qs[i]
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q4_0: x[i] = d * ((nibble) - 8); low nibbles hold elements 0..15, high nibbles 16..31.
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_0_G8 (internal, made at load by repack_q4_0_g8): 8 consecutive Q4_0 blocks of a row (256 elements)
// with their nibbles transposed for the SIMD kernels, which then load them as they are. qs[32k + 4j + i]
// is byte 4k + i of block j's qs (k = 0..3, j = 0..7, i = 0..3), and d[j] is block j's scale. The values
// and scales are Q4_0's, so every dot product is bit-identical to Q4_0's. 144 bytes, as the 8 blocks.
constexpr int kG8Blocks = 8;
constexpr int kQKG8 = kG8Blocks * kQK4_0;  // elements per group (BlockQ4_0G8, BlockQ8_0G8)
struct BlockQ4_0G8 {
  uint8_t qs[kG8Blocks * kQK4_0 / 2];
  uint16_t d[kG8Blocks];  // fp16 scales
};
static_assert(sizeof(BlockQ4_0G8) == kG8Blocks * sizeof(BlockQ4_0));

// Q8_0_G8 (internal, likewise): 8 consecutive Q8_0 blocks with their values in the grouped order of the
// activations (kernels/internal.h): qs[32(2k + h) + 4j + i] is value 16h + 4k + i of block j (k = 0..3,
// h = 0..1, j = 0..7, i = 0..3), d[j] block j's scale. 272 bytes, as the 8 blocks.
struct BlockQ8_0G8 {
  int8_t qs[kQKG8];
  uint16_t d[kG8Blocks];  // fp16 scales
};
static_assert(sizeof(BlockQ8_0G8) == kG8Blocks * sizeof(BlockQ8_0));

// Rewrite n_groups groups of 8 blocks in the G8 layout, in place (src and dst may be the same memory) or
// into another buffer; and back.
void repack_q4_0_g8(const BlockQ4_0* src, BlockQ4_0G8* dst, int64_t n_groups);
void unpack_q4_0_g8(const BlockQ4_0G8* src, BlockQ4_0* dst, int64_t n_groups);
void repack_q8_0_g8(const BlockQ8_0* src, BlockQ8_0G8* dst, int64_t n_groups);
void unpack_q8_0_g8(const BlockQ8_0G8* src, BlockQ8_0* dst, int64_t n_groups);

// Q4_0_R16 and Q8_0_R16 (internal, made at load for the AVX-512 kernels): 16 consecutive rows interleaved
// block by block, so that one 64-byte vector holds 4 values of each of the 16 rows (one row per 32-bit
// lane) and a dot product needs no horizontal sum. Rows 16g .. 16g + 15 at block column b are one block
// (index g * cols / 32 + b), so a group of 16 rows takes the bytes of 16 file rows and starts where
// row 16g does; tensors need a multiple of 16 rows. In block (g, b), d[r] is row 16g + r's scale and
//   Q4_0_R16: qs[64m + 4r + i] = byte 4m + i of that row's Q4_0 qs (m = 0..3; low nibble value 4m + i,
//             high nibble value 16 + 4m + i);
//   Q8_0_R16: qs[64m + 4r + i] = value 4m + i of that row's block + 128, as an unsigned byte (m = 0..7).
// The values and scales are the file type's, so every product is exact as in Q4_0 / Q8_0.
constexpr int kR16Rows = 16;
struct BlockQ4_0R16 {
  uint16_t d[kR16Rows];  // fp16 scales
  uint8_t qs[kR16Rows * kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0R16) == kR16Rows * sizeof(BlockQ4_0));
struct BlockQ8_0R16 {
  uint16_t d[kR16Rows];  // fp16 scales
  uint8_t qs[kR16Rows * kQK8_0];
};
static_assert(sizeof(BlockQ8_0R16) == kR16Rows * sizeof(BlockQ8_0));

// The file type whose values a repacked layout holds (Q4_0 for Q4_0_G8 and Q4_0_R16, Q8_0 for Q8_0_G8 and
// Q8_0_R16, Q4_K for Q4_K_R16, Q6_K for Q6_K_R16); t itself for every file type.
DType file_layout(DType t);
// Rows a repacked layout interleaves (kR16Rows for the R16 layouts, else 1): a tensor in it needs a multiple.
int64_t row_group(DType t);
// A [rows, cols] tensor from type `from` to a repacked layout `to` of the same file type or back (Q4_0 <->
// Q4_0_G8 / Q4_0_R16, Q8_0 <-> Q8_0_G8 / Q8_0_R16, Q4_K <-> Q4_K_R16, Q6_K <-> Q6_K_R16; G8: cols a multiple
// of 256; R16: rows a multiple of 16); src and dst may be the same memory. Any other pair is a checked error.
void repack(DType from, DType to, const void* src, void* dst, int64_t rows, int64_t cols);

constexpr int kQK4_1 = 32;
constexpr int kQK5_0 = 32;
constexpr int kQK5_1 = 32;
constexpr int kQK_K = 256;  // elements per K-quant super-block
constexpr int kKScaleBytes = 12;

// Q4_1: x[i] = d * nibble + m; low nibbles hold elements 0..15, high nibbles 16..31.
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 offset (the block minimum)
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q5_0: x[i] = d * (q - 16), q = nibble | (bit i of qh) << 4 (qh little-endian u32); nibbles as in Q4_0.
struct BlockQ5_0 {
  uint16_t d;  // fp16 scale
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// Q5_1: x[i] = d * q + m, q as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 offset
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q2_K: 16 sub-blocks of 16. scales[s] = sc | mn << 4 (4 bits each); x = d*sc*q - dmin*mn, q 2 bits.
// Each half (128 elements) uses 32 bytes of qs: element 128h + 32k + l (l < 32) sits in bits 2k..2k+1 of
// qs[32h + l]; sub-block s covers elements 16s..16s+15.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;     // fp16 super-block scale of the scales
  uint16_t dmin;  // fp16 super-block scale of the mins
};
static_assert(sizeof(BlockQ2_K) == 84);

// Q3_K: 16 sub-blocks of 16, 6-bit signed scales (stored +32), x = d * (sc - 32) * (q - 4), q 3 bits:
// low 2 bits as in Q2_K, the third bit of element 128h + 32k + l is bit (4h + k) of hmask[l].
// Scale s: low 4 bits in scales[s % 8] (low nibble for s < 8, high for s >= 8), high 2 bits in bits
// 2*(s/4)..2*(s/4)+1 of scales[8 + s % 4].
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[kKScaleBytes];
  uint16_t d;  // fp16 super-block scale
};
static_assert(sizeof(BlockQ3_K) == 110);

// Q4_K: 8 sub-blocks of 32, 6-bit scale sc and min mn each (packed in 12 bytes, see k_scale_min);
// x = d*sc*q - dmin*mn, q 4 bits. Elements 64j..64j+31 are the low nibbles of qs[32j..32j+31],
// 64j+32..64j+63 the high nibbles.
struct BlockQ4_K {
  uint16_t d;     // fp16
  uint16_t dmin;  // fp16
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

// Q5_K: Q4_K plus a fifth bit: element 64j + l (l < 32) has bit 2j of qh[l], 64j + 32 + l bit 2j + 1.
struct BlockQ5_K {
  uint16_t d;     // fp16
  uint16_t dmin;  // fp16
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176);

// Q6_K: 16 sub-blocks of 16, int8 scales, x = d * sc * (q - 32), q 6 bits. In each half h (128 elements,
// 64 bytes of ql, 32 of qh): element 128h + 32k + l (l < 32) has low 4 bits from ql[64h + l + 32(k&1)]
// (low nibble for k < 2, high for k >= 2) and high 2 bits from bits 2k..2k+1 of qh[32h + l].
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;  // fp16
};
static_assert(sizeof(BlockQ6_K) == 210);

// Q4_K_R16 (internal, made at load for the AVX-512 kernels): 16 consecutive rows interleaved super-block by
// super-block, as the R16 layouts above (block (g, b) holds rows 16g .. 16g + 15 at super-block column b and
// starts where row 16g's bytes did), so one 64-byte vector holds 4 bytes of each of the 16 rows (one row
// per 32-bit lane). In block (g, b), for row r of the group:
//   d[r], dmin[r]: its fp16 d and dmin;
//   scales[64w + 4r + i] = byte 4w + i of its 12 packed scale bytes (w = 0..2: the words a, b, c of
//     k_scale_min);
//   qs[64k + 4r + i] = byte 4k + i of its qs (k = 0..31): the low nibble value 64(k / 8) + 4(k % 8) + i,
//     the high nibble that value + 32.
// The values, scales and offsets are Q4_K's, so every integer dot is that of Q4_K.
struct BlockQ4_KR16 {
  uint16_t d[kR16Rows];     // fp16
  uint16_t dmin[kR16Rows];  // fp16
  uint8_t scales[kR16Rows * kKScaleBytes];
  uint8_t qs[kR16Rows * kQK_K / 2];
};
static_assert(sizeof(BlockQ4_KR16) == kR16Rows * sizeof(BlockQ4_K));

// Q6_K_R16: Q6_K in the same interleaving. In block (g, b), for row r of the group:
//   ql[64k + 4r + i] = byte 4k + i of its ql (k = 0..31); qh[64k + 4r + i] = byte 4k + i of its qh
//   (k = 0..15); scales[64k + 4r + i] = its scale 4k + i (k = 0..3); d[r] its fp16 d.
struct BlockQ6_KR16 {
  uint8_t ql[kR16Rows * kQK_K / 2];
  uint8_t qh[kR16Rows * kQK_K / 4];
  int8_t scales[kR16Rows * kQK_K / 16];
  uint16_t d[kR16Rows];  // fp16
};
static_assert(sizeof(BlockQ6_KR16) == kR16Rows * sizeof(BlockQ6_K));

// Q8_K: the activation format of the K-quant integer dots. x = d * qs; bsums[g] = sum of qs[16g..16g+15].
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292);

// Q8_K blocks of 8 tokens side by side, the activation layout of the K-quant prefill kernels (one lane
// of L bytes per token, so one weight lane broadcast meets 8 tokens' activations in one multiply). Tile j
// of an input of n tokens holds tokens 8j .. 8j + 7 (zeros past the last), one block per 256 columns: a
// transposition of the tokens' BlockQ8_K, nothing rounded again. The lane width L is the kernel table's
// (KernelTable::k_tokens8_lane): 4 bytes (qs as declared: [dword k][token]) or 8 (qs read as
// [qword k][token][8]: values 8k .. 8k + 7 of token t at byte 64k + 8t).
constexpr int kQ8KTokens = 8;
struct BlockQ8_KX8 {
  int8_t qs[kQK_K / 4][kQ8KTokens][4];       // [dword k][token] values 4k .. 4k + 3 (L = 4; see above)
  float d[kQ8KTokens];                       // [token] the Q8_K scale
  int16_t bsums[kQK_K / 32][kQ8KTokens][2];  // [pair p][token] sums of values 32p .. +15, 32p + 16 .. +31
};
static_assert(sizeof(BlockQ8_KX8) == 2336);

// Scale and min of sub-block j (0..7) from the 12-byte 6-bit packing of Q4_K/Q5_K: j < 4: low 6 bits of
// q[j] (scale) and q[j + 4] (min); j >= 4: low nibble of q[j + 4] plus the top two bits of q[j - 4]
// (scale), high nibble of q[j + 4] plus the top two bits of q[j] (min).
inline void k_scale_min(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Scalar reference: n elements of row `src` (encoded as t) to floats. n is a multiple of the block size.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Scalar reference: floats to the encoding of t (every supported type).
// F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q8_K round as GGML does; the K-quants and the i-quants choose
// (sub-)block scales (and mins) by a weighted least-squares search, the grid i-quants (IQ1_S .. IQ3_S) each
// group of 8 (or 4) weights' grid entry with it (tensor/quant_iq.h).
void quantize_row(DType t, const float* src, void* dst, int64_t n);
// Whether quantize_row_weighted weighs t's rounding by importance weights (the K-quants Q2_K..Q6_K and the
// i-quants).
bool uses_importance(DType t);
// Whether t should be written with importance weights only, as llama.cpp's llama-quantize requires
// (tensor_requires_imatrix: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS; GGML's own
// ggml_quantize_requires_imatrix asserts for IQ2_XXS, IQ2_XS and IQ1_S). quantize_row still writes them, with
// every weight 1.
bool needs_importance(DType t);
// quantize_row with importance weights qw [n]: each column's mean squared activation in the matmul (a row of
// an importance matrix, imatrix_weights), by which the K-quants and i-quants weigh their rounding errors.
// qw null, or a type without uses_importance: quantize_row.
void quantize_row_weighted(DType t, const float* src, void* dst, int64_t n, const float* qw);

}  // namespace mixtral
