#include "parallel/shard_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/model_maker.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(ShardPlanTest, EvenSplitCoversEverythingOnce) {
  for (int64_t n : {0, 1, 7, 16, 129280}) {
    for (int parts : {1, 2, 3, 8}) {
      int64_t next = 0;
      for (int i = 0; i < parts; ++i) {
        const Range r = EvenSplit(n, parts, i);
        EXPECT_EQ(r.begin, next);
        EXPECT_LE(r.size(), n / parts + 1);
        EXPECT_GE(r.size(), n / parts);
        next = r.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(ShardPlanTest, ContiguousPlacement) {
  const ExpertPlacement p = ExpertPlacement::Contiguous(10, 4);  // 3, 3, 2, 2
  EXPECT_EQ(p.LocalExperts(0), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(p.LocalExperts(3), (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(p.RankFor(5, 0), 1);
  EXPECT_EQ(p.LocalIndex(1, 5), 2);
  EXPECT_EQ(p.LocalIndex(0, 5), -1);
}

TEST(ShardPlanTest, RanksOfGroups) {
  auto c = PresetConfig("tiny-dsv3");  // 8 heads, 16 experts, vocab 512
  auto plan = ShardPlan::Create(*c, 8, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->dp_size(), 4);
  const RankShard s = plan->Shard(5);
  EXPECT_EQ(s.dp_rank, 2);
  EXPECT_EQ(s.tp_rank, 1);
  EXPECT_EQ(s.heads, (Range{4, 8}));
  EXPECT_EQ(s.vocab, (Range{256, 512}));
  EXPECT_EQ(s.experts, (std::vector<int64_t>{10, 11}));
  EXPECT_EQ(s.shared_inter, (Range{32, 64}));  // 2 shared experts x 32
}

TEST(ShardPlanTest, ImpossibleLayoutsNameTheProblem) {
  auto c = PresetConfig("tiny-kimi-k2");  // 4 heads
  EXPECT_THAT(std::string(ShardPlan::Create(*c, 8, 8).status().message()),
              HasSubstr("num_attention_heads 4"));
  EXPECT_THAT(std::string(ShardPlan::Create(*c, 6, 4).status().message()),
              HasSubstr("divide the world size 6"));
  EXPECT_FALSE(ShardPlan::Create(*c, 0, 1).ok());
}

// GQA: each TP rank keeps the KV heads its query heads read.
TEST(ShardPlanTest, GqaKvHeadsFollowTheQueryHeads) {
  auto c = PresetConfig("tiny-qwen3");  // 8 query heads, 2 KV heads (groups of 4)
  ASSERT_TRUE(c.ok());
  auto two = ShardPlan::Create(*c, 2, 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->Shard(1).heads, (Range{4, 8}));
  EXPECT_EQ(two->Shard(1).kv_heads, (Range{1, 2}));
  auto eight = ShardPlan::Create(*c, 8, 8);  // more ranks than KV heads: each is held by 4
  ASSERT_TRUE(eight.ok());
  EXPECT_EQ(eight->Shard(3).kv_heads, (Range{0, 1}));
  EXPECT_EQ(eight->Shard(4).kv_heads, (Range{1, 2}));
  c->num_attention_heads = 12;  // 3 KV heads of 4 query heads; T = 2 would split KV head 1
  c->num_key_value_heads = 3;
  EXPECT_THAT(std::string(ShardPlan::Create(*c, 2, 2).status().message()),
              HasSubstr("num_key_value_heads 3"));
  EXPECT_TRUE(ShardPlan::Create(*c, 3, 3).ok());
}

}  // namespace
}  // namespace moe
