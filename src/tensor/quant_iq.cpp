#include "tensor/quant_iq.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "core/check.h"
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

// ---------------------------------------------------------------------------------------------------------
// The grid i-quant quantizers (GGML's algorithm, quantize_row_iq2_xxs_impl and its siblings).
//
// Every grid type codes a unit of D elements (D = 8, or 4 for IQ3) as one entry of its grid, whose points
// take L distinct values ("levels": 3 for IQ2 and IQ1, 8 for IQ3). Rounding each element to its nearest
// level gives a vector of level indices, a key in [0, L^D); keys on the grid map to their entry, and each
// key off it to a list of the entries nearest to it in level-index distance (the entries in its `kShells`
// smallest distances). A unit at a given scale is projected by rounding, then (off the grid) by the
// weighted error of each listed entry.
namespace {

enum class Grid { kIq2xxs, kIq2xs, kIq2s, kIq3xxs, kIq3s, kIq1s, kCount };

struct GridTables {
  int dim = 0;                       // elements per entry (8 or 4)
  int n_levels = 0;                  // distinct point values
  float level[8] = {};               // [n_levels] the values, ascending
  float mid[7] = {};                 // [n_levels - 1] midpoints between neighbouring levels
  std::vector<float> points;         // [n_grid][dim] each entry's point values
  std::vector<int32_t> map;          // [n_levels^dim] entry index >= 0, or -(offset + 1) into neighbours
  std::vector<uint16_t> neighbours;  // at each offset: count, then that many entry indices
};

GridTables build_tables(const void* grid, int n_grid, int dim, bool is_signed, int shells) {
  GridTables t;
  t.dim = dim;
  auto byte_value = [&](int e, int j) {
    const uint64_t entry =
        dim == 8 ? static_cast<const uint64_t*>(grid)[e] : static_cast<const uint32_t*>(grid)[e];
    const auto b = static_cast<uint8_t>(entry >> (8 * j));
    return is_signed ? static_cast<float>(static_cast<int8_t>(b)) : static_cast<float>(b);
  };
  std::vector<float> values;
  for (int e = 0; e < n_grid; ++e)
    for (int j = 0; j < dim; ++j) values.push_back(byte_value(e, j));
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  MX_CHECK(values.size() <= 8, "i-quant grid with %zu levels", values.size());
  t.n_levels = static_cast<int>(values.size());
  for (int l = 0; l < t.n_levels; ++l) t.level[l] = values[static_cast<size_t>(l)];
  for (int l = 0; l + 1 < t.n_levels; ++l) t.mid[l] = 0.5f * (t.level[l] + t.level[l + 1]);

  int n_keys = 1;
  for (int j = 0; j < dim; ++j) n_keys *= t.n_levels;
  std::vector<uint8_t> grid_idx(static_cast<size_t>(n_grid) * dim);  // [n_grid][dim] level indices
  t.points.resize(static_cast<size_t>(n_grid) * dim);
  t.map.assign(static_cast<size_t>(n_keys), -1);
  for (int e = 0; e < n_grid; ++e) {
    int key = 0;
    for (int j = dim - 1; j >= 0; --j) {
      const float v = byte_value(e, j);
      const int l = static_cast<int>(std::find(values.begin(), values.end(), v) - values.begin());
      grid_idx[static_cast<size_t>(e) * dim + j] = static_cast<uint8_t>(l);
      t.points[static_cast<size_t>(e) * dim + j] = v;
      key = key * t.n_levels + l;
    }
    t.map[static_cast<size_t>(key)] = e;
  }
  std::vector<int> dist(static_cast<size_t>(n_grid));  // [n_grid] squared level-index distances
  std::vector<bool> present(static_cast<size_t>(dim * (t.n_levels - 1) * (t.n_levels - 1) + 1));
  int kidx[8];
  for (int key = 0; key < n_keys; ++key) {
    if (t.map[static_cast<size_t>(key)] >= 0) continue;
    for (int j = 0, k = key; j < dim; ++j, k /= t.n_levels) kidx[j] = k % t.n_levels;
    for (int e = 0; e < n_grid; ++e) {
      int d2 = 0;
      for (int j = 0; j < dim; ++j) {
        const int diff = kidx[j] - grid_idx[static_cast<size_t>(e) * dim + j];
        d2 += diff * diff;
      }
      dist[static_cast<size_t>(e)] = d2;
    }
    // The shells-th smallest distance present (distances are at most dim * (n_levels - 1)^2 <= 196).
    std::fill(present.begin(), present.end(), false);
    for (int d2 : dist) present[static_cast<size_t>(d2)] = true;
    int limit = 0;
    for (int found = 0; limit < static_cast<int>(present.size()); ++limit)
      if (present[static_cast<size_t>(limit)] && ++found == shells) break;
    t.map[static_cast<size_t>(key)] = -static_cast<int32_t>(t.neighbours.size() + 1);
    const size_t count_at = t.neighbours.size();
    t.neighbours.push_back(0);
    for (int e = 0; e < n_grid; ++e)
      if (dist[static_cast<size_t>(e)] <= limit) t.neighbours.push_back(static_cast<uint16_t>(e));
    t.neighbours[count_at] = static_cast<uint16_t>(t.neighbours.size() - count_at - 1);
  }
  return t;
}

// The tables of a grid, built on first use (once, whichever thread asks first).
const GridTables& tables(Grid g) {
  static std::once_flag once[static_cast<int>(Grid::kCount)];
  static GridTables t[static_cast<int>(Grid::kCount)];
  const int i = static_cast<int>(g);
  std::call_once(once[i], [&] {
    switch (g) {  // shells as GGML's nwant, but 2 (not 3) for IQ1: as good on Gaussian rows, 1.7x faster
      case Grid::kIq2xxs:
        t[i] = build_tables(iq::kIq2xxsGrid, 256, 8, false, 2);
        break;
      case Grid::kIq2xs:
        t[i] = build_tables(iq::kIq2xsGrid, 512, 8, false, 2);
        break;
      case Grid::kIq2s:
        t[i] = build_tables(iq::kIq2sGrid, 1024, 8, false, 1);
        break;
      case Grid::kIq3xxs:
        t[i] = build_tables(iq::kIq3xxsGrid, 256, 4, false, 2);
        break;
      case Grid::kIq3s:
        t[i] = build_tables(iq::kIq3sGrid, 512, 4, false, 3);
        break;
      default:
        t[i] = build_tables(iq::kIq1sGrid, 2048, 8, true, 2);
        break;
    }
  });
  return t[i];
}

// The entry of `list` (count, then entries) with the least sum w (y - point)^2.
template <int D>
int nearest_listed(const float* points, const uint16_t* list, const float* y, const float* w) {
  float best = std::numeric_limits<float>::infinity();
  int index = list[1];
  for (int n = 1; n <= list[0]; ++n) {
    const float* p = points + static_cast<size_t>(list[n]) * D;
    float e = 0.0f;
    for (int j = 0; j < D; ++j) e += w[j] * (y[j] - p[j]) * (y[j] - p[j]);
    if (e < best) {
      best = e;
      index = list[n];
    }
  }
  return index;
}

// The entry for D elements x (weights w) at `scale`, every point shifted by `off` (x ~ scale * (point +
// off)), or with on_grid false the rounded levels alone (q only; returns -1): the rounded key's own entry if
// it is on the grid (then the weighted-nearest of all entries, as each element is at its nearest level), else
// the listed neighbour of least weighted error. q [D]: the entry's point + off. Returns the entry index;
// *err: its weighted squared error.
template <int D>
int project_d(const GridTables& t, const float* x, const float* w, float scale, float off, bool on_grid,
              float* q, float* err) {
  const float inv = 1.0f / scale;
  int key = 0;
  for (int j = D - 1; j >= 0; --j) {
    const float v = x[j] * inv - off;
    int l = 0;
    while (l + 1 < t.n_levels && v > t.mid[l]) ++l;
    key = key * t.n_levels + l;
  }
  if (!on_grid) {  // the rounded levels themselves
    float e = 0.0f;
    for (int j = 0, k = key; j < D; ++j, k /= t.n_levels) {
      q[j] = t.level[k % t.n_levels] + off;
      const float diff = x[j] - scale * q[j];
      e += w[j] * diff * diff;
    }
    *err = e;
    return -1;
  }
  int index = t.map[static_cast<size_t>(key)];
  if (index < 0) {
    const uint16_t* list = t.neighbours.data() + (-index - 1);
    float y[D];  // [D] x / scale - off: the listed entry nearest it in w is nearest x at the scale
    for (int j = 0; j < D; ++j) y[j] = x[j] * inv - off;
    index = nearest_listed<D>(t.points.data(), list, y, w);
  }
  const float* p = t.points.data() + static_cast<size_t>(index) * D;
  float e = 0.0f;
  for (int j = 0; j < D; ++j) {
    q[j] = p[j] + off;
    const float diff = x[j] - scale * q[j];
    e += w[j] * diff * diff;
  }
  *err = e;
  return index;
}

int project(const GridTables& t, const float* x, const float* w, float scale, float off, bool on_grid,
            float* q, float* err) {
  return t.dim == 8 ? project_d<8>(t, x, w, scale, off, on_grid, q, err)
                    : project_d<4>(t, x, w, scale, off, on_grid, q, err);
}

enum class Signs { kParity7, kFull8, kNone };  // kNone: signed points (IQ1), no sign bits
enum class Delta { kNone, kPerGroup, kPerUnit };

// How one type codes a 256-element block (besides its bit packing).
struct GridType {
  Grid grid;
  int group;  // elements per scale code
  Signs signs;
  Delta delta;           // IQ1: the +-delta shift, one per group (IQ1_S) or per unit (IQ1_M)
  float code_a, code_b;  // a group's scale is d * (code_a + code_b * s), s in [0, n_codes)
  int n_codes;
  float lo, hi;  // candidate scales put the group's largest element at lo .. hi times the top
  int n_try;     // level (1 + delta for IQ1), n_try of them evenly spaced
  int n_keep;    // of which the best n_keep by the rounded levels' fit are scored on the grid (<= kMaxKeep)
};
constexpr int kMaxKeep = 4;

// Elements per unit and units per block follow from the grid; scale groups from `group`.
struct BlockCode {
  float d = 0.0f;
  uint16_t index[64] = {};  // [units] entry index
  uint8_t signs[32] = {};   // [32] sign bits of elements 8c .. 8c + 7 (bit j set = negative)
  uint8_t code[16] = {};    // [groups] scale code
  bool neg_delta[64] = {};  // [units] delta is -kIq1sDelta
};

constexpr float kGridEps = 1e-15f;  // a group whose largest |x| is below this gets scale 0

// The error weights of a 256-element block: qw * sqrt(sigma2 + x^2), sigma2 = twice the block's mean square
// (GGML's weights for the grid types), with qw = 1 without importance weights. (GGML has no default for
// most of them; x^2, its default for IQ3, gives a 10-25% larger RMS error on Gaussian rows.)
void grid_weights(const float* x, const float* qw, float* w) {
  float sigma2 = 0.0f;
  for (int j = 0; j < kQK_IQ; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.0f / static_cast<float>(kQK_IQ);
  for (int j = 0; j < kQK_IQ; ++j) w[j] = (qw ? qw[j] : 1.0f) * std::sqrt(sigma2 + x[j] * x[j]);
}

// Projects the units of one scale group at `scale`: the points (q) and entries chosen, with the deltas
// (IQ1_M: each unit's better one; IQ1_S: the given neg_delta for the whole group). Returns the error.
float project_group(const GridType& ty, const GridTables& t, const float* x, const float* w, float scale,
                    bool on_grid, int first_unit, bool group_neg, float* q, uint16_t* index, bool* neg) {
  float total = 0.0f;
  const int units = ty.group / t.dim;
  for (int u = 0; u < units; ++u) {
    const int o = u * t.dim;
    float e = 0.0f;
    if (ty.delta == Delta::kNone) {
      index[first_unit + u] =
          static_cast<uint16_t>(project(t, x + o, w + o, scale, 0.0f, on_grid, q + o, &e));
    } else if (ty.delta == Delta::kPerGroup) {
      const float off = group_neg ? -iq::kIq1sDelta : iq::kIq1sDelta;
      index[first_unit + u] = static_cast<uint16_t>(project(t, x + o, w + o, scale, off, on_grid, q + o, &e));
      neg[first_unit + u] = group_neg;
    } else {
      float qm[8], em = 0.0f;
      const int ip = project(t, x + o, w + o, scale, iq::kIq1mDelta, on_grid, q + o, &e);
      const int im = project(t, x + o, w + o, scale, -iq::kIq1mDelta, on_grid, qm, &em);
      const bool use_neg = em < e;
      neg[first_unit + u] = use_neg;
      index[first_unit + u] = static_cast<uint16_t>(use_neg ? im : ip);
      if (use_neg) {
        e = em;
        std::copy(qm, qm + t.dim, q + o);
      }
    }
    total += e;
  }
  return total;
}

// A group's two scales: its entries are the weighted-nearest at `fit` (the least-squares scale), and it
// is stored at `stored` = sum(w x^2) / sum(w q x) >= fit, which leaves the error orthogonal to x instead
// of to the decoded values. At the least-squares scale the decoded group is x shrunk by the cosine^2
// between q and x (plus noise orthogonal to it), 0.92 on average for IQ2_XS: every row's output shrinks
// the same way, an error the per-element weights cannot see, which costs more in the model's output
// distributions (KL divergence) than the larger but uncorrelated error of the unshrunk scale (measured on
// the built-in model with its importance matrix, tools/iq_quality.py: IQ2_XS 0.0122 -> 0.0089, IQ1_S
// 0.0218 -> 0.0113; llama-quantize's files 0.0098 and 0.0140).
struct GroupScale {
  float fit = 0.0f;
  float stored = 0.0f;
};

// The best scale of one group. Each candidate scale is scored by the weighted least-squares fit of the
// rounded levels alone (no grid: cheap), sumqx^2 / sumq2, the error it removes; the n_keep best are
// scored again with the units projected onto the grid, and the best of those, at its least-squares scale
// sum(w q x) / sum(w q^2), is projected once more at that scale (kept if better still). IQ1_S tries both
// deltas. The winner's units give its stored scale too. Returns zeros for a (near-)zero group.
GroupScale fit_group(const GridType& ty, const GridTables& t, const float* x, const float* w) {
  float amax = 0.0f;
  for (int j = 0; j < ty.group; ++j) amax = std::max(amax, std::fabs(x[j]));
  if (!(amax >= kGridEps)) return {};
  const bool iq1 = ty.delta != Delta::kNone;
  const float top = t.level[t.n_levels - 1] + (iq1 ? iq::kIq1sDelta : 0.0f);
  float q[32];       // [group] points (+ delta) of the candidate
  uint16_t idx[64];  // scratch entries
  bool neg[64];      // scratch deltas
  struct Candidate {
    float score = -1.0f;  // sumqx^2 / sumq2; -1: none
    float scale = 0.0f;   // the candidate's least-squares scale
    float tried = 0.0f;   // the scale it was rounded at
    float stored = 0.0f;  // sum(w x^2) / sum(w q x)
    bool neg = false;
  };
  float sumx2 = 0.0f;
  for (int j = 0; j < ty.group; ++j) sumx2 += w[j] * x[j] * x[j];
  auto score = [&](float scale, bool group_neg, bool on_grid) {
    project_group(ty, t, x, w, scale, on_grid, 0, group_neg, q, idx, neg);
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < ty.group; ++j) {
      sumqx += w[j] * q[j] * x[j];
      sumq2 += w[j] * q[j] * q[j];
    }
    Candidate c;
    c.tried = scale;
    c.neg = group_neg;
    if (sumq2 > 0.0f && sumqx > 0.0f) {
      c.score = sumqx * sumqx / sumq2;
      c.scale = sumqx / sumq2;
      c.stored = sumx2 / sumqx;
    }
    return c;
  };
  Candidate keep[kMaxKeep];  // the best n_keep by the rounded score, best first
  auto offer = [&](const Candidate& c) {
    for (int i = 0; i < ty.n_keep; ++i) {
      if (c.score > keep[i].score) {
        std::copy_backward(keep + i, keep + ty.n_keep - 1, keep + ty.n_keep);
        keep[i] = c;
        return;
      }
    }
  };
  for (int k = 0; k < ty.n_try; ++k) {
    const float m = ty.lo + (ty.hi - ty.lo) * static_cast<float>(k) / static_cast<float>(ty.n_try - 1);
    const float scale = amax / (m * top);
    offer(score(scale, false, false));
    if (ty.delta == Delta::kPerGroup) offer(score(scale, true, false));
  }
  Candidate best;
  for (int i = 0; i < ty.n_keep && keep[i].score >= 0.0f; ++i) {
    const Candidate c = score(keep[i].tried, keep[i].neg, true);
    if (c.score > best.score) best = c;
  }
  if (best.score < 0.0f) return {amax / top, amax / top};
  const Candidate again = score(best.scale, best.neg, true);
  const Candidate& fin = again.score > best.score ? again : best;
  return {fin.scale, fin.stored};
}

void code_block(const GridType& ty, const float* x, const float* w, BlockCode& c) {
  const GridTables& t = tables(ty.grid);
  c = BlockCode{};
  float xv[kQK_IQ];  // [256] x with the stored signs taken out (sign types), else x
  if (ty.signs == Signs::kNone) {
    std::copy(x, x + kQK_IQ, xv);
  } else {
    for (int k = 0; k < kQK_IQ / 8; ++k) {
      unsigned s = 0;
      for (int j = 0; j < 8; ++j) {
        xv[8 * k + j] = std::fabs(x[8 * k + j]);
        if (x[8 * k + j] < 0.0f) s |= 1u << j;
      }
      // A 7-bit code stores an even number of negatives: with an odd number, the element of least w x^2
      // keeps the wrong sign (it is then coded as -|x|, nearest the smallest level).
      if (ty.signs == Signs::kParity7 && std::popcount(s) % 2) {
        int jmin = 0;
        for (int j = 1; j < 8; ++j) {
          const float* y = x + 8 * k;
          if (w[8 * k + j] * y[j] * y[j] < w[8 * k + jmin] * y[jmin] * y[jmin]) jmin = j;
        }
        xv[8 * k + jmin] = -xv[8 * k + jmin];
        s ^= 1u << jmin;
      }
      c.signs[k] = static_cast<uint8_t>(s);
    }
  }
  const int n_groups = kQK_IQ / ty.group;
  GroupScale scale[16];  // [n_groups]
  float max_scale = 0.0f;
  for (int g = 0; g < n_groups; ++g) {
    scale[g] = fit_group(ty, t, xv + g * ty.group, w + g * ty.group);
    max_scale = std::max(max_scale, scale[g].stored);
  }
  // d puts the largest stored scale at the top code; every group then takes its nearest code, and its
  // units are projected again at that code's scale times fit / stored (the entries as at the least-squares
  // scale, the code's rounding shared by both).
  const float top_code = ty.code_a + ty.code_b * static_cast<float>(ty.n_codes - 1);
  c.d = fp16_to_f32(f32_to_fp16(max_scale / top_code));
  if (!(c.d > 0.0f)) {
    c = BlockCode{};
    return;
  }
  float q[32];
  for (int g = 0; g < n_groups; ++g) {
    const int s = std::clamp(static_cast<int>(std::lround((scale[g].stored / c.d - ty.code_a) / ty.code_b)),
                             0, ty.n_codes - 1);
    c.code[g] = static_cast<uint8_t>(s);
    const float coded = c.d * (ty.code_a + ty.code_b * static_cast<float>(s));
    const float at = scale[g].stored > 0.0f ? coded * scale[g].fit / scale[g].stored : coded;
    const int first = g * ty.group / t.dim;
    const float* xg = xv + g * ty.group;
    const float* wg = w + g * ty.group;
    if (ty.delta == Delta::kPerGroup) {  // the delta again, at the projection scale
      uint16_t idx2[64];
      bool neg2[64];
      const float ep = project_group(ty, t, xg, wg, at, true, first, false, q, c.index, c.neg_delta);
      const float em = project_group(ty, t, xg, wg, at, true, first, true, q, idx2, neg2);
      if (em < ep) {
        std::copy(idx2 + first, idx2 + first + ty.group / t.dim, c.index + first);
        std::fill(c.neg_delta + first, c.neg_delta + first + ty.group / t.dim, true);
      }
    } else {
      project_group(ty, t, xg, wg, at, true, first, false, q, c.index, c.neg_delta);
    }
  }
}

}  // namespace

