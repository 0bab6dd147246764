// Large anonymous buffers backed by transparent huge pages where the kernel allows them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

namespace mixtral {

// n bytes (n > 0), 2 MiB-aligned and advised for transparent huge pages: one page fault and one TLB
// entry per 2 MiB instead of per 4 KiB, for weights and benchmark buffers streamed whole. The pages are
// faulted in (zeroed) on first touch. nullptr when the memory cannot be had.
std::shared_ptr<uint8_t> alloc_huge_pages(size_t n);

// The memory the kernel could hand out now without swapping (MemAvailable in /proc/meminfo: free
// memory plus reclaimable page cache); nullopt where the kernel does not say.
std::optional<size_t> available_memory();

}  // namespace mixtral
