// Measures this machine's memory read bandwidth now (the roofline for decode), by streaming a
// buffer far larger than the caches with n threads.
#pragma once

#include "core/thread_pool.h"

namespace mixtral {

// Bytes per second, best of `reps` passes over a `bytes`-sized buffer.
double measure_read_bandwidth(ThreadPool& pool, size_t bytes = size_t{1} << 30, int reps = 5);

// The same, run in a forked child process so its buffer never counts towards this process's
// peak RSS (benchmarks report both). Returns 0 if the child could not run.
double measure_read_bandwidth_isolated(int threads);

}  // namespace mixtral
