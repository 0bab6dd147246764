// Scalar reference (de)quantizers of Q4_1, Q5_0, Q5_1 and the K-quants (Q2_K..Q6_K, Q8_K). Block layouts
// and bit packing follow GGML (see quant.h and docs/formats.md); the quantizers are our own: the 32-element
// types round as GGML does, the K-quants fit each sub-block's scale (and min) by a small weighted
// least-squares search and then quantize those scales to the stored 4/6/8 bits.
#include "tensor/quant_k.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "tensor/quant.h"

namespace mixtral::detail {
namespace {

// Round half to even, as an int (what lrintf gives in the default rounding mode, without the library
// call): adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits. Inputs are clamped to
// +-(2^22 - 1), where the trick is exact; every caller clamps the result to a far smaller range.
inline int nearest(float x) {
  const float v = std::clamp(x, -4194303.0f, 4194303.0f) + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

inline float half(uint16_t h) {
  return fp16_to_f32(h);
}

// The Q5_0/Q5_1 high-bit word: bit i is the fifth bit of element i.
inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
inline void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// ---------------------------------------------------------------------------------------------------------
// Scale searches (K-quants)

// Asymmetric fit of n values x (weights w) to x ~ scale * L - min with L in [0, nmax], min >= 0 (the
// offset is never positive, as the formats store it subtracted). Tries a range of inverse scales around
// nmax / (max - min); for each rounding L solves the weighted least squares for (scale, min) and keeps the
// pair of smallest weighted squared error. L: [n] out.
struct AsymFit {
  float scale;
  float min;
};
AsymFit fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  lo = std::min(lo, 0.0f);
  if (hi <= lo) {
    std::fill(L, L + n, 0);
    return {0.0f, -lo};
  }
  double sw = 0.0, sx = 0.0, sxx = 0.0;
  for (int i = 0; i < n; ++i) {
    sw += w[i];
    sx += static_cast<double>(w[i]) * x[i];
    sxx += static_cast<double>(w[i]) * x[i] * x[i];
  }
  // Rounds at inverse scale `iscale` into out and returns the weighted sums of L, L^2 and L x.
  struct Sums {
    double l, l2, lx;
  };
  auto round_l = [&](float iscale, uint8_t* out) {
    Sums m{0.0, 0.0, 0.0};
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax);
      out[i] = static_cast<uint8_t>(l);
      m.l += static_cast<double>(w[i]) * l;
      m.l2 += static_cast<double>(w[i]) * l * l;
      m.lx += static_cast<double>(w[i]) * l * x[i];
    }
    return m;
  };
  // sum w (scale L + offset - x)^2, expanded over the sums (offset = -min).
  auto error = [&](double scale, double offset, const Sums& m) {
    return scale * scale * m.l2 + 2.0 * scale * offset * m.l - 2.0 * scale * m.lx + offset * offset * sw -
           2.0 * offset * sx + sxx;
  };
  // Start: the min-max grid.
  AsymFit best{(hi - lo) / static_cast<float>(nmax), -lo};
  double best_err = error(best.scale, -static_cast<double>(best.min), round_l(1.0f / best.scale, L));
  uint8_t cand[32];  // [n] the candidate rounding
  constexpr int kSteps = 24;
  for (int s = 0; s <= kSteps; ++s) {
    const float iscale = (static_cast<float>(nmax) - 1.0f + 0.1f * static_cast<float>(s)) / (hi - lo);
    const Sums m = round_l(iscale, cand);
    const double det = sw * m.l2 - m.l * m.l;
    if (det <= 0.0) continue;
    double scale = (sw * m.lx - sx * m.l) / det;
    double offset = (m.l2 * sx - m.l * m.lx) / det;  // x ~ scale * L + offset
    if (offset > 0.0) {
      offset = 0.0;
      scale = m.lx / m.l2;
    }
    if (scale <= 0.0) continue;
    const float fs = static_cast<float>(scale), fm = static_cast<float>(-offset);  // as stored
    const double err = error(fs, -static_cast<double>(fm), m);
    if (err < best_err) {
      best_err = err;
      best = {fs, fm};
      std::memcpy(L, cand, static_cast<size_t>(n));
    }
  }
  return best;
}

