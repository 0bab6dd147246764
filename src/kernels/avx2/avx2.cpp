// AVX2 + FMA + F16C kernels. Compiled with its own -m flags (kernels/CMakeLists.txt) and only called
// after dispatch.cpp has checked the CPU; helpers stay in an anonymous namespace and no std:: template
// is instantiated here (see internal.h).
//
// Quantized matmul: vpmaddubsw (unsigned x signed bytes to int16 pairs) and vpmaddwd to int32.
//   Q8_0 x Q8_0: as in the file, one 32-value block per 256-bit step in column order (Q8Kernel),
//                |w| . (x with w's sign) (|w| <= 128 and |x| <= 127 keep the int16 pairs exact); the 8
//                int32 lanes are widened to f32 and scaled by d_w * d_x per block, then summed at the end.
//                Repacked (Q8_0_G8): over grouped activations, one int32 lane per block (Q8G8Tile).
//   Q4_0 x Q8_0: either layout, over grouped activations (Q4GroupRT for one token, Q4Tile for more):
//                nibbles . x - 8 sum(x) per block.
// The K-quants run the kernels shared with the AVX-512 file (x86/kquant.inc) in their 256-bit form, IQ4_NL
// and IQ4_XS theirs (x86/iq4.inc) in the vpmaddubsw form, over grouped activations as Q4_0.
#include "kernels/internal.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <cmath>

#include "tensor/quant.h"
#include "tensor/quant_iq.h"

namespace mixtral::kernels::detail {
namespace {

#include "kernels/x86/common.inc"

inline __m256 abs256(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

// ---------------------------------------------------------------------------------------------------
// Quantized weights.

#include "kernels/x86/grouped.inc"

// d_w * d_x of every (row, token) for the kb <= 8 blocks from b0: one conversion and one multiply per
// (row, token) per 8 blocks; the block loop then broadcasts its scale from memory.
//   w: R row pointers; xd: [T, nb] activation scales; scale: [R, T, 8]
template <class Block, int R, int T>
inline void block_scales(const Block* const* w, const float* xd, int64_t nb, int64_t b0, int kb,
                         float (*scale)[T][8]) {
  __m256 dx[T];
  MX_UNROLL
  for (int t = 0; t < T; ++t) {
    if (kb == 8) {
      dx[t] = _mm256_loadu_ps(xd + t * nb + b0);
    } else {
      alignas(32) float tmp[8] = {};  // zero-padded tail
      for (int k = 0; k < kb; ++k) tmp[k] = xd[t * nb + b0 + k];
      dx[t] = _mm256_load_ps(tmp);
    }
  }
  MX_UNROLL
  for (int r = 0; r < R; ++r) {
    prefetch_bytes(w[r] + b0, kPrefetchBytes, 8 * static_cast<int64_t>(sizeof(Block)));
    const __m256 dw = _mm256_cvtph_ps(load_scales8(w[r], b0, kb));
    MX_UNROLL
    for (int t = 0; t < T; ++t) _mm256_store_ps(scale[r][t], _mm256_mul_ps(dw, dx[t]));
  }
}

template <int R, int T>
struct Q8Kernel {
  static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
    const int64_t cols = a.cols, nb = cols / kQK8_0;
    const BlockQ8_0* w[R];
    MX_UNROLL
    for (int r = 0; r < R; ++r)
      w[r] = reinterpret_cast<const BlockQ8_0*>(a.w + (r0 + r * rstep) * a.w_stride);
    const int8_t* xq = a.xq + t0 * cols;  // [T, cols]
    const __m256i ones = _mm256_set1_epi16(1);
    alignas(32) float scale[R][T][8];  // [R, T, 8 blocks] d_w * d_x
    __m256 acc[R][T];
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (int64_t b0 = 0; b0 < nb; b0 += 8) {
      const int kb = nb - b0 < 8 ? static_cast<int>(nb - b0) : 8;
      block_scales<BlockQ8_0, R, T>(w, a.xd + t0 * nb, nb, b0, kb, scale);
      for (int k = 0; k < kb; ++k) {
        const int64_t b = b0 + k;
        __m256i wq[R], wabs[R];
        MX_UNROLL
        for (int r = 0; r < R; ++r) {
          wq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r][b].qs));
          wabs[r] = _mm256_abs_epi8(wq[r]);
        }
        MX_UNROLL
        for (int t = 0; t < T; ++t) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * cols + b * kQK8_0));
          MX_UNROLL
          for (int r = 0; r < R; ++r) {
            const __m256i p16 = _mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(x, wq[r]));
            const __m256i dot = _mm256_madd_epi16(p16, ones);
            acc[r][t] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(&scale[r][t][k]), acc[r][t]);
          }
        }
      }
    }
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) y[t * ldy + r * rstep] = hsum256(acc[r][t]);
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Q4_0 and Q8_0_G8 over grouped activations (ArrangeQ8Fn, internal.h), for every token count: 8 blocks per
// group, one int32 lane per block, so each (row, token) pays one conversion, one scale multiply and one
// FMA per 8 blocks instead of per block. A weight row's group is transposed once (4x4 dwords per 128-bit
// half, the same transpose that arranged the activations; Q4_0_G8 and Q8_0_G8 are stored so) and used
// for several tokens (Q8_0_G8 prefill: kGroupTokens).
//   Q4_0: nibbles (0..15) . x summed in int16 over the 8 vectors of a group (16 products of at most
//         15 * 127 per lane: 30480 < 2^15), one vpmaddwd to int32, minus 8 sum(x) per block (exact);
//   Q8_0: |w| . (x with w's sign) per vector (int16 pairs would overflow if added), vpmaddwd each, the
//         int32 lanes added.
constexpr int kGroupTokens = 6;

