#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace mixtral {
namespace {

TEST(ThreadPool, RunGivesEveryThreadItsIndex) {
  for (int nt : {1, 2, 3, 5}) {
    ThreadPool pool(nt);
    std::vector<std::atomic<int>> hits(static_cast<size_t>(nt));
    for (int rep = 0; rep < 200; ++rep)
      pool.run([&](int ith, int nth) {
        ASSERT_EQ(nth, nt);
        hits[static_cast<size_t>(ith)]++;
      });
    for (auto& h : hits) EXPECT_EQ(h.load(), 200);
  }
}

TEST(ThreadPool, ParallelForCoversEachIndexOnce) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 7, 64, 1000, 4097}) {
    std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
    pool.parallel_for(n, 13, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPool, ManyShortRegionsSum) {
  ThreadPool pool(2);
  int64_t total = 0;
  for (int rep = 0; rep < 2000; ++rep) {
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, 10, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    total += sum.load();
  }
  EXPECT_EQ(total, 2000 * 4950);
}

}  // namespace
}  // namespace mixtral
