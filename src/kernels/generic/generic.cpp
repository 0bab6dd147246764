// Portable kernels (Isa::kScalar): plain C++ written so the compiler can vectorise it for the build's
// baseline (lane-split accumulators instead of float reductions), blocked in registers over a few rows
// and tokens so each weight chunk is widened once for several tokens. Threading lives in dispatch.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/internal.h"
#include "tensor/quant.h"
#include "tensor/quant_iq.h"

namespace mixtral::kernels::detail {
namespace {

constexpr int kR = 4;     // weight rows per micro-tile
constexpr int kT = 4;     // tokens per micro-tile
constexpr int kL = 8;     // accumulator lanes per (row, token)
constexpr int kKC = 256;  // columns widened per chunk

// IEEE half to float, exact and branch-free so widening loops vectorise: the 15 magnitude bits shifted
// into place and rescaled by 2^112 give normals and subnormals; inf/NaN keep an all-ones exponent.
inline float half_to_float(uint16_t h) {
  const uint32_t o = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float f;
  std::memcpy(&f, &o, 4);
  f *= 0x1p112f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t special = 0u - static_cast<uint32_t>((h & 0x7c00u) == 0x7c00u);  // all ones for inf/NaN
  u = (u & ~special) | ((o | 0x7f800000u) & special);
  u |= static_cast<uint32_t>(h & 0x8000u) << 16;
  std::memcpy(&f, &u, 4);
  return f;
}

// Widen n weights of row `src` starting at column c0 into dst[0, n).
void widen_f32(const uint8_t* src, int64_t c0, int64_t n, float* dst) {
  std::memcpy(dst, reinterpret_cast<const float*>(src) + c0, static_cast<size_t>(n) * 4);
}
void widen_f16(const uint8_t* src, int64_t c0, int64_t n, float* dst) {
  const auto* s = reinterpret_cast<const uint16_t*>(src) + c0;
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
}
void widen_bf16(const uint8_t* src, int64_t c0, int64_t n, float* dst) {
  const auto* s = reinterpret_cast<const uint16_t*>(src) + c0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

using WidenFn = void (*)(const uint8_t*, int64_t, int64_t, float*);

template <WidenFn Widen>
void float_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  const int64_t cols = a.cols;
  float wbuf[kR][kKC];  // [rows of the micro-tile, chunk columns] widened weights
  for (int64_t tt = 0; tt < nt; tt += kT) {
    const int ct = static_cast<int>(std::min<int64_t>(kT, nt - tt));
    for (int64_t rr = 0; rr < nr; rr += kR) {
      const int cr = static_cast<int>(std::min<int64_t>(kR, nr - rr));
      float acc[kR][kT][kL] = {};  // lane-split partial sums per (row, token)
      for (int64_t c0 = 0; c0 < cols; c0 += kKC) {
        const int64_t kc = std::min<int64_t>(kKC, cols - c0);
        for (int r = 0; r < cr; ++r) Widen(a.w + (r0 + rr + r) * a.w_stride, c0, kc, wbuf[r]);
        for (int r = 0; r < cr; ++r) {
          for (int t = 0; t < ct; ++t) {
            const float* xr = a.x + (t0 + tt + t) * cols + c0;
            float* s = acc[r][t];
            int64_t c = 0;
            for (; c + kL <= kc; c += kL)
              for (int l = 0; l < kL; ++l) s[l] += wbuf[r][c + l] * xr[c + l];
            for (; c < kc; ++c) s[c % kL] += wbuf[r][c] * xr[c];
          }
        }
      }
      for (int r = 0; r < cr; ++r)
        for (int t = 0; t < ct; ++t) {
          float sum = 0.0f;
          for (int l = 0; l < kL; ++l) sum += acc[r][t][l];
          y[(tt + t) * ldy + rr + r] = sum;
        }
    }
  }
}

// Quantized weights: widen a chunk of blocks to int8 values (Q4_0: nibble - 8) and f32 scales.
constexpr int kKB = kKC / kQK8_0;  // blocks per chunk
static_assert(kKB % kG8Blocks == 0, "chunks of whole G8 groups");

void unpack_q8(const uint8_t* src, int64_t b0, int64_t nb, int8_t* qs, float* d) {
  const auto* blk = reinterpret_cast<const BlockQ8_0*>(src) + b0;
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = half_to_float(blk[b].d);
    std::memcpy(qs + b * kQK8_0, blk[b].qs, kQK8_0);
  }
}
void unpack_q4(const uint8_t* src, int64_t b0, int64_t nb, int8_t* qs, float* d) {
  const auto* blk = reinterpret_cast<const BlockQ4_0*>(src) + b0;
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = half_to_float(blk[b].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      qs[b * kQK4_0 + j] = static_cast<int8_t>((blk[b].qs[j] & 0x0f) - 8);
      qs[b * kQK4_0 + j + kQK4_0 / 2] = static_cast<int8_t>((blk[b].qs[j] >> 4) - 8);
    }
  }
}