// Blocks after the last full group (column order): y_t += sum over blocks of d_w d_x (w . x), one
// block at a time. y: [T] partial sums.
template <class Block, int T>
inline void tail_blocks(const MatmulArgs& a, const Block* w, int64_t b_begin, int64_t t0, float* y) {
  const int64_t cols = a.cols, nb = cols / kQK8_0;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = b_begin; b < nb; ++b) {
    const float dw = _cvtsh_ss(w[b].d);
    __m256i u, sgn;  // unsigned weights and the sign to give x (Q8_0), or the nibbles (Q4_0)
    if constexpr (sizeof(Block) == sizeof(BlockQ8_0)) {
      sgn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
      u = _mm256_abs_epi8(sgn);
    } else {
      u = q4_nibbles(w[b]);
      sgn = _mm256_setzero_si256();
    }
    MX_UNROLL
    for (int t = 0; t < T; ++t) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (t0 + t) * cols + b * kQK8_0));
      if constexpr (sizeof(Block) == sizeof(BlockQ8_0)) x = _mm256_sign_epi8(x, sgn);
      int32_t dot = hsum256_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones));
      if constexpr (sizeof(Block) != sizeof(BlockQ8_0)) dot -= 8 * a.xsum[(t0 + t) * nb + b];
      y[t] += static_cast<float>(dot) * (dw * a.xd[(t0 + t) * nb + b]);
    }
  }
}