namespace {

// {grid, group, signs, delta, code_a, code_b, n_codes, lo, hi, n_try}
// clang-format off
//                        grid          group signs            delta             code_a  code_b codes lo    hi  try keep
constexpr GridType kIq2xxs{Grid::kIq2xxs, 32, Signs::kParity7, Delta::kNone,     0.125f, 0.25f, 16, 0.7f, 1.3f, 19, 4};
constexpr GridType kIq2xs {Grid::kIq2xs,  16, Signs::kParity7, Delta::kNone,     0.125f, 0.25f, 16, 0.7f, 1.3f, 19, 4};
constexpr GridType kIq2s  {Grid::kIq2s,   16, Signs::kFull8,   Delta::kNone,     0.125f, 0.25f, 16, 0.7f, 1.3f, 19, 4};
constexpr GridType kIq3xxs{Grid::kIq3xxs, 32, Signs::kParity7, Delta::kNone,     0.25f,  0.5f,  16, 0.8f, 1.2f, 19, 4};
constexpr GridType kIq3s  {Grid::kIq3s,   32, Signs::kFull8,   Delta::kNone,     1.0f,   2.0f,  16, 0.8f, 1.2f, 19, 4};
constexpr GridType kIq1s  {Grid::kIq1s,   32, Signs::kNone,    Delta::kPerGroup, 1.0f,   2.0f,   8, 0.8f, 2.6f, 25, 3};
constexpr GridType kIq1m  {Grid::kIq1s,   16, Signs::kNone,    Delta::kPerUnit,  1.0f,   2.0f,   8, 0.8f, 2.6f, 25, 3};
// clang-format on
static_assert(kIq2xxs.n_keep <= kMaxKeep && kIq2xs.n_keep <= kMaxKeep && kIq2s.n_keep <= kMaxKeep &&
              kIq3xxs.n_keep <= kMaxKeep && kIq3s.n_keep <= kMaxKeep && kIq1s.n_keep <= kMaxKeep &&
              kIq1m.n_keep <= kMaxKeep);

// Codes each 256-element block of src and hands it to pack(code, block i).
template <class Block, class Pack>
void quantize_grid(const GridType& ty, const float* src, void* dst, int64_t n, const float* qw, Pack pack) {
  auto* b = static_cast<Block*>(dst);
  float w[kQK_IQ];  // [256] error weights
  BlockCode c;
  for (int64_t i = 0; i < n / kQK_IQ; ++i) {
    const float* x = src + i * kQK_IQ;
    grid_weights(x, qw ? qw + i * kQK_IQ : nullptr, w);
    code_block(ty, x, w, c);
    std::memset(&b[i], 0, sizeof(Block));
    pack(c, b[i]);
  }
}

}  // namespace

