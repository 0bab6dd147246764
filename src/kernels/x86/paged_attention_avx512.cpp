// Paged attention chunk kernel, AVX-512 (see kernels/paged_chunk.h).
#include "kernels/paged_chunk.h"

namespace mixtral::kernels::detail {
PagedChunkFn paged_chunk_avx512() {
  return nullptr;
}
}  // namespace mixtral::kernels::detail