// R weight rows (r0 + i * rstep) x T tokens over grouped activations, each row's group transposed once and
// used for the T tokens; the decode kernel (R = 4 rows in lockstep, T = 1). Each (row, token) runs the
// same operations whatever R and T.
template <class Load>
struct Q4GroupRT {
  template <int R, int T>
  struct K {
    static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
      const int64_t cols = a.cols, nb = cols / kQK4_0, ng = nb / kGroupBlocks;
      const BlockQ4_0* w[R];
      MX_UNROLL
      for (int i = 0; i < R; ++i)
        w[i] = reinterpret_cast<const BlockQ4_0*>(a.w + (r0 + i * rstep) * a.w_stride);
      const int8_t* xq = a.xq + t0 * cols;   // [T, cols] grouped
      const float* xd = a.xd + t0 * nb;      // [T, nb]
      const int32_t* xs = a.xsum + t0 * nb;  // [T, nb]
      const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
      __m256 acc[R][T];
      MX_UNROLL
      for (int i = 0; i < R; ++i) {
        MX_UNROLL
        for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
      }
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t b0 = g * kGroupBlocks;
        MX_UNROLL
        for (int i = 0; i < R; ++i) {
          if constexpr (R > 1)
            prefetch_bytes(w[i] + b0, kPrefetchBytes, kGroupBlocks * static_cast<int64_t>(sizeof(BlockQ4_0)));
          __m256i c[4], u[8];  // u[2k + h]: the nibbles of c[k], low (h = 0) or high (h = 1)
          const __m256 dw = Load::load(reinterpret_cast<const uint8_t*>(w[i] + b0), c);
          MX_UNROLL
          for (int k = 0; k < 4; ++k) {
            u[2 * k] = _mm256_and_si256(c[k], low4);
            u[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16(c[k], 4), low4);
          }
          MX_UNROLL
          for (int t = 0; t < T; ++t) {
            const auto* xv = reinterpret_cast<const __m256i*>(xq + t * cols + b0 * kQK8_0);
            __m256i s16 = _mm256_maddubs_epi16(u[0], _mm256_loadu_si256(xv));
            MX_UNROLL
            for (int v = 1; v < 8; ++v)
              s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u[v], _mm256_loadu_si256(xv + v)));
            const __m256i corr =
                _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + t * nb + b0)), 3);
            const __m256i dot = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), corr);
            acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                        _mm256_mul_ps(dw, _mm256_loadu_ps(xd + t * nb + b0)), acc[i][t]);
          }
        }
      }
      MX_UNROLL
      for (int i = 0; i < R; ++i) {
        float tail[T] = {};
        tail_blocks<BlockQ4_0, T>(a, w[i], ng * kGroupBlocks, t0, tail);
        MX_UNROLL
        for (int t = 0; t < T; ++t) y[t * ldy + i * rstep] = hsum256(acc[i][t]) + tail[t];
      }
    }
  };
};
// Prefill micro-tile of R weight rows x T tokens over grouped activations, ordered so that every
// activation vector is loaded once for all R rows and every transposed weight vector once for all T
// tokens: loads, not multiplies, bound the one-row kernel above on AVX2 (16 vector registers cannot
// hold a row's 8 unpacked vectors and T accumulators at once). The integer dot of a (row, token) is
// exact in any order and its float epilogue is the same operations as Q4GroupRT's, so results are
// bit-identical to it (decode). Weights are prefetched kTilePrefetchBytes ahead (common.inc).
// Tile shape, overridable for measurements. Measured on the EPYC VM, 1 thread, 14336 x 4096 Q4_0_G8 (the
// repacked layout), GFLOP/s at 4 / 16 / 512 tokens: 2x4 150 / 159 / 169, 2x5 151 / 151 / 170,
// 3x4 125 / 148 / 165, 3x3 105 / 142 / 160, 1x8 140 / 100 / 122.
#ifndef MX_Q4_TILE_ROWS
#define MX_Q4_TILE_ROWS 2
#endif
#ifndef MX_Q4_TILE_TOKENS
#define MX_Q4_TILE_TOKENS 4
#endif
constexpr int kQ4TileRows = MX_Q4_TILE_ROWS, kQ4TileTokens = MX_Q4_TILE_TOKENS;
template <class Load>
struct Q4Tile {
  template <int R, int T>
  struct K {
    static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
      const int64_t cols = a.cols, nb = cols / kQK4_0, ng = nb / kGroupBlocks;
      const BlockQ4_0* w[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r)
        w[r] = reinterpret_cast<const BlockQ4_0*>(a.w + (r0 + r * rstep) * a.w_stride);
      const int8_t* xq = a.xq + t0 * cols;   // [T, cols] grouped
      const float* xd = a.xd + t0 * nb;      // [T, nb]
      const int32_t* xs = a.xsum + t0 * nb;  // [T, nb]
      const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
      __m256 acc[R][T];  // [R, T] one f32 lane per block of the group
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        MX_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
      }
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t b0 = g * kGroupBlocks;
        // The rows' transposed groups and scales go through memory (an empty asm that may read it
        // stops the compiler from holding them in registers across the token loop, where they would
        // push the int16 sums out of the 16 vector registers).
        alignas(32) __m256i c[R][4];  // [R, 4] the rows' transposed groups (packed nibbles)
        alignas(32) __m256 dw[R];     // [R] their 8 block scales
        MX_UNROLL
        for (int r = 0; r < R; ++r) {
          prefetch_bytes(w[r] + b0, kTilePrefetchBytes,
                         kGroupBlocks * static_cast<int64_t>(sizeof(BlockQ4_0)));
          dw[r] = Load::load(reinterpret_cast<const uint8_t*>(w[r] + b0), c[r]);
        }
        asm volatile("" : : "r"(c), "r"(dw) : "memory");
        __m256i s16[R][T];  // [R, T] int16 partial dots (exact: see Q4GroupRT)
        MX_UNROLL
        for (int v = 0; v < 8; ++v) {  // vector v = 2k + h: the low (h = 0) or high nibbles of c[k]
          __m256i u[R];
          MX_UNROLL
          for (int r = 0; r < R; ++r) {
            u[r] = _mm256_and_si256(v % 2 == 0 ? c[r][v / 2] : _mm256_srli_epi16(c[r][v / 2], 4), low4);
          }
          MX_UNROLL
          for (int t = 0; t < T; ++t) {
            __m256i xv =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * cols + b0 * kQK8_0) + v);
            if constexpr (R > 1) asm("" : "+x"(xv));  // one load for R rows, not R folded memory operands
            MX_UNROLL
            for (int r = 0; r < R; ++r) {
              const __m256i p = _mm256_maddubs_epi16(u[r], xv);
              s16[r][t] = v == 0 ? p : _mm256_add_epi16(s16[r][t], p);
              // Opaque to the optimiser, so it keeps this running sum instead of reassociating the
              // 8 products into a tree that holds all of them (and spills) at once.
              asm("" : "+x"(s16[r][t]));
            }
          }
        }
        MX_UNROLL
        for (int t = 0; t < T; ++t) {
          const __m256i corr =
              _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + t * nb + b0)), 3);
          const __m256 xdt = _mm256_loadu_ps(xd + t * nb + b0);
          MX_UNROLL
          for (int r = 0; r < R; ++r) {
            const __m256i dot = _mm256_sub_epi32(_mm256_madd_epi16(s16[r][t], ones), corr);
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[r], xdt), acc[r][t]);
          }
        }
      }
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        float tail[T] = {};
        tail_blocks<BlockQ4_0, T>(a, w[r], ng * kGroupBlocks, t0, tail);
        MX_UNROLL
        for (int t = 0; t < T; ++t) y[t * ldy + r * rstep] = hsum256(acc[r][t]) + tail[t];
      }
    }
  };
};

