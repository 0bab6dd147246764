// AVX-512 (F/BW/VL/DQ + VNNI) kernels. Compiled with its own -m flags (kernels/CMakeLists.txt) and only
// called after dispatch.cpp has checked the CPU. Helpers stay in an anonymous namespace and no std::
// template is instantiated here, so no AVX-512 code can leak into a generic caller through the linker.
//
// Quantized matmul: Q4_0 and Q8_0 (either layout) in 512-bit VNNI steps over pairs of grouped activations
// (see GroupTile), the K-quants in the kernels shared with the AVX2 file (x86/kquant.inc) in their
// AVX512-VNNI form, IQ4_NL and IQ4_XS over the same pairs as Q4_0 (x86/iq4.inc). vpdpbusd multiplies
// unsigned by signed bytes, so
//   Q8_0 x Q8_0: (w + 128) . x - 128 * sum(x) = w . x,
//   Q4_0 x Q8_0: nibbles (0..15) . x - 8 * sum(x),
// the second term subtracted per block in int32 before the conversion to f32.
#include "kernels/internal.h"

// MX_KERNELS_AVX512_SIMDE: a test build for CPUs without AVX-512, the intrinsics emulated by SIMDe
// (tests/kernels/avx512_simde.h); the table is then avx512_emulated_table().
#if (defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
     defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__FMA__) && defined(__F16C__)) ||    \
    defined(MX_KERNELS_AVX512_SIMDE)

// GCC 12's AVX-512 intrinsics seed unused lanes with _mm512_undefined_ps() (__Y = __Y), which its own
// -Wmaybe-uninitialized flags once inlined; a false positive, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(MX_KERNELS_AVX512_SIMDE)
#include "avx512_simde.h"
#define MX_AVX512_TABLE avx512_emulated_table
#else
#include <immintrin.h>
#define MX_AVX512_TABLE avx512_table
#endif

#include <cmath>

#include "tensor/quant.h"
#include "tensor/quant_iq.h"

namespace mixtral::kernels::detail {
namespace {

#include "kernels/x86/common.inc"

// Horizontal sum / max (own versions: GCC 12's _mm512_reduce_* trip -Wuninitialized).
inline float hsum512(__m512 v) {
  const __m512 hi = _mm512_shuffle_f32x4(v, v, 0xee);  // upper 256 bits in the lower half
  return hsum256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(hi)));
}
inline float hmax512(__m512 v) {
  const __m512 hi = _mm512_shuffle_f32x4(v, v, 0xee);
  return hmax256(_mm256_max_ps(_mm512_castps512_ps256(v), _mm512_castps512_ps256(hi)));
}

inline __mmask16 tail_mask(int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}

// ---------------------------------------------------------------------------------------------------
// Quantized weights.

#include "kernels/x86/grouped.inc"

// One block (column order) as 32 unsigned bytes u with u . x - c . x the signed dot product, for the
// blocks after a row's last full group:
//   Q8_0: u = w + 128 (w xor 0x80), c = 128;   Q4_0: u = the nibbles (0..15), c = 8.
struct Q8Unpack {
  using Block = BlockQ8_0;
  static __m256i run(const BlockQ8_0& b) {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)),
                            _mm256_set1_epi8(static_cast<char>(0x80)));
  }
};
struct Q4Unpack {
  using Block = BlockQ4_0;
  static __m256i run(const BlockQ4_0& b) { return q4_nibbles(b); }
};

// ---------------------------------------------------------------------------------------------------
// Q4_0 and Q8_0 over grouped activations (ArrangeQ8Fn, internal.h), for every token count, on 512-bit
// vectors: two groups of 8 blocks side by side (a pair, 16 blocks = 512 values), one int32 lane per
// block. The activations' pairs are interleaved by arrange_q8_pairs (vector v of a pair = vector v of
// its first group, then vector v of its second), and a weight row's pair is built from the two groups as
// the file or the repack stores them. Each (row, token) runs 8 vpdpbusd per pair into one int32 vector,
// starting from -c sum(x) per block (c = 8 for Q4_0, 128 for Q8_0) so the sums are exact, and pays one
// conversion, one scale multiply and one FMA per 16 blocks. A row's last full group when their count is
// odd runs the same step with the upper half zero; blocks after the last full group one at a time.
//
// Micro-tiles of R rows x T tokens: each activation vector is loaded once for the R rows and each
// unpacked weight vector used for the T tokens. With 32 vector registers the R x T int32 sums and R x T
// f32 accumulators all stay in registers (R = 3, T = 4: 24 of them, plus R unpacked weights and the
// activation). Decoding (one token) runs R rows in lockstep on R long sequential streams (see
// row_pass_decode). Every (row, token) runs the same operations whatever R and T, so decode and prefill
// are bit-identical.
//
// Why 512 bits: Zen 5 and Intel cores run vpdpbusd on 512-bit vectors at the 256-bit rate in vectors
// per cycle, doubling the multiplies; Zen 4 splits them in two, so there the multiplies stay and the
// instructions (decode, loop, epilogue) halve.

// ArrangeQ8Fn of this table: grouped order (arrange_q8), then each pair of full groups interleaved by
// 32-byte vectors. A row's last group, when their count is odd, and the blocks after it stay as they are.
void arrange_q8_pairs(int8_t* qs, int64_t cols) {
  arrange_q8(qs, cols);
  const int64_t pairs = cols / (2 * kQK8_0 * kGroupBlocks);
  for (int64_t p = 0; p < pairs; ++p) {
    auto* v = reinterpret_cast<__m256i*>(qs + p * 2 * kQK8_0 * kGroupBlocks);  // [2 groups, 8 vectors]
    __m256i g[16];
    MX_UNROLL
    for (int i = 0; i < 16; ++i) g[i] = _mm256_loadu_si256(v + i);
    MX_UNROLL
    for (int i = 0; i < 8; ++i) {
      _mm256_storeu_si256(v + 2 * i, g[i]);
      _mm256_storeu_si256(v + 2 * i + 1, g[8 + i]);
    }
  }
}

// How a weight pair becomes the 8 vectors u[v] of unsigned bytes in pair order, with
// u . x - 2^kShift sum(x) = w . x per block: load() writes kStored vectors once per pair and row, vec()
// makes vector v from them in the token loop. Load reads one group in 256-bit grouped order (grouped.inc).
template <class Load>  // Q4FileGroup or Q4G8Group (grouped.inc)
struct Q4PairUnpack {  // u = the nibbles (0..15), c = 8
  using Block = BlockQ4_0;
  using Column = Q4Unpack;
  static constexpr int kShift = 3, kStored = 4;  // packed nibbles: low and high halves of 4 vectors
  static constexpr int64_t kGroupBytes = kGroupBlocks * sizeof(Block);
  // Both groups of the pair (kHalf: the first only, the upper half zero).
  template <bool kHalf>
  static void load(const Block* w, __m512i* c, __m512* d) {
    __m256i lo[4], hi[4] = {};
    __m256 dlo = Load::load(reinterpret_cast<const uint8_t*>(w), lo), dhi = _mm256_setzero_ps();
    if constexpr (!kHalf) dhi = Load::load(reinterpret_cast<const uint8_t*>(w) + kGroupBytes, hi);
    MX_UNROLL
    for (int k = 0; k < 4; ++k) c[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[k]), hi[k], 1);
    *d = _mm512_insertf32x8(_mm512_castps256_ps512(dlo), dhi, 1);
  }
  static __m512i vec(const __m512i* c, int v) {  // vector v = 2k + h: the low (h = 0) or high nibbles of c[k]
    return _mm512_and_si512(v % 2 == 0 ? c[v / 2] : _mm512_srli_epi16(c[v / 2], 4), _mm512_set1_epi8(0x0f));
  }
};
template <class Load>  // Q8FileGroup or Q8G8Group (grouped.inc)
struct Q8PairUnpack {  // u = w + 128, c = 128
  using Block = BlockQ8_0;
  using Column = Q8Unpack;
  static constexpr int kShift = 7, kStored = 8;
  static constexpr int64_t kGroupBytes = kGroupBlocks * sizeof(Block);
  template <bool kHalf>
  static void load(const Block* w, __m512i* c, __m512* d) {
    __m256i lo[8], hi[8] = {};
    __m256 dlo = Load::load(reinterpret_cast<const uint8_t*>(w), lo), dhi = _mm256_setzero_ps();
    if constexpr (!kHalf) dhi = Load::load(reinterpret_cast<const uint8_t*>(w) + kGroupBytes, hi);
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    MX_UNROLL
    for (int v = 0; v < 8; ++v) {
      c[v] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo[v]), hi[v], 1), flip);
      if constexpr (kHalf) c[v] = _mm512_maskz_mov_epi64(0x0f, c[v]);  // the upper half's u = 0
    }
    *d = _mm512_insertf32x8(_mm512_castps256_ps512(dlo), dhi, 1);
  }
  static __m512i vec(const __m512i* c, int v) { return c[v]; }
};

