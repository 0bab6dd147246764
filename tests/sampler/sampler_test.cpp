#include "sampler/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace mixtral {
namespace {

TEST(Sampler, GreedyIsArgmaxWithLowestIndexOnTies) {
  const std::vector<float> l = {0.1f, 3.0f, -2.0f, 3.0f, 1.0f};
  EXPECT_EQ(argmax(l.data(), 5), 1);
  Sampler s({0.0f, 40, 0.95f, 1});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(l.data(), 5), 1);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  const std::vector<float> l = {0.5f, 0.2f, 0.9f, 0.1f};
  Sampler k1({1.5f, 1, 1.0f, 3});
  Sampler p0({1.5f, 0, 1e-6f, 3});
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(k1.sample(l.data(), 4), 2);
    EXPECT_EQ(p0.sample(l.data(), 4), 2);
  }
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[static_cast<size_t>(i)] = std::sin(static_cast<float>(i));
  Sampler a({1.0f, 0, 1.0f, 42}), b({1.0f, 0, 1.0f, 42}), c({1.0f, 0, 1.0f, 43});
  int same_ac = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t ta = a.sample(l.data(), 100), tb = b.sample(l.data(), 100), tc = c.sample(l.data(), 100);
    EXPECT_EQ(ta, tb);
    same_ac += ta == tc;
  }
  EXPECT_LT(same_ac, 100);  // another seed gives another stream
}

// Frequencies follow softmax(logits / T) within 4 standard deviations.
TEST(Sampler, DrawsFollowTheTemperedSoftmax) {
  const std::vector<float> l = {1.0f, 2.0f, 0.0f, -1.0f};
  const float T = 0.7f;
  double z = 0.0;
  std::vector<double> p(4);
  for (size_t i = 0; i < 4; ++i) z += p[i] = std::exp(l[i] / T);
  for (auto& v : p) v /= z;
  Sampler s({T, 0, 1.0f, 9});
  const int N = 40000;
  std::vector<int> count(4, 0);
  for (int i = 0; i < N; ++i) count[static_cast<size_t>(s.sample(l.data(), 4))]++;
  for (size_t i = 0; i < 4; ++i) {
    const double sd = std::sqrt(N * p[i] * (1 - p[i]));
    EXPECT_NEAR(count[i], N * p[i], 4 * sd) << "token " << i;
  }
}

// Top-p keeps the smallest prefix reaching p: with p = 0.5 here only the best token remains
// possible once it alone holds >= 0.5.
TEST(Sampler, TopPCutsTheTail) {
  const std::vector<float> l = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  Sampler s({1.0f, 0, 0.5f, 5});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(s.sample(l.data(), 3), 0);
  Sampler s2({1.0f, 0, 0.85f, 5});  // {0, 1} kept, 2 never drawn
  int seen1 = 0;
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s2.sample(l.data(), 3);
    EXPECT_NE(t, 2);
    seen1 += t == 1;
  }
  EXPECT_GT(seen1, 400);  // 1/3 of draws expected
}

}  // namespace
}  // namespace mixtral
