#include "core/huge_pages.h"

#include <sys/mman.h>

#include <cstdlib>

namespace mixtral {

std::shared_ptr<uint8_t> alloc_huge_pages(size_t n) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (n == 0 || n > SIZE_MAX - kHuge) return nullptr;
  const size_t bytes = (n + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, bytes);
  if (p == nullptr) return nullptr;
  ::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
}

}  // namespace mixtral
