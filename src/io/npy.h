// NumPy .npy writer (format 1.0): "\x93NUMPY", version, a little-endian u16 header length, a
// Python dict literal header padded to 64 bytes, then the raw C-order data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"

namespace mixtral {

// Writes a float32 array of the given shape (row-major).
Status write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace mixtral
