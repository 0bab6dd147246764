#include "tensor/quant_iq.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/quant.h"

namespace mixtral {
namespace iq {
#include "tensor/iq_grids.inc"
}  // namespace iq

namespace detail {
namespace {

using iq::kIqSigns;

// Point j (byte j, unsigned) of a grid entry.
inline int point(uint64_t entry, int j) {
  return static_cast<int>((entry >> (8 * j)) & 0xff);
}

// 8 elements: scale * point * sign, signs as 8 bits (bit j set = element j negative). The sign is a
// factor of +-1 (exact), not a branch: random signs would mispredict half the time.
inline void put8(float* y, float scale, uint64_t entry, unsigned signs) {
  for (int j = 0; j < 8; ++j) {
    const float sign = static_cast<float>(1 - 2 * static_cast<int>((signs >> j) & 1));
    y[j] = scale * static_cast<float>(point(entry, j)) * sign;
  }
}

// Two 4-point entries (elements 0..3 and 4..7) under one byte of signs.
inline void put4x2(float* y, float scale, uint32_t lo, uint32_t hi, unsigned signs) {
  put8(y, scale, static_cast<uint64_t>(lo) | static_cast<uint64_t>(hi) << 32, signs);
}

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The IQ1 grids hold signed points: scale * (point + delta).
inline void put8_signed(float* y, float scale, uint64_t entry, float delta) {
  for (int j = 0; j < 8; ++j)
    y[j] = scale * (static_cast<float>(static_cast<int8_t>(point(entry, j))) + delta);
}

}  // namespace

void dequantize_iq2_xxs(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ2_XXS*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      const uint32_t idx = b[i].qs[4 * g] | static_cast<uint32_t>(b[i].qs[4 * g + 1]) << 16;
      const uint32_t sw = b[i].qs[4 * g + 2] | static_cast<uint32_t>(b[i].qs[4 * g + 3]) << 16;
      const float scale = d * (0.5f + static_cast<float>(sw >> 28)) * 0.25f;
      for (int l = 0; l < 4; ++l)
        put8(dst + 32 * g + 8 * l, scale, iq::kIq2xxsGrid[(idx >> (8 * l)) & 0xff],
             kIqSigns[(sw >> (7 * l)) & 127]);
    }
  }
}

void dequantize_iq2_xs(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ2_XS*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      for (int l = 0; l < 4; ++l) {
        const unsigned s = (b[i].scales[g] >> (4 * (l / 2))) & 0xf;
        const float scale = d * (0.5f + static_cast<float>(s)) * 0.25f;
        const uint16_t q = b[i].qs[4 * g + l];
        put8(dst + 32 * g + 8 * l, scale, iq::kIq2xsGrid[q & 511], kIqSigns[q >> 9]);
      }
    }
  }
}

void dequantize_iq2_s(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ2_S*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    const uint8_t* signs = b[i].qs + kQK_IQ / 8;
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      for (int l = 0; l < 4; ++l) {
        const int k = 4 * g + l;
        const unsigned s = (b[i].scales[g] >> (4 * (l / 2))) & 0xf;
        const float scale = d * (0.5f + static_cast<float>(s)) * 0.25f;
        const unsigned index = b[i].qs[k] | ((b[i].qh[g] >> (2 * l)) & 3u) << 8;
        put8(dst + 8 * k, scale, iq::kIq2sGrid[index], signs[k]);
      }
    }
  }
}

void dequantize_iq3_xxs(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ3_XXS*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    const uint8_t* qs = b[i].qs;
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      const uint32_t sw = load_u32(qs + kQK_IQ / 4 + 4 * g);
      const float scale = d * (0.5f + static_cast<float>(sw >> 28)) * 0.5f;
      for (int l = 0; l < 4; ++l) {
        const int k = 8 * g + 2 * l;  // the two 4-point entries of elements 32g + 8l .. +7
        put4x2(dst + 4 * k, scale, iq::kIq3xxsGrid[qs[k]], iq::kIq3xxsGrid[qs[k + 1]],
               kIqSigns[(sw >> (7 * l)) & 127]);
      }
    }
  }
}

void dequantize_iq3_s(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ3_S*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      const unsigned s = (b[i].scales[g / 2] >> (4 * (g % 2))) & 0xf;
      const float scale = d * static_cast<float>(1 + 2 * s);
      for (int l = 0; l < 4; ++l) {
        const int k = 8 * g + 2 * l;
        auto index = [&](int kk) { return b[i].qs[kk] | ((b[i].qh[kk / 8] >> (kk % 8)) & 1u) << 8; };
        put4x2(dst + 4 * k, scale, iq::kIq3sGrid[index(k)], iq::kIq3sGrid[index(k + 1)], b[i].signs[k / 2]);
      }
    }
  }
}

