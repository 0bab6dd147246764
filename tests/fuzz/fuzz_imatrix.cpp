// libFuzzer target: parse_imatrix (GGUF imatrix or legacy .dat), then every entry and its weights.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fuzz_check.h"
#include "io/imatrix.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mixtral;
  const std::string name = "fuzz.imatrix";
  auto r = parse_imatrix(data, size, name);
  if (!r.ok()) {
    fuzz::check_error(r.error(), name);
    return 0;
  }
  fuzz::require(!r->entries.empty(), "an imatrix without entries");
  fuzz::require(r->chunk_count >= 0 && r->chunk_size >= 0, "negative chunk count or size");
  for (const auto& [key, e] : r->entries) {
    fuzz::require(!key.empty(), "an entry without a name");
    fuzz::require(!e.sums.empty() && !e.counts.empty(), "an empty entry");
    fuzz::require(r->legacy ? e.counts.size() == 1 : e.sums.size() % e.counts.size() == 0,
                  "sums do not split into the counts' matrices");
    for (int64_t c : e.counts) fuzz::require(c >= 0, "negative count");
    const std::vector<float> w = imatrix_weights(*r, e);
    fuzz::require(w.size() == e.sums.size(), "weights of another size");
    for (float v : w) fuzz::require(std::isfinite(v) && v >= 0, "a weight that is not finite and >= 0");
  }
  return 0;
}
