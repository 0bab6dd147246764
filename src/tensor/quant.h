// Block layouts (bit-compatible with GGUF) and the scalar reference (de)quantizers.
#pragma once

#include <cstdint>
#include <cstring>

#include "tensor/dtype.h"

namespace mixtral {

// IEEE half <-> float, exact in both directions (round-to-nearest-even on the way down).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);

// bfloat16 is the top half of an f32; rounding to nearest even, NaN kept quiet.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

constexpr int kQK8_0 = 32;
constexpr int kQK4_0 = 32;

// Q8_0: x[i] = d * qs[i]
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q4_0: x[i] = d * ((nibble) - 8); low nibbles hold elements 0..15, high nibbles 16..31.
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// Scalar reference: n elements of row `src` (encoded as t) to floats. n is a multiple of the block size.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Scalar reference: floats to the encoding of t (F32, F16, BF16, Q8_0, Q4_0), GGML's rounding rules.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace mixtral