void dequantize_iq1_s(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ1_S*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      const unsigned h = b[i].qh[g];
      const float scale = d * static_cast<float>(2 * ((h >> 12) & 7) + 1);
      const float delta = h & 0x8000 ? -iq::kIq1sDelta : iq::kIq1sDelta;
      for (int l = 0; l < 4; ++l) {
        const unsigned index = b[i].qs[4 * g + l] | ((h >> (3 * l)) & 7u) << 8;
        put8_signed(dst + 32 * g + 8 * l, scale, iq::kIq1sGrid[index], delta);
      }
    }
  }
}

void dequantize_iq1_m(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ1_M*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    uint16_t w[4];  // the scale words
    std::memcpy(w, b[i].scales, sizeof(w));
    const uint16_t d16 =
        static_cast<uint16_t>((w[0] >> 12) | (w[1] >> 12) << 4 | (w[2] >> 12) << 8 | (w[3] >> 12) << 12);
    const float d = fp16_to_f32(d16);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      for (int l = 0; l < 4; ++l) {
        const int k = 4 * g + l, half = l / 2;  // half: elements 32g + 16 half .. +15 share a scale code
        const unsigned s = (w[g / 2] >> (6 * (g % 2) + 3 * half)) & 7;
        const unsigned nib = (b[i].qh[2 * g + l / 2] >> (4 * (l % 2))) & 0xf;
        const float delta = nib & 8 ? -iq::kIq1mDelta : iq::kIq1mDelta;
        const unsigned index = b[i].qs[k] | (nib & 7u) << 8;
        put8_signed(dst + 8 * k, d * static_cast<float>(2 * s + 1), iq::kIq1sGrid[index], delta);
      }
    }
  }
}

void dequantize_iq4_nl(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ4_NL*>(src);
  for (int64_t i = 0; i < n / kQK4_NL; ++i, dst += kQK4_NL) {
    const float d = fp16_to_f32(b[i].d);
    for (int j = 0; j < kQK4_NL / 2; ++j) {
      dst[j] = d * static_cast<float>(iq::kIq4nlValues[b[i].qs[j] & 0xf]);
      dst[j + kQK4_NL / 2] = d * static_cast<float>(iq::kIq4nlValues[b[i].qs[j] >> 4]);
    }
  }
}

void dequantize_iq4_xs(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ4_XS*>(src);
  for (int64_t i = 0; i < n / kQK_IQ; ++i, dst += kQK_IQ) {
    const float d = fp16_to_f32(b[i].d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      const int s = ((b[i].scales_l[g / 2] >> (4 * (g % 2))) & 0xf) | ((b[i].scales_h >> (2 * g)) & 3) << 4;
      const float scale = d * static_cast<float>(s - 32);
      const uint8_t* q = b[i].qs + 16 * g;
      for (int j = 0; j < 16; ++j) {
        dst[32 * g + j] = scale * static_cast<float>(iq::kIq4nlValues[q[j] & 0xf]);
        dst[32 * g + 16 + j] = scale * static_cast<float>(iq::kIq4nlValues[q[j] >> 4]);
      }
    }
  }
}

namespace {

constexpr float kIq4Eps = 1e-15f;  // a block whose largest |x| is below this is stored as zeros

// Index of the IQ4 value nearest to v (kIq4nlValues is ascending; a tie goes to the larger value). Every
// midpoint between two values is a multiple of 1/2, so the answer is constant on each [m/2, (m + 1)/2): a
// table by floor(2v) answers exactly as a search would, without its unpredictable branches.
struct Iq4Nearest {
  uint8_t index[512];  // [floor(2v) + 256] for v in [-128, 128)
  Iq4Nearest() {
    const int8_t* k = iq::kIq4nlValues;
    for (int m = -256; m < 256; ++m) {
      const float v = 0.5f * static_cast<float>(m) + 0.25f;  // inside the interval, never a midpoint
      int best = 0;
      for (int i = 1; i < 16; ++i)
        if (std::fabs(v - static_cast<float>(k[i])) < std::fabs(v - static_cast<float>(k[best]))) best = i;
      index[m + 256] = static_cast<uint8_t>(best);
    }
  }
};
const Iq4Nearest kIq4Nearest;

int nearest_iq4(float v) {
  if (!(v > -128.0f)) return 0;  // NaN goes to 0 too
  if (v >= 127.5f) return 15;
  const float t = 2.0f * v;  // exact
  int m = static_cast<int>(t);
  if (static_cast<float>(m) > t) --m;  // floor
  return kIq4Nearest.index[m + 256];
}

// Indices of x[0..32) at scale d (each element's nearest value of x / d); d == 0 gives index 0 everywhere.
void index32(const float* x, float d, uint8_t* L) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) L[j] = static_cast<uint8_t>(d != 0.0f ? nearest_iq4(id * x[j]) : 0);
}

