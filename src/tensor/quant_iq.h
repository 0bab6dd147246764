// GGML's i-quant block types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS): block
// layouts bit-compatible with GGUF, the published grids they index, and the scalar reference decoders.
//
// The grid types code 8 (or 4) weights at once as an index into a fixed table of points ("grid"): each
// table entry packs its points one per byte, little-endian (point j = byte j of the entry). The IQ2/IQ3
// points are unsigned magnitudes (IQ2 grids: 8, 25, 43; IQ3_XXS: 4, 12, ..., 52, 62; IQ3_S: 1, 3, ..., 15)
// with the signs stored beside them; the IQ1 points are signed bytes in {-1, 0, 1} shifted by a per-group
// delta of +-1/8. Every scale is d (fp16, per 256) times a small per-32 (or per-16) integer code.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"

namespace mixtral {

constexpr int kQK_IQ = 256;  // elements per super-block (all but IQ4_NL)
constexpr int kQK4_NL = 32;  // elements per IQ4_NL block

// IQ2_XXS (2.0625 bpw). Each 32-element group g uses qs[4g .. 4g + 3] as two little-endian u32 words
// a = qs[4g] | qs[4g+1] << 16, b = qs[4g+2] | qs[4g+3] << 16: byte l of a (l = 0..3) indexes kIq2xxsGrid
// for elements 8l .. 8l + 7; bits 7l .. 7l + 6 of b are a 7-bit sign code (kIqSigns expands it to 8 sign
// bits, bit j set = element j negative); b >> 28 is the scale code s: x = d * (0.5 + s) / 4 * point * sign.
struct BlockIQ2_XXS {
  uint16_t d;  // fp16
  uint16_t qs[kQK_IQ / 8];
};
static_assert(sizeof(BlockIQ2_XXS) == 66);

// IQ2_XS (2.3125 bpw). qs[4g + l] (l = 0..3) codes elements 32g + 8l .. +7: low 9 bits index kIq2xsGrid,
// high 7 bits are the sign code (kIqSigns). scales[g]: low nibble is the scale code of l = 0, 1, high nibble
// of l = 2, 3; x = d * (0.5 + s) / 4 * point * sign.
struct BlockIQ2_XS {
  uint16_t d;  // fp16
  uint16_t qs[kQK_IQ / 8];
  uint8_t scales[kQK_IQ / 32];
};
static_assert(sizeof(BlockIQ2_XS) == 74);

// IQ2_S (2.5625 bpw). Element group 8k (k = 4g + l, l = 0..3) has grid index qs[k] | (bits 2l, 2l + 1 of
// qh[g]) << 8 into kIq2sGrid (1024 entries) and its 8 sign bits as a whole byte, qs[32 + k] (bit j set =
// element j negative; no parity code). scales[g] as in IQ2_XS.
struct BlockIQ2_S {
  uint16_t d;               // fp16
  uint8_t qs[kQK_IQ / 4];   // [32] low index bytes, then [32] sign bytes
  uint8_t qh[kQK_IQ / 32];  // index bits 8..9, 2 per group of 8
  uint8_t scales[kQK_IQ / 32];
};
static_assert(sizeof(BlockIQ2_S) == 82);

// IQ3_XXS (3.0625 bpw). Elements 4k .. 4k + 3 are kIq3xxsGrid[qs[k]] (k = 0..63). Group g's sign and
// scale word is the little-endian u32 at qs[64 + 4g]: bits 7l .. 7l + 6 the sign code of elements
// 32g + 8l .. +7 (kIqSigns), bits 28..31 the scale code s; x = d * (0.5 + s) / 2 * point * sign.
struct BlockIQ3_XXS {
  uint16_t d;  // fp16
  uint8_t qs[3 * kQK_IQ / 8];
};
static_assert(sizeof(BlockIQ3_XXS) == 98);

// IQ3_S (3.4375 bpw). Elements 4k .. 4k + 3 are kIq3sGrid[qs[k] | (bit k % 8 of qh[k / 8]) << 8] (512
// entries); signs[k / 2] holds the 8 sign bits of elements 8(k / 2) .. +7 as a whole byte. A 4-bit scale
// code per 32 elements: scales[g / 2] low nibble for even g, high for odd; x = d * (1 + 2s) * point * sign.
struct BlockIQ3_S {
  uint16_t d;  // fp16
  uint8_t qs[kQK_IQ / 4];
  uint8_t qh[kQK_IQ / 32];
  uint8_t signs[kQK_IQ / 8];
  uint8_t scales[kQK_IQ / 64];
};
static_assert(sizeof(BlockIQ3_S) == 110);

// IQ1_S (1.5625 bpw). Group g (32 elements) has the u16 qh[g]: bits 3l .. 3l + 2 are the high bits of the
// grid index of elements 32g + 8l .. +7 (index qs[4g + l] | bits << 8 into kIq1sGrid, 2048 entries of
// signed points -1, 0, 1), bits 12..14 the scale code s, bit 15 the delta's sign;
// x = d * (2s + 1) * (point + delta), delta = -1/8 if bit 15 else +1/8.
struct BlockIQ1_S {
  uint16_t d;  // fp16
  uint8_t qs[kQK_IQ / 8];
  uint16_t qh[kQK_IQ / 32];
};
static_assert(sizeof(BlockIQ1_S) == 50);

// IQ1_M (1.75 bpw), no separate d field: the fp16 d is the top nibbles of the four little-endian u16 words
// of scales, word 0 the lowest nibble of d. Of each word w's low 12 bits, bits 6h + 3i .. +2 are the scale
// code of elements 32(2w + h) + 16i .. +15. Element group k (8 elements, k = 4g + l) has grid index
// qs[k] | (bits 0..2 of nibble l of qh[2g .. 2g + 1]) << 8 (nibble l: low nibble of qh[2g + l / 2] for even
// l, high for odd) and bit 3 of that nibble is its delta's sign; x = d * (2s + 1) * (point + delta).
struct BlockIQ1_M {
  uint8_t qs[kQK_IQ / 8];
  uint8_t qh[kQK_IQ / 16];
  uint8_t scales[kQK_IQ / 32];
};
static_assert(sizeof(BlockIQ1_M) == 56);

// IQ4_NL (4.5 bpw, blocks of 32 like Q4_0): x = d * kIq4nlValues[nibble]; low nibbles of qs hold elements
// 0..15, high nibbles 16..31.
struct BlockIQ4_NL {
  uint16_t d;  // fp16
  uint8_t qs[kQK4_NL / 2];
};
static_assert(sizeof(BlockIQ4_NL) == 18);

// IQ4_XS (4.25 bpw): IQ4_NL's values in 8 groups of 32, each with a 6-bit scale code s: low 4 bits are
// nibble g % 2 of scales_l[g / 2], high 2 bits are bits 2g, 2g + 1 of scales_h; x = d * (s - 32) *
// kIq4nlValues[nibble], with group g's nibbles in qs[16g .. 16g + 15] as in IQ4_NL.
struct BlockIQ4_XS {
  uint16_t d;  // fp16
  uint16_t scales_h;
  uint8_t scales_l[kQK_IQ / 64];
  uint8_t qs[kQK_IQ / 2];
};
static_assert(sizeof(BlockIQ4_XS) == 136);

namespace iq {

// GGML's tables (tools/gen_iq_grids.py copies them from ggml-common.h into iq_grids.inc).
extern const uint64_t kIq2xxsGrid[256];  // 8 points per entry, each 8, 25 or 43
extern const uint64_t kIq2xsGrid[512];
extern const uint64_t kIq2sGrid[1024];
extern const uint32_t kIq3xxsGrid[256];  // 4 points per entry
extern const uint32_t kIq3sGrid[512];
extern const uint64_t kIq1sGrid[2048];  // 8 signed points (int8 -1, 0, 1) per entry
// 7-bit sign code -> 8 sign bits: the code itself plus an eighth bit that makes the number of negatives
// even (kIqSigns[c] = c | parity(c) << 7).
extern const uint8_t kIqSigns[128];
extern const int8_t kIq4nlValues[16];
extern const float kIq1sDelta;  // 0.125: IQ1_S and IQ1_M shift every point by +-delta
extern const float kIq1mDelta;

// Entries in the grid of grid type t (IQ1_S and IQ1_M share kIq1sGrid).
constexpr int grid_entries(DType t) {
  switch (t) {
    case DType::IQ2_XXS:
    case DType::IQ3_XXS:
      return 256;
    case DType::IQ2_XS:
    case DType::IQ3_S:
      return 512;
    case DType::IQ2_S:
      return 1024;
    case DType::IQ1_S:
    case DType::IQ1_M:
      return 2048;
    default:
      return 0;
  }
}

}  // namespace iq

namespace detail {

void dequantize_iq2_xxs(const void* src, float* dst, int64_t n);
void dequantize_iq2_xs(const void* src, float* dst, int64_t n);
void dequantize_iq2_s(const void* src, float* dst, int64_t n);
void dequantize_iq3_xxs(const void* src, float* dst, int64_t n);
void dequantize_iq3_s(const void* src, float* dst, int64_t n);
void dequantize_iq1_s(const void* src, float* dst, int64_t n);
void dequantize_iq1_m(const void* src, float* dst, int64_t n);
void dequantize_iq4_nl(const void* src, float* dst, int64_t n);
void dequantize_iq4_xs(const void* src, float* dst, int64_t n);

// GGML's IQ4 quantizers (quantize_row_iq4_nl_impl's algorithm): per 32 elements, the best of 15 candidate
// scales around max / -127 by weighted least squares, each element's nearest value; IQ4_XS then codes the
// 8 group scales in 6 bits of d = -(largest group scale) / 32 and re-indexes each group at its coded scale.
// qw [n]: importance weights (an imatrix row); the error weights are qw * sqrt(sigma2 + x^2) with them,
// x^2 without.
void quantize_iq4_nl(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq4_xs(const float* src, void* dst, int64_t n, const float* qw = nullptr);

// The grid quantizers (GGML's algorithm, quantize_row_iq2_xxs_impl and its siblings). Per scale group (32
// elements, 16 for IQ2_XS, IQ2_S and IQ1_M) the signs are taken out (a 7-bit sign code keeps an even
// number of negatives: with an odd number, the element of least w x^2 keeps the wrong sign). Candidate
// scales over a range are scored by the weighted least-squares fit of each element's nearest level; the
// best few are scored again with every unit of 8 (IQ3: 4) elements projected onto the grid, and the best
// of those wins at its least-squares scale. Projection rounds each element to its nearest grid level: if
// that vector is a grid entry it is the weighted-nearest entry, else the nearest of the entries listed
// for it (those closest to it in level steps, built once per grid on first use). IQ1_S chooses its delta
// sign per group, IQ1_M per unit, by the same error. A group is stored not at that least-squares scale but
// at sum(w x^2) / sum(w q x), which leaves its error orthogonal to x: the least-squares scale shrinks every
// decoded group towards zero (IQ2_XS by 0.93, IQ1_S by 0.85 on Gaussian rows), a bias shared by a whole
// row that costs more KL divergence in the model than the larger uncorrelated error. d puts the largest
// stored scale at the top scale code, each group takes its nearest code, and its units are projected again
// at that code's scale times (least-squares scale / stored scale).
// qw [n]: importance weights; error weights qw * sqrt(sigma2 + x^2), qw = 1 without.
void quantize_iq2_xxs(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq2_xs(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq2_s(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq3_xxs(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq3_s(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq1_s(const float* src, void* dst, int64_t n, const float* qw = nullptr);
void quantize_iq1_m(const float* src, void* dst, int64_t n, const float* qw = nullptr);

}  // namespace detail

}  // namespace mixtral