// Tile shape (overridable for measurements). Measured on a Zen 5 core (EPYC, full-width AVX-512), 1 thread,
// 14336 x 4096 x 512 tokens, GFLOP/s Q4_0_G8 / Q8_0_G8, builds alternating: 3x4 434-443 / 322-332,
// 2x4 410-420 / 304-309, 2x6 387-401 / 300-306; the same 3x4 with the unpacked pairs forced through
// memory (as the 256-bit tile did) 375-380 / 303-312. Small batches, 1 thread, ms per call, Q4_0_G8 at
// n = 5 / 8: these tiles (3 x n up to 4 tokens, then 3 x 4 passes) 2.2-2.4 / 2.9; one pass of 1 x n tiles
// (weights read once) 3.3-3.4 / 5.7-5.9. Q8_0 small batches: GroupPass.
#ifndef MX_GROUP_TILE_ROWS
#define MX_GROUP_TILE_ROWS 3
#endif
#ifndef MX_GROUP_TILE_TOKENS
#define MX_GROUP_TILE_TOKENS 4
#endif
constexpr int kTileRows = MX_GROUP_TILE_ROWS, kTileTokens = MX_GROUP_TILE_TOKENS;
// Rows in lockstep when decoding: that many sequential weight streams per thread (row_pass_decode).
// Measured on the Zen 5 VM, 1 thread, cold Q4_0_G8 weights, alternating builds, GB/s (probe 39-40):
// 3 rows 39.9, 40.1, 35.0, 37.3 / 4 rows 37.2, 38.8, 33.5, 36.3 at 14336 x 4096; at 4096 x 14336
// (rows of 8 KiB: with 4 of them streaming through L1 the activations no longer stay there) 3 rows
// 34.8-36.5 / 4 rows 31.3-34.8. 2 and 6 rows read slower than both (6 spills registers).
#ifndef MX_DECODE_ROWS
#define MX_DECODE_ROWS 3
#endif
constexpr int kDecodeRows = MX_DECODE_ROWS;

template <class Unpack, int64_t kAhead>
struct GroupTile {
  template <int R, int T>
  struct K {
    using Block = typename Unpack::Block;

    // acc[r][t] += the pair (or, kHalf, the group) of 16 blocks from b0, one f32 lane per block.
    template <bool kHalf>
    static void step(const Block* const* w, int64_t b0, int64_t cols, int64_t nb, const int8_t* xq,
                     const float* xd, const int32_t* xs, __m512 (&acc)[R][T]) {
      alignas(64) __m512i c[R][Unpack::kStored];  // [R, kStored] the rows' pairs, in pair order
      alignas(64) __m512 dw[R];                   // [R] their 16 block scales
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        prefetch_bytes(w[r] + b0, kAhead, 2 * kGroupBlocks * static_cast<int64_t>(sizeof(Block)));
        Unpack::template load<kHalf>(w[r] + b0, c[r], &dw[r]);
      }
      const __mmask16 lanes = kHalf ? 0x00ff : 0xffff;
      __m512i s[R][T];  // [R, T] int32 dots u . x - c sum(x), one lane per block
      MX_UNROLL
      for (int v = 0; v < 8; ++v) {
        __m512i u[R];
        MX_UNROLL
        for (int r = 0; r < R; ++r) u[r] = Unpack::vec(c[r], v);
        MX_UNROLL
        for (int t = 0; t < T; ++t) {
          // A pair's vector v: 64 bytes at 64 v; a lone group's: 32 bytes at 32 v (upper half unread).
          const int8_t* xp = xq + t * cols + b0 * kQK8_0 + (kHalf ? 32 : 64) * v;
          __m512i xv = kHalf
                           ? _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp)))
                           : _mm512_loadu_si512(xp);
#if !defined(MX_KERNELS_AVX512_SIMDE)               // (SIMDe's __m512i is a struct, not a register)
          if constexpr (R > 1) asm("" : "+v"(xv));  // one load for R rows, not R folded memory operands
#endif
          if (v == 0) {
            const __m512i corr =
                _mm512_slli_epi32(_mm512_maskz_loadu_epi32(lanes, xs + t * nb + b0), Unpack::kShift);
            const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), corr);
            MX_UNROLL
            for (int r = 0; r < R; ++r) s[r][t] = _mm512_dpbusd_epi32(init, u[r], xv);
          } else {
            MX_UNROLL
            for (int r = 0; r < R; ++r) s[r][t] = _mm512_dpbusd_epi32(s[r][t], u[r], xv);
          }
        }
      }
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 xdt = _mm512_maskz_loadu_ps(lanes, xd + t * nb + b0);
        MX_UNROLL
        for (int r = 0; r < R; ++r)
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][t]), _mm512_mul_ps(dw[r], xdt), acc[r][t]);
      }
    }

    static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
      const int64_t cols = a.cols, nb = cols / kQK8_0, ng = nb / kGroupBlocks;
      const Block* w[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const Block*>(a.w + (r0 + r * rstep) * a.w_stride);
      const int8_t* xq = a.xq + t0 * cols;   // [T, cols] pair order
      const float* xd = a.xd + t0 * nb;      // [T, nb]
      const int32_t* xs = a.xsum + t0 * nb;  // [T, nb]
      __m512 acc[R][T];                      // [R, T] one f32 lane per block of a pair
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        MX_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
      }
      for (int64_t p = 0; p < ng / 2; ++p) step<false>(w, 2 * p * kGroupBlocks, cols, nb, xq, xd, xs, acc);
      if (ng % 2 != 0) step<true>(w, (ng - 1) * kGroupBlocks, cols, nb, xq, xd, xs, acc);
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        float tail[T] = {};  // [T] blocks after the last full group, one at a time in column order
        for (int64_t b = ng * kGroupBlocks; b < nb; ++b) {
          const float dwb = _cvtsh_ss(w[r][b].d);
          const __m256i u = Unpack::Column::run(w[r][b]);
          MX_UNROLL
          for (int t = 0; t < T; ++t) {
            const __m256i x =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * cols + b * kQK8_0));
            const int32_t dot = hsum256_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)) -
                                (xs[t * nb + b] << Unpack::kShift);
            tail[t] += static_cast<float>(dot) * (dwb * xd[t * nb + b]);
          }
        }
        MX_UNROLL
        for (int t = 0; t < T; ++t) y[t * ldy + r * rstep] = hsum512(acc[r][t]) + tail[t];
      }
    }
  };
};

// Q8_0 small batches (2 to kPassTokens tokens, a serving step's per-expert groups): one pass of
// kPassRows-row tiles over all the tokens, so each weight pair is loaded and unpacked once per call. The
// pair goes to an L1-resident stack array and serves the tokens in sub-blocks of up to kSubTokens, whose
// R x T int32 sums stay in registers; the f32 accumulators, one per (row, token), live on the stack.
// Per (row, token) these are the operations of GroupTile, so decode, passes and tiles are bit-identical.
// Measured on the Zen 5 VM, 1 thread, 14336 x 4096, ms per call at n = 2 / 4 / 8 / 16, alternating builds:
// Q8_0_G8 pass 2.35 / 2.85-2.91 / 3.80-3.94 / 8.9-9.2 against the 3 x 4 tiles 3.58-4.13 / 3.88-4.86 /
// 5.19-6.94 / 7.5-9.9 (hence kPassTokens = 8); Q4_0_G8 pass 1.74 / 2.30 / 3.43-3.54 / 7.0 against 1.63-1.69
// / 1.93-2.44 / 2.86-3.92 / 4.7-6.2, so Q4_0 keeps the tiles. With 3 x 8 sub-blocks and the pair forced
// through memory the pass was slower for both (perf: the weight loads).
#ifndef MX_PASS_ROWS
#define MX_PASS_ROWS 3
#endif
#ifndef MX_PASS_TOKENS
#define MX_PASS_TOKENS 8
#endif
constexpr int kPassRows = MX_PASS_ROWS, kPassTokens = MX_PASS_TOKENS, kSubTokens = 4;
static_assert(kPassRows * kSubTokens <= 24, "the int32 sums must fit the registers");