// The error weights of n elements: qw * sqrt(sigma2 + x^2) with importance weights (sigma2 = twice the
// mean square of the n elements), x^2 without.
void iq4_weights(const float* x, const float* qw, int n, float* w) {
  if (!qw) {
    for (int j = 0; j < n; ++j) w[j] = x[j] * x[j];
    return;
  }
  float sigma2 = 0.0f;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.0f / static_cast<float>(n);
  for (int j = 0; j < n; ++j) w[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
}

// The scale of 32 elements: candidate inverse scales (k + kIq4nlValues[0]) / max for k = -kTry .. kTry
// (max: the element of largest magnitude, with its sign, so that it meets the end value -127 at k = 0),
// each element's nearest value at each, and per candidate the weighted least-squares scale
// sum(w q x) / sum(w q^2); the candidate with the least weighted error wins. 0 for an all-(near-)zero block.
float fit_scale32(const float* x, const float* w) {
  constexpr int kTry = 7;
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  if (!(amax >= kIq4Eps)) return 0.0f;
  const float k0 = static_cast<float>(iq::kIq4nlValues[0]);
  float best_d = max / k0, best = -1.0f;  // best: sumqx^2 / sumq2, the error reduction (larger is better)
  for (int t = -kTry; t <= kTry; ++t) {
    const float id = (static_cast<float>(t) + k0) / max;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < 32; ++j) {
      const float q = static_cast<float>(iq::kIq4nlValues[nearest_iq4(id * x[j])]);
      sumqx += w[j] * q * x[j];
      sumq2 += w[j] * q * q;
    }
    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
      best_d = sumqx / sumq2;
      best = best_d * sumqx;
    }
  }
  return best_d;
}

void pack_nibbles32(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(L[j] | L[j + 16] << 4);
}

}  // namespace

void quantize_iq4_nl(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockIQ4_NL*>(dst);
  float w[kQK4_NL];    // [32] error weights
  uint8_t L[kQK4_NL];  // [32] value indices
  for (int64_t i = 0; i < n / kQK4_NL; ++i) {
    const float* x = src + i * kQK4_NL;
    iq4_weights(x, qw ? qw + i * kQK4_NL : nullptr, kQK4_NL, w);
    b[i].d = f32_to_fp16(fit_scale32(x, w));
    index32(x, fp16_to_f32(b[i].d), L);  // indices for the scale as stored
    pack_nibbles32(L, b[i].qs);
  }
}

void quantize_iq4_xs(const float* src, void* dst, int64_t n, const float* qw) {
  auto* b = static_cast<BlockIQ4_XS*>(dst);
  constexpr int kGroups = kQK_IQ / 32;
  float w[kQK_IQ];       // [256] error weights
  float scale[kGroups];  // [8] each group's own fitted scale
  uint8_t L[32];         // [32] value indices of one group
  for (int64_t i = 0; i < n / kQK_IQ; ++i) {
    const float* x = src + i * kQK_IQ;
    iq4_weights(x, qw ? qw + i * kQK_IQ : nullptr, kQK_IQ, w);
    float amax = 0.0f, max = 0.0f;  // the group scale of largest magnitude, with its sign
    for (int g = 0; g < kGroups; ++g) {
      scale[g] = fit_scale32(x + 32 * g, w + 32 * g);
      if (std::fabs(scale[g]) > amax) {
        amax = std::fabs(scale[g]);
        max = scale[g];
      }
    }
    // Group scales as 6-bit codes s - 32 in [-32, 31] of d = -max / 32: the largest is code -32 exactly.
    b[i].d = f32_to_fp16(-max / 32.0f);
    const float d = fp16_to_f32(b[i].d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].scales_h = 0;
    std::memset(b[i].scales_l, 0, sizeof(b[i].scales_l));
    for (int g = 0; g < kGroups; ++g) {
      const int l = std::clamp(static_cast<int>(std::lround(id * scale[g])), -32, 31);
      index32(x + 32 * g, d * static_cast<float>(l), L);  // indices for the group's scale as stored
      pack_nibbles32(L, b[i].qs + 16 * g);
      const int s = l + 32;
      b[i].scales_l[g / 2] |= static_cast<uint8_t>((s & 0xf) << (4 * (g % 2)));
      b[i].scales_h |= static_cast<uint16_t>((s >> 4) << (2 * g));
    }
  }
}

}  // namespace detail
}  // namespace mixtral
