// A persistent pool of worker threads. The calling thread takes part as worker 0, so a
// pool of N threads starts N-1 OS threads once; each parallel region costs a wake-up, not a spawn.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mixtral {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(ith, nth) on every thread (ith in [0, nth)) and returns when all are done.
  void run(const std::function<void(int ith, int nth)>& fn);

  // Splits [0, n) into chunks of `grain` handed out dynamically; fn(begin, end) per chunk.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void worker(int ith);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  uint64_t generation_ = 0;      // guarded by mu_; bumps once per run()
  std::atomic<int> pending_{0};  // workers still busy with the current job
  std::atomic<uint64_t> published_{0};
  bool stop_ = false;
};

}  // namespace mixtral