template <class Unpack>
struct GroupPass {
  using Block = typename Unpack::Block;
  using Stored = __m512i[Unpack::kStored];

  // acc[r * kPassTokens + t] += the pair (kHalf: the group) from b0 of rows c for T tokens from xq (whose
  // xd, xs are [T, nb] from the same token).
  template <int R, int T, bool kHalf>
  __attribute__((always_inline)) static void sub(const Stored* c, const __m512* dw, const int8_t* xq,
                                                 const float* xd, const int32_t* xs, int64_t cols, int64_t nb,
                                                 int64_t b0, __m512* acc) {
    const __mmask16 lanes = kHalf ? 0x00ff : 0xffff;
    __m512i s[R][T];  // [R, T] int32 dots u . x - c sum(x), one lane per block
    MX_UNROLL
    for (int v = 0; v < 8; ++v) {
      __m512i u[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r) u[r] = Unpack::vec(c[r], v);
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const int8_t* xp = xq + t * cols + b0 * kQK8_0 + (kHalf ? 32 : 64) * v;
        __m512i xv = kHalf ? _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp)))
                           : _mm512_loadu_si512(xp);
#if !defined(MX_KERNELS_AVX512_SIMDE)
        if constexpr (R > 1) asm("" : "+v"(xv));  // one load for R rows, not R folded memory operands
#endif
        if (v == 0) {
          const __m512i corr =
              _mm512_slli_epi32(_mm512_maskz_loadu_epi32(lanes, xs + t * nb + b0), Unpack::kShift);
          const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), corr);
          MX_UNROLL
          for (int r = 0; r < R; ++r) s[r][t] = _mm512_dpbusd_epi32(init, u[r], xv);
        } else {
          MX_UNROLL
          for (int r = 0; r < R; ++r) s[r][t] = _mm512_dpbusd_epi32(s[r][t], u[r], xv);
        }
      }
    }
    MX_UNROLL
    for (int t = 0; t < T; ++t) {
      const __m512 xdt = _mm512_maskz_loadu_ps(lanes, xd + t * nb + b0);
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        __m512* a = acc + r * kPassTokens + t;
        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][t]), _mm512_mul_ps(dw[r], xdt), *a);
      }
    }
  }

  // The pair (kHalf: the group) from b0 of rows w for nt tokens.
  template <int R, bool kHalf>
  static void pair(const Block* const* w, int64_t ahead, int64_t b0, const int8_t* xq, const float* xd,
                   const int32_t* xs, int64_t nt, int64_t cols, int64_t nb, __m512* acc) {
    alignas(64) Stored c[R];   // [R, kStored] the rows' pairs, in pair order
    alignas(64) __m512 dw[R];  // [R] their 16 block scales
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      prefetch_bytes(w[r] + b0, ahead, 2 * kGroupBlocks * static_cast<int64_t>(sizeof(Block)));
      Unpack::template load<kHalf>(w[r] + b0, c[r], &dw[r]);
    }
    for (int64_t t = 0; t < nt; t += kSubTokens) {
      const int64_t ct = nt - t < kSubTokens ? nt - t : kSubTokens;
      const int8_t* q = xq + t * cols;
      const float* d = xd + t * nb;
      const int32_t* s = xs + t * nb;
      __m512* at = acc + t;
      switch (ct) {
        case 1:
          sub<R, 1, kHalf>(c, dw, q, d, s, cols, nb, b0, at);
          break;
        case 2:
          sub<R, 2, kHalf>(c, dw, q, d, s, cols, nb, b0, at);
          break;
        case 3:
          sub<R, 3, kHalf>(c, dw, q, d, s, cols, nb, b0, at);
          break;
        default:
          sub<R, 4, kHalf>(c, dw, q, d, s, cols, nb, b0, at);
          break;
      }
    }
  }

  // Rows r0 .. r0 + R - 1 x tokens t0 .. t0 + nt - 1 (nt <= kPassTokens) over all columns.
  template <int R>
  static void run(const MatmulArgs& a, int64_t r0, int64_t t0, int64_t nt, float* y, int64_t ldy) {
    const int64_t cols = a.cols, nb = cols / kQK8_0, ng = nb / kGroupBlocks;
    const Block* w[R];
    MX_UNROLL
    for (int r = 0; r < R; ++r) w[r] = reinterpret_cast<const Block*>(a.w + (r0 + r) * a.w_stride);
    const int8_t* xq = a.xq + t0 * cols;      // [nt, cols] pair order
    const float* xd = a.xd + t0 * nb;         // [nt, nb]
    const int32_t* xs = a.xsum + t0 * nb;     // [nt, nb]
    alignas(64) __m512 acc[R * kPassTokens];  // [R, kPassTokens] one f32 lane per block of a pair
    for (int r = 0; r < R; ++r)
      for (int64_t t = 0; t < nt; ++t) acc[r * kPassTokens + t] = _mm512_setzero_ps();
    // The same pair of the next pass's rows, read after this pass's last pair.
    const int64_t ahead = R * a.w_stride;
    for (int64_t p = 0; p < ng / 2; ++p)
      pair<R, false>(w, ahead, 2 * p * kGroupBlocks, xq, xd, xs, nt, cols, nb, acc);
    if (ng % 2 != 0) pair<R, true>(w, ahead, (ng - 1) * kGroupBlocks, xq, xd, xs, nt, cols, nb, acc);
    for (int r = 0; r < R; ++r) {
      for (int64_t t = 0; t < nt; ++t) {
        float tail = 0.0f;  // blocks after the last full group, one at a time in column order
        for (int64_t b = ng * kGroupBlocks; b < nb; ++b) {
          const __m256i u = Unpack::Column::run(w[r][b]);
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * cols + b * kQK8_0));
          const int32_t dot = hsum256_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)) -
                              (xs[t * nb + b] << Unpack::kShift);
          tail += static_cast<float>(dot) * (_cvtsh_ss(w[r][b].d) * xd[t * nb + b]);
        }
        y[t * ldy + r] = hsum512(acc[r * kPassTokens + t]) + tail;
      }
    }
  }
};

// Q4_0 and Q8_0: kDecodeRows rows in lockstep for one token (GroupTile); with kPass (Q8_0) 2 to kPassTokens
// tokens in one GroupPass; else kTileRows x kTileTokens tiles. Several tokens prefetch the weights further
// ahead (the pass: the same pair of the next tile's rows; the tiles: kTilePrefetchBytes): they spend long
// enough on each pair that the decode distance arrives late.
template <class Unpack, bool kPass>
void group_matmul(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y,
                  int64_t ldy) {
  if (kPass && nt >= 2 && nt <= kPassTokens) {
    using Pass = GroupPass<Unpack>;
    int64_t rr = 0;
    for (; rr + kPassRows <= nr; rr += kPassRows)
      Pass::template run<kPassRows>(a, r0 + rr, t0, nt, y + rr, ldy);
    for (; rr < nr; ++rr) Pass::template run<1>(a, r0 + rr, t0, nt, y + rr, ldy);
    return;
  }
  tiles<GroupTile<Unpack, kPrefetchBytes>::template K, kDecodeRows,
        GroupTile<Unpack, kTilePrefetchBytes>::template K, kTileRows, kTileTokens>(a, r0, nr, t0, nt, y, ldy);
}

