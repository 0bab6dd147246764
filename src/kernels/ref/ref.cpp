// Scalar references: straightforward single-threaded loops, the oracle every fast path is tested against.
// They implement exactly the documented semantics (kernels.h), including the Q8_0 rounding of the
// activations for quantized weights, so fast-vs-ref differences come from summation order alone.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels::ref {
namespace {

// Integer dot of one Q8_0 weight block with one Q8_0 activation block.
int32_t dot_block(const BlockQ8_0& w, const BlockQ8_0& x) {
  int32_t s = 0;
  for (int j = 0; j < kQK8_0; ++j) s += static_cast<int32_t>(w.qs[j]) * static_cast<int32_t>(x.qs[j]);
  return s;
}

// Integer dot of one Q4_0 weight block ((nibble - 8) values) with one Q8_0 activation block.
int32_t dot_block(const BlockQ4_0& w, const BlockQ8_0& x) {
  int32_t s = 0;
  for (int j = 0; j < kQK4_0 / 2; ++j) {
    s += ((w.qs[j] & 0x0f) - 8) * static_cast<int32_t>(x.qs[j]);
    s += ((w.qs[j] >> 4) - 8) * static_cast<int32_t>(x.qs[j + kQK4_0 / 2]);
  }
  return s;
}

template <class WBlock>
void matmul_quant(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy) {
  const int64_t rows = w.rows(), cols = w.cols(), nb = cols / kQK8_0;
  std::vector<BlockQ8_0> xq(static_cast<size_t>(n * nb));  // [n, nb]
  for (int64_t t = 0; t < n; ++t) quantize_row(DType::Q8_0, x + t * cols, xq.data() + t * nb, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* wb = reinterpret_cast<const WBlock*>(w.row(r));
    for (int64_t t = 0; t < n; ++t) {
      const BlockQ8_0* xb = xq.data() + t * nb;
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const float scale = fp16_to_f32(wb[b].d) * fp16_to_f32(xb[b].d);
        acc += static_cast<float>(dot_block(wb[b], xb[b])) * scale;
      }
      y[t * ldy + r] = acc;
    }
  }
}

void matmul_float(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy) {
  const int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> wr(static_cast<size_t>(cols));  // [cols] one weight row widened to f32
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(w.dtype, w.row(r), wr.data(), cols);
    for (int64_t t = 0; t < n; ++t) {
      float acc = 0.0f;
      for (int64_t c = 0; c < cols; ++c) acc += wr[c] * x[t * cols + c];
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace

void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy) {
  MX_CHECK(ldy >= w.rows(), "ref::matmul: ldy %lld < rows %lld", static_cast<long long>(ldy),
           static_cast<long long>(w.rows()));
  switch (w.dtype) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
      return matmul_float(w, x, n, y, ldy);
    case DType::Q8_0:
      return matmul_quant<BlockQ8_0>(w, x, n, y, ldy);
    case DType::Q4_0:
      return matmul_quant<BlockQ4_0>(w, x, n, y, ldy);
    case DType::Q4_0_G8:
    case DType::Q8_0_G8:
    case DType::Q4_0_R16:
    case DType::Q8_0_R16:
    case DType::Q4_K_R16:
    case DType::Q6_K_R16: {  // the file type's values in another order: back to it, then as it
      std::vector<uint8_t> bytes(w.nbytes());  // [rows, row_stride]
      const DType file = file_layout(w.dtype);
      repack(w.dtype, file, w.data, bytes.data(), w.rows(), w.cols());
      TensorView v = w;
      v.dtype = file;
      v.data = bytes.data();
      return matmul(v, x, n, y, ldy);
    }
    default:
      // Every other supported type (Q4_1, Q5_0, Q5_1, the K-quants): the decoded weight rows times the
      // f32 activations. The fast K-quant paths round the activations to Q8_K; their tests bound that.
      MX_CHECK(traits(w.dtype).supported, "ref::matmul: unsupported weight dtype %s",
               std::string(dtype_name(w.dtype)).c_str());
      return matmul_float(w, x, n, y, ldy);
  }
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) out[t * dim + i] = x[t * dim + i] * inv * w[i];
  }
}

void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p) {
  const int64_t hd = p.head_dim, half = hd / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < p.n_heads; ++h) {
      float* v = x + (t * p.n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const double freq = std::pow(static_cast<double>(p.theta), -2.0 * static_cast<double>(i) / hd);
        const double angle = static_cast<double>(pos[t]) * freq;
        const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
        const int64_t i0 = p.layout == RopeLayout::kInterleaved ? 2 * i : i;
        const int64_t i1 = p.layout == RopeLayout::kInterleaved ? 2 * i + 1 : i + half;
        const float a = v[i0], b = v[i1];
        v[i0] = a * c - b * s;
        v[i1] = a * s + b * c;
      }
    }
  }
}

void silu_mul(float* x, const float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i])) * g[i];
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;  // a double sum keeps the oracle's own rounding out of the comparison
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] / sum);
}

}  // namespace mixtral::kernels::ref