// Symmetric fit of n values to x ~ scale * L with L in [-nmax, nmax - 1]: the value of largest magnitude
// maps near -nmax (so both ends of the asymmetric range are used); inverse scales around that are tried and
// the weighted least-squares scale of the best rounding kept, then refined by two rounds of
// round-then-refit. Returns the scale (0 for an all-zero block).
float fit_scale_sym(int n, int nmax, const float* x, const float* w) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-30f) return 0.0f;
  auto fit = [&](float iscale, double* score) {  // LS scale for the rounding at iscale, and its score
    double slx = 0.0, sl2 = 0.0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
      slx += static_cast<double>(w[i]) * l * x[i];
      sl2 += static_cast<double>(w[i]) * l * l;
    }
    // Weighted error = sum w x^2 - slx^2 / sl2 at the LS scale: maximise slx^2 / sl2.
    *score = sl2 > 0.0 ? slx * slx / sl2 : 0.0;
    return sl2 > 0.0 ? static_cast<float>(slx / sl2) : 0.0f;
  };
  double best_score = -1.0;
  float best = 0.0f;
  for (int s = -10; s <= 10; ++s) {
    double score;
    const float scale = fit(-(static_cast<float>(nmax) + 0.1f * static_cast<float>(s)) / max, &score);
    if (score > best_score && scale != 0.0f) {
      best_score = score;
      best = scale;
    }
  }
  for (int it = 0; it < 2 && best != 0.0f; ++it) {
    double score;
    const float scale = fit(1.0f / best, &score);
    if (score <= best_score || scale == 0.0f) break;
    best_score = score;
    best = scale;
  }
  return best;
}

// Packs 6-bit scale sc and min mn of sub-block j (0..7) into the 12-byte Q4_K/Q5_K layout (k_scale_min
// reads it back). q must start zeroed.
void pack_scale_min(int j, int sc, int mn, uint8_t* q) {
  if (j < 4) {
    q[j] = static_cast<uint8_t>(q[j] | sc);
    q[j + 4] = static_cast<uint8_t>(q[j + 4] | mn);
  } else {
    q[j + 4] = static_cast<uint8_t>((sc & 0x0f) | ((mn & 0x0f) << 4));
    q[j - 4] = static_cast<uint8_t>(q[j - 4] | ((sc >> 4) << 6));
    q[j] = static_cast<uint8_t>(q[j] | ((mn >> 4) << 6));
  }
}