// ---------------------------------------------------------------------------------------------------
// Q4_0_R16 and Q8_0_R16 (tensor/quant.h): 16 rows in the 16 int32 lanes of a vector, so one vpdpbusd adds
// 4 products for each of the 16 rows and one token, from 4 activation bytes broadcast (the activations in
// column order: no arrangement), and no horizontal sum is left at the end. Per block and token: 8 vpdpbusd
// starting from -c sum(x) (c = 8 for Q4_0's nibbles, 128 for Q8_0's values stored + 128), exact in int32,
// then one conversion, one multiply by the 16 rows' scales times the token's, one FMA. G row groups run
// side by side, each taken from its own part of the rows so that each is one long sequential stream, and
// the G x T sums of a block are all live at once: the block's vectors come in pairs (values 4m .., 16 + 4m
// ..), each pair unpacked once and used by every token before the next, so the T x G chains of vpdpbusd
// interleave. The int32 sums are exact in any order, and every (row, token) runs the same float steps
// whatever G and T, so decode and prefill are bit-identical.
//
// Measured on the Zen 5 VM, 1 thread, Q4_0, 14336 x 4096 cold (8 copies in turn), us per call against the
// earlier tiles (each token's 8 vpdpbusd in a row over the block's 8 unpacked vectors; 2 groups, 3 for 2
// tokens), same minutes: 2 tokens 1196-1226 against 1254-1278, 3: 1140-1189 / 1309-1323, 4: 1141-1204 /
// 1356-1385, 5: 1290-1383 / 1636, 6: 1409-1505 / 1765-1774, 7: 1702-1767 / 1945, 8: 1826-2005 / 2148-2172,
// 1 token (4 groups, unchanged) 916-1169. More groups than 4 read slower (6 for 4 tokens: 1242 against
// 1141, 8: 1684), and from 6 tokens on they spill the sums: 3 groups for 6 and 7 tokens, 2 for 8.
struct R16Q4 {  // nibbles 0..15
  using Block = BlockQ4_0R16;
  static constexpr int kShift = 3;
  // Vectors m and 4 + m of the block (values 4m .. 4m + 3 and 16 + 4m .. of each row), m = 0..3.
  static void pair(const Block& b, int m, __m512i& lo, __m512i& hi) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i p = _mm512_loadu_si512(b.qs + 64 * m);
    lo = _mm512_and_si512(p, m4);
    hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
  }
};
struct R16Q8 {  // values + 128, stored so
  using Block = BlockQ8_0R16;
  static constexpr int kShift = 7;
  static void pair(const Block& b, int m, __m512i& lo, __m512i& hi) {
    lo = _mm512_loadu_si512(b.qs + 64 * m);
    hi = _mm512_loadu_si512(b.qs + 64 * (m + 4));
  }
};

// Tokens per tile, and row groups per tile by token count (measured above).
constexpr int kR16Tokens = kR16TileTokens;  // tokens per tile at most (internal.h)
constexpr int r16_groups(int t) {
  return t <= 5 ? 4 : t <= 7 ? 3 : 2;
}

template <class U, int G, int T>
struct R16Tile {
  using Block = typename U::Block;
  // Groups starting at rows r0 + 16 k gstride (k < G) x tokens t0 .. t0 + T - 1; y at (t0, r0).
  static void run(const MatmulArgs& a, int64_t r0, int64_t gstride, int64_t t0, float* y, int64_t ldy) {
    const int64_t cols = a.cols, nb = cols / kQK8_0;
    const int64_t ahead = T == 1 ? kPrefetchBytes : kTilePrefetchBytes;
    const Block* w[G];
    MX_UNROLL
    for (int g = 0; g < G; ++g)
      w[g] = reinterpret_cast<const Block*>(a.w + (r0 + g * gstride * kR16Rows) * a.w_stride);
    const int8_t* xq = a.xq + t0 * cols;   // [T, cols] column order
    const float* xd = a.xd + t0 * nb;      // [T, nb]
    const int32_t* xs = a.xsum + t0 * nb;  // [T, nb]
    __m512 acc[G][T];                      // [G, T] one f32 lane per row
    MX_UNROLL
    for (int g = 0; g < G; ++g) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      __m512i s[G][T];  // [G, T] int32 dots u . x - c sum(x), one lane per row
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512i c = _mm512_set1_epi32(-(xs[t * nb + b] << U::kShift));
        MX_UNROLL
        for (int g = 0; g < G; ++g) s[g][t] = c;
      }
      MX_UNROLL
      for (int g = 0; g < G; ++g) prefetch_bytes(w[g] + b, ahead, sizeof(Block));
      MX_UNROLL
      for (int m = 0; m < 4; ++m) {
        __m512i lo[G], hi[G];  // [G] the groups' vectors m and 4 + m, unsigned
        MX_UNROLL
        for (int g = 0; g < G; ++g) U::pair(w[g][b], m, lo[g], hi[g]);
        MX_UNROLL
        for (int t = 0; t < T; ++t) {
          int32_t four[2];  // activation bytes 4m .. 4m + 3 and 16 + 4m .. 16 + 4m + 3 of the block
          __builtin_memcpy(&four[0], xq + t * cols + b * kQK8_0 + 4 * m, 4);
          __builtin_memcpy(&four[1], xq + t * cols + b * kQK8_0 + 16 + 4 * m, 4);
          const __m512i x0 = _mm512_set1_epi32(four[0]), x1 = _mm512_set1_epi32(four[1]);
          MX_UNROLL
          for (int g = 0; g < G; ++g) {
            s[g][t] = _mm512_dpbusd_epi32(s[g][t], lo[g], x0);
            s[g][t] = _mm512_dpbusd_epi32(s[g][t], hi[g], x1);
          }
        }
      }
      MX_UNROLL
      for (int g = 0; g < G; ++g) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[g][b].d)));
        MX_UNROLL
        for (int t = 0; t < T; ++t)
          acc[g][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g][t]),
                                      _mm512_mul_ps(dw, _mm512_set1_ps(xd[t * nb + b])), acc[g][t]);
      }
    }
    MX_UNROLL
    for (int g = 0; g < G; ++g) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy + g * gstride * kR16Rows, acc[g][t]);
    }
  }
};

// T tokens over the row groups of [r0, r0 + nr): G = r16_groups(T) groups per tile from G equal parts.
template <class U, int T>
void r16_pass(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, float* y, int64_t ldy) {
  constexpr int G = r16_groups(T);
  const int64_t groups = nr / kR16Rows, part = groups / G;
  for (int64_t k = 0; k < part; ++k)
    R16Tile<U, G, T>::run(a, r0 + k * kR16Rows, part, t0, y + k * kR16Rows, ldy);
  for (int64_t k = G * part; k < groups; ++k)
    R16Tile<U, 1, T>::run(a, r0 + k * kR16Rows, 0, t0, y + k * kR16Rows, ldy);
}

template <class U, int T>
void r16_tokens(int64_t ct, const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, float* y, int64_t ldy) {
  if (ct == T) {
    r16_pass<U, T>(a, r0, nr, t0, y, ldy);
  } else if constexpr (T > 1) {
    r16_tokens<U, T - 1>(ct, a, r0, nr, t0, y, ldy);
  }
}

// MatmulTileFn of the R16 layouts: rows in whole groups of 16 (the tensor's rows are, and the dispatcher
// splits them at multiples of 16), tokens in tiles of up to kR16Tokens, rows inner.
template <class U>
void r16_matmul(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  for (int64_t tt = 0; tt < nt; tt += kR16Tokens) {
    const int64_t ct = nt - tt < kR16Tokens ? nt - tt : kR16Tokens;
    r16_tokens<U, kR16Tokens>(ct, a, r0, nr, t0 + tt, y + tt * ldy, ldy);
  }
}

// ---------------------------------------------------------------------------------------------------
// IQ4_NL and IQ4_XS: the shared kernels (x86/iq4.inc) in their vpdpbusd form over pair-ordered activations
// (arrange_q8_pairs, as Q4_0 and Q8_0): 3 rows in lockstep for one token, else tiles of 3 rows x 4 tokens.
#define MX_IQ4_VNNI 1
#include "kernels/x86/iq4.inc"
#undef MX_IQ4_VNNI

// ---------------------------------------------------------------------------------------------------
// The grid i-quants (IQ2_XXS ... IQ1_M): the shared kernels (x86/iq_grid.inc) over Q8_K activations, in
// 512-bit steps (byte-masked negation, vpdpwssd); 4 rows in lockstep for one token, else 4 rows against runs
// of up to 16 tokens.
#define MX_IQG_512 1
#include "kernels/x86/iq_grid.inc"
#undef MX_IQG_512

