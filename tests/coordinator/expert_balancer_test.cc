// The coordinator's EPLB loop: counts over a sliding window of intervals, a rebalance only when
// due and worth it, placements that travel whole in the step plan, and a reset on relaunch.
#include "coordinator/expert_balancer.h"

#include "gtest/gtest.h"

namespace moe {
namespace {

google::protobuf::RepeatedField<int64_t> Counts(const std::vector<int64_t>& v) {
  return {v.begin(), v.end()};
}

ExpertBalancerOptions Options(int64_t interval, int64_t window) {
  ExpertBalancerOptions o;
  o.experts = 4;
  o.moe_layers = 2;
  o.eplb.world = 2;
  o.interval_steps = interval;
  o.window_steps = window;
  return o;
}

// Every step routes to experts 0 and 1 only (both on rank 0 of the contiguous placement).
const std::vector<int64_t> kSkewed = {5, 5, 0, 0, /* layer 1 */ 3, 4, 0, 0};

TEST(ExpertBalancerTest, RebalancesWhenDueAndSendsEveryLayersPlacement) {
  ExpertBalancer b(Options(3, 6), ExpertPlacement::Contiguous(4, 2));
  moe::v1::StepPlan plan;
  for (int i = 0; i < 2; ++i) {
    b.Observe(Counts(kSkewed));
    EXPECT_FALSE(b.MaybeRebalance(&plan)) << "not due after " << i + 1 << " steps";
  }
  EXPECT_DOUBLE_EQ(b.imbalance(), 2.0);  // rank 0 has everything
  b.Observe(Counts(kSkewed));
  ASSERT_TRUE(b.MaybeRebalance(&plan));
  ASSERT_EQ(plan.expert_placements_size(), 2);
  for (const auto& layer : plan.expert_placements()) {
    ASSERT_EQ(layer.ranks_size(), 2);
    // The two hot experts now on different ranks.
    const auto& r0 = layer.ranks(0).experts();
    EXPECT_NE(std::count(r0.begin(), r0.end(), 0), std::count(r0.begin(), r0.end(), 1));
  }
  EXPECT_EQ(b.rebalances(), 1);
  EXPECT_LT(b.imbalance(), 1.2);
  // Balanced already: the next interval does not move anything.
  moe::v1::StepPlan next;
  for (int i = 0; i < 3; ++i) b.Observe(Counts(kSkewed));
  EXPECT_FALSE(b.MaybeRebalance(&next));
  EXPECT_EQ(next.expert_placements_size(), 0);
  // The workers were relaunched: back to the contiguous placement, nothing counted.
  b.Reset();
  EXPECT_DOUBLE_EQ(b.imbalance(), 1.0);
  for (int i = 0; i < 3; ++i) b.Observe(Counts(kSkewed));
  EXPECT_TRUE(b.MaybeRebalance(&next));
}

// The window forgets. A heavy first interval on experts 0 and 1 puts them on different ranks
// (0 with 2, 1 with 3); then a light load on 0 and 2 only. Were the heavy counts still in the
// window, splitting 0 and 2 would gain under 1% (below min_gain): no move. With a window of one
// interval only the light load counts, and they are split.
TEST(ExpertBalancerTest, TheWindowSlides) {
  const std::vector<int64_t> heavy = {500, 500, 0, 0, 500, 500, 0, 0},
                             light = {1, 0, 1, 0, 1, 0, 1, 0};
  ExpertBalancer b(Options(2, 2), ExpertPlacement::Contiguous(4, 2));
  moe::v1::StepPlan plan;
  for (int i = 0; i < 2; ++i) b.Observe(Counts(heavy));
  ASSERT_TRUE(b.MaybeRebalance(&plan));
  const auto& first = plan.expert_placements(0).ranks(0).experts();
  ASSERT_EQ(std::count(first.begin(), first.end(), 0) + std::count(first.begin(), first.end(), 2),
            2);
  for (int i = 0; i < 2; ++i) b.Observe(Counts(light));
  moe::v1::StepPlan again;
  ASSERT_TRUE(b.MaybeRebalance(&again));
  const auto& r0 = again.expert_placements(0).ranks(0).experts();
  EXPECT_EQ(std::count(r0.begin(), r0.end(), 0) + std::count(r0.begin(), r0.end(), 2), 1);
  // A window of two intervals keeps the heavy one: no move.
  ExpertBalancer longer(Options(2, 4), ExpertPlacement::Contiguous(4, 2));
  moe::v1::StepPlan p1, p2;
  for (int i = 0; i < 2; ++i) longer.Observe(Counts(heavy));
  ASSERT_TRUE(longer.MaybeRebalance(&p1));
  for (int i = 0; i < 2; ++i) longer.Observe(Counts(light));
  EXPECT_FALSE(longer.MaybeRebalance(&p2));
}

TEST(ExpertBalancerTest, OffNeverMovesAndCountsOverAllLayersApplyToEach) {
  ExpertBalancer off(Options(0, 0), ExpertPlacement::Contiguous(4, 2));
  moe::v1::StepPlan plan;
  for (int i = 0; i < 10; ++i) off.Observe(Counts(kSkewed));
  EXPECT_FALSE(off.MaybeRebalance(&plan));
  // A backend that counts all layers together reports one row: used for every layer.
  ExpertBalancer summed(Options(1, 1), ExpertPlacement::Contiguous(4, 2));
  summed.Observe(Counts({6, 6, 0, 0}));
  ASSERT_TRUE(summed.MaybeRebalance(&plan));
  EXPECT_EQ(plan.expert_placements_size(), 2);
}

}  // namespace
}  // namespace moe