void quantize_iq2_xxs(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ2_XXS>(kIq2xxs, src, dst, n, qw, [](const BlockCode& c, BlockIQ2_XXS& b) {
    b.d = f32_to_fp16(c.d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      uint32_t a = 0, s = static_cast<uint32_t>(c.code[g]) << 28;
      for (int l = 0; l < 4; ++l) {
        a |= static_cast<uint32_t>(c.index[4 * g + l]) << (8 * l);
        s |= static_cast<uint32_t>(c.signs[4 * g + l] & 127) << (7 * l);
      }
      b.qs[4 * g] = static_cast<uint16_t>(a);
      b.qs[4 * g + 1] = static_cast<uint16_t>(a >> 16);
      b.qs[4 * g + 2] = static_cast<uint16_t>(s);
      b.qs[4 * g + 3] = static_cast<uint16_t>(s >> 16);
    }
  });
}

void quantize_iq2_xs(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ2_XS>(kIq2xs, src, dst, n, qw, [](const BlockCode& c, BlockIQ2_XS& b) {
    b.d = f32_to_fp16(c.d);
    for (int k = 0; k < kQK_IQ / 8; ++k)
      b.qs[k] = static_cast<uint16_t>(c.index[k] | (c.signs[k] & 127) << 9);
    for (int g = 0; g < kQK_IQ / 32; ++g)
      b.scales[g] = static_cast<uint8_t>(c.code[2 * g] | c.code[2 * g + 1] << 4);
  });
}

