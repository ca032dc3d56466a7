// The router against a brute-force reference written from the DeepSeek-V3 paper's description:
// enumerate every admissible choice of groups, sort in double precision.
#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/presets.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

Routed Reference(const ModelConfig& c, const std::vector<float>& logits, const float* bias) {
  const int64_t E = c.n_routed_experts, G = c.n_group, gs = E / G;
  std::vector<double> s(E), choice(E);
  if (c.scoring_func == "softmax") {
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += std::exp(static_cast<double>(logits[e]));
    for (int64_t e = 0; e < E; ++e) s[e] = std::exp(static_cast<double>(logits[e])) / z;
  } else {
    for (int64_t e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e])));
  }
  for (int64_t e = 0; e < E; ++e)
    choice[e] = s[e] + (bias && c.topk_method == "noaux_tc" ? bias[e] : 0);
  std::vector<bool> allowed(E, true);
  if (G > 1 && c.topk_method != "greedy") {
    std::vector<std::pair<double, int64_t>> gscore;
    for (int64_t g = 0; g < G; ++g) {
      std::vector<double> v(choice.begin() + g * gs, choice.begin() + (g + 1) * gs);
      std::sort(v.rbegin(), v.rend());
      gscore.push_back({c.topk_method == "noaux_tc" ? v[0] + v[1] : v[0], -g});
    }
    std::sort(gscore.rbegin(), gscore.rend());
    std::fill(allowed.begin(), allowed.end(), false);
    for (int64_t i = 0; i < c.topk_group; ++i) {
      const int64_t g = -gscore[i].second;
      for (int64_t e = g * gs; e < (g + 1) * gs; ++e) allowed[e] = true;
    }
  }
  std::vector<std::pair<double, int64_t>> cand;
  for (int64_t e = 0; e < E; ++e) {
    if (allowed[e]) cand.push_back({choice[e], -e});
  }
  std::sort(cand.rbegin(), cand.rend());
  Routed r;
  double sum = 0;
  for (int64_t j = 0; j < c.num_experts_per_tok; ++j) {
    r.ids.push_back(static_cast<int32_t>(-cand[j].second));
    sum += s[-cand[j].second];
  }
  for (int32_t id : r.ids) {
    r.weights.push_back(s[id] / (c.norm_topk_prob ? sum + 1e-20 : 1.0) * c.routed_scaling_factor);
  }
  return r;
}

void CheckRandom(const ModelConfig& c, bool with_bias, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> uni(-0.3f, 0.3f);
  const int64_t n = 64, E = c.n_routed_experts, k = c.num_experts_per_tok;
  std::vector<float> logits(n * E), bias(E);
  for (float& v : logits) v = normal(rng);
  for (float& v : bias) v = uni(rng);  // negative values too: exclusion must be by -inf
  std::vector<int32_t> ids(n * k);
  std::vector<float> w(n * k);
  RouteTokens(c, logits.data(), with_bias ? bias.data() : nullptr, n, ids.data(), w.data());
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> row(logits.begin() + t * E, logits.begin() + (t + 1) * E);
    const Routed ref = Reference(c, row, with_bias ? bias.data() : nullptr);
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_EQ(ids[t * k + j], ref.ids[j]) << "token " << t << " slot " << j;
      EXPECT_NEAR(w[t * k + j], ref.weights[j], 1e-5 * std::max(1.0, ref.weights[j]));
    }
  }
}

ModelConfig Tiny() { return *PresetConfig("tiny-dsv3"); }

TEST(RouterTest, NoauxTcWithGroupsMatchesReference) { CheckRandom(Tiny(), true, 1); }

TEST(RouterTest, SingleGroupKimiStyle) { CheckRandom(*PresetConfig("tiny-kimi-k2"), true, 2); }

TEST(RouterTest, SoftmaxGreedy) {
  ModelConfig c = Tiny();
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0;
  CheckRandom(c, false, 3);
}

TEST(RouterTest, SoftmaxGroupLimitedGreedy) {
  ModelConfig c = Tiny();
  c.scoring_func = "softmax";
  c.topk_method = "group_limited_greedy";
  CheckRandom(c, false, 4);
}

TEST(RouterTest, BiasSelectsButWeightsAreUnbiased) {
  ModelConfig c = Tiny();
  c.n_group = 1;
  c.topk_group = 1;
  c.num_experts_per_tok = 2;
  c.routed_scaling_factor = 1.0;
  std::vector<float> logits(16, -4.0f), bias(16, 0.0f);
  logits[0] = 2.0f;  // best unbiased score
  logits[1] = 1.0f;  // second
  bias[5] = 1.0f;    // expert 5 (sigmoid(-4) = 0.018) wins only through its bias
  int32_t ids[2];
  float w[2];
  RouteTokens(c, logits.data(), bias.data(), 1, ids, w);
  EXPECT_EQ(ids[0], 5);
  EXPECT_EQ(ids[1], 0);
  const double s5 = 1 / (1 + std::exp(4.0)), s0 = 1 / (1 + std::exp(-2.0));
  EXPECT_NEAR(w[0], s5 / (s5 + s0), 1e-6);
  EXPECT_NEAR(w[1], s0 / (s5 + s0), 1e-6);
}

TEST(RouterTest, ExcludedGroupNeverWinsEvenWithNegativeScores) {
  // Group 0 has the better top-2 sum and is kept (topk_group = 1); its third-best biased score is
  // negative. Excluded experts must lose to it (exclusion by -inf, not by a 0.0 fill).
  ModelConfig c = Tiny();
  c.n_group = 2;
  c.topk_group = 1;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 3;
  std::vector<float> logits(8, -10.0f), bias(8, -0.5f);
  logits[0] = logits[1] = 3.0f;  // group 0: biased ~0.45, 0.45, -0.5, -0.5 (sum of top-2 0.9)
  logits[4] = 10.0f;             // group 1: biased 0.5, -0.5, -0.5, -0.5 (sum of top-2 0.0)
  int32_t ids[3];
  float w[3];
  RouteTokens(c, logits.data(), bias.data(), 1, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids[2], 2);
}

}  // namespace
}  // namespace moe