// IQ4_NL: values iq::kIq4nlValues[nibble], scale d. IQ4_XS: the same values, block (group) g of a
// super-block scaled by d * (s_g - 32); b0 and nb are whole super-blocks (chunks are 8 blocks, rows whole
// super-blocks).
void unpack_iq4_nl(const uint8_t* src, int64_t b0, int64_t nb, int8_t* qs, float* d) {
  const auto* blk = reinterpret_cast<const BlockIQ4_NL*>(src) + b0;
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = half_to_float(blk[b].d);
    for (int j = 0; j < kQK4_NL / 2; ++j) {
      qs[b * kQK4_NL + j] = iq::kIq4nlValues[blk[b].qs[j] & 0x0f];
      qs[b * kQK4_NL + j + kQK4_NL / 2] = iq::kIq4nlValues[blk[b].qs[j] >> 4];
    }
  }
}
void unpack_iq4_xs(const uint8_t* src, int64_t b0, int64_t nb, int8_t* qs, float* d) {
  const auto* blk = reinterpret_cast<const BlockIQ4_XS*>(src) + b0 / 8;
  for (int64_t s = 0; s < nb / 8; ++s) {
    const float dd = half_to_float(blk[s].d);
    for (int g = 0; g < 8; ++g) {
      const int code =
          ((blk[s].scales_l[g / 2] >> (4 * (g % 2))) & 0x0f) | (((blk[s].scales_h >> (2 * g)) & 3) << 4);
      d[8 * s + g] = dd * static_cast<float>(code - 32);
      const uint8_t* q = blk[s].qs + 16 * g;
      int8_t* o = qs + (8 * s + g) * kQK4_NL;
      for (int j = 0; j < 16; ++j) {
        o[j] = iq::kIq4nlValues[q[j] & 0x0f];
        o[j + 16] = iq::kIq4nlValues[q[j] >> 4];
      }
    }
  }
}

using UnpackFn = void (*)(const uint8_t*, int64_t, int64_t, int8_t*, float*);

// The same from a G8 layout (kPacked: Q4_0_G8 or Q8_0_G8): each group back to the file type's blocks, then
// kFile. b0 and nb are whole groups (chunks are 8 blocks, rows whole groups).
template <DType kPacked, class FileBlock, UnpackFn kFile>
void unpack_g8(const uint8_t* src, int64_t b0, int64_t nb, int8_t* qs, float* d) {
  constexpr size_t kGroupBytes = kG8Blocks * sizeof(FileBlock);
  for (int64_t i = 0; i < nb / kG8Blocks; ++i) {
    FileBlock blk[kG8Blocks];  // [8]
    repack(kPacked, file_layout(kPacked), src + static_cast<size_t>(b0 / kG8Blocks + i) * kGroupBytes, blk, 1,
           kQKG8);
    kFile(reinterpret_cast<const uint8_t*>(blk), 0, kG8Blocks, qs + i * kQKG8, d + i * kG8Blocks);
  }
}

inline int32_t dot32(const int8_t* a, const int8_t* b) {
  int32_t s = 0;
  for (int j = 0; j < kQK8_0; ++j) s += static_cast<int32_t>(a[j]) * static_cast<int32_t>(b[j]);
  return s;
}