// Q8_0_G8 (Q8_0 repacked at load, tensor/quant.h): the group's 8 vectors already in grouped order, read
// in place. R rows (r0 + i * rstep) x T tokens; each (row, token) runs the same operations whatever R and
// T (decode: 4 rows in lockstep, one token; prefill: one row, kGroupTokens tokens), so results are
// bit-identical. Per vector |w| . (x with w's sign) (int16 pairs would overflow if added), vpmaddwd, and
// the int32 lanes (one per block) added; then one conversion, scale and FMA per group.
template <int64_t kAhead>
struct Q8G8Tile {
  template <int R, int T>
  struct K {
    static void run(const MatmulArgs& a, int64_t r0, int64_t rstep, int64_t t0, float* y, int64_t ldy) {
      const int64_t cols = a.cols, nb = cols / kQK8_0, ng = nb / kGroupBlocks;
      const BlockQ8_0G8* w[R];
      MX_UNROLL
      for (int i = 0; i < R; ++i)
        w[i] = reinterpret_cast<const BlockQ8_0G8*>(a.w + (r0 + i * rstep) * a.w_stride);
      const int8_t* xq = a.xq + t0 * cols;  // [T, cols] grouped
      const float* xd = a.xd + t0 * nb;     // [T, nb]
      const __m256i ones = _mm256_set1_epi16(1);
      __m256 acc[R][T];
      MX_UNROLL
      for (int i = 0; i < R; ++i) {
        MX_UNROLL
        for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
      }
      for (int64_t g = 0; g < ng; ++g) {
        MX_UNROLL
        for (int i = 0; i < R; ++i) {
          prefetch_bytes(w[i] + g, kAhead, static_cast<int64_t>(sizeof(BlockQ8_0G8)));
          const auto* wv = reinterpret_cast<const __m256i*>(w[i][g].qs);  // [8] read as memory operands
          __m256i u[8];                                                   // [8] |w|
          MX_UNROLL
          for (int v = 0; v < 8; ++v) u[v] = _mm256_abs_epi8(_mm256_loadu_si256(wv + v));
          const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i][g].d)));
          MX_UNROLL
          for (int t = 0; t < T; ++t) {
            const auto* xv = reinterpret_cast<const __m256i*>(xq + t * cols + g * kGroupBlocks * kQK8_0);
            __m256i dot = _mm256_setzero_si256();
            MX_UNROLL
            for (int v = 0; v < 8; ++v) {
              const __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256(xv + v), _mm256_loadu_si256(wv + v));
              dot = _mm256_add_epi32(dot, _mm256_madd_epi16(_mm256_maddubs_epi16(u[v], sx), ones));
            }
            acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                        _mm256_mul_ps(dw, _mm256_loadu_ps(xd + t * nb + g * kGroupBlocks)),
                                        acc[i][t]);
          }
        }
      }
      MX_UNROLL
      for (int i = 0; i < R; ++i) {
        MX_UNROLL
        for (int t = 0; t < T; ++t) y[t * ldy + i * rstep] = hsum256(acc[i][t]);
      }
    }
  };
};

