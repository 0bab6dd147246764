// Non-owning views of tensors. Shapes are row-major, outermost dimension first:
// a weight matrix is [rows = out_features, cols = in_features], each row stored contiguously
// in its dtype's encoding (the same bytes as GGUF's ne = {cols, rows}).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/check.h"
#include "mixtral/config.h"  // RopeLayout
#include "tensor/dtype.h"

namespace mixtral {

struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, 4> shape{1, 1, 1, 1};  // shape[0] outermost

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t cols() const { return ndim == 0 ? 1 : shape[ndim - 1]; }
  int64_t rows() const { return numel() / cols(); }
  size_t row_stride() const { return row_bytes(dtype, cols()); }
  size_t nbytes() const { return row_stride() * static_cast<size_t>(rows()); }
  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_stride();
  }
  // The i-th slice along the outermost dimension (e.g. one expert of a [E, rows, cols] tensor).
  TensorView slice(int64_t i) const {
    MX_CHECK(ndim >= 2 && i >= 0 && i < shape[0], "slice %lld of a %d-d tensor", static_cast<long long>(i),
             ndim);
    TensorView v;
    v.dtype = dtype;
    v.ndim = ndim - 1;
    for (int d = 1; d < ndim; ++d) v.shape[d - 1] = shape[d];
    v.data = static_cast<const uint8_t*>(data) + static_cast<size_t>(i) * v.nbytes();
    return v;
  }
};

std::string shape_string(const TensorView& t);  // "[4096, 14336]"

}  // namespace mixtral
