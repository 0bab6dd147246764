// Paged attention chunk kernel, AVX2 + FMA + F16C (kernels/paged_chunk.h; the body is paged_attention.inc,
// over 8-lane vectors). Compiled with its own -m flags (kernels/CMakeLists.txt) and only called after the
// dispatcher has checked the CPU; helpers stay in an anonymous namespace (see internal.h).
#include "kernels/paged_chunk.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <cmath>

#include "tensor/quant.h"

namespace mixtral::kernels::detail {
namespace {

#define MX_UNROLL _Pragma("GCC unroll 16")

inline float half_to_float(uint16_t h) {
  return _cvtsh_ss(h);
}

// exp(x) to ~1 ulp for x in [-87.3, 88.3] (0 below, -inf included; clamped above): x = k ln2 + r,
// |r| <= ln2/2, degree-7 Taylor polynomial, 2^k built in the exponent field.
inline __m256 exp256(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
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

struct V {
  using F = __m256;
  static constexpr int kW = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load_q8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float hsum(F x) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  static float hmax(F x) {
    const __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
  }
  static float row_max(const float* x, int64_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + kW <= n; i += kW) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float r = hmax(m);
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
  }
  // x[i] = exp(x[i] - mx); returns their sum (8 lanes, the tail padded with -inf whose exp is 0).
  static float exp_sum(float* x, int64_t n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
      _mm256_storeu_ps(x + i, e);
      sum = _mm256_add_ps(sum, e);
    }
    if (i < n) {
      alignas(32) float t[kW];
      for (int j = 0; j < kW; ++j) t[j] = i + j < n ? x[i + j] : -INFINITY;
      const __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(t), vm));
      _mm256_store_ps(t, e);
      sum = _mm256_add_ps(sum, e);
      for (int64_t j = i; j < n; ++j) x[j] = t[j - i];
    }
    return hsum(sum);
  }
};

#include "kernels/x86/paged_attention.inc"

// Rounds half away from zero, as std::round (the fraction is exact, so no x + 0.5 double rounding).
inline __m256 round_half_away(__m256 x) {
  const __m256 t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(x, t));
  const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  const __m256 one = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));  // +-1
  return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

// KvRowStoreFn. F16: vcvtps2ph rounds to nearest even like f32_to_fp16. Q8_0: quantize_row's rule per
// block of 32: d = amax / 127, q = round(x * (1 / d)) (0 for an all-zero block), d stored as fp16.
void kv_row_store(int kind, const float* x, int64_t n, uint8_t* dst) {
  if (kind == kKvF16) {
    uint16_t* h = reinterpret_cast<uint16_t*>(dst);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(
          reinterpret_cast<__m128i*>(h + i),
          _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) h[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return;
  }
  BlockQ8_0* b = reinterpret_cast<BlockQ8_0*>(dst);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i0 = 0; i0 < n; i0 += kQK8_0, ++b) {
    __m256 v[4];
    MX_UNROLL
    for (int u = 0; u < 4; ++u) v[u] = _mm256_loadu_ps(x + i0 + 8 * u);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                   _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    const float d = V::hmax(m) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    b->d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i q[4];
    MX_UNROLL
    for (int u = 0; u < 4; ++u)
      q[u] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[u], _mm256_set1_ps(id))));
    // packs interleave the 128-bit halves: dwords 0 4 1 5 2 6 3 7 back in order.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b->qs),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
}

#undef MX_UNROLL

}  // namespace

PagedChunkFn paged_chunk_avx2() {
  return paged_chunk;
}
KvRowStoreFn kv_row_store_avx2() {
  return kv_row_store;
}

}  // namespace mixtral::kernels::detail

#else

namespace mixtral::kernels::detail {
PagedChunkFn paged_chunk_avx2() {
  return nullptr;
}
KvRowStoreFn kv_row_store_avx2() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail

#endif