// ---------------------------------------------------------------------------------------------------
// K-quants: the shared kernels with 512-bit decode and prefill, vpdpwssd adding the scaled pairs (one
// instruction instead of vpmaddwd + vpaddd per vector and token).
#define MX_K_VNNI 1
#include "kernels/x86/kquant.inc"
constexpr int64_t kKTilesMinTokens = MX_K_TOKENS8_MIN;  // from this many tokens on, the 8-token tiles
#undef MX_K_VNNI

// ---------------------------------------------------------------------------------------------------
// Q4_K_R16 (tensor/quant.h): 16 rows in the 16 int32 lanes, as the R16 kernels above. Per super-block the
// 16 rows' scales and offsets are decoded once for all tokens (a dozen vector instructions for the 16 rows,
// where the file layout decodes each row's apart), and per token and 64 values 16 vpdpbusd (one activation
// dword broadcast per instruction, the activations' Q8_K blocks read as they are), 2 vpmulld by the
// sub-blocks' scales, then per super-block 8 vpdpwssd for the offsets against the 16-value sums and the
// float step of every K-quant kernel: exact int32 sums sq = sum_j sc[j] (q . x)_j, sm = sum_j mn[j] S_j, then
//   acc = fma(float(sq), d_x * d, acc);  acc = fnmadd(float(sm), d_x * dm, acc)
// per super-block in order, so each (row, token) gives the file layout's result bit for bit, whatever the
// token count.

// The vpshufb mask that widens byte j of each dword (row) to its int32 (pair false) or to the int16 pair
// (byte j, byte j) (pair true); j and pair are constants where it is used, so the mask is one.
inline __m512i r16k_pick(int j, bool pair) {
  const auto word = [&](int q) {
    const uint32_t b = static_cast<uint32_t>(4 * q + j);
    return static_cast<int>(pair ? 0x80008000u | b | b << 16 : 0x80808000u | b);
  };
  return _mm512_set4_epi32(word(3), word(2), word(1), word(0));
}

struct R16KHead {  // one super-block of the 16 rows: bytes j = 0..3 of each dword are sub-blocks j, 4 + j
  __m512i sc_lo, sc_hi;  // the 6-bit scales
  __m512i mn_lo, mn_hi;  // the 6-bit offsets
  __m512 d, dm;          // the rows' d and dmin
};
// k_scales_mins for the 16 rows at once: a, b, c the packed words of each row (scales[64w .. 64w + 63]).
inline void r16k_head(const BlockQ4_KR16& w, R16KHead& h) {
  const __m512i a = _mm512_loadu_si512(w.scales), b = _mm512_loadu_si512(w.scales + 64),
                c = _mm512_loadu_si512(w.scales + 128);
  const __m512i m6 = _mm512_set1_epi8(0x3f), m4 = _mm512_set1_epi8(0x0f), hi2 = _mm512_set1_epi8(0x30);
  h.sc_lo = _mm512_and_si512(a, m6);
  h.mn_lo = _mm512_and_si512(b, m6);
  // (c & 15) | (a >> 6) << 4, per byte (bits 6, 7 of a byte shifted by 2 stay in it)
  h.sc_hi = _mm512_ternarylogic_epi32(_mm512_and_si512(c, m4), _mm512_srli_epi32(a, 2), hi2, 0xf8);
  h.mn_hi = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi32(c, 4), m4), _mm512_srli_epi32(b, 2),
                                      hi2, 0xf8);
  h.d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.d)));
  h.dm = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.dmin)));
}

// One super-block of a group of 16 rows (w) x tokens 0 .. T - 1 (token t's Q8_K block at x[t * nb]):
// acc[t] (one f32 lane per row) takes its float step.
struct R16Q4K {
  using Block = BlockQ4_KR16;
  static constexpr bool kPanels = false;  // prefill: its own tiles (measured: faster than the panels)
  template <int T>
  [[gnu::always_inline]] static void block(const Block& w, const BlockQ8_K* x, int64_t nb, __m512* acc) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    R16KHead h;
    r16k_head(w, h);
    // The scale picks of chunk j: bytes 2j % 4 and 2j % 4 + 1 of sc_lo (j < 2) or sc_hi, as constants (the
    // loop below is not unrolled: built from j in it, they cost more than the chunk's scaling).
    const __m512i pick[4] = {r16k_pick(0, false), r16k_pick(1, false), r16k_pick(2, false),
                             r16k_pick(3, false)};
    __m512i sq[T];  // [token] exact sums, one lane per row
    MX_UNROLL
    for (int t = 0; t < T; ++t) sq[t] = _mm512_setzero_si512();
#pragma GCC unroll 1  // one 64-value chunk at a time
    for (int j = 0; j < 4; ++j) {
      // Each vector's two nibble halves serve every token before the next vector is unpacked, so the 2T
      // dot chains advance side by side (measured from L2: 3-9% faster for 2-8 tokens than a token's 16
      // vpdpbusd after another's over the chunk's 16 unpacked vectors).
      __m512i dl[T], dh[T];  // [token] sub-blocks 2j and 2j + 1: q . x over their 32 values, per row
      MX_UNROLL
      for (int t = 0; t < T; ++t) dl[t] = dh[t] = _mm512_setzero_si512();
      MX_UNROLL
      for (int m = 0; m < 8; ++m) {  // values 64j + 4m .. (lo) and 64j + 32 + 4m .. (hi)
        const __m512i p = _mm512_loadu_si512(w.qs + 64 * (8 * j + m));
        const __m512i lo = _mm512_and_si512(p, low4), hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
        MX_UNROLL
        for (int t = 0; t < T; ++t) {
          const auto* xq = reinterpret_cast<const int32_t*>(x[t * nb].qs) + 16 * j;
          dl[t] = _mm512_dpbusd_epi32(dl[t], lo, _mm512_set1_epi32(xq[m]));
          dh[t] = _mm512_dpbusd_epi32(dh[t], hi, _mm512_set1_epi32(xq[8 + m]));
        }
      }
      const __m512i src = j < 2 ? h.sc_lo : h.sc_hi;
      const __m512i sc0 = _mm512_shuffle_epi8(src, pick[2 * j % 4]),
                    sc1 = _mm512_shuffle_epi8(src, pick[2 * j % 4 + 1]);
      MX_UNROLL
      for (int t = 0; t < T; ++t)
        sq[t] = _mm512_add_epi32(
            sq[t], _mm512_add_epi32(_mm512_mullo_epi32(dl[t], sc0), _mm512_mullo_epi32(dh[t], sc1)));
    }
    __m512i mn[8];  // [sub-block j] its offset as the pair (m, m) per row
    MX_UNROLL
    for (int j = 0; j < 8; ++j)
      mn[j] = _mm512_shuffle_epi8(j < 4 ? h.mn_lo : h.mn_hi, r16k_pick(j % 4, true));
    MX_UNROLL
    for (int t = 0; t < T; ++t) {
      const BlockQ8_K& xb = x[t * nb];
      const auto* bs = reinterpret_cast<const int32_t*>(xb.bsums);  // [j] the pair (S_2j, S_2j+1)
      __m512i sm = _mm512_setzero_si512();
      MX_UNROLL
      for (int j = 0; j < 8; ++j) sm = _mm512_dpwssd_epi32(sm, _mm512_set1_epi32(bs[j]), mn[j]);
      const __m512 xd = _mm512_set1_ps(xb.d);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sq[t]), _mm512_mul_ps(h.d, xd), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(sm), _mm512_mul_ps(h.dm, xd), acc[t]);
    }
  }
};

