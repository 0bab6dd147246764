// Measures this machine's memory read bandwidth now (the roofline for decode), by streaming a
// buffer far larger than the caches with n threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"

namespace mixtral {

// Reads words p[0, n) as `streams` interleaved sequential streams (stream k reads the k-th of equal
// parts, all advancing together), software-prefetching 1.5 KiB ahead if asked; returns their xor so the
// reads cannot be dropped. The probe's inner loop, shared with the kernel benchmarks.
uint64_t read_streams(const uint64_t* p, size_t n, int streams, bool prefetch);

// Bytes per second, best of `reps` passes over a `bytes`-sized buffer.
double measure_read_bandwidth(ThreadPool& pool, size_t bytes = size_t{1} << 30, int reps = 5);

// One stretch of memory for measure_regions_bandwidth.
struct ReadRegion {
  const void* data;
  size_t bytes;
};
// Bytes per second of the best pass reading every region in full where it lies, so the figure is the
// rate of that memory (its pages, their size and placement), not of a fresh buffer. A pass either
// splits every region over the threads (as the decode mat-vecs split a weight's rows) or deals whole
// regions out to the threads in turn, and reads each piece as read_streams does with 1, 3 or 6 streams,
// with and without prefetch; best of `reps` passes of each. 0 when there is nothing to read.
double measure_regions_bandwidth(ThreadPool& pool, const std::vector<ReadRegion>& regions, int reps = 2);
// The same, run in a forked child process so its buffer never counts towards this process's
// peak RSS (benchmarks report both). Returns 0 if the child could not run.
double measure_read_bandwidth_isolated(int threads);

}  // namespace mixtral