template <UnpackFn Unpack>
void quant_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  const int64_t cols = a.cols, nb = cols / kQK8_0;
  int8_t wq[kR][kKC];  // [rows of the micro-tile, chunk columns] weight values
  float wd[kR][kKB];   // [rows of the micro-tile, chunk blocks] weight scales
  for (int64_t tt = 0; tt < nt; tt += kT) {
    const int ct = static_cast<int>(std::min<int64_t>(kT, nt - tt));
    for (int64_t rr = 0; rr < nr; rr += kR) {
      const int cr = static_cast<int>(std::min<int64_t>(kR, nr - rr));
      float acc[kR][kT] = {};
      for (int64_t b0 = 0; b0 < nb; b0 += kKB) {
        const int64_t kb = std::min<int64_t>(kKB, nb - b0);
        for (int r = 0; r < cr; ++r) Unpack(a.w + (r0 + rr + r) * a.w_stride, b0, kb, wq[r], wd[r]);
        for (int t = 0; t < ct; ++t) {
          const int8_t* xq = a.xq + (t0 + tt + t) * cols + b0 * kQK8_0;
          const float* xd = a.xd + (t0 + tt + t) * nb + b0;
          for (int r = 0; r < cr; ++r)
            for (int64_t b = 0; b < kb; ++b)
              acc[r][t] +=
                  static_cast<float>(dot32(wq[r] + b * kQK8_0, xq + b * kQK8_0)) * (wd[r][b] * xd[b]);
        }
      }
      for (int r = 0; r < cr; ++r)
        for (int t = 0; t < ct; ++t) y[(tt + t) * ldy + rr + r] = acc[r][t];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// K-quants with Q8_K activations. A super-block (256 values) is unpacked to unsigned values q, an
// integer scale sc and offset mi per 16 values and two float factors, so that
//   w[16g + i] = d * sc[g] * q[16g + i] - dm * mi[g],
//   w . x = d_x * (d * sum_g sc[g] * (q . x_q)_g - dm * sum_g mi[g] * bsums[g]),
// exact in int32 up to the final float scaling (|q . x| per group <= 16 * 63 * 127).
struct KUnpacked {
  uint8_t q[kQK_K];  // [256] unsigned values
  int32_t sc[16];    // [16] scale per 16 values
  int32_t mi[16];    // [16] offset per 16 values
  float d, dm;
};

void unpack_q4_k(const uint8_t* src, KUnpacked& u) {
  const auto& b = *reinterpret_cast<const BlockQ4_K*>(src);
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      u.q[64 * j + l] = b.qs[32 * j + l] & 0x0f;
      u.q[64 * j + 32 + l] = b.qs[32 * j + l] >> 4;
    }
  for (int s = 0; s < 8; ++s) {
    int sc, mn;
    k_scale_min(s, b.scales, &sc, &mn);
    u.sc[2 * s] = u.sc[2 * s + 1] = sc;
    u.mi[2 * s] = u.mi[2 * s + 1] = mn;
  }
  u.d = half_to_float(b.d);
  u.dm = half_to_float(b.dmin);
}

void unpack_q5_k(const uint8_t* src, KUnpacked& u) {
  const auto& b = *reinterpret_cast<const BlockQ5_K*>(src);
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      u.q[64 * j + l] = static_cast<uint8_t>((b.qs[32 * j + l] & 0x0f) | ((b.qh[l] >> (2 * j)) & 1) << 4);
      u.q[64 * j + 32 + l] =
          static_cast<uint8_t>((b.qs[32 * j + l] >> 4) | ((b.qh[l] >> (2 * j + 1)) & 1) << 4);
    }
  for (int s = 0; s < 8; ++s) {
    int sc, mn;
    k_scale_min(s, b.scales, &sc, &mn);
    u.sc[2 * s] = u.sc[2 * s + 1] = sc;
    u.mi[2 * s] = u.mi[2 * s + 1] = mn;
  }
  u.d = half_to_float(b.d);
  u.dm = half_to_float(b.dmin);
}

void unpack_q6_k(const uint8_t* src, KUnpacked& u) {
  const auto& b = *reinterpret_cast<const BlockQ6_K*>(src);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const uint8_t lb = b.ql[64 * h + l + 32 * (k & 1)];
        const int low = k < 2 ? lb & 0x0f : lb >> 4;
        const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
        u.q[128 * h + 32 * k + l] = static_cast<uint8_t>(low | high << 4);
      }
  for (int g = 0; g < 16; ++g) {
    u.sc[g] = b.scales[g];
    u.mi[g] = 32 * b.scales[g];
  }
  u.d = half_to_float(b.d);
  u.dm = u.d;
}

