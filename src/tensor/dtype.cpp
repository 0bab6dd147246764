#include "tensor/dtype.h"

#include <array>
#include <cctype>
#include <string>

#include "core/check.h"

namespace mixtral {
namespace {

struct Entry {
  uint32_t id;
  DTypeTraits traits;
};

// Block layouts as in GGML (sizes in bytes per block).
constexpr std::array<Entry, 30> kTable = {{
    {0, {"f32", 1, 4, true, true}},
    {1, {"f16", 1, 2, true, true}},
    {2, {"q4_0", 32, 18, true, true}},
    {3, {"q4_1", 32, 20, true, true}},
    {6, {"q5_0", 32, 22, true, true}},
    {7, {"q5_1", 32, 24, true, true}},
    {8, {"q8_0", 32, 34, true, true}},
    {9, {"q8_1", 32, 36, false, false}},
    {10, {"q2_k", 256, 84, true, true}},
    {11, {"q3_k", 256, 110, true, true}},
    {12, {"q4_k", 256, 144, true, true}},
    {13, {"q5_k", 256, 176, true, true}},
    {14, {"q6_k", 256, 210, true, true}},
    {15, {"q8_k", 256, 292, true, true}},
    {16, {"iq2_xxs", 256, 66, true, true}},
    {17, {"iq2_xs", 256, 74, true, true}},
    {18, {"iq3_xxs", 256, 98, true, true}},
    {19, {"iq1_s", 256, 50, true, true}},
    {20, {"iq4_nl", 32, 18, true, true}},
    {21, {"iq3_s", 256, 110, true, true}},
    {22, {"iq2_s", 256, 82, true, true}},
    {23, {"iq4_xs", 256, 136, true, true}},
    {29, {"iq1_m", 256, 56, true, true}},
    {30, {"bf16", 1, 2, true, true}},
    {1000, {"q4_0_g8", 256, 144, true, true}},
    {1001, {"q8_0_g8", 256, 272, true, true}},
    {1002, {"q4_0_r16", 32, 18, true, false}},  // sizes per row; 16 rows interleave (tensor/quant.h)
    {1003, {"q8_0_r16", 32, 34, true, false}},
    {1004, {"q4_k_r16", 256, 144, true, false}},
    {1005, {"q6_k_r16", 256, 210, true, false}},
}};

}  // namespace

std::optional<DTypeTraits> dtype_traits(uint32_t ggml_type) {
  if (ggml_type >= kFirstInternal) return std::nullopt;
  for (const auto& e : kTable)
    if (e.id == ggml_type) return e.traits;
  return std::nullopt;
}

const DTypeTraits& traits(DType t) {
  for (const auto& e : kTable)
    if (e.id == static_cast<uint32_t>(t)) return e.traits;
  MX_CHECK(false, "unknown dtype id %u", static_cast<unsigned>(t));
}

double bits_per_weight(DType t) {
  const DTypeTraits& tr = traits(t);
  return 8.0 * static_cast<double>(tr.block_bytes) / static_cast<double>(tr.block_size);
}

std::string_view dtype_name(DType t) {
  return traits(t).name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string lower(name);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const auto& e : kTable)
    if (e.traits.name == lower && e.id < kFirstInternal) return static_cast<DType>(e.id);
  return std::nullopt;
}

}  // namespace mixtral
