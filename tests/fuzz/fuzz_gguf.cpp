// libFuzzer target: GgufFile::parse, then every typed getter on every key and every tensor view.
#include <cstddef>
#include <cstdint>

#include "fuzz_check.h"
#include "io/gguf.h"

namespace mixtral {
namespace {

const std::string kName = "fuzz.gguf";

// Calls a getter; a present value is read through, an error must be well formed.
template <class R, class Touch>
void probe(const R& r, Touch touch) {
  if (!r.ok()) {
    fuzz::check_error(r.error(), kName);
    return;
  }
  fuzz::require(r.value().has_value(), "getter on a present key returned nullopt");
  touch(*r.value());
}

void walk_metadata(const GgufFile& g) {
  size_t sink = 0;
  for (const auto& [key, value] : g.metadata()) {
    probe(g.get_int(key), [&](int64_t v) { sink += static_cast<size_t>(v); });
    probe(g.get_float(key), [&](double v) { sink += v != v; });
    probe(g.get_bool(key), [&](bool v) { sink += v; });
    probe(g.get_string(key), [&](const std::string& s) { sink += s.size(); });
    probe(g.get_string_array(key), [&](const auto& v) { sink += v.size(); });
    probe(g.get_float_array(key), [&](const auto& v) { sink += v.size(); });
    probe(g.get_int_array(key), [&](const auto& v) { sink += v.size(); });
    fuzz::require(value.type != GgufType::kArray || value.array_type != GgufType::kArray,
                  "nested array kept");
  }
  fuzz::require(!g.get_int("fuzz.absent.key").value().has_value(), "absent key found");
  volatile size_t keep = sink;
  (void)keep;
}

void walk_tensors(const GgufFile& g, const uint8_t* data, size_t size) {
  uint8_t sink = 0;
  for (const auto& t : g.tensors()) {
    fuzz::require(g.find_tensor(t.name) == &t, "find_tensor disagrees with tensors()");
    const auto* p = static_cast<const uint8_t*>(t.data);
    fuzz::require(t.nbytes > 0, "empty tensor accepted");
    fuzz::require(p >= data && t.nbytes <= size && p - data <= static_cast<ptrdiff_t>(size - t.nbytes),
                  "tensor data outside the input");
    fuzz::require(t.offset % g.alignment() == 0, "unaligned offset accepted");
    const TensorView v = t.view();
    fuzz::require(v.ndim == static_cast<int>(t.ne.size()) && v.ndim <= 4, "view rank");
    fuzz::require(v.nbytes() == t.nbytes, "view size disagrees with nbytes");
    sink ^= p[0] ^ p[t.nbytes - 1];  // ASan checks both ends are inside the input
    if (v.ndim >= 2) {
      const TensorView last = v.slice(v.shape[0] - 1);
      const auto* q = static_cast<const uint8_t*>(last.data);
      sink ^= q[last.nbytes() - 1];
    }
  }
  volatile uint8_t keep = sink;
  (void)keep;
}

}  // namespace
}  // namespace mixtral

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mixtral;
  auto r = GgufFile::parse(data, size, kName);
  if (!r.ok()) {
    fuzz::check_error(r.error(), kName);
    return 0;
  }
  fuzz::require(r->version() == 2 || r->version() == 3, "version");
  walk_metadata(*r);
  walk_tensors(*r, data, size);
  return 0;
}
