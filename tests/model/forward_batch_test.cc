// SplitInTwo: two micro-batches of about half the tokens each, cut at a chunk boundary or inside
// a chunk only where both pieces stay prefills, with positions, angles and chunk offsets that
// describe the same tokens as the whole batch.
#include "model/forward_batch.h"

#include "gtest/gtest.h"

namespace moe {
namespace {

// Chunks of the given lengths, sequence s starting at position 100 * s; the angles' rows hold
// their token's position.
ForwardBatch Batch(const std::vector<int64_t>& lengths) {
  ForwardBatch b;
  static const std::vector<int32_t> table = {0};
  for (size_t s = 0; s < lengths.size(); ++s) {
    ForwardChunk c;
    c.first_token = b.num_tokens();
    c.num_tokens = lengths[s];
    c.start_pos = 100 * static_cast<int64_t>(s);
    c.block_table = &table;
    b.chunks.push_back(c);
    for (int64_t i = 0; i < lengths[s]; ++i) b.positions.push_back(c.start_pos + i);
  }
  b.rope_cos = Tensor({b.num_tokens(), 2});
  b.rope_sin = Tensor({b.num_tokens(), 2});
  for (int64_t t = 0; t < b.num_tokens(); ++t) {
    b.rope_cos.row(t)[1] = static_cast<float>(b.positions[t]);
    b.rope_sin.row(t)[0] = -static_cast<float>(b.positions[t]);
  }
  return b;
}

// Every piece's tokens are the whole batch's rows from `first_row` on.
void ExpectSameTokens(const ForwardBatch& whole, const ForwardBatch& part, int64_t first_row) {
  int64_t row = 0;
  for (const ForwardChunk& c : part.chunks) {
    EXPECT_EQ(c.first_token, row);
    for (int64_t i = 0; i < c.num_tokens; ++i) {
      EXPECT_EQ(part.positions[row + i], c.start_pos + i);
      EXPECT_EQ(part.positions[row + i], whole.positions[first_row + row + i]);
      EXPECT_EQ(part.rope_cos.row(row + i)[1], static_cast<float>(c.start_pos + i));
      EXPECT_EQ(part.rope_sin.row(row + i)[0], -static_cast<float>(c.start_pos + i));
    }
    row += c.num_tokens;
  }
  EXPECT_EQ(row, part.num_tokens());
  EXPECT_TRUE(part.local_rope_cos.empty());
}

TEST(SplitInTwoTest, DecodeTokensSplitInHalves) {
  const ForwardBatch b = Batch(std::vector<int64_t>(7, 1));
  const MicroBatches p = SplitInTwo(b);
  EXPECT_EQ(p.first_row_of_second, 3);  // the boundary nearest 7 / 2
  EXPECT_EQ(p.batch[0].chunks.size(), 3u);
  EXPECT_EQ(p.batch[1].chunks.size(), 4u);
  EXPECT_EQ(p.batch[1].chunks[0].start_pos, 300);
  ExpectSameTokens(b, p.batch[0], 0);
  ExpectSameTokens(b, p.batch[1], 3);
}

TEST(SplitInTwoTest, ALongPrefillIsCutInTheMiddle) {
  const ForwardBatch b = Batch({2, 30, 1});  // rows 2..31 one prompt's chunk
  const MicroBatches p = SplitInTwo(b);
  EXPECT_EQ(p.first_row_of_second, 16);
  ASSERT_EQ(p.batch[0].chunks.size(), 2u);
  ASSERT_EQ(p.batch[1].chunks.size(), 2u);
  EXPECT_EQ(p.batch[0].chunks[1].num_tokens, 14);  // positions 100..113
  EXPECT_EQ(p.batch[1].chunks[0].num_tokens, 16);  // positions 114..129
  EXPECT_EQ(p.batch[1].chunks[0].start_pos, 114);
  ExpectSameTokens(b, p.batch[0], 0);
  ExpectSameTokens(b, p.batch[1], 16);
}

TEST(SplitInTwoTest, FewTokenChunksStayWhole) {
  // A verification chunk of 4 (a token and 3 drafts) and one of 6, whose halves of 3 would attend
  // token by token: both stay whole, the cut at the boundary nearest the middle.
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{4}, {1, 6}, {8, 1, 1}}) {
    const ForwardBatch b = Batch(lengths);
    const MicroBatches p = SplitInTwo(b);
    for (const ForwardBatch& part : p.batch) {
      for (const ForwardChunk& c : part.chunks) {
        EXPECT_EQ(c.num_tokens, lengths[static_cast<size_t>(c.start_pos / 100)]);
      }
    }
    ExpectSameTokens(b, p.batch[0], 0);
    ExpectSameTokens(b, p.batch[1], p.first_row_of_second);
  }
  EXPECT_EQ(SplitInTwo(Batch({1, 6})).first_row_of_second, 1);
  EXPECT_EQ(SplitInTwo(Batch({8, 1, 1})).first_row_of_second, 8);  // |8 - 5| < |0 - 5|
}

TEST(SplitInTwoTest, EmptyAndSingleTokenBatches) {
  const MicroBatches none = SplitInTwo(ForwardBatch{});
  EXPECT_EQ(none.batch[0].num_tokens(), 0);
  EXPECT_EQ(none.batch[1].num_tokens(), 0);
  const MicroBatches one = SplitInTwo(Batch({1}));
  EXPECT_EQ(one.batch[0].num_tokens() + one.batch[1].num_tokens(), 1);
}

}  // namespace
}  // namespace moe
