// Paged attention chunk kernel, AVX-512 (F + BW + VL + DQ, with FMA and F16C; kernels/paged_chunk.h; the
// body is paged_attention.inc, over 16-lane vectors). Compiled with its own -m flags
// (kernels/CMakeLists.txt) and only called after the dispatcher has checked the CPU; helpers stay in an
// anonymous namespace (see internal.h).
#include "kernels/paged_chunk.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)

// GCC 12's AVX-512 intrinsics seed unused lanes with _mm512_undefined_ps() (__Y = __Y), which its own
// -Wmaybe-uninitialized flags once inlined; a false positive, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cmath>

#include "tensor/quant.h"

namespace mixtral::kernels::detail {
namespace {

#define MX_UNROLL _Pragma("GCC unroll 16")

inline float half_to_float(uint16_t h) {
  return _cvtsh_ss(h);
}

// exp(x) to ~1 ulp: x = k ln2 + r with |r| <= ln2/2, degree-7 Taylor polynomial, scalef by 2^k (which
// also gives 0 and inf at the ends of the range).
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

struct V {
  using F = __m512;
  static constexpr int kW = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load_q8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static float hsum(F x) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  static float hmax(F x) {
    const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
    const __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
  }
  static float row_max(const float* x, int64_t n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + kW <= n; i += kW) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(n - i), x + i));
    return hmax(m);
  }
  // x[i] = exp(x[i] - mx); returns their sum (16 lanes; the tail's missing lanes add nothing).
  static float exp_sum(float* x, int64_t n, float mx) {
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
      _mm512_storeu_ps(x + i, e);
      sum = _mm512_add_ps(sum, e);
    }
    if (i < n) {
      const __mmask16 m = tail(n - i);
      const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
      _mm512_mask_storeu_ps(x + i, m, e);
      sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    return hsum(sum);
  }
  static __mmask16 tail(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
};

#include "kernels/x86/paged_attention.inc"

#undef MX_UNROLL

}  // namespace

PagedChunkFn paged_chunk_avx512() {
  return paged_chunk;
}

}  // namespace mixtral::kernels::detail

#else

namespace mixtral::kernels::detail {
PagedChunkFn paged_chunk_avx512() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail

#endif
