// How the layers of each family share the KV cache's blocks, and what a sequence holds.
#include "common/kv_layout.h"

#include "common/presets.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::ElementsAre;

TEST(KvLayoutTest, DeepseekHasOneGroupOfEveryLayerAndTheMtpLayer) {
  const ModelConfig c = *PresetConfig("tiny-dsv3");
  const KvLayout k = KvLayout::For(c, 1);
  ASSERT_EQ(k.groups.size(), 1u);
  EXPECT_EQ(k.window_groups(), 0);
  EXPECT_EQ(k.slots, c.num_hidden_layers + 1);
  for (int64_t l = 0; l <= c.num_hidden_layers; ++l) {
    EXPECT_EQ(k.group_of[l], 0);
    EXPECT_EQ(k.slot_of[l], l);
  }
  EXPECT_EQ(k.FirstLiveBlock(0, 1000, 16), 0);
  EXPECT_EQ(k.MostBlocks(100, 512, 16), 7);
  EXPECT_EQ(k.MostTokens(7, 512, 16), 112);
}

// Five sliding layers to one global: blocks of one layer, five window groups of one layer each.
TEST(KvLayoutTest, Gemma3SlidingLayersFormWindowGroupsOfTheGlobalLayersSize) {
  const ModelConfig c = *PresetConfig("tiny-gemma3");  // window 8, layer 5 global
  const KvLayout k = KvLayout::For(c);
  EXPECT_EQ(k.slots, 1);
  ASSERT_EQ(k.groups.size(), 6u);
  EXPECT_THAT(k.groups[0].layers, ElementsAre(5));
  EXPECT_EQ(k.groups[0].window, 0);
  for (size_t g = 1; g < 6; ++g) {
    EXPECT_THAT(k.groups[g].layers, ElementsAre(static_cast<int64_t>(g - 1)));
    EXPECT_EQ(k.groups[g].window, 8);
    EXPECT_EQ(k.group_of[g - 1], static_cast<int>(g));
    EXPECT_EQ(k.slot_of[g - 1], 0);
  }
  // A query at position p sees p - 7 .. p: from position 20 on, keys before 13 are never read.
  EXPECT_EQ(k.FirstLiveBlock(1, 20, 4), 3);  // block 3 holds 12..15
  EXPECT_EQ(k.FirstLiveBlock(1, 7, 4), 0);
  EXPECT_EQ(k.FirstLiveBlock(0, 20, 4), 0);
  // 100 positions in blocks of 4, decoding (steps of 1): 25 blocks for the global layer, and per
  // sliding group the window's 7 earlier positions and its own over at most 3 blocks.
  EXPECT_EQ(k.MostBlocks(100, 1, 4), 25 + 5 * 3);
  // A short sequence holds all its blocks in every group.
  EXPECT_EQ(k.MostBlocks(6, 1, 4), 6 * 2);
  EXPECT_EQ(k.MostTokens(40, 1, 4), 100);
  EXPECT_EQ(k.MostTokens(39, 1, 4), 96);
}

// The real Gemma 3 27B pattern: 62 layers, every 6th global (10), 52 sliding in six groups of up
// to 10 (the last holds 2).
TEST(KvLayoutTest, Gemma3At27BLayerCount) {
  ModelConfig c = *PresetConfig("tiny-gemma3");
  c.num_hidden_layers = 62;
  c.sliding_layers.assign(62, true);
  for (int64_t l = 5; l < 62; l += 6) c.sliding_layers[static_cast<size_t>(l)] = false;
  const KvLayout k = KvLayout::For(c);
  EXPECT_EQ(k.slots, 10);
  ASSERT_EQ(k.groups.size(), 7u);
  EXPECT_THAT(k.groups[0].layers, ElementsAre(5, 11, 17, 23, 29, 35, 41, 47, 53, 59));
  for (size_t g = 1; g < 6; ++g) EXPECT_EQ(k.groups[g].layers.size(), 10u);
  EXPECT_THAT(k.groups[6].layers, ElementsAre(60, 61));
  EXPECT_EQ(k.group_of[60], 6);
  EXPECT_EQ(k.slot_of[61], 1);
  // Decoding at 32k positions with the real window of 1024 in blocks of 64: the global layers'
  // 512 blocks and 17 per sliding group, of 10 layer slots each — 6,140 layer-blocks where one
  // table for all 62 layers held 62 x 512 = 31,744.
  c.sliding_window = 1024;
  const KvLayout real = KvLayout::For(c);
  EXPECT_EQ(real.MostBlocks(32768, 1, 64), 512 + 6 * 17);
}

// Llama 4: the chunked RoPE layers in groups of the NoPE (global) layers' size.
TEST(KvLayoutTest, Llama4ChunkedLayersFormWindowGroups) {
  const ModelConfig c = *PresetConfig("tiny-llama4");  // chunk 8, layer 3 NoPE
  const KvLayout k = KvLayout::For(c);
  EXPECT_EQ(k.slots, 1);
  ASSERT_EQ(k.groups.size(), 4u);
  EXPECT_THAT(k.groups[0].layers, ElementsAre(3));
  EXPECT_EQ(k.groups[1].chunk, 8);
  // A query at position 17 sees its chunk's 16, 17: blocks of 4 before 16 are never read again.
  EXPECT_EQ(k.FirstLiveBlock(1, 17, 4), 4);
}

}  // namespace
}  // namespace moe
