// Element types. Numeric values are GGML's type ids, so GGUF files map directly; ids from kFirstInternal
// on are this engine's own in-memory layouts (weights repacked at load for the kernels), which no file
// holds: the GGUF reader and writer refuse them and names do not parse to them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace mixtral {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  IQ1_M = 29,
  BF16 = 30,
  // Internal: Q4_0 repacked in groups of 8 blocks (BlockQ4_0G8, tensor/quant.h).
  Q4_0_G8 = 1000,
  // Internal: Q8_0 repacked in groups of 8 blocks (BlockQ8_0G8).
  Q8_0_G8 = 1001,
  // Internal: Q4_0 / Q8_0 with 16 rows interleaved block by block (BlockQ4_0R16, BlockQ8_0R16).
  Q4_0_R16 = 1002,
  Q8_0_R16 = 1003,
  // Internal: Q4_K / Q6_K with 16 rows interleaved super-block by super-block (BlockQ4_KR16,
  // BlockQ6_KR16).
  Q4_K_R16 = 1004,
  Q6_K_R16 = 1005,
};
constexpr uint32_t kFirstInternal = 1000;
inline bool is_internal(DType t) {
  return static_cast<uint32_t>(t) >= kFirstInternal;
}

struct DTypeTraits {
  std::string_view name;  // "f32", "q8_0", ...
  int64_t block_size;     // elements per block (1 for plain floats)
  size_t block_bytes;     // bytes per block
  bool supported;         // this build can load and compute with it
  bool quantizable;       // quantize_row can write it
};

// Bits per weight of type t: 8 * block_bytes / block_size (4.5 for q4_0, 2.0625 for iq2_xxs).
double bits_per_weight(DType t);

// Traits of a known GGML type id; nullopt for ids this build has never heard of (and internal ids).
std::optional<DTypeTraits> dtype_traits(uint32_t ggml_type);
const DTypeTraits& traits(DType t);
std::string_view dtype_name(DType t);
// "f32", "q4_0", ... (case-insensitive); file types only.
std::optional<DType> dtype_from_name(std::string_view name);

// Bytes taken by n elements of type t; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  const auto& tr = traits(t);
  return static_cast<size_t>(n / tr.block_size) * tr.block_bytes;
}

}  // namespace mixtral
