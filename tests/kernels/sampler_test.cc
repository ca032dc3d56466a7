#include "kernels/cpu/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 0.5f, 3.0f, -1.0f};

TEST(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingSpec s;
  EXPECT_EQ(SampleToken(kLogits.data(), 6, s, 0), 1);
  s.temperature = 0.7f;
  s.top_k = 1;
  EXPECT_EQ(SampleToken(kLogits.data(), 6, s, 5), 1);
}

TEST(SamplerTest, SameSeedAndIndexSameToken) {
  SamplingSpec s{1.0f, 0, 1.0f, 42};
  for (uint64_t i = 0; i < 50; ++i) {
    EXPECT_EQ(SampleToken(kLogits.data(), 6, s, i), SampleToken(kLogits.data(), 6, s, i));
  }
  // Different seeds disagree somewhere.
  SamplingSpec t = s;
  t.seed = 43;
  int differ = 0;
  for (uint64_t i = 0; i < 50; ++i) {
    differ += SampleToken(kLogits.data(), 6, s, i) != SampleToken(kLogits.data(), 6, t, i);
  }
  EXPECT_GT(differ, 5);
}

// Empirical frequencies over many indices against softmax(logits / T) restricted by k and p.
void CheckDistribution(const SamplingSpec& s, const std::vector<double>& want) {
  std::vector<int> count(kLogits.size(), 0);
  const int n = 200000;
  for (int i = 0; i < n; ++i) ++count[SampleToken(kLogits.data(), 6, s, i)];
  for (size_t t = 0; t < want.size(); ++t) {
    const double sd = std::sqrt(want[t] * (1 - want[t]) / n);
    EXPECT_NEAR(count[t] / static_cast<double>(n), want[t], 5 * sd + 1e-9) << "token " << t;
  }
}

std::vector<double> Softmax(const std::vector<int>& keep, double temperature) {
  std::vector<double> p(kLogits.size(), 0.0);
  double z = 0;
  for (int t : keep) z += std::exp(kLogits[t] / temperature);
  for (int t : keep) p[t] = std::exp(kLogits[t] / temperature) / z;
  return p;
}

TEST(SamplerTest, TemperatureFollowsSoftmax) {
  CheckDistribution({1.0f, 0, 1.0f, 7}, Softmax({0, 1, 2, 3, 4, 5}, 1.0));
  CheckDistribution({0.5f, 0, 1.0f, 8}, Softmax({0, 1, 2, 3, 4, 5}, 0.5));
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  // top-3: tokens 1 and 4 (3.0, tie) and 2 (2.0).
  CheckDistribution({1.0f, 3, 1.0f, 9}, Softmax({1, 2, 4}, 1.0));
}

TEST(SamplerTest, TopPKeepsTheSmallestPrefixReachingP) {
  // At T = 1 one 3.0 token holds 0.384 of the mass and both 0.768: p = 0.6 keeps exactly them.
  CheckDistribution({1.0f, 0, 0.6f, 10}, Softmax({1, 4}, 1.0));
  // With the 2.0 token the prefix holds 0.909: p = 0.8 needs it.
  CheckDistribution({1.0f, 0, 0.8f, 11}, Softmax({1, 2, 4}, 1.0));
}

// Speculative decoding's check of a draft: whatever the draft, the token it leaves follows the
// sampling distribution (against the same softmax as above), and the draft is accepted with its
// probability under it.
TEST(SamplerTest, DraftVerificationKeepsTheSamplingDistribution) {
  const SamplingSpec spec{1.0f, 3, 1.0f, 21};  // top-3: tokens 1, 4 and 2
  const std::vector<double> want = Softmax({1, 2, 4}, 1.0);
  for (const int32_t draft : {1, 2, 0}) {  // likely, less likely, outside the kept set
    SCOPED_TRACE("draft " + std::to_string(draft));
    std::vector<int> count(kLogits.size(), 0);
    int accepted = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const DraftVerdict v = VerifyDraft(kLogits.data(), 6, spec, static_cast<uint64_t>(i), draft);
      EXPECT_EQ(v.accepted, v.token == draft);
      ++count[v.token];
      accepted += v.accepted;
    }
    for (size_t t = 0; t < want.size(); ++t) {
      const double sd = std::sqrt(want[t] * (1 - want[t]) / n);
      EXPECT_NEAR(count[t] / static_cast<double>(n), want[t], 5 * sd + 1e-9) << "token " << t;
    }
    EXPECT_EQ(accepted, count[static_cast<size_t>(draft)]);
  }
  // Greedy: accepted exactly when the draft is the argmax (the lower id on ties).
  EXPECT_TRUE(VerifyDraft(kLogits.data(), 6, SamplingSpec{}, 0, 1).accepted);
  const DraftVerdict no = VerifyDraft(kLogits.data(), 6, SamplingSpec{}, 0, 4);
  EXPECT_FALSE(no.accepted);
  EXPECT_EQ(no.token, 1);
}

TEST(SamplerTest, UniformIsInRange) {
  for (uint64_t i = 0; i < 1000; ++i) {
    const double u = SampleUniform(3, i);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace moe