// Q6_K_R16: per half h of the super-block and g = 0, 1, the dwords m = 4g .. 4g + 3 of ql at 16h + m and
// 16h + m + 8 and of qh at 8h + m give 4 vectors for each quarter q of the half (values 128h + 32q + 4m ..,
// their bits 4, 5 from bits 2q, 2q + 1 of the qh bytes), all under scale 8h + 2q + g; per token 16
// vpdpbusd and 4 vpmulld by the sign-extended scales (vpshufb to the dwords' top bytes, then an arithmetic
// shift down). The offsets: sm = 32 sum_s sc[s] bsums[s] (8 vpdpwssd on the scales' pairs, sign-extended
// the same way), and d stands for dm, as in every Q6_K kernel. The masks are constants: built from the
// chunk index inside the loop (which is not unrolled) they took more instructions than the scaling itself,
// and one token ran 1.2-1.4x slower than the file layout's kernel from L2 (256 x 4096: 16.4-17.1 us against
// 14.9-16.0), where it now runs 12.6-14.5; Q4_K_R16 the same way, 14.2-15.9 us to 10.8-11.4.
struct R16Q6K {
  using Block = BlockQ6_KR16;
  using File = Q6KUnpack;                // prefill: the file layout's 8-token tiles, over
  static constexpr bool kPanels = true;  // panels made by r16k_panel
  // vpshufb mask that moves byte j of each dword (row) to the dword's top byte (pair false), or bytes j,
  // j + 1 to the top bytes of its two words (pair true), the other bytes zero: an arithmetic shift right
  // then sign-extends them.
  static __m512i top_mask(int j, bool pair) {
    const auto word = [&](int q) {
      const uint32_t b = static_cast<uint32_t>(4 * q + j);
      return static_cast<int>(pair ? (b + 1) << 24 | 0x800000u | b << 8 | 0x80u : b << 24 | 0x808080u);
    };
    return _mm512_set4_epi32(word(3), word(2), word(1), word(0));
  }
  template <int T>
  [[gnu::always_inline]] static void block(const Block& w, const BlockQ8_K* x, int64_t nb, __m512* acc) {
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    const __m512i top0 = top_mask(0, false), top2 = top_mask(2, false);
    __m512i sq[T];  // [token] exact sums, one lane per row
    MX_UNROLL
    for (int t = 0; t < T; ++t) sq[t] = _mm512_setzero_si512();
#pragma GCC unroll 1  // one chunk's 16 vectors at a time
    for (int c = 0; c < 4; ++c) {
      const int h = c / 2, g = c % 2;
      __m512i v[4][4];  // [quarter q][i] values 128h + 32q + 4(4g + i) ..
      MX_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int m = 4 * g + i;
        const __m512i l0 = _mm512_loadu_si512(w.ql + 64 * (16 * h + m)),
                      l1 = _mm512_loadu_si512(w.ql + 64 * (16 * h + m + 8)),
                      hb = _mm512_loadu_si512(w.qh + 64 * (8 * h + m));
        v[0][i] =
            _mm512_ternarylogic_epi32(_mm512_and_si512(l0, low4), _mm512_slli_epi16(hb, 4), bits45, 0xf8);
        v[1][i] =
            _mm512_ternarylogic_epi32(_mm512_and_si512(l1, low4), _mm512_slli_epi16(hb, 2), bits45, 0xf8);
        v[2][i] =
            _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l0, 4), low4), hb, bits45, 0xf8);
        v[3][i] = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l1, 4), low4),
                                            _mm512_srli_epi16(hb, 2), bits45, 0xf8);
      }
      // [q] scale 8h + 2q + g per row, sign-extended: byte 2 (q % 2) + g of each dword of scale vector
      // 2h + q / 2, its mask that of byte 2 (q % 2) plus g in the top byte.
      const __m512i gtop = _mm512_set1_epi32(g << 24);
      const __m512i pick[2] = {_mm512_add_epi32(top0, gtop), _mm512_add_epi32(top2, gtop)};
      __m512i sc[4];
      MX_UNROLL
      for (int q = 0; q < 4; ++q) {
        const __m512i sv = _mm512_loadu_si512(w.scales + 64 * (2 * h + q / 2));
        sc[q] = _mm512_srai_epi32(_mm512_shuffle_epi8(sv, pick[q % 2]), 24);
      }
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const auto* xq = reinterpret_cast<const int32_t*>(x[t * nb].qs) + 32 * h + 4 * g;
        MX_UNROLL
        for (int q = 0; q < 4; ++q) {
          __m512i d = _mm512_setzero_si512();
          MX_UNROLL
          for (int i = 0; i < 4; ++i) d = _mm512_dpbusd_epi32(d, v[q][i], _mm512_set1_epi32(xq[8 * q + i]));
          sq[t] = _mm512_add_epi32(sq[t], _mm512_mullo_epi32(d, sc[q]));
        }
      }
    }
    __m512i sp[8];  // [pair p] scales 2p, 2p + 1 per row as sign-extended int16
    MX_UNROLL
    for (int p = 0; p < 8; ++p)
      sp[p] = _mm512_srai_epi16(
          _mm512_shuffle_epi8(_mm512_loadu_si512(w.scales + 64 * (p / 2)), top_mask(2 * p % 4, true)), 8);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.d)));
    MX_UNROLL
    for (int t = 0; t < T; ++t) {
      const BlockQ8_K& xb = x[t * nb];
      const auto* bs = reinterpret_cast<const int32_t*>(xb.bsums);  // [p] the pair (bsums 2p, 2p + 1)
      __m512i sm = _mm512_setzero_si512();
      MX_UNROLL
      for (int p = 0; p < 8; ++p) sm = _mm512_dpwssd_epi32(sm, _mm512_set1_epi32(bs[p]), sp[p]);
      const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(xb.d));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sq[t]), dd, acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_slli_epi32(sm, 5)), dd, acc[t]);
    }
  }
};

// Prefill: one super-block of the 16 rows as the 8-token tiles' panel (KPanel, kquant.inc). The rows
// already lie in the lanes, so no transposition: the values as R16Q6K::block builds them (quarter q of
// chunk (h, g), vector i: dword 32h + 8q + 4g + i), the 16 scales sign-extended, the offsets' pairs
// 32 (sc[2p], sc[2p + 1]), and d for dm.
inline void r16k_panel(const BlockQ6_KR16& w, KPanel& p) {
  const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
  MX_UNROLL
  for (int c = 0; c < 4; ++c) {
    const int h = c / 2, g = c % 2;
    MX_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int m = 4 * g + i, k = 32 * h + 4 * g + i;
      const __m512i l0 = _mm512_loadu_si512(w.ql + 64 * (16 * h + m)),
                    l1 = _mm512_loadu_si512(w.ql + 64 * (16 * h + m + 8)),
                    hb = _mm512_loadu_si512(w.qh + 64 * (8 * h + m));
      _mm512_store_si512(p.q[k], _mm512_ternarylogic_epi32(_mm512_and_si512(l0, low4),
                                                           _mm512_slli_epi16(hb, 4), bits45, 0xf8));
      _mm512_store_si512(p.q[k + 8], _mm512_ternarylogic_epi32(_mm512_and_si512(l1, low4),
                                                               _mm512_slli_epi16(hb, 2), bits45, 0xf8));
      _mm512_store_si512(
          p.q[k + 16],
          _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l0, 4), low4), hb, bits45, 0xf8));
      _mm512_store_si512(p.q[k + 24],
                         _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(l1, 4), low4),
                                                   _mm512_srli_epi16(hb, 2), bits45, 0xf8));
    }
  }
  MX_UNROLL
  for (int sidx = 0; sidx < 16; ++sidx) {
    const __m512i sv = _mm512_loadu_si512(w.scales + 64 * (sidx / 4));
    _mm512_store_si512(p.sc[sidx],
                       _mm512_srai_epi32(_mm512_shuffle_epi8(sv, R16Q6K::top_mask(sidx % 4, false)), 24));
  }
  MX_UNROLL
  for (int q = 0; q < 8; ++q) {
    const __m512i sv = _mm512_loadu_si512(w.scales + 64 * (q / 2));
    const __m512i pair = _mm512_srai_epi16(_mm512_shuffle_epi8(sv, R16Q6K::top_mask(2 * q % 4, true)), 8);
    _mm512_store_si512(p.mi[q], _mm512_slli_epi16(pair, 5));
  }
  const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.d)));
  _mm512_store_ps(p.d, d);
  _mm512_store_ps(p.dm, d);
}