// Q8_0_G8 for every token count (rows are whole groups: no tail blocks): 4 rows in lockstep for one token,
// else one row x kGroupTokens tokens.
constexpr MatmulTileFn q8_g8_matmul =
    tiles<Q8G8Tile<kPrefetchBytes>::K, 4, Q8G8Tile<kTilePrefetchBytes>::K, 1, kGroupTokens>;

// Q4_0 (either layout, see Q4FileGroup) over grouped activations, for every token count: four rows in
// lockstep for one token (row k of each of 4 contiguous parts: four sequential weight streams), else
// prefill tiles.
template <class Load>
constexpr MatmulTileFn q4_matmul =
    tiles<Q4GroupRT<Load>::template K, 4, Q4Tile<Load>::template K, kQ4TileRows, kQ4TileTokens>;

// ---------------------------------------------------------------------------------------------------
// IQ4_NL and IQ4_XS: the shared kernels (x86/iq4.inc) in their vpmaddubsw form over grouped activations
// (arrange_q8, as Q4_0): 4 rows in lockstep for one token, else tiles of 2 rows x 3 tokens.
#define MX_IQ4_VNNI 0
#include "kernels/x86/iq4.inc"
#undef MX_IQ4_VNNI

// ---------------------------------------------------------------------------------------------------
// The grid i-quants (IQ2_XXS ... IQ1_M): the shared kernels (x86/iq_grid.inc) over Q8_K activations, in
// 256-bit steps (vpsignb, vpmaddwd); 4 rows in lockstep for one token, else 2 rows against runs of up to 16
// tokens.
#define MX_IQG_512 0
#include "kernels/x86/iq_grid.inc"
#undef MX_IQG_512

// ---------------------------------------------------------------------------------------------------
// K-quants: the shared 256-bit kernels (vpmaddwd form).
#define MX_K_VNNI 0
#include "kernels/x86/kquant.inc"
#undef MX_K_VNNI

// ---------------------------------------------------------------------------------------------------
// Float weights: 8 columns per step; the last partial step goes through zero-padded copies.

