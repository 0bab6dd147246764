#include "sampler/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <utility>
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

// ---------------------------------------------------------------------------------------------------------
// SequenceSampler. Expected values come from the definitions, evaluated here in double precision.

SamplingParams greedy_params() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// A full-distribution sampler: no top-k, no top-p.
SamplingParams plain_params(float temperature, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.seed = seed;
  return p;
}

// Mask words with exactly the ids in `ids` set.
std::vector<uint32_t> mask_of(const std::vector<int32_t>& ids, int64_t n) {
  std::vector<uint32_t> m(static_cast<size_t>((n + 31) / 32), 0u);
  for (int32_t t : ids) m[static_cast<size_t>(t) / 32] |= 1u << (t % 32);
  return m;
}

// Draws n tokens from s on the same logits and returns the count of each id.
std::vector<int> histogram(SequenceSampler& s, const std::vector<float>& l, int n,
                           const uint32_t* allowed = nullptr, int64_t n_allowed = 0) {
  std::vector<int> c(l.size(), 0);
  for (int i = 0; i < n; ++i) {
    const int32_t t = s.sample(l.data(), allowed, n_allowed, nullptr);
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(l.size()));
    if (t >= 0 && t < static_cast<int32_t>(l.size())) c[static_cast<size_t>(t)]++;
  }
  return c;
}

// Counts follow p (excluded tokens, p = 0, never drawn) within 4 standard deviations.
void expect_follows(const std::vector<int>& count, const std::vector<double>& p, int n) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(count[i], 0) << "token " << i;
      continue;
    }
    const double sd = std::sqrt(n * p[i] * (1 - p[i]));
    EXPECT_NEAR(count[i], n * p[i], 4 * sd + 1) << "token " << i;
  }
}

// softmax(w / T) over the finite entries of w.
std::vector<double> tempered_softmax(const std::vector<double>& w, double T) {
  double mx = -INFINITY, z = 0.0;
  for (double v : w) mx = std::max(mx, v);
  std::vector<double> p(w.size(), 0.0);
  for (size_t i = 0; i < w.size(); ++i)
    if (std::isfinite(w[i])) z += p[i] = std::exp((w[i] - mx) / T);
  for (double& v : p) v /= z;
  return p;
}

TEST(SequenceSampler, GreedyIsArgmaxTiesToLowestId) {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f};
  SequenceSampler s(greedy_params(), 4);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 1);
    s.accept(1);  // no penalty configured: the history changes nothing
  }
}

TEST(SequenceSampler, MaskKeepsOnlyAllowedIds) {
  std::vector<float> l(40);
  for (size_t i = 0; i < l.size(); ++i) l[i] = static_cast<float>(i) * 0.1f;  // the best id is 39
  SequenceSampler s(greedy_params(), 40);
  auto m = mask_of({3, 7, 35}, 40);
  EXPECT_EQ(s.sample(l.data(), m.data(), 40, nullptr), 35);  // the best allowed id
  EXPECT_EQ(s.sample(l.data(), m.data(), 32, nullptr), 7);   // ids >= n_allowed are not allowed
  auto none = mask_of({}, 40);
  EXPECT_EQ(s.sample(l.data(), none.data(), 40, nullptr), -1);
  auto high = mask_of({36}, 40);  // the only allowed id lies beyond n_allowed
  EXPECT_EQ(s.sample(l.data(), high.data(), 36, nullptr), -1);

  // Sampled: the allowed ids in proportion to their probabilities, no other id.
  SequenceSampler r(plain_params(1.0f, 11), 40);
  const int N = 20000;
  auto c = histogram(r, l, N, m.data(), 40);
  std::vector<double> w(40, -INFINITY);
  for (int32_t t : {3, 7, 35}) w[static_cast<size_t>(t)] = l[static_cast<size_t>(t)];
  expect_follows(c, tempered_softmax(w, 1.0), N);
}

TEST(SequenceSampler, LogitBiasIsAddedToTheLogit) {
  const std::vector<float> l = {1.0f, 1.5f, 0.0f};
  auto with_bias = [](std::vector<std::pair<int32_t, float>> b) {
    SamplingParams p = greedy_params();
    p.logit_bias = std::move(b);
    return p;
  };
  SequenceSampler a(with_bias({{0, 0.6f}}), 3), b(with_bias({{0, 0.4f}}), 3);
  EXPECT_EQ(a.sample(l.data(), nullptr, 0, nullptr), 0);  // 1.6 > 1.5
  EXPECT_EQ(b.sample(l.data(), nullptr, 0, nullptr), 1);  // 1.4 < 1.5
  SequenceSampler up(with_bias({{2, 100.0f}}), 3);
  EXPECT_EQ(up.sample(l.data(), nullptr, 0, nullptr), 2);
  // -100 bans a token in practice: e^-100 of the mass.
  SamplingParams p = plain_params(1.0f, 5);
  p.logit_bias = {{1, -100.0f}};
  SequenceSampler down(p, 3);
  const int N = 20000;
  auto c = histogram(down, l, N);
  expect_follows(c, tempered_softmax({1.0, 1.5 - 100.0, 0.0}, 1.0), N);
  EXPECT_EQ(c[1], 0);
}