#ifndef MX_R16K_AHEAD
#define MX_R16K_AHEAD 4608
#endif
// G groups of 16 rows, starting at rows r0 + 16 k gstride (k < G), x tokens t0 .. t0 + T - 1, over all
// super-blocks, the groups a super-block each in turn; y at (t0, r0).
template <class F, int G, int T>
struct R16KTile {
  using Block = typename F::Block;
  static void run(const MatmulArgs& a, int64_t r0, int64_t gstride, int64_t t0, float* y, int64_t ldy) {
    constexpr int64_t ahead = T == 1 ? MX_R16K_AHEAD : kTilePrefetchBytes;
    const int64_t nb = a.cols / kQK_K;
    const Block* w[G];
    MX_UNROLL
    for (int g = 0; g < G; ++g)
      w[g] = reinterpret_cast<const Block*>(a.w + (r0 + g * gstride * kR16Rows) * a.w_stride);
    const BlockQ8_K* x = a.xk + t0 * nb;  // [T, nb]
    __m512 acc[G][T];                     // [group, token] one f32 lane per row
    MX_UNROLL
    for (int g = 0; g < G; ++g) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) acc[g][t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      MX_UNROLL
      for (int g = 0; g < G; ++g) {
        prefetch_bytes(w[g] + b, ahead, static_cast<int64_t>(sizeof(Block)));
        F::template block<T>(w[g][b], x + b, nb, acc[g]);
      }
    }
    MX_UNROLL
    for (int g = 0; g < G; ++g) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy + g * gstride * kR16Rows, acc[g][t]);
    }
  }
};

#ifndef MX_R16K_DECODE_GROUPS
#define MX_R16K_DECODE_GROUPS 2
#endif
// T tokens over the row groups of [r0, r0 + nr): G groups per tile from G equal parts (decode), else one.
template <class F, int T>
void r16k_pass(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, float* y, int64_t ldy) {
  constexpr int G = T == 1 ? MX_R16K_DECODE_GROUPS : 1;
  const int64_t groups = nr / kR16Rows, part = groups / G;
  for (int64_t k = 0; k < part; ++k)
    R16KTile<F, G, T>::run(a, r0 + k * kR16Rows, part, t0, y + k * kR16Rows, ldy);
  for (int64_t k = G * part; k < groups; ++k)
    R16KTile<F, 1, T>::run(a, r0 + k * kR16Rows, 0, t0, y + k * kR16Rows, ldy);
}

template <class F, int T>
void r16k_tokens(int64_t ct, const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, float* y, int64_t ldy) {
  if (ct == T) {
    r16k_pass<F, T>(a, r0, nr, t0, y, ldy);
  } else if constexpr (T > 1) {
    r16k_tokens<F, T - 1>(ct, a, r0, nr, t0, y, ldy);
  }
}

// Prefill of Q6_K_R16: group [r0, r0 + 16) for tokens [t0, t0 + nt) (t0 % 8 == 0) through the 8-token tiles
// of the file layouts (k_panel_tile), as k_lanes_panel runs them, with panels made from the R16 blocks: the
// values are unpacked once per panel and 64 tokens, where the R16 tiles above unpack them for every 8
// tokens (a dozen instructions per 64 values). Measured on the Zen 5 VM, 1 thread, 14336 x 4096, ms at 64
// / 512 tokens, alternating: 16.9-17.1 / 127 against the R16 tiles' 17.0-17.3 / 142 (the file layout's
// panels 17.4-18.4 / 132-133). Q4_K_R16's own tiles beat the panels (116-121 / 14.6-14.9 against 121-123
// / 15.8-16.0): its nibbles take two instructions per 64 values.
template <class F>
void r16k_lanes(const MatmulArgs& a, int64_t r0, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  using Block = typename F::Block;
  const int64_t nb = a.cols / kQK_K;
  const Block* w = reinterpret_cast<const Block*>(a.w + r0 * a.w_stride);  // [nb] the group's super-blocks
  KPanel s[kKChunkBlocks];                                                 // [chunk] unpacked
  alignas(64) float acc[kKBlockTiles][kQ8KTokens][kKLanes];  // [tiles, tokens, rows] running sums
  for (int64_t tb = 0; tb < nt; tb += kKBlockTiles * kQ8KTokens) {
    const int64_t nbt = nt - tb < kKBlockTiles * kQ8KTokens ? nt - tb : kKBlockTiles * kQ8KTokens;
    const int64_t tiles = (nbt + kQ8KTokens - 1) / kQ8KTokens;
    const BlockQ8_KX8* x = a.xk8 + (t0 + tb) / kQ8KTokens * nb;  // [tiles, nb]
    for (int64_t c0 = 0; c0 < nb; c0 += kKChunkBlocks) {
      const int64_t nc = nb - c0 < kKChunkBlocks ? nb - c0 : kKChunkBlocks;
      for (int64_t b = 0; b < nc; ++b) r16k_panel(w[c0 + b], s[b]);
      for (int64_t j = 0; j < tiles; ++j)
        k_panel_tile<typename F::File>(s, nc, x + j * nb + c0, acc[j], c0 == 0);
    }
    for (int64_t t = 0; t < nbt; ++t)
      for (int64_t r = 0; r < kKLanes; ++r) y[(tb + t) * ldy + r] = acc[t / kQ8KTokens][t % kQ8KTokens][r];
  }
}

// MatmulTileFn of Q4_K_R16 and Q6_K_R16: rows in whole groups of 16; Q6_K_R16 from kKTilesMinTokens tokens
// on in the panels above (as k_matmul), else tokens in tiles of up to kR16Tokens, rows inner.
template <class F>
void r16k_matmul(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  if constexpr (F::kPanels) {
    if (a.xk8 != nullptr && nt >= kKTilesMinTokens && t0 % kQ8KTokens == 0) {
      for (int64_t r = r0; r < r0 + nr; r += kR16Rows) r16k_lanes<F>(a, r, t0, nt, y + (r - r0), ldy);
      return;
    }
  }
  for (int64_t tt = 0; tt < nt; tt += kR16Tokens) {
    const int64_t ct = nt - tt < kR16Tokens ? nt - tt : kR16Tokens;
    r16k_tokens<F, kR16Tokens>(ct, a, r0, nr, t0 + tt, y + tt * ldy, ldy);
  }
}

// ---------------------------------------------------------------------------------------------------
// Float weights: 16 columns per step, weights widened to f32, one FMA per (row, token).

struct LoadF32 {
  static constexpr int kBytes = 4;
  static __m512 full(const uint8_t* row, int64_t c) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  }
};
struct LoadF16 {
  static constexpr int kBytes = 2;
  static __m512 full(const uint8_t* row, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * c));
  }
};
struct LoadBF16 {
  static constexpr int kBytes = 2;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 full(const uint8_t* row, int64_t c) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  }
  static __m512 part(const uint8_t* row, int64_t c, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, row + 2 * c));
  }
};

template <class Load, int R, int T>
struct FloatKernel {
  static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
    const int64_t cols = a.cols;
    const uint8_t* w[R];
    MX_UNROLL
    for (int r = 0; r < R; ++r) w[r] = a.w + (r0 + r * rstep) * a.w_stride;
    const float* x = a.x + t0 * cols;  // [T, cols]
    __m512 acc[R][T];
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
      __m512 wv[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        prefetch_bytes(w[r], c * Load::kBytes + kPrefetchBytes, 1);
        wv[r] = Load::full(w[r], c);
      }
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_loadu_ps(x + t * cols + c);
        MX_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
      }
    }
    if (c < cols) {
      const __mmask16 m = tail_mask(cols - c);
      __m512 wv[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r) wv[r] = Load::part(w[r], c, m);
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * cols + c);
        MX_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
      }
    }
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) y[t * ldy + r * rstep] = hsum512(acc[r][t]);
    }
  }
};
template <int R, int T>
using F32Kernel = FloatKernel<LoadF32, R, T>;
template <int R, int T>
using F16Kernel = FloatKernel<LoadF16, R, T>;
template <int R, int T>
using BF16Kernel = FloatKernel<LoadBF16, R, T>;

// ---------------------------------------------------------------------------------------------------
// Activation quantization, bit-identical to quantize_row(Q8_0): d = amax / 127 rounded to fp16,
// q = round-half-away-from-zero(x / d) with the unrounded 1 / d.

inline __m512 round_half_away(__m512 v) {
  const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));  // exact
  const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));  // +-1
  return _mm512_mask_add_ps(t, up, t, one);
}