using UnpackKFn = void (*)(const uint8_t* src, KUnpacked& u);

template <class Block, UnpackKFn Unpack>
void k_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  const int64_t nb = a.cols / kQK_K;
  constexpr int64_t bytes = sizeof(Block);
  KUnpacked u;
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* w = a.w + (r0 + r) * a.w_stride;
    float acc[kT] = {};
    for (int64_t tt = 0; tt < nt; tt += kT) {
      const int ct = static_cast<int>(std::min<int64_t>(kT, nt - tt));
      for (int t = 0; t < ct; ++t) acc[t] = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        Unpack(w + b * bytes, u);
        for (int t = 0; t < ct; ++t) {
          const BlockQ8_K& x = a.xk[(t0 + tt + t) * nb + b];
          int32_t sq = 0, sm = 0;
          for (int g = 0; g < 16; ++g) {
            int32_t dot = 0;
            for (int i = 0; i < 16; ++i) dot += u.q[16 * g + i] * x.qs[16 * g + i];
            sq += u.sc[g] * dot;
            sm += u.mi[g] * x.bsums[g];
          }
          acc[t] += x.d * (u.d * static_cast<float>(sq) - u.dm * static_cast<float>(sm));
        }
      }
      for (int t = 0; t < ct; ++t) y[(tt + t) * ldy + r] = acc[t];
    }
  }
}

// The grid i-quants (IQ2_XXS ... IQ1_M) with Q8_K activations: each super-block decoded to f32 by the
// scalar decoder (tensor/quant_iq.h) once per kT tokens, dotted with each token's integer values and
// scaled by its d.
template <DType kType>
void iq_grid_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y,
                  int64_t ldy) {
  const int64_t nb = a.cols / kQK_K;
  const size_t bytes = traits(kType).block_bytes;
  float wf[kQK_K];  // [256] one decoded super-block
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* w = a.w + (r0 + r) * a.w_stride;
    for (int64_t tt = 0; tt < nt; tt += kT) {
      const int ct = static_cast<int>(std::min<int64_t>(kT, nt - tt));
      float acc[kT] = {};
      for (int64_t b = 0; b < nb; ++b) {
        dequantize_row(kType, w + static_cast<size_t>(b) * bytes, wf, kQK_K);
        for (int t = 0; t < ct; ++t) {
          const BlockQ8_K& x = a.xk[(t0 + tt + t) * nb + b];
          float s[kL] = {};
          for (int j = 0; j < kQK_K; ++j) s[j % kL] += wf[j] * static_cast<float>(x.qs[j]);
          float dot = 0.0f;
          for (int l = 0; l < kL; ++l) dot += s[l];
          acc[t] += x.d * dot;
        }
      }
      for (int t = 0; t < ct; ++t) y[(tt + t) * ldy + r] = acc[t];
    }
  }
}

void quantize_q8_k(const float* x, int64_t cols, BlockQ8_K* out) {
  quantize_row(DType::Q8_K, x, out, cols);
}

void quantize_q8(const float* x, int64_t cols, int8_t* qs, float* d) {
  for (int64_t b = 0; b < cols / kQK8_0; ++b) {
    const float* xb = x + b * kQK8_0;
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = fp16_to_f32(f32_to_fp16(scale));
    for (int j = 0; j < kQK8_0; ++j) qs[b * kQK8_0 + j] = static_cast<int8_t>(std::round(xb[j] * inv));
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float s[kL] = {};
  int64_t i = 0;
  for (; i + kL <= n; i += kL)
    for (int l = 0; l < kL; ++l) s[l] += a[i + l] * b[i + l];
  for (; i < n; ++i) s[i % kL] += a[i] * b[i];
  float sum = 0.0f;
  for (int l = 0; l < kL; ++l) sum += s[l];
  return sum;
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float part[kL] = {};  // lane-split sums: shorter rounding chains than one serial sum
  for (int64_t i = 0; i < n; ++i) part[i % kL] += (x[i] = std::exp(x[i] - mx));
  float sum = 0.0f;
  for (int l = 0; l < kL; ++l) sum += part[l];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    const float ss = dot_f32(xr, xr, dim);
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    float* o = out + t * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = xr[i] * inv * w[i];
  }
}