TEST(SequenceSampler, RepetitionPenaltyOverPromptAndOutput) {
  SamplingParams p = greedy_params();
  p.repetition_penalty = 1.2f;
  {
    // Positive logit divided: 2.0 / 1.2 = 1.667 < 1.8.
    const std::vector<float> l = {2.0f, 1.8f, -1.0f};
    SequenceSampler s(p, 3);
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 0);
    const int32_t prompt[] = {0, 0};
    s.add_prompt(prompt, 2);
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 1);
    s.accept(1);  // 1.8 / 1.2 = 1.5 < 1.667: back to 0; a token seen twice is penalised once
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 0);
  }
  {
    // Negative logit multiplied: -1.0 * 1.2 = -1.2 < -1.1.
    const std::vector<float> l = {-1.0f, -1.1f};
    SequenceSampler s(p, 2);
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 0);
    s.accept(0);
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 1);
  }
}

TEST(SequenceSampler, PresenceAndFrequencyOverOutputOnly) {
  const std::vector<float> l = {1.0f, 0.5f, 0.0f};
  SamplingParams p = greedy_params();
  p.presence_penalty = 0.2f;
  p.frequency_penalty = 0.2f;
  SequenceSampler s(p, 3);
  const int32_t prompt[] = {0, 0, 0};
  s.add_prompt(prompt, 3);  // the prompt does not count
  EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 0);
  s.accept(0);  // 1.0 - 0.2 - 0.2 = 0.6 > 0.5
  EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 0);
  s.accept(0);  // 1.0 - 0.2 - 0.4 = 0.4 < 0.5
  EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 1);

  SamplingParams pres = greedy_params();
  pres.presence_penalty = 0.4f;  // once, however often: 1.0 - 0.4 = 0.6 > 0.5
  SequenceSampler only_presence(pres, 3);
  for (int i = 0; i < 4; ++i) only_presence.accept(0);
  EXPECT_EQ(only_presence.sample(l.data(), nullptr, 0, nullptr), 0);
  pres.presence_penalty = -0.3f;  // negative: encourages a seen token
  SequenceSampler negative(pres, 3);
  negative.accept(2);  // 0.0 + 0.3 = 0.3 < 1.0
  EXPECT_EQ(negative.sample(l.data(), nullptr, 0, nullptr), 0);
}

// min_p keeps tokens with p >= min_p * p_max at the temperature: l_i >= l_max + T log(min_p).
TEST(SequenceSampler, MinPCutsAtTheTemperature) {
  const std::vector<float> l = {0.0f, -1.0f, -3.0f, 0.2f};
  const float min_p = 0.2f;
  const int N = 20000;
  for (float T : {1.0f, 0.5f, 2.0f}) {
    SamplingParams p = plain_params(T, 21);
    p.min_p = min_p;
    SequenceSampler s(p, 4);
    auto c = histogram(s, l, N);
    std::vector<double> w(l.begin(), l.end());
    const std::vector<double> full = tempered_softmax(w, T);
    const double pmax = *std::max_element(full.begin(), full.end());
    for (size_t i = 0; i < w.size(); ++i)
      if (full[i] < min_p * pmax) w[i] = -INFINITY;
    const std::vector<double> want = tempered_softmax(w, T);
    expect_follows(c, want, N);
    // T = 1 keeps {0, 1, 3}; T = 0.5 keeps {0, 3}; T = 2 keeps all four.
    EXPECT_EQ(c[1] > 0, T >= 1.0f) << "T " << T;
    EXPECT_EQ(c[2] > 0, T >= 2.0f) << "T " << T;
  }
}

// The order: the mask first, then bias, penalties, min-p over what is left.
TEST(SequenceSampler, OrderIsMaskBiasPenaltiesMinP) {
  {
    // Bias before the repetition penalty: (1.0 + 1.0) / 2 = 1.0 < 1.2 (penalty first would give 1.5).
    SamplingParams p = greedy_params();
    p.logit_bias = {{0, 1.0f}};
    p.repetition_penalty = 2.0f;
    SequenceSampler s(p, 2);
    const int32_t prompt[] = {0};
    s.add_prompt(prompt, 1);
    const std::vector<float> l = {1.0f, 1.2f};
    EXPECT_EQ(s.sample(l.data(), nullptr, 0, nullptr), 1);
  }
  {
    // min-p measured against the best allowed token: with the mask first both 1 and 2 stay.
    SamplingParams p = plain_params(1.0f, 3);
    p.min_p = 0.5f;
    SequenceSampler s(p, 3);
    const std::vector<float> l = {5.0f, 0.0f, -0.5f};
    auto m = mask_of({1, 2}, 3);
    const int N = 10000;
    auto c = histogram(s, l, N, m.data(), 3);
    expect_follows(c, tempered_softmax({-INFINITY, 0.0, -0.5}, 1.0), N);
  }
}