void quantize_q8(const float* x, int64_t cols, int8_t* qs, float* d) {
  for (int64_t b = 0; b < cols / kQK8_0; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * kQK8_0), v1 = _mm512_loadu_ps(x + b * kQK8_0 + 16);
    const float amax = hmax512(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512 vi = _mm512_set1_ps(inv);
    const __m512i q0 = _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v0, vi)));
    const __m512i q1 = _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v1, vi)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQK8_0), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQK8_0 + 16), _mm512_cvtepi32_epi8(q1));
  }
}

// Q8_K, bit-identical to quantize_row(Q8_K): the signed value of largest magnitude (the first of equals)
// maps to -127, q = min(127, nearest-even(x * iscale)) by the same float operations (clamp to +-(2^22 - 1),
// add 1.5 * 2^23, read the mantissa), bsums the int32 sums of each 16.
void quantize_q8_k(const float* x, int64_t cols, BlockQ8_K* out) {
  for (int64_t i = 0; i < cols / kQK_K; ++i) {
    const float* xb = x + i * kQK_K;  // [256]
    BlockQ8_K& b = out[i];
    __m512 vmax = _mm512_setzero_ps();
    for (int j = 0; j < kQK_K / 16; ++j)
      vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 16 * j)), vmax);
    const float amax = hmax512(vmax);
    if (amax == 0.0f) {
      std::memset(&b, 0, sizeof(BlockQ8_K));
      continue;
    }
    float max = 0.0f;
    for (int j = 0; j < kQK_K / 16; ++j) {
      const __mmask16 m =
          _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(xb + 16 * j)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
      if (m != 0) {
        max = xb[16 * j + __builtin_ctz(m)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m512 vs = _mm512_set1_ps(iscale), lo = _mm512_set1_ps(-4194303.0f),
                 hi = _mm512_set1_ps(4194303.0f);
    for (int j = 0; j < kQK_K / 16; ++j) {
      // the bounds as first operands, so a NaN comes through as it does from std::clamp
      const __m512 v = _mm512_mul_ps(vs, _mm512_loadu_ps(xb + 16 * j));
      const __m512 c = _mm512_add_ps(_mm512_max_ps(lo, _mm512_min_ps(hi, v)), _mm512_set1_ps(12582912.0f));
      __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(c), _mm512_set1_epi32(0x007fffff)),
                                   _mm512_set1_epi32(0x00400000));
      q = _mm512_min_epi32(q, _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(b.qs + 16 * j), _mm512_cvtepi32_epi8(q));
      b.bsums[j] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    b.d = 1.0f / iscale;
  }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise ops.

// exp(x) to ~1 ulp: x = k ln2 + r with |r| <= ln2/2, degree-7 Taylor polynomial, scalef by 2^k
// (which also gives 0 and inf at the ends of the range).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

inline __m512 silu512(__m512 x) {
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

void silu_mul(float* x, const float* g, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(x + i, _mm512_mul_ps(silu512(_mm512_loadu_ps(x + i)), _mm512_loadu_ps(g + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(
        x + i, m, _mm512_mul_ps(silu512(_mm512_maskz_loadu_ps(m, x + i)), _mm512_maskz_loadu_ps(m, g + i)));
  }
}

float row_max(const float* x, int64_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  if (i < n)
    vmax = _mm512_mask_max_ps(vmax, tail_mask(n - i), vmax, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  return hmax512(vmax);
}

// x[i] = exp(x[i] - mx); returns the sum.
float exp_sum(float* x, int64_t n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 vsum = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm)));
    _mm512_mask_storeu_ps(x + i, m, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  return hsum512(vsum);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  const __m512 inv = _mm512_set1_ps(1.0f / exp_sum(x, n, row_max(x, n)));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
  }
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* o = out + t * dim;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= dim; i += 32) {
      const __m512 a = _mm512_loadu_ps(xr + i), b = _mm512_loadu_ps(xr + i + 16);
      s0 = _mm512_fmadd_ps(a, a, s0);
      s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; i < dim; i += 16) {
      const __m512 a = _mm512_maskz_loadu_ps(tail_mask(dim - i < 16 ? dim - i : 16), xr + i);
      s0 = _mm512_fmadd_ps(a, a, s0);
    }
    const float ss = hsum512(_mm512_add_ps(s0, s1));
    const __m512 inv = _mm512_set1_ps(1.0f / sqrt_ss(ss / static_cast<float>(dim) + eps));
    for (i = 0; i < dim; i += 16) {
      const __mmask16 m = tail_mask(dim - i < 16 ? dim - i : 16);
      _mm512_mask_storeu_ps(o + i, m,
                            _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), inv),
                                          _mm512_maskz_loadu_ps(m, w + i)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
constexpr MatmulKernel kMatmul[] = {
    {DType::F32, tiles<F32Kernel, 4, F32Kernel, 4, 4>, nullptr, DType::F32},
    {DType::F16, tiles<F16Kernel, 4, F16Kernel, 4, 4>, nullptr, DType::F16},
    {DType::BF16, tiles<BF16Kernel, 4, BF16Kernel, 4, 4>, nullptr, DType::BF16},
    {DType::Q8_0, group_matmul<Q8PairUnpack<Q8FileGroup>, true>, arrange_q8_pairs, DType::Q8_0_R16},
    {DType::Q4_0, group_matmul<Q4PairUnpack<Q4FileGroup>, false>, arrange_q8_pairs, DType::Q4_0_R16},
    {DType::Q4_K, k_matmul<Q4KUnpack>, nullptr, DType::Q4_K_R16},
    {DType::Q5_K, k_matmul<Q5KUnpack>, nullptr, DType::Q5_K},
    {DType::Q6_K, k_matmul<Q6KUnpack>, nullptr, DType::Q6_K_R16},
    {DType::Q4_0_G8, group_matmul<Q4PairUnpack<Q4G8Group>, false>, arrange_q8_pairs, DType::Q4_0_G8},
    {DType::Q8_0_G8, group_matmul<Q8PairUnpack<Q8G8Group>, true>, arrange_q8_pairs, DType::Q8_0_G8},
    {DType::Q4_0_R16, r16_matmul<R16Q4>, nullptr, DType::Q4_0_R16},
    {DType::Q8_0_R16, r16_matmul<R16Q8>, nullptr, DType::Q8_0_R16},
    {DType::Q4_K_R16, r16k_matmul<R16Q4K>, nullptr, DType::Q4_K_R16},
    {DType::Q6_K_R16, r16k_matmul<R16Q6K>, nullptr, DType::Q6_K_R16},
    {DType::IQ4_NL, iq4_group_matmul<Iq4NlGroup>, arrange_q8_pairs, DType::IQ4_NL},
    {DType::IQ4_XS, iq4_group_matmul<Iq4XsGroup>, arrange_q8_pairs, DType::IQ4_XS},
    {DType::IQ2_XXS, iqg_matmul<Iq2xxsFmt, 4>, nullptr, DType::IQ2_XXS},
    {DType::IQ2_XS, iqg_matmul<Iq2xsFmt, 4>, nullptr, DType::IQ2_XS},
    {DType::IQ2_S, iqg_matmul<Iq2sFmt, 4>, nullptr, DType::IQ2_S},
    {DType::IQ3_XXS, iqg_matmul<Iq3xxsFmt, 4>, nullptr, DType::IQ3_XXS},
    {DType::IQ3_S, iqg_matmul<Iq3sFmt, 4>, nullptr, DType::IQ3_S},
    {DType::IQ1_S, iqg_matmul<Iq1sFmt, 4>, nullptr, DType::IQ1_S},
    {DType::IQ1_M, iqg_matmul<Iq1mFmt, 4>, nullptr, DType::IQ1_M},
};
static_assert(lists_every_weight_type(kMatmul), "avx512 table: a weight type without its kernel");

#undef MX_UNROLL

}  // namespace

const KernelTable* MX_AVX512_TABLE() {
  static const KernelTable table = {
      "avx512", kMatmul,  quantize_q8, quantize_q8_k,
      8,  // K-quant prefill over 8-token tiles, qword lanes
      rmsnorm,  silu_mul, softmax,
  };
  return &table;
}

}  // namespace mixtral::kernels::detail

#else

namespace mixtral::kernels::detail {
const KernelTable* avx512_table() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail

#endif
