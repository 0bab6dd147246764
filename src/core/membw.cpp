#include "core/membw.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/huge_pages.h"

namespace mixtral {

uint64_t read_streams(const uint64_t* p, size_t n, int streams, bool prefetch) {
  const size_t s = static_cast<size_t>(std::max(streams, 1));
  const size_t part = n / s / 8 * 8;           // words per stream, whole cache lines
  uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 independent chains keep loads in flight
  for (size_t i = 0; i < part; i += 8)
    for (size_t k = 0; k < s; ++k) {
      const uint64_t* q = p + k * part + i;
      if (prefetch) __builtin_prefetch(q + 192);  // 1.5 KiB ahead
      for (int l = 0; l < 8; ++l) acc[l] ^= q[l];
    }
  for (size_t i = s * part; i < n; ++i) acc[0] ^= p[i];
  uint64_t r = 0;
  for (uint64_t a : acc) r ^= a;
  return r;
}

double measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  // [n] on huge pages where the kernel allows: the weights are read through a file mapping that often is
  // (page-cache huge pages) or from repacked buffers that are (alloc_huge_pages), and 4 KiB pages would
  // cost the probe TLB misses the decode does not pay.
  const std::shared_ptr<uint8_t> mem = alloc_huge_pages(n * sizeof(uint64_t));
  if (!mem) return 0.0;
  auto* buf = reinterpret_cast<uint64_t*>(mem.get());
  pool.run([&](int ith, int nth) {  // first touch by the threads that read it
    const size_t b = n * static_cast<size_t>(ith) / static_cast<size_t>(nth);
    const size_t e = n * static_cast<size_t>(ith + 1) / static_cast<size_t>(nth);
    for (size_t i = b; i < e; ++i) buf[i] = i;
  });
  // Several access patterns, the best pass counting: a roofline below what a kernel reaches is no
  // roofline. Each thread reads its part of the buffer as S interleaved sequential streams, with and
  // without software prefetch (what the decode kernels do). S = 3 and 6 matter: measured on an AMD EPYC
  // VM (1 thread), streams a power-of-two fraction of the buffer apart (S = 2, 4) read at 16-24 GB/s,
  // S = 3 or 6 at 28-31 GB/s and one stream at 20-23 GB/s; the spacing, not the load width (8, 16 or
  // 32 bytes alike), sets the rate, presumably through the DRAM channel and bank interleave.
  struct Pattern {
    int streams;
    bool prefetch;
  };
  constexpr Pattern kPatterns[] = {{1, false}, {1, true}, {3, false}, {3, true}, {6, true}};
  double best = 0.0;
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()));
  auto pass = [&](const Pattern& pat, int ith, int nth) {
    const size_t b = n * static_cast<size_t>(ith) / static_cast<size_t>(nth);
    const size_t e = n * static_cast<size_t>(ith + 1) / static_cast<size_t>(nth);
    sink[static_cast<size_t>(ith)] = read_streams(buf + b, e - b, pat.streams, pat.prefetch);
  };
  for (int r = 0; r < reps; ++r) {
    for (const Pattern& pat : kPatterns) {
      const auto t0 = std::chrono::steady_clock::now();
      pool.run([&](int ith, int nth) { pass(pat, ith, nth); });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s);
    }
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep ^ v;
  (void)keep;
  return best;
}

double measure_regions_bandwidth(ThreadPool& pool, const std::vector<ReadRegion>& regions, int reps) {
  struct Words {
    const uint64_t* p;
    size_t n;
  };
  std::vector<Words> words;  // [regions] each region's whole 8-byte words (a few edge bytes unread)
  double total = 0;          // bytes one pass reads
  for (const ReadRegion& r : regions) {
    const auto b = reinterpret_cast<uintptr_t>(r.data);
    const uintptr_t first = (b + 7) / 8 * 8;
    if (r.data == nullptr || r.bytes < 8 + (first - b)) continue;
    const size_t n = (r.bytes - (first - b)) / 8;
    words.push_back({reinterpret_cast<const uint64_t*>(first), n});
    total += static_cast<double>(n * 8);
  }
  if (words.empty()) return 0.0;
  struct Pattern {
    bool whole;  // whole regions dealt out to the threads (else every region split over them)
    int streams;
    bool prefetch;
  };
  constexpr Pattern kPatterns[] = {{false, 1, false}, {false, 1, true}, {false, 3, false}, {false, 3, true},
                                   {false, 6, true},  {true, 1, false}, {true, 1, true},   {true, 3, false},
                                   {true, 3, true},   {true, 6, true}};
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()), 0);
  double best = 0.0;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    for (const Pattern& pat : kPatterns) {
      const auto t0 = std::chrono::steady_clock::now();
      pool.run([&](int ith, int nth) {
        uint64_t acc = 0;
        for (size_t i = 0; i < words.size(); ++i) {
          const Words& w = words[i];
          if (pat.whole) {
            if (i % static_cast<size_t>(nth) == static_cast<size_t>(ith))
              acc ^= read_streams(w.p, w.n, pat.streams, pat.prefetch);
          } else {
            const size_t b = w.n * static_cast<size_t>(ith) / static_cast<size_t>(nth);
            const size_t e = w.n * static_cast<size_t>(ith + 1) / static_cast<size_t>(nth);
            acc ^= read_streams(w.p + b, e - b, pat.streams, pat.prefetch);
          }
        }
        sink[static_cast<size_t>(ith)] ^= acc;
      });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s > 0) best = std::max(best, total / s);
    }
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep ^ v;
  (void)keep;
  return best;
}

double measure_read_bandwidth_isolated(int threads) {
  int fds[2];
  if (pipe(fds) != 0) return 0.0;
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return 0.0;
  }
  if (pid == 0) {  // child: measure, report, leave without running the parent's atexit handlers
    close(fds[0]);
    double bw = 0.0;
    {
      ThreadPool pool(threads);
      bw = measure_read_bandwidth(pool);
    }
    const ssize_t w = write(fds[1], &bw, sizeof(bw));
    _exit(w == static_cast<ssize_t>(sizeof(bw)) ? 0 : 1);
  }
  close(fds[1]);
  double bw = 0.0;
  const ssize_t r = read(fds[0], &bw, sizeof(bw));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return r == static_cast<ssize_t>(sizeof(bw)) ? bw : 0.0;
}

}  // namespace mixtral
