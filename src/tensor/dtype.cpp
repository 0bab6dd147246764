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
constexpr std::array<Entry, 17> kTable = {{
    {0, {"f32", 1, 4, true}},
    {1, {"f16", 1, 2, true}},
    {2, {"q4_0", 32, 18, true}},
    {3, {"q4_1", 32, 20, true}},
    {6, {"q5_0", 32, 22, true}},
    {7, {"q5_1", 32, 24, true}},
    {8, {"q8_0", 32, 34, true}},
    {9, {"q8_1", 32, 36, false}},
    {10, {"q2_k", 256, 84, true}},
    {11, {"q3_k", 256, 110, true}},
    {12, {"q4_k", 256, 144, true}},
    {13, {"q5_k", 256, 176, true}},
    {14, {"q6_k", 256, 210, true}},
    {15, {"q8_k", 256, 292, true}},
    {30, {"bf16", 1, 2, true}},
    {1000, {"q4_0_g8", 256, 144, true}},
    {1001, {"q8_0_g8", 256, 272, true}},
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
