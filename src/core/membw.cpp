#include "core/membw.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace mixtral {

double measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);  // [n]
  pool.run([&](int ith, int nth) {                   // first touch by the threads that read it
    const size_t b = n * static_cast<size_t>(ith) / static_cast<size_t>(nth);
    const size_t e = n * static_cast<size_t>(ith + 1) / static_cast<size_t>(nth);
    for (size_t i = b; i < e; ++i) buf[i] = i;
  });
  double best = 0.0;
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()) * 8);
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.run([&](int ith, int nth) {
      const size_t b = n * static_cast<size_t>(ith) / static_cast<size_t>(nth);
      const size_t e = n * static_cast<size_t>(ith + 1) / static_cast<size_t>(nth);
      uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 independent chains keep loads in flight
      size_t i = b;
      for (; i + 8 <= e; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] ^= buf[i + static_cast<size_t>(k)];
      for (; i < e; ++i) acc[0] ^= buf[i];
      std::memcpy(&sink[static_cast<size_t>(ith) * 8], acc, sizeof(acc));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s);
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