// The 6-bit signed scale s (0..15) of a Q3_K block, stored + 32.
int q3k_scale(const uint8_t* q, int s) {
  const int lo = s < 8 ? q[s] & 0x0f : q[s - 8] >> 4;
  const int hi = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// An importance matrix's weights qw [256] (the mean squared activation each column of the weight sees) turn
// the sub-block fits' weights into qw * sqrt(sigma2 + x^2), sigma2 the super-block's mean x^2 (GGML's form):
// the error is weighed by how much each column's rounding moves the matmul's output.
// A sub-block whose columns all have importance 0 (no activation reached them) is fitted as if every
// column mattered alike, not collapsed to zero.
void importance_weights(const float* x, const float* qw, int sub, float sigma2, float* w) {
  const bool none = std::all_of(qw, qw + sub, [](float v) { return v == 0.0f; });
  for (int i = 0; i < sub; ++i) w[i] = (none ? 1.0f : qw[i]) * std::sqrt(sigma2 + x[i] * x[i]);
}
float mean_square(const float* x) {
  float s = 0.0f;
  for (int i = 0; i < kQK_K; ++i) s += x[i] * x[i];
  return s / static_cast<float>(kQK_K);
}

// The asymmetric K-quants (Q2_K: 16 x 16, 4-bit scales; Q4_K/Q5_K: 8 x 32, 6-bit scales) share this:
// fit every sub-block, quantize the scales and mins to `scale_max` levels against the super-block's largest,
// then round every element again with the stored scales. qw: [256] importance weights, or null (the fits
// then weigh by |x|, plus the sub-block's rms with weight_by_rms). L: [256] out, levels in [0, nmax].
struct AsymSuper {
  uint16_t d, dmin;
  uint8_t sc[16], mn[16];  // [n_sub] quantized scales and mins
};
AsymSuper quantize_asym_super(const float* x, int sub, int nmax, int scale_max, bool weight_by_rms,
                              const float* qw, uint8_t* L) {
  const int n_sub = kQK_K / sub;
  float scales[16], mins[16];  // [n_sub]
  float w[32];                 // [sub]
  const float sigma2 = qw ? mean_square(x) : 0.0f;
  for (int j = 0; j < n_sub; ++j) {
    const float* xs = x + j * sub;
    if (qw) {
      importance_weights(xs, qw + j * sub, sub, sigma2, w);
    } else {
      float av = 0.0f;
      if (weight_by_rms) {
        for (int i = 0; i < sub; ++i) av += xs[i] * xs[i];
        av = std::sqrt(av / static_cast<float>(sub));
      }
      for (int i = 0; i < sub; ++i) w[i] = av + std::fabs(xs[i]);
    }
    const AsymFit f = fit_scale_min(sub, nmax, xs, w, L + j * sub);
    scales[j] = f.scale;
    mins[j] = f.min;
  }
  const float max_scale = *std::max_element(scales, scales + n_sub);
  const float max_min = *std::max_element(mins, mins + n_sub);
  AsymSuper s{};
  const float inv_scale = max_scale > 0.0f ? static_cast<float>(scale_max) / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? static_cast<float>(scale_max) / max_min : 0.0f;
  for (int j = 0; j < n_sub; ++j) {
    s.sc[j] = static_cast<uint8_t>(std::min(scale_max, nearest(inv_scale * scales[j])));
    s.mn[j] = static_cast<uint8_t>(std::min(scale_max, nearest(inv_min * mins[j])));
  }
  s.d = f32_to_fp16(max_scale / static_cast<float>(scale_max));
  s.dmin = f32_to_fp16(max_min / static_cast<float>(scale_max));
  const float d = half(s.d), dmin = half(s.dmin);
  for (int j = 0; j < n_sub; ++j) {
    const float dl = d * s.sc[j];
    if (dl == 0.0f) {  // keep the fitted rounding: the element decodes to -dmin * mn regardless
      std::fill(L + j * sub, L + (j + 1) * sub, 0);
      continue;
    }
    const float ml = dmin * s.mn[j];
    for (int i = 0; i < sub; ++i)
      L[j * sub + i] = static_cast<uint8_t>(std::clamp(nearest((x[j * sub + i] + ml) / dl), 0, nmax));
  }
  return s;
}

// The symmetric K-quants (Q3_K, Q6_K; 16 x 16): per-sub-block scales from fit_scale_sym with weights
// rms^2 + x^2 (with importance weights qw [256]: importance_weights), then the scales quantized
// symmetrically (largest one to -smax) and every element rounded again. Returns the super-block scale; Ls:
// [16] signed quantized scales; L: [256] levels + nmax.
float quantize_sym_super(const float* x, int nmax, int smax, const float* qw, int* Ls, uint8_t* L) {
  const float ms = mean_square(x);
  float scales[16];  // [16]
  float w[16];       // [16]
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 16; ++j) {
    if (qw) {
      importance_weights(x + 16 * j, qw + 16 * j, 16, ms, w);
    } else {
      for (int i = 0; i < 16; ++i) w[i] = ms + x[16 * j + i] * x[16 * j + i];
    }
    scales[j] = fit_scale_sym(16, nmax, x + 16 * j, w);
    if (std::fabs(scales[j]) > amax) {
      amax = std::fabs(scales[j]);
      max = scales[j];
    }
  }
  if (amax == 0.0f) {
    std::fill(Ls, Ls + 16, 0);
    std::fill(L, L + kQK_K, static_cast<uint8_t>(nmax));
    return 0.0f;
  }
  const float iscale = -static_cast<float>(smax) / max;
  for (int j = 0; j < 16; ++j) Ls[j] = std::clamp(nearest(iscale * scales[j]), -smax, smax - 1);
  return 1.0f / iscale;
}

void requantize_sym(const float* x, float d, int nmax, const int* Ls, uint8_t* L) {
  for (int j = 0; j < 16; ++j) {
    const float dl = d * static_cast<float>(Ls[j]);
    for (int i = 0; i < 16; ++i) {
      const int l = dl == 0.0f ? 0 : std::clamp(nearest(x[16 * j + i] / dl), -nmax, nmax - 1);
      L[16 * j + i] = static_cast<uint8_t>(l + nmax);
    }
  }
}

