#include "core/huge_pages.h"

#include <sys/mman.h>

#include <cstdio>
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

std::optional<size_t> available_memory() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return std::nullopt;
  char line[256];
  std::optional<size_t> kib;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long long v = 0;
    if (std::sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
      kib = static_cast<size_t>(v);
      break;
    }
  }
  std::fclose(f);
  if (!kib) return std::nullopt;
  return *kib * 1024;
}

}  // namespace mixtral