void quantize_iq2_s(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ2_S>(kIq2s, src, dst, n, qw, [](const BlockCode& c, BlockIQ2_S& b) {
    b.d = f32_to_fp16(c.d);
    for (int k = 0; k < kQK_IQ / 8; ++k) {
      b.qs[k] = static_cast<uint8_t>(c.index[k]);
      b.qh[k / 4] = static_cast<uint8_t>(b.qh[k / 4] | (c.index[k] >> 8) << (2 * (k % 4)));
      b.qs[kQK_IQ / 8 + k] = c.signs[k];
    }
    for (int g = 0; g < kQK_IQ / 32; ++g)
      b.scales[g] = static_cast<uint8_t>(c.code[2 * g] | c.code[2 * g + 1] << 4);
  });
}

void quantize_iq3_xxs(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ3_XXS>(kIq3xxs, src, dst, n, qw, [](const BlockCode& c, BlockIQ3_XXS& b) {
    b.d = f32_to_fp16(c.d);
    for (int k = 0; k < kQK_IQ / 4; ++k) b.qs[k] = static_cast<uint8_t>(c.index[k]);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      uint32_t s = static_cast<uint32_t>(c.code[g]) << 28;
      for (int l = 0; l < 4; ++l) s |= static_cast<uint32_t>(c.signs[4 * g + l] & 127) << (7 * l);
      std::memcpy(b.qs + kQK_IQ / 4 + 4 * g, &s, 4);
    }
  });
}

