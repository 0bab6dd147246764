// libFuzzer target: SafetensorsFile::parse, then every tensor view and the metadata.
#include <cstddef>
#include <cstdint>

#include "fuzz_check.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mixtral;
  const std::string name = "fuzz.safetensors";
  auto r = SafetensorsFile::parse(data, size, name);
  if (!r.ok()) {
    fuzz::check_error(r.error(), name);
    return 0;
  }
  uint8_t sink = 0;
  const uint8_t* prev_end = nullptr;
  for (const auto& t : r->tensors()) {
    fuzz::require(r->find(t.name) == &t, "find disagrees with tensors()");
    fuzz::require(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "dtype");
    const auto* p = static_cast<const uint8_t*>(t.data);
    fuzz::require(
        t.nbytes > 0 && p >= data && t.nbytes <= size && p - data <= static_cast<ptrdiff_t>(size - t.nbytes),
        "tensor data outside the input");
    fuzz::require(prev_end == nullptr || p >= prev_end, "tensors overlap or are out of file order");
    prev_end = p + t.nbytes;
    const TensorView v = t.view();
    fuzz::require(v.nbytes() == t.nbytes, "view size disagrees with nbytes");
    sink ^= p[0] ^ p[t.nbytes - 1];
  }
  for (const auto& [k, v] : r->metadata()) sink ^= static_cast<uint8_t>(k.size() + v.size());
  volatile uint8_t keep = sink;
  (void)keep;
  return 0;
}