// 2-bit levels L[256] into 64 bytes: element 128h + 32k + l in bits 2k of q[32h + l].
void pack_2bit(const uint8_t* L, uint8_t* q) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = L + 128 * h + l;
      q[32 * h + l] =
          static_cast<uint8_t>((e[0] & 3) | (e[32] & 3) << 2 | (e[64] & 3) << 4 | (e[96] & 3) << 6);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// 32-element types

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ4_1*>(src);
  for (int64_t i = 0; i < n / kQK4_1; ++i) {
    const float d = half(b[i].d), m = half(b[i].m);
    float* y = dst + i * kQK4_1;  // [32]
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = d * static_cast<float>(b[i].qs[j] & 0x0f) + m;
      y[j + kQK4_1 / 2] = d * static_cast<float>(b[i].qs[j] >> 4) + m;
    }
  }
}

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_0*>(src);
  for (int64_t i = 0; i < n / kQK5_0; ++i) {
    const float d = half(b[i].d);
    const uint32_t qh = load_u32(b[i].qh);
    float* y = dst + i * kQK5_0;  // [32]
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int q0 = (b[i].qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1u) << 4;
      const int q1 = (b[i].qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * static_cast<float>(q0 - 16);
      y[j + kQK5_0 / 2] = d * static_cast<float>(q1 - 16);
    }
  }
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_1*>(src);
  for (int64_t i = 0; i < n / kQK5_1; ++i) {
    const float d = half(b[i].d), m = half(b[i].m);
    const uint32_t qh = load_u32(b[i].qh);
    float* y = dst + i * kQK5_1;  // [32]
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int q0 = (b[i].qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1u) << 4;
      const int q1 = (b[i].qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * static_cast<float>(q0) + m;
      y[j + kQK5_1 / 2] = d * static_cast<float>(q1) + m;
    }
  }
}

void quantize_q4_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ4_1*>(dst);
  for (int64_t i = 0; i < n / kQK4_1; ++i) {
    const float* x = src + i * kQK4_1;  // [32]
    const float lo = *std::min_element(x, x + kQK4_1), hi = *std::max_element(x, x + kQK4_1);
    const float d = (hi - lo) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_fp16(d);
    b[i].m = f32_to_fp16(lo);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>((x[j] - lo) * id + 0.5f));
      const int q1 = std::min(15, static_cast<int>((x[j + kQK4_1 / 2] - lo) * id + 0.5f));
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_q5_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ5_0*>(dst);
  for (int64_t i = 0; i < n / kQK5_0; ++i) {
    const float* x = src + i * kQK5_0;  // [32]
    float amax = 0.0f, max = 0.0f;      // the value of largest magnitude, with its sign
    for (int j = 0; j < kQK5_0; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int q0 = std::clamp(static_cast<int>(x[j] * id + 16.5f), 0, 31);
      const int q1 = std::clamp(static_cast<int>(x[j + kQK5_0 / 2] * id + 16.5f), 0, 31);
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
      qh |= static_cast<uint32_t>(q0 >> 4) << j | static_cast<uint32_t>(q1 >> 4) << (j + 16);
    }
    store_u32(b[i].qh, qh);
  }
}

void quantize_q5_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ5_1*>(dst);
  for (int64_t i = 0; i < n / kQK5_1; ++i) {
    const float* x = src + i * kQK5_1;  // [32]
    const float lo = *std::min_element(x, x + kQK5_1), hi = *std::max_element(x, x + kQK5_1);
    const float d = (hi - lo) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f32_to_fp16(d);
    b[i].m = f32_to_fp16(lo);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int q0 = std::min(31, static_cast<int>((x[j] - lo) * id + 0.5f));
      const int q1 = std::min(31, static_cast<int>((x[j + kQK5_1 / 2] - lo) * id + 0.5f));
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
      qh |= static_cast<uint32_t>(q0 >> 4) << j | static_cast<uint32_t>(q1 >> 4) << (j + 16);
    }
    store_u32(b[i].qh, qh);
  }
}

// ---------------------------------------------------------------------------------------------------------
// K-quants: dequantization

void dequantize_q2_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ2_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = half(b[i].d), dmin = half(b[i].dmin);
    float* y = dst + i * kQK_K;  // [256]
    for (int e = 0; e < kQK_K; ++e) {
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const int q = (b[i].qs[32 * h + l] >> (2 * k)) & 3;
      const uint8_t s = b[i].scales[e / 16];
      y[e] = d * static_cast<float>(s & 0x0f) * static_cast<float>(q) - dmin * static_cast<float>(s >> 4);
    }
  }
}