void quantize_iq3_s(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ3_S>(kIq3s, src, dst, n, qw, [](const BlockCode& c, BlockIQ3_S& b) {
    b.d = f32_to_fp16(c.d);
    for (int k = 0; k < kQK_IQ / 4; ++k) {
      b.qs[k] = static_cast<uint8_t>(c.index[k]);
      b.qh[k / 8] = static_cast<uint8_t>(b.qh[k / 8] | (c.index[k] >> 8) << (k % 8));
    }
    std::memcpy(b.signs, c.signs, sizeof(b.signs));
    for (int g = 0; g < kQK_IQ / 64; ++g)
      b.scales[g] = static_cast<uint8_t>(c.code[2 * g] | c.code[2 * g + 1] << 4);
  });
}

void quantize_iq1_s(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ1_S>(kIq1s, src, dst, n, qw, [](const BlockCode& c, BlockIQ1_S& b) {
    b.d = f32_to_fp16(c.d);
    for (int g = 0; g < kQK_IQ / 32; ++g) {
      unsigned h = static_cast<unsigned>(c.code[g]) << 12 | (c.neg_delta[4 * g] ? 0x8000u : 0u);
      for (int l = 0; l < 4; ++l) {
        b.qs[4 * g + l] = static_cast<uint8_t>(c.index[4 * g + l]);
        h |= static_cast<unsigned>(c.index[4 * g + l] >> 8) << (3 * l);
      }
      b.qh[g] = static_cast<uint16_t>(h);
    }
  });
}

void quantize_iq1_m(const float* src, void* dst, int64_t n, const float* qw) {
  quantize_grid<BlockIQ1_M>(kIq1m, src, dst, n, qw, [](const BlockCode& c, BlockIQ1_M& b) {
    const uint16_t d16 = f32_to_fp16(c.d);
    uint16_t w[4];  // the scale words: 4 codes of 3 bits, then a nibble of d
    for (int v = 0; v < 4; ++v) {
      w[v] = static_cast<uint16_t>(((d16 >> (4 * v)) & 0xf) << 12);
      for (int h = 0; h < 4; ++h) w[v] = static_cast<uint16_t>(w[v] | c.code[4 * v + h] << (3 * h));
    }
    std::memcpy(b.scales, w, sizeof(w));
    for (int k = 0; k < kQK_IQ / 8; ++k) {
      b.qs[k] = static_cast<uint8_t>(c.index[k]);
      const unsigned nib = (c.index[k] >> 8) | (c.neg_delta[k] ? 8u : 0u);
      b.qh[k / 2] = static_cast<uint8_t>(b.qh[k / 2] | nib << (4 * (k % 2)));
    }
  });
}

}  // namespace detail
}  // namespace mixtral