struct LoadF32 {
  static constexpr int kBytes = 4;
  static __m256 full(const uint8_t* row, int64_t c) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  }
  static float one(const uint8_t* row, int64_t c) { return reinterpret_cast<const float*>(row)[c]; }
};
struct LoadF16 {
  static constexpr int kBytes = 2;
  static __m256 full(const uint8_t* row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  }
  static float one(const uint8_t* row, int64_t c) {
    return _cvtsh_ss(reinterpret_cast<const uint16_t*>(row)[c]);
  }
};
struct LoadBF16 {
  static constexpr int kBytes = 2;
  static __m256 full(const uint8_t* row, int64_t c) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float one(const uint8_t* row, int64_t c) {
    const __m128i u = _mm_slli_epi32(_mm_cvtsi32_si128(reinterpret_cast<const uint16_t*>(row)[c]), 16);
    return _mm_cvtss_f32(_mm_castsi128_ps(u));
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
    __m256 acc[R][T];
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      __m256 wv[R];
      MX_UNROLL
      for (int r = 0; r < R; ++r) {
        prefetch_bytes(w[r], c * Load::kBytes + kPrefetchBytes, 1);
        wv[r] = Load::full(w[r], c);
      }
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m256 xv = _mm256_loadu_ps(x + t * cols + c);
        MX_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
      }
    }
    if (c < cols) {
      alignas(32) float wt[R][8] = {};  // [R, 8] zero-padded tail of the weight rows
      alignas(32) float xt[T][8] = {};  // [T, 8] zero-padded tail of the activations
      for (int64_t i = c; i < cols; ++i) {
        MX_UNROLL
        for (int r = 0; r < R; ++r) wt[r][i - c] = Load::one(w[r], i);
        MX_UNROLL
        for (int t = 0; t < T; ++t) xt[t][i - c] = x[t * cols + i];
      }
      MX_UNROLL
      for (int t = 0; t < T; ++t) {
        MX_UNROLL
        for (int r = 0; r < R; ++r)
          acc[r][t] = _mm256_fmadd_ps(_mm256_load_ps(wt[r]), _mm256_load_ps(xt[t]), acc[r][t]);
      }
    }
    MX_UNROLL
    for (int r = 0; r < R; ++r) {
      MX_UNROLL
      for (int t = 0; t < T; ++t) y[t * ldy + r * rstep] = hsum256(acc[r][t]);
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
// Activation quantization, bit-identical to quantize_row(Q8_0) (see avx512.cpp).

inline __m256 round_half_away(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 frac = abs256(_mm256_sub_ps(v, t));  // exact
  const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));  // +-1
  return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

void quantize_q8(const float* x, int64_t cols, int8_t* qs, float* d) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < cols / kQK8_0; ++b) {
    __m256 v[4];
    MX_UNROLL
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + b * kQK8_0 + 8 * i);
    const float amax = hmax256(
        _mm256_max_ps(_mm256_max_ps(abs256(v[0]), abs256(v[1])), _mm256_max_ps(abs256(v[2]), abs256(v[3]))));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256 vi = _mm256_set1_ps(inv);
    __m256i q[4];
    MX_UNROLL
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[i], vi)));
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kQK8_0), _mm256_permutevar8x32_epi32(p, order));
  }
}

// ---------------------------------------------------------------------------------------------------
// Element-wise ops.

// exp(x) to ~1 ulp for x in [-87.3, 88.3] (0 below; clamped above): x = k ln2 + r, |r| <= ln2/2,
// degree-7 Taylor polynomial, 2^k built in the exponent field.
inline __m256 exp256(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);  // also -inf
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860682030941723212e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline __m256 silu256(__m256 x) {
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

void silu_mul(float* x, const float* g, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(silu256(_mm256_loadu_ps(x + i)), _mm256_loadu_ps(g + i)));
  if (i < n) {
    alignas(32) float xt[8] = {}, gt[8] = {};  // zero-padded tail
    for (int64_t j = i; j < n; ++j) xt[j - i] = x[j], gt[j - i] = g[j];
    _mm256_store_ps(xt, _mm256_mul_ps(silu256(_mm256_load_ps(xt)), _mm256_load_ps(gt)));
    for (int64_t j = i; j < n; ++j) x[j] = xt[j - i];
  }
}

float row_max(const float* x, int64_t n) {
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  float mx = hmax256(vmax);
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  return mx;
}

// x[i] = exp(x[i] - mx); returns the sum.
float exp_sum(float* x, int64_t n, float mx) {
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (i < n) {
    alignas(32) float t[8];  // tail, padded with -inf (exp -> 0)
    for (int j = 0; j < 8; ++j) t[j] = i + j < n ? x[i + j] : -INFINITY;
    const __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(t), vm));
    _mm256_store_ps(t, e);
    vsum = _mm256_add_ps(vsum, e);
    for (int64_t j = i; j < n; ++j) x[j] = t[j - i];
  }
  return hsum256(vsum);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  const float inv = 1.0f / exp_sum(x, n, row_max(x, n));
  const __m256 vi = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
  for (; i < n; ++i) x[i] *= inv;
}

float dot(const float* a, const float* b, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s);
  float sum = hsum256(s);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* o = out + t * dim;
    const float inv = 1.0f / sqrt_ss(dot(xr, xr, dim) / static_cast<float>(dim) + eps);
    const __m256 vi = _mm256_set1_ps(inv);
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8)
      _mm256_storeu_ps(o + i,
                       _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vi), _mm256_loadu_ps(w + i)));
    for (; i < dim; ++i) o[i] = xr[i] * inv * w[i];
  }
}

