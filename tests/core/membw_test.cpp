#include "core/membw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace mixtral {
namespace {

// read_streams must read every word exactly once, whatever the stream count: the xor of all words
// (a word read twice would cancel out, one skipped would be missing).
TEST(ReadStreams, ReadsEveryWordOnce) {
  for (size_t n : {0, 1, 7, 8, 23, 24, 64, 1000, 4099}) {
    std::vector<uint64_t> w(n);
    uint64_t want = 0;
    for (size_t i = 0; i < n; ++i) {
      w[i] = (i + 1) * 0x9e3779b97f4a7c15ull;
      want ^= w[i];
    }
    for (int s : {1, 2, 3, 6})
      for (bool pf : {false, true}) EXPECT_EQ(read_streams(w.data(), n, s, pf), want) << n << " words, " << s;
  }
}

TEST(RegionsBandwidth, NothingToReadIsZero) {
  ThreadPool pool(2);
  EXPECT_EQ(measure_regions_bandwidth(pool, {}), 0.0);
  const uint8_t few[7] = {};
  EXPECT_EQ(measure_regions_bandwidth(pool, {{nullptr, 1 << 20}, {few, sizeof few}}), 0.0);
}

// Regions of odd sizes at odd addresses (each in its own heap block, so an overread past either end
// trips ASan), split over threads and dealt out whole: a positive, finite rate.
TEST(RegionsBandwidth, ReadsOddRegionsInsideTheirBounds) {
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  std::vector<ReadRegion> regions;
  for (size_t bytes : {size_t{9}, size_t{4097}, size_t{65541}, size_t{1} << 20}) {
    blocks.push_back(std::make_unique<uint8_t[]>(bytes + 3));
    regions.push_back({blocks.back().get() + 3, bytes});  // misaligned start
  }
  for (int nt : {1, 2, 3}) {
    ThreadPool pool(nt);
    const double bw = measure_regions_bandwidth(pool, regions, 1);
    EXPECT_GT(bw, 0.0) << nt << " threads";
    EXPECT_TRUE(std::isfinite(bw)) << nt << " threads";
  }
}

}  // namespace
}  // namespace mixtral