TEST(SequenceSampler, AllFeaturesTogether) {
  const std::vector<float> l = {1.0f, 0.4f, 2.0f, -0.5f, 0.9f, 1.5f, 0.3f};
  SamplingParams p = plain_params(0.8f, 77);
  p.logit_bias = {{1, 0.5f}, {5, -100.0f}};
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.1f;
  p.frequency_penalty = 0.2f;
  p.min_p = 0.15f;
  SequenceSampler s(p, 7);
  const int32_t prompt[] = {2, 3};
  s.add_prompt(prompt, 2);
  s.accept(4);
  s.accept(4);
  s.accept(0);
  auto m = mask_of({0, 1, 2, 3, 4, 5}, 7);  // 6 is not allowed

  // The reference, step by step in double precision.
  std::vector<double> w(l.begin(), l.end());
  w[6] = -INFINITY;
  w[1] += 0.5;
  w[5] += -100.0;
  for (int t : {2, 3, 4, 0}) w[static_cast<size_t>(t)] = w[t] > 0 ? w[t] / 1.3 : w[t] * 1.3;
  w[4] -= 0.1 + 0.2 * 2;
  w[0] -= 0.1 + 0.2 * 1;
  const double T = 0.8, mx = *std::max_element(w.begin(), w.end());
  for (double& v : w)
    if (v < mx + T * std::log(0.15)) v = -INFINITY;
  const std::vector<double> want = tempered_softmax(w, T);
  // Worked out by hand: w = {0.469, 0.9, 1.538, -0.65, 0.192, -98.5, -inf}, the cut at 1.538 - 1.518 = 0.021
  // keeps {0, 1, 2, 4}.
  EXPECT_GT(want[0], 0.0);
  EXPECT_GT(want[1], 0.0);
  EXPECT_GT(want[4], 0.0);
  EXPECT_EQ(want[3], 0.0);
  const int N = 20000;
  auto c = histogram(s, l, N, m.data(), 7);
  expect_follows(c, want, N);
}

TEST(SequenceSampler, SameSeedSameTokens) {
  std::vector<float> l(50);
  for (size_t i = 0; i < l.size(); ++i) l[i] = std::cos(static_cast<float>(i));
  SamplingParams p = plain_params(1.0f, 123);
  p.frequency_penalty = 0.5f;
  p.min_p = 0.05f;
  SequenceSampler a(p, 50), b(p, 50);
  for (int i = 0; i < 100; ++i) {
    const int32_t ta = a.sample(l.data(), nullptr, 0, nullptr), tb = b.sample(l.data(), nullptr, 0, nullptr);
    ASSERT_EQ(ta, tb);
    a.accept(ta);
    b.accept(tb);
  }
}

// Log-probabilities of the model's logits: before the mask, bias and penalties.
TEST(SequenceSampler, LogprobsOfTheRawLogitsWithTiesById) {
  const std::vector<float> l = {1.0f, 3.0f, 3.0f, 0.0f, -2.0f};
  double z = 0.0;
  for (float v : l) z += std::exp(static_cast<double>(v));
  auto ref = [&](int t) { return static_cast<double>(l[static_cast<size_t>(t)]) - std::log(z); };

  SamplingParams p = greedy_params();
  p.top_logprobs = 3;
  p.logit_bias = {{3, 10.0f}};  // token 3 is chosen; its logprob is still the model's
  p.repetition_penalty = 1.5f;
  SequenceSampler s(p, 5);
  const int32_t prompt[] = {1};
  s.add_prompt(prompt, 1);
  auto m = mask_of({0, 3, 4}, 5);
  TokenLogprobs lp;
  EXPECT_EQ(s.sample(l.data(), m.data(), 5, &lp), 3);
  EXPECT_NEAR(lp.logprob, ref(3), 1e-6);
  ASSERT_EQ(lp.top.size(), 3u);
  const int want_ids[] = {1, 2, 0};  // 1 and 2 tie: the lower id first
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(lp.top[i].first, want_ids[i]);
    EXPECT_NEAR(lp.top[i].second, ref(want_ids[i]), 1e-6);
  }

  // top_logprobs 0: the chosen token only; more than the vocabulary: all of it; -1: nothing written.
  p = greedy_params();
  p.top_logprobs = 0;
  SequenceSampler zero(p, 5);
  lp.top = {{9, 9.0f}};
  EXPECT_EQ(zero.sample(l.data(), nullptr, 0, &lp), 1);
  EXPECT_NEAR(lp.logprob, ref(1), 1e-6);
  EXPECT_TRUE(lp.top.empty());
  p.top_logprobs = 20;
  SequenceSampler all(p, 5);
  EXPECT_EQ(all.sample(l.data(), nullptr, 0, &lp), 1);
  ASSERT_EQ(lp.top.size(), 5u);
  EXPECT_EQ(lp.top[4].first, 4);
  EXPECT_NEAR(lp.top[4].second, ref(4), 1e-6);
  p.top_logprobs = -1;
  SequenceSampler none(p, 5);
  TokenLogprobs untouched;
  untouched.logprob = 42.0f;
  EXPECT_EQ(none.sample(l.data(), nullptr, 0, &untouched), 1);
  EXPECT_EQ(untouched.logprob, 42.0f);
  EXPECT_TRUE(untouched.top.empty());
}

}  // namespace
}  // namespace mixtral