// An R16 weight row by row, back in its file type (internal.h): the AVX-512 table's layout, read here only
// when a model repacked for it runs on this table.
template <DType kPacked, MatmulTileFn kFile>
void r16_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  r16_by_rows(kPacked, kFile, a, r0, nr, t0, nt, y, ldy);
}

constexpr MatmulKernel kMatmul[] = {
    {DType::F32, tiles<F32Kernel, 4, F32Kernel, 4, 2>, nullptr, DType::F32},
    {DType::F16, tiles<F16Kernel, 4, F16Kernel, 4, 2>, nullptr, DType::F16},
    {DType::BF16, tiles<BF16Kernel, 4, BF16Kernel, 4, 2>, nullptr, DType::BF16},
    {DType::Q8_0, tiles<Q8Kernel, 4, Q8Kernel, 2, 3>, nullptr, DType::Q8_0_G8},  // column order
    {DType::Q4_0, q4_matmul<Q4FileGroup>, arrange_q8, DType::Q4_0_G8},
    {DType::Q4_K, k_matmul<Q4KUnpack>, nullptr, DType::Q4_K},
    {DType::Q5_K, k_matmul<Q5KUnpack>, nullptr, DType::Q5_K},
    {DType::Q6_K, k_matmul<Q6KUnpack>, nullptr, DType::Q6_K},
    {DType::Q4_0_G8, q4_matmul<Q4G8Group>, arrange_q8, DType::Q4_0_G8},
    {DType::Q8_0_G8, q8_g8_matmul, arrange_q8, DType::Q8_0_G8},
    {DType::Q4_0_R16, r16_tile<DType::Q4_0_R16, q4_matmul<Q4FileGroup>>, arrange_q8, DType::Q4_0_R16},
    {DType::Q8_0_R16, r16_tile<DType::Q8_0_R16, tiles<Q8Kernel, 4, Q8Kernel, 2, 3>>, nullptr,
     DType::Q8_0_R16},
    {DType::Q4_K_R16, r16_tile<DType::Q4_K_R16, k_matmul<Q4KUnpack>>, nullptr, DType::Q4_K_R16},
    {DType::Q6_K_R16, r16_tile<DType::Q6_K_R16, k_matmul<Q6KUnpack>>, nullptr, DType::Q6_K_R16},
    {DType::IQ4_NL, iq4_group_matmul<Iq4NlGroup>, arrange_q8, DType::IQ4_NL},
    {DType::IQ4_XS, iq4_group_matmul<Iq4XsGroup>, arrange_q8, DType::IQ4_XS},
    {DType::IQ2_XXS, iqg_matmul<Iq2xxsFmt, 2>, nullptr, DType::IQ2_XXS},
    {DType::IQ2_XS, iqg_matmul<Iq2xsFmt, 2>, nullptr, DType::IQ2_XS},
    {DType::IQ2_S, iqg_matmul<Iq2sFmt, 2>, nullptr, DType::IQ2_S},
    {DType::IQ3_XXS, iqg_matmul<Iq3xxsFmt, 2>, nullptr, DType::IQ3_XXS},
    {DType::IQ3_S, iqg_matmul<Iq3sFmt, 2>, nullptr, DType::IQ3_S},
    {DType::IQ1_S, iqg_matmul<Iq1sFmt, 2>, nullptr, DType::IQ1_S},
    {DType::IQ1_M, iqg_matmul<Iq1mFmt, 2>, nullptr, DType::IQ1_M},
};
static_assert(lists_every_weight_type(kMatmul), "avx2 table: a weight type without its kernel");

#undef MX_UNROLL

}  // namespace

const KernelTable* avx2_table() {
  static const KernelTable table = {
      "avx2",  kMatmul,  quantize_q8, generic_table().quantize_q8_k,
      4,  // K-quant prefill over 8-token tiles, dword lanes
      rmsnorm, silu_mul, softmax,
  };
  return &table;
}

}  // namespace mixtral::kernels::detail

#else

namespace mixtral::kernels::detail {
const KernelTable* avx2_table() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail

#endif
