// Test-only: lets src/kernels/avx512/avx512.cpp compile for CPUs without AVX-512 (CI, most dev boxes),
// with SIMDe (libsimde-dev) emulating the intrinsics on AVX2. Included instead of <immintrin.h> when
// MX_KERNELS_AVX512_SIMDE is defined (tests/kernels/CMakeLists.txt, target kernels_avx512_emulated_test).
// SIMDe 0.7.4 lacks a few intrinsics the kernels use and gets _mm512_roundscale_ps wrong (it returns
// its input for truncation); those are defined here with plain per-lane loops. Masked loads and stores
// touch only the selected lanes, like the hardware.
#pragma once

#include <cmath>
#include <cstdint>

#include "tensor/quant.h"

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

namespace mx_simde_shim {

inline simde__m512 mm512_maskz_loadu_ps(simde__mmask16 m, const void* p) {
  float t[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((m >> i) & 1) t[i] = static_cast<const float*>(p)[i];
  return simde_mm512_loadu_ps(t);
}
inline simde__m256 mm256_maskz_loadu_ps(simde__mmask8 m, const void* p) {
  float t[8] = {};
  for (int i = 0; i < 8; ++i)
    if ((m >> i) & 1) t[i] = static_cast<const float*>(p)[i];
  return simde_mm256_loadu_ps(t);
}
inline simde__m256i mm256_maskz_loadu_epi16(simde__mmask16 m, const void* p) {
  uint16_t t[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((m >> i) & 1) t[i] = static_cast<const uint16_t*>(p)[i];
  return simde_mm256_loadu_si256(t);
}
inline simde__m512i mm512_maskz_loadu_epi32(simde__mmask16 m, const void* p) {
  int32_t t[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((m >> i) & 1) t[i] = static_cast<const int32_t*>(p)[i];
  return simde_mm512_loadu_si512(t);
}
inline simde__m512 mm512_cvtepi32_ps(simde__m512i v) {
  int32_t t[16];
  float f[16];
  simde_mm512_storeu_si512(t, v);
  for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(t[i]);
  return simde_mm512_loadu_ps(f);
}
inline int32_t mm512_reduce_add_epi32(simde__m512i v) {
  int32_t t[16];
  simde_mm512_storeu_si512(t, v);
  int32_t s = 0;
  for (int i = 0; i < 16; ++i) s += t[i];
  return s;
}
inline void mm512_mask_storeu_ps(void* p, simde__mmask16 m, simde__m512 v) {
  float t[16];
  simde_mm512_storeu_ps(t, v);
  for (int i = 0; i < 16; ++i)
    if ((m >> i) & 1) static_cast<float*>(p)[i] = t[i];
}
inline simde__m512 mm512_cvtph_ps(simde__m256i h) {
  uint16_t t[16];
  float f[16];
  simde_mm256_storeu_si256(t, h);
  for (int i = 0; i < 16; ++i) f[i] = mixtral::fp16_to_f32(t[i]);
  return simde_mm512_loadu_ps(f);
}
inline simde__m512i mm512_cvtepu16_epi32(simde__m256i h) {
  uint16_t t[16];
  int32_t f[16];
  simde_mm256_storeu_si256(t, h);
  for (int i = 0; i < 16; ++i) f[i] = t[i];
  return simde_mm512_loadu_si512(f);
}
inline simde__m128i mm512_cvtepi32_epi8(simde__m512i v) {
  int32_t t[16];
  int8_t f[16];
  simde_mm512_storeu_si512(t, v);
  for (int i = 0; i < 16; ++i) f[i] = static_cast<int8_t>(t[i]);
  return simde_mm_loadu_si128(f);
}
inline simde__m128i mm256_cvtepi32_epi16(simde__m256i v) {
  int32_t t[8];
  int16_t f[8];
  simde_mm256_storeu_si256(t, v);
  for (int i = 0; i < 8; ++i) f[i] = static_cast<int16_t>(t[i]);
  return simde_mm_loadu_si128(f);
}
inline simde__m512i mm512_cvttps_epi32(simde__m512 v) {
  float t[16];
  int32_t f[16];
  simde_mm512_storeu_ps(t, v);
  for (int i = 0; i < 16; ++i) f[i] = static_cast<int32_t>(t[i]);
  return simde_mm512_loadu_si512(f);
}
inline simde__m512 mm512_roundscale_ps(simde__m512 v, int imm) {  // modes used: truncate, nearest
  float t[16];
  simde_mm512_storeu_ps(t, v);
  for (int i = 0; i < 16; ++i) t[i] = (imm & 3) == 3 ? std::trunc(t[i]) : std::nearbyint(t[i]);
  return simde_mm512_loadu_ps(t);
}
inline simde__m512 mm512_shuffle_f32x4(simde__m512 a, simde__m512 b, int imm) {
  float ta[16], tb[16], r[16];
  simde_mm512_storeu_ps(ta, a);
  simde_mm512_storeu_ps(tb, b);
  for (int q = 0; q < 4; ++q) {
    const float* src = q < 2 ? ta : tb;
    const int sel = (imm >> (2 * q)) & 3;
    for (int i = 0; i < 4; ++i) r[4 * q + i] = src[4 * sel + i];
  }
  return simde_mm512_loadu_ps(r);
}

inline simde__m512i mm512_srai_epi32(simde__m512i v, int imm) {
  int32_t t[16];
  simde_mm512_storeu_si512(t, v);
  for (int i = 0; i < 16; ++i) t[i] >>= imm;  // arithmetic: C++20 defines >> on negative values so
  return simde_mm512_loadu_si512(t);
}

}  // namespace mx_simde_shim

#define _mm512_maskz_loadu_ps mx_simde_shim::mm512_maskz_loadu_ps
#define _mm256_maskz_loadu_ps mx_simde_shim::mm256_maskz_loadu_ps
#define _mm256_maskz_loadu_epi16 mx_simde_shim::mm256_maskz_loadu_epi16
#define _mm512_maskz_loadu_epi32 mx_simde_shim::mm512_maskz_loadu_epi32
#define _mm512_cvtepi32_ps mx_simde_shim::mm512_cvtepi32_ps
#define _mm512_reduce_add_epi32 mx_simde_shim::mm512_reduce_add_epi32
#define _mm512_mask_storeu_ps mx_simde_shim::mm512_mask_storeu_ps
#define _mm512_cvtph_ps mx_simde_shim::mm512_cvtph_ps
#define _mm512_cvtepu16_epi32 mx_simde_shim::mm512_cvtepu16_epi32
#define _mm512_cvtepi32_epi8 mx_simde_shim::mm512_cvtepi32_epi8
#define _mm256_cvtepi32_epi16 mx_simde_shim::mm256_cvtepi32_epi16
#define _mm512_cvttps_epi32 mx_simde_shim::mm512_cvttps_epi32
#undef _mm512_srai_epi32
#define _mm512_srai_epi32 mx_simde_shim::mm512_srai_epi32
#undef _mm512_roundscale_ps
#define _mm512_roundscale_ps mx_simde_shim::mm512_roundscale_ps
#undef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4 mx_simde_shim::mm512_shuffle_f32x4