void dequantize_q3_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ3_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = half(b[i].d);
    float* y = dst + i * kQK_K;  // [256]
    for (int e = 0; e < kQK_K; ++e) {
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const int low = (b[i].qs[32 * h + l] >> (2 * k)) & 3;
      const int high = (b[i].hmask[l] >> (4 * h + k)) & 1;
      const int q = low - (high ? 0 : 4);
      y[e] = d * static_cast<float>(q3k_scale(b[i].scales, e / 16)) * static_cast<float>(q);
    }
  }
}

void dequantize_q4_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ4_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = half(b[i].d), dmin = half(b[i].dmin);
    float* y = dst + i * kQK_K;    // [256]
    for (int j = 0; j < 8; ++j) {  // sub-block j: elements 32j..32j+31
      int sc, mn;
      k_scale_min(j, b[i].scales, &sc, &mn);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      for (int l = 0; l < 32; ++l) {
        const int v = j % 2 == 0 ? q[l] & 0x0f : q[l] >> 4;
        y[32 * j + l] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void dequantize_q5_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = half(b[i].d), dmin = half(b[i].dmin);
    float* y = dst + i * kQK_K;  // [256]
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      k_scale_min(j, b[i].scales, &sc, &mn);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      for (int l = 0; l < 32; ++l) {
        const int v = (j % 2 == 0 ? q[l] & 0x0f : q[l] >> 4) | ((b[i].qh[l] >> j) & 1) << 4;
        y[32 * j + l] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = half(b[i].d);
    float* y = dst + i * kQK_K;  // [256]
    for (int e = 0; e < kQK_K; ++e) {
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t lb = b[i].ql[64 * h + l + 32 * (k & 1)];
      const int low = k < 2 ? lb & 0x0f : lb >> 4;
      const int high = (b[i].qh[32 * h + l] >> (2 * k)) & 3;
      const int q = (low | high << 4) - 32;
      y[e] = d * static_cast<float>(b[i].scales[e / 16]) * static_cast<float>(q);
    }
  }
}

void dequantize_q8_k(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ8_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i)
    for (int j = 0; j < kQK_K; ++j) dst[i * kQK_K + j] = b[i].d * static_cast<float>(b[i].qs[j]);
}

// ---------------------------------------------------------------------------------------------------------
// K-quants: quantization

void quantize_q2_k(const float* src, void* dst, int64_t n) {
  quantize_q2_k(src, dst, n, nullptr);
}

void quantize_q2_k(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockQ2_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    uint8_t L[kQK_K];                  // [256] levels 0..3
    const AsymSuper s =
        quantize_asym_super(x, 16, 3, 15, /*weight_by_rms=*/false, qw ? qw + i * kQK_K : nullptr, L);
    for (int j = 0; j < 16; ++j) b[i].scales[j] = static_cast<uint8_t>(s.sc[j] | (s.mn[j] << 4));
    b[i].d = s.d;
    b[i].dmin = s.dmin;
    pack_2bit(L, b[i].qs);
  }
}

void quantize_q3_k(const float* src, void* dst, int64_t n) {
  quantize_q3_k(src, dst, n, nullptr);
}

