// Per-type scalar (de)quantizers behind dequantize_row/quantize_row (tensor-internal). n is a multiple
// of the type's block size; src/dst hold n / block_size blocks.
#pragma once

#include <cstdint>

namespace mixtral::detail {

void dequantize_q4_1(const void* src, float* dst, int64_t n);
void dequantize_q5_0(const void* src, float* dst, int64_t n);
void dequantize_q5_1(const void* src, float* dst, int64_t n);
void dequantize_q2_k(const void* src, float* dst, int64_t n);
void dequantize_q3_k(const void* src, float* dst, int64_t n);
void dequantize_q4_k(const void* src, float* dst, int64_t n);
void dequantize_q5_k(const void* src, float* dst, int64_t n);
void dequantize_q6_k(const void* src, float* dst, int64_t n);
void dequantize_q8_k(const void* src, float* dst, int64_t n);

void quantize_q4_1(const float* src, void* dst, int64_t n);
void quantize_q5_0(const float* src, void* dst, int64_t n);
void quantize_q5_1(const float* src, void* dst, int64_t n);
void quantize_q2_k(const float* src, void* dst, int64_t n);
void quantize_q3_k(const float* src, void* dst, int64_t n);
void quantize_q4_k(const float* src, void* dst, int64_t n);
void quantize_q5_k(const float* src, void* dst, int64_t n);
void quantize_q6_k(const float* src, void* dst, int64_t n);
void quantize_q8_k(const float* src, void* dst, int64_t n);

// The K-quants weighing each element's rounding error by an importance matrix (`mixtral imatrix`): qw [n]
// the mean squared activation of each element's column (the row's own slice of imatrix_weights), or null
// (the same as the calls above).
void quantize_q2_k(const float* src, void* dst, int64_t n, const float* qw);
void quantize_q3_k(const float* src, void* dst, int64_t n, const float* qw);
void quantize_q4_k(const float* src, void* dst, int64_t n, const float* qw);
void quantize_q5_k(const float* src, void* dst, int64_t n, const float* qw);
void quantize_q6_k(const float* src, void* dst, int64_t n, const float* qw);

}  // namespace mixtral::detail