void silu_mul(float* x, const float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i])) * g[i];
}

// An R16 weight row by row, back in its file type (internal.h).
template <DType kPacked, MatmulTileFn kFile>
void r16_tile(const MatmulArgs& a, int64_t r0, int64_t nr, int64_t t0, int64_t nt, float* y, int64_t ldy) {
  r16_by_rows(kPacked, kFile, a, r0, nr, t0, nt, y, ldy);
}

// Activations in column order throughout; every type read as stored (the G8 and R16 layouts unpacked
// back to their file type on the way).
constexpr MatmulKernel kMatmul[] = {
    {DType::F32, float_tile<widen_f32>, nullptr, DType::F32},
    {DType::F16, float_tile<widen_f16>, nullptr, DType::F16},
    {DType::BF16, float_tile<widen_bf16>, nullptr, DType::BF16},
    {DType::Q8_0, quant_tile<unpack_q8>, nullptr, DType::Q8_0},
    {DType::Q4_0, quant_tile<unpack_q4>, nullptr, DType::Q4_0},
    {DType::Q4_K, k_tile<BlockQ4_K, unpack_q4_k>, nullptr, DType::Q4_K},
    {DType::Q5_K, k_tile<BlockQ5_K, unpack_q5_k>, nullptr, DType::Q5_K},
    {DType::Q6_K, k_tile<BlockQ6_K, unpack_q6_k>, nullptr, DType::Q6_K},
    {DType::Q4_0_G8, quant_tile<unpack_g8<DType::Q4_0_G8, BlockQ4_0, unpack_q4>>, nullptr, DType::Q4_0_G8},
    {DType::Q8_0_G8, quant_tile<unpack_g8<DType::Q8_0_G8, BlockQ8_0, unpack_q8>>, nullptr, DType::Q8_0_G8},
    {DType::Q4_0_R16, r16_tile<DType::Q4_0_R16, quant_tile<unpack_q4>>, nullptr, DType::Q4_0_R16},
    {DType::Q8_0_R16, r16_tile<DType::Q8_0_R16, quant_tile<unpack_q8>>, nullptr, DType::Q8_0_R16},
    {DType::Q4_K_R16, r16_tile<DType::Q4_K_R16, k_tile<BlockQ4_K, unpack_q4_k>>, nullptr, DType::Q4_K_R16},
    {DType::Q6_K_R16, r16_tile<DType::Q6_K_R16, k_tile<BlockQ6_K, unpack_q6_k>>, nullptr, DType::Q6_K_R16},
    {DType::IQ4_NL, quant_tile<unpack_iq4_nl>, nullptr, DType::IQ4_NL},
    {DType::IQ4_XS, quant_tile<unpack_iq4_xs>, nullptr, DType::IQ4_XS},
    {DType::IQ2_XXS, iq_grid_tile<DType::IQ2_XXS>, nullptr, DType::IQ2_XXS},
    {DType::IQ2_XS, iq_grid_tile<DType::IQ2_XS>, nullptr, DType::IQ2_XS},
    {DType::IQ2_S, iq_grid_tile<DType::IQ2_S>, nullptr, DType::IQ2_S},
    {DType::IQ3_XXS, iq_grid_tile<DType::IQ3_XXS>, nullptr, DType::IQ3_XXS},
    {DType::IQ3_S, iq_grid_tile<DType::IQ3_S>, nullptr, DType::IQ3_S},
    {DType::IQ1_S, iq_grid_tile<DType::IQ1_S>, nullptr, DType::IQ1_S},
    {DType::IQ1_M, iq_grid_tile<DType::IQ1_M>, nullptr, DType::IQ1_M},
};
static_assert(lists_every_weight_type(kMatmul), "scalar table: a weight type without its kernel");

}  // namespace

const KernelTable& generic_table() {
  static const KernelTable table = {
      "scalar", kMatmul,  quantize_q8, quantize_q8_k,
      0,  // K-quants read the tokens' Q8_K rows
      rmsnorm,  silu_mul, softmax,
  };
  return table;
}

}  // namespace mixtral::kernels::detail
