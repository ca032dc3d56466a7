// EPLB's placements: every expert hosted, every rank the same number of distinct experts, and the
// most loaded rank close to the mean — checked against an exhaustive search on small cases.
#include "parallel/eplb.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

void ExpectWellFormed(const ExpertPlacement& p, int64_t experts, int world, int64_t redundant) {
  ASSERT_EQ(p.world(), world);
  ASSERT_EQ(p.num_experts(), experts);
  int64_t slots = 0;
  for (int r = 0; r < world; ++r) {
    const auto& l = p.LocalExperts(r);
    EXPECT_EQ(static_cast<int64_t>(l.size()), (experts + redundant) / world) << "rank " << r;
    EXPECT_TRUE(std::is_sorted(l.begin(), l.end()));
    EXPECT_EQ(std::adjacent_find(l.begin(), l.end()), l.end())
        << "rank " << r << " holds a copy twice";
    slots += static_cast<int64_t>(l.size());
  }
  EXPECT_EQ(slots, experts + redundant);
  for (int64_t e = 0; e < experts; ++e) {
    EXPECT_GE(p.Replicas(e), 1);
    for (int r : p.ReplicaRanks(e)) EXPECT_GE(p.LocalIndex(r, e), 0);
  }
}

// The best max rank load over every way to give each rank `per` distinct experts of the
// physical multiset that splits loads evenly over replicas: small cases only.
double BestMaxLoad(const std::vector<double>& load, int world, int64_t redundant) {
  const int64_t experts = static_cast<int64_t>(load.size());
  const int64_t per = (experts + redundant) / world;
  double best = 1e300;
  // Replica counts: every composition of experts + redundant with counts in [1, world].
  std::vector<int> count(static_cast<size_t>(experts), 1);
  std::function<void(int64_t, int64_t)> counts = [&](int64_t e, int64_t left) {
    if (e == experts) {
      if (left != 0) return;
      // Assign replicas to ranks: each expert's copies to distinct ranks, `per` per rank.
      std::vector<int64_t> fill(static_cast<size_t>(world), 0);
      std::vector<double> sum(static_cast<size_t>(world), 0.0);
      std::function<void(int64_t, int, int)> place = [&](int64_t x, int copy, int from) {
        if (x == experts) {
          best = std::min(best, *std::max_element(sum.begin(), sum.end()));
          return;
        }
        if (copy == count[x]) return place(x + 1, 0, 0);
        for (int r = from; r < world; ++r) {
          if (fill[r] == per) continue;
          ++fill[r];
          sum[r] += load[x] / count[x];
          place(x, copy + 1, r + 1);
          --fill[r];
          sum[r] -= load[x] / count[x];
        }
      };
      place(0, 0, 0);
      return;
    }
    for (int c = 1; c <= world && c - 1 <= left; ++c) {
      count[e] = c;
      counts(e + 1, left - (c - 1));
    }
    count[e] = 1;
  };
  counts(0, redundant);
  return best;
}

TEST(EplbTest, UniformLoadWithoutRedundancyIsPerfect) {
  const std::vector<double> load(16, 5.0);
  auto p = BalanceExperts(load, {4, 0});
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectWellFormed(*p, 16, 4, 0);
  EXPECT_DOUBLE_EQ(Imbalance(*p, load), 1.0);
}

// A few hot experts: contiguous placement puts them together; replicas split them.
TEST(EplbTest, ReplicatesTheHottestExpertsAndSpreadsThem) {
  std::vector<double> load(16, 1.0);
  load[0] = 20;
  load[1] = 12;
  load[2] = 6;
  const ExpertPlacement contiguous = ExpertPlacement::Contiguous(16, 4);
  const double before = Imbalance(contiguous, load);
  auto p = BalanceExperts(load, {4, 4});
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectWellFormed(*p, 16, 4, 4);
  EXPECT_GE(p->Replicas(0), 2);
  EXPECT_GE(p->Replicas(1), 2);
  const double after = Imbalance(*p, load);
  EXPECT_GT(before, 2.3);  // (20 + 12 + 6 + 1) / (51 / 4)
  EXPECT_LT(after, 1.1);
}

TEST(EplbTest, WithinFourThirdsOfTheBestOnSmallCases) {
  std::mt19937 rng(7);
  std::exponential_distribution<double> skew(0.5);
  for (int trial = 0; trial < 20; ++trial) {
    SCOPED_TRACE(trial);
    const int world = 2 + trial % 2;    // 2 or 3 ranks
    const int64_t experts = world * 2;  // 4 or 6 experts
    const int64_t redundant = trial % 3 == 0 ? 0 : world;
    std::vector<double> load(static_cast<size_t>(experts));
    for (double& l : load) l = skew(rng);
    auto p = BalanceExperts(load, {world, redundant});
    ASSERT_TRUE(p.ok()) << p.status();
    ExpectWellFormed(*p, experts, world, redundant);
    const std::vector<double> ranks = RankLoads(*p, load);
    const double got = *std::max_element(ranks.begin(), ranks.end());
    const double best = BestMaxLoad(load, world, redundant);
    EXPECT_LE(got, best * 4.0 / 3.0 + 1e-9) << "best " << best;  // LPT's guarantee
  }
}

// Four ranks on two nodes, four expert groups: whole groups stay on one node.
TEST(EplbTest, HierarchicalKeepsEachGroupOnOneNode) {
  std::vector<double> load(16);
  for (int e = 0; e < 16; ++e) load[e] = 1.0 + (e < 4 ? 10.0 : 0.0) + (e == 5 ? 6.0 : 0.0);
  EplbOptions o{4, 4};
  o.ranks_per_node = 2;
  o.expert_groups = 4;
  auto p = BalanceExperts(load, o);
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectWellFormed(*p, 16, 4, 4);
  for (int64_t g = 0; g < 4; ++g) {
    std::set<int> nodes;
    for (int64_t e = g * 4; e < g * 4 + 4; ++e) {
      for (int r : p->ReplicaRanks(e)) nodes.insert(r / 2);
    }
    EXPECT_EQ(nodes.size(), 1u) << "group " << g;
  }
  // The hot group (experts 0..3) and the next hottest land on different nodes.
  EXPECT_NE(p->ReplicaRanks(0)[0] / 2, p->ReplicaRanks(5)[0] / 2);
}

TEST(EplbTest, RefusesWhatCannotBePlaced) {
  const std::vector<double> load(16, 1.0);
  EXPECT_THAT(std::string(BalanceExperts(load, {4, 3}).status().message()),
              ::testing::HasSubstr("--redundant-experts 3"));
  EXPECT_FALSE(BalanceExperts(std::vector<double>(2, 1.0), {4, 2}).ok());
  EXPECT_FALSE(BalanceExperts(load, {1, 16}).ok());  // one rank holds one copy of each
  EXPECT_FALSE(BalanceExperts({1.0, -1.0}, {1, 0}).ok());
  EXPECT_FALSE(ExpertPlacement::FromRanks(4, {{0, 1}, {1, 2}}).ok());  // expert 3 nowhere
}

}  // namespace
}  // namespace moe
