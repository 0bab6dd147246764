// Portable kernels (Isa::kScalar): plain C++ written so the compiler can vectorise it for the build's
// baseline (lane-split accumulators instead of float reductions), blocked in registers over a few rows
// and tokens so each weight chunk is widened once for several tokens. Threading lives in dispatch.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/internal.h"
#include "tensor/quant.h"

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

using UnpackFn = void (*)(const uint8_t*, int64_t, int64_t, int8_t*, float*);

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

// Attention over one chunk of keys (see AttnChunkArgs): cache rows read in key order, all heads per row.
void attn_chunk(const AttnChunkArgs& a) {
  const int64_t g = a.n_heads / a.n_kv_heads, hd = a.head_dim, len = a.j1 - a.j0, stride = a.n_kv_heads * hd;
  for (int64_t j = 0; j < len; ++j) {
    const float* row = a.k + (a.j0 + j) * stride;  // [n_kv_heads, hd]
    for (int64_t h = 0; h < a.n_heads; ++h)
      a.scratch[h * len + j] = dot_f32(a.q + h * hd, row + h / g * hd, hd) * a.scale;
  }
  for (int64_t h = 0; h < a.n_heads; ++h) {
    float* s = a.scratch + h * len;
    float mx = s[0];
    for (int64_t j = 1; j < len; ++j) mx = std::max(mx, s[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) sum += (s[j] = std::exp(s[j] - mx));
    a.m[h] = mx;
    a.l[h] = sum;
  }
  std::fill(a.out, a.out + a.n_heads * hd, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const float* row = a.v + (a.j0 + j) * stride;  // [n_kv_heads, hd]
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const float p = a.scratch[h * len + j];
      const float* vr = row + h / g * hd;
      float* o = a.out + h * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] += p * vr[i];
    }
  }
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

}  // namespace

const KernelTable& generic_table() {
  static const KernelTable table = {
      "scalar",
      {float_tile<widen_f32>, float_tile<widen_f16>, float_tile<widen_bf16>, quant_tile<unpack_q8>,
       quant_tile<unpack_q4>},
      quantize_q8,
      {nullptr, nullptr, nullptr, nullptr, nullptr},  // column order throughout
      attn_chunk,
      rmsnorm,
      silu_mul,
      softmax,
  };
  return table;
}

}  // namespace mixtral::kernels::detail