void quantize_q3_k(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockQ3_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    int Ls[16];                        // [16] signed 6-bit scales
    uint8_t L[kQK_K];                  // [256] levels 0..7 (value + 4)
    const float d = quantize_sym_super(x, 4, 32, qw ? qw + i * kQK_K : nullptr, Ls, L);
    std::memset(&b[i], 0, sizeof(BlockQ3_K));
    for (int j = 0; j < 16; ++j) {
      const int l = Ls[j] + 32;  // 0..63
      if (j < 8) {
        b[i].scales[j] = static_cast<uint8_t>(l & 0x0f);
      } else {
        b[i].scales[j - 8] = static_cast<uint8_t>(b[i].scales[j - 8] | ((l & 0x0f) << 4));
      }
      b[i].scales[8 + j % 4] = static_cast<uint8_t>(b[i].scales[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
    }
    b[i].d = f32_to_fp16(d);
    int stored[16];  // [16] the scales as decoded
    for (int j = 0; j < 16; ++j) stored[j] = q3k_scale(b[i].scales, j);
    requantize_sym(x, half(b[i].d), 4, stored, L);
    for (int e = 0; e < kQK_K; ++e) {
      if (L[e] > 3) {
        b[i].hmask[e % 32] = static_cast<uint8_t>(b[i].hmask[e % 32] | (1u << (e / 32)));
        L[e] = static_cast<uint8_t>(L[e] - 4);
      }
    }
    pack_2bit(L, b[i].qs);
  }
}

void quantize_q4_k(const float* src, void* dst, int64_t n) {
  quantize_q4_k(src, dst, n, nullptr);
}

void quantize_q4_k(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockQ4_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    uint8_t L[kQK_K];                  // [256] levels 0..15
    const AsymSuper s =
        quantize_asym_super(x, 32, 15, 63, /*weight_by_rms=*/true, qw ? qw + i * kQK_K : nullptr, L);
    std::memset(b[i].scales, 0, kKScaleBytes);
    for (int j = 0; j < 8; ++j) pack_scale_min(j, s.sc[j], s.mn[j], b[i].scales);
    b[i].d = s.d;
    b[i].dmin = s.dmin;
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        b[i].qs[32 * j + l] = static_cast<uint8_t>(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
  }
}

void quantize_q5_k(const float* src, void* dst, int64_t n) {
  quantize_q5_k(src, dst, n, nullptr);
}

void quantize_q5_k(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockQ5_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    uint8_t L[kQK_K];                  // [256] levels 0..31
    const AsymSuper s =
        quantize_asym_super(x, 32, 31, 63, /*weight_by_rms=*/true, qw ? qw + i * kQK_K : nullptr, L);
    std::memset(b[i].scales, 0, kKScaleBytes);
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int j = 0; j < 8; ++j) pack_scale_min(j, s.sc[j], s.mn[j], b[i].scales);
    b[i].d = s.d;
    b[i].dmin = s.dmin;
    for (int j = 0; j < 8; ++j)
      for (int l = 0; l < 32; ++l)
        b[i].qh[l] = static_cast<uint8_t>(b[i].qh[l] | ((L[32 * j + l] >> 4) << j));
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        b[i].qs[32 * j + l] =
            static_cast<uint8_t>((L[64 * j + l] & 0x0f) | ((L[64 * j + 32 + l] & 0x0f) << 4));
  }
}

void quantize_q6_k(const float* src, void* dst, int64_t n) {
  quantize_q6_k(src, dst, n, nullptr);
}

void quantize_q6_k(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockQ6_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    int Ls[16];                        // [16] int8 scales
    uint8_t L[kQK_K];                  // [256] levels 0..63 (value + 32)
    const float d = quantize_sym_super(x, 32, 128, qw ? qw + i * kQK_K : nullptr, Ls, L);
    for (int j = 0; j < 16; ++j) b[i].scales[j] = static_cast<int8_t>(Ls[j]);
    b[i].d = f32_to_fp16(d);
    requantize_sym(x, half(b[i].d), 32, Ls, L);
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* e = L + 128 * h + l;
        b[i].ql[64 * h + l] = static_cast<uint8_t>((e[0] & 0x0f) | (e[64] & 0x0f) << 4);
        b[i].ql[64 * h + 32 + l] = static_cast<uint8_t>((e[32] & 0x0f) | (e[96] & 0x0f) << 4);
        b[i].qh[32 * h + l] =
            static_cast<uint8_t>((e[0] >> 4) | (e[32] >> 4) << 2 | (e[64] >> 4) << 4 | (e[96] >> 4) << 6);
      }
    }
  }
}

void quantize_q8_k(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float* x = src + i * kQK_K;  // [256]
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    // GGML's quantize_row_q8_K_ref since the IQ2 types: the extreme maps to -127 (its older rule, -128 with
    // +128 clamped to 127, rounds every value on a different grid from llama.cpp's), so |q| <= 127.
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j) b[i].qs[j] = static_cast<int8_t>(std::min(127, nearest(iscale * x[j])));
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += b[i].qs[16 * g + j];
      b[i].bsums[g] = static_cast<int16_t>(sum);
    }
    b[i].d = 1.0f / iscale;
  }
}

}  // namespace mixtral::detail
