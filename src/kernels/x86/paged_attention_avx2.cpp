// Paged attention chunk kernel, AVX2 + FMA + F16C (see kernels/paged_chunk.h).
#include "kernels/paged_chunk.h"

namespace mixtral::kernels::detail {
PagedChunkFn paged_chunk_avx2() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail
