// StepInputs: a step's cache slots, decode queries and prefill context rows, per KV layout group,
// for a batch that mixes a decode token, a chunk of drafts to verify and a prefill chunk.
#include "model/step_inputs.h"

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"

namespace moe {
namespace {

std::vector<int32_t> Values(const DeviceArray<int32_t>& a) {
  return std::vector<int32_t>(a.data(), a.data() + a.size());
}

TEST(StepInputsTest, SlotsQueriesAndPrefillRowsOfEveryGroup) {
  // Two groups: the full layers (group 0) and a window group whose first block was freed.
  KvLayout layout;
  layout.groups = {{{0}, 0, 0}, {{1}, 4, 0}};
  layout.slots = 1;
  layout.group_of = {0, 1};
  layout.slot_of = {0, 0};
  const int64_t bs = 4;
  CpuOps ops;
  const KvCache cache(ops, layout, 16, bs, 2);

  const std::vector<int32_t> decode_table = {3, 7}, verify_table = {9}, prefill_table = {5, 2};
  const std::vector<std::vector<int32_t>> decode_windows = {{-1, 8}}, verify_windows = {{10}},
                                          prefill_windows = {{-1, 11}};
  ForwardBatch batch;
  // A decode token at position 5, three tokens to verify at 0..2, a prefill of 6 tokens at 2..7.
  batch.chunks = {{0, 1, 5, &decode_table, &decode_windows},
                  {1, 3, 0, &verify_table, &verify_windows},
                  {4, 6, 2, &prefill_table, &prefill_windows}};
  batch.positions = {5, 0, 1, 2, 2, 3, 4, 5, 6, 7};
  batch.rope_cos = Tensor({10, 1});
  batch.rope_sin = Tensor({10, 1});

  const StepInputs s = StepInputs::Build(ops, batch, cache);
  EXPECT_EQ(s.num_tokens(), 10);
  EXPECT_EQ(s.decode, 4);  // the decode token and the three drafts
  EXPECT_EQ(Values(s.decode_rows), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(Values(s.decode_context), (std::vector<int32_t>{6, 1, 2, 3}));
  EXPECT_EQ(s.table_width, 2);
  ASSERT_EQ(s.prefill.size(), 1u);
  EXPECT_EQ(s.prefill[0].first_token, 4);
  EXPECT_EQ(s.prefill[0].num_tokens, 6);
  EXPECT_EQ(s.prefill[0].start_pos, 2);
  EXPECT_EQ(s.prefill[0].context, 8);
  EXPECT_EQ(s.prefill[0].slot_offset, 0);
  ASSERT_EQ(s.groups.size(), 2u);

  const StepInputs::Group& full = s.groups[0];
  // Position p of a table lands in row table[p / 4] * 4 + p % 4.
  EXPECT_EQ(Values(full.slots), (std::vector<int32_t>{29, 36, 37, 38, 22, 23, 8, 9, 10, 11}));
  EXPECT_EQ(Values(full.decode_tables), (std::vector<int32_t>{3, 7, 9, -1, 9, -1, 9, -1}));
  EXPECT_EQ(Values(full.prefill_slots), (std::vector<int32_t>{20, 21, 22, 23, 8, 9, 10, 11}));

  const StepInputs::Group& window = s.groups[1];
  EXPECT_EQ(Values(window.slots), (std::vector<int32_t>{33, 40, 41, 42, -1, -1, 44, 45, 46, 47}));
  EXPECT_EQ(Values(window.decode_tables), (std::vector<int32_t>{-1, 8, 10, -1, 10, -1, 10, -1}));
  // The freed block's positions read as -1 (a zero row when gathered).
  EXPECT_EQ(Values(window.prefill_slots), (std::vector<int32_t>{-1, -1, -1, -1, 44, 45, 46, 47}));
}

// A recorded step's inputs: rounded table widths, and a later step of the same shape written into
// the same arrays, as Build would have made them for it.
TEST(StepInputsTest, RewriteWritesAStepOfTheSameShapeIntoTheSameArrays) {
  KvLayout layout;
  layout.groups = {{{0}, 0, 0}};
  layout.slots = 1;
  layout.group_of = {0};
  layout.slot_of = {0};
  CpuOps ops;
  const KvCache cache(ops, layout, 64, 4, 2);
  const std::vector<int32_t> a = {3, 7}, b = {5, 1, 9, 2, 4, 6, 8, 10, 11};
  ForwardBatch first;  // two decode tokens at positions 5 and 1
  first.chunks = {{0, 1, 5, &a, nullptr}, {1, 1, 1, &b, nullptr}};
  first.positions = {5, 1};
  first.rope_cos = Tensor({2, 1}, {0.5f, 0.25f});
  first.rope_sin = Tensor({2, 1}, {0.1f, 0.2f});
  EXPECT_EQ(StepInputs::TableWidth(first, 4, false), 2);
  EXPECT_EQ(StepInputs::TableWidth(first, 4, true), 8);
  StepInputs s = StepInputs::Build(ops, first, cache, /*rounded_width=*/true);
  EXPECT_EQ(s.table_width, 8);
  EXPECT_EQ(Values(s.groups[0].decode_tables),
            (std::vector<int32_t>{3, 7, -1, -1, -1, -1, -1, -1, 5, -1, -1, -1, -1, -1, -1, -1}));
  const int32_t* tables = s.groups[0].decode_tables.data();

  ForwardBatch next;  // the same two sequences one and 28 positions on: 8 blocks seen
  next.chunks = {{0, 1, 6, &a, nullptr}, {1, 1, 29, &b, nullptr}};
  next.positions = {6, 29};
  next.rope_cos = Tensor({2, 1}, {0.75f, 0.125f});
  next.rope_sin = Tensor({2, 1}, {0.3f, 0.4f});
  ASSERT_TRUE(s.Rewrite(ops, next, cache).ok());
  EXPECT_EQ(s.groups[0].decode_tables.data(), tables);  // in place
  const StepInputs want = StepInputs::Build(ops, next, cache, /*rounded_width=*/true);
  EXPECT_EQ(Values(s.groups[0].decode_tables), Values(want.groups[0].decode_tables));
  EXPECT_EQ(Values(s.groups[0].slots), (std::vector<int32_t>{30, 41}));
  EXPECT_EQ(Values(s.decode_context), (std::vector<int32_t>{7, 30}));
  EXPECT_EQ(s.rope_cos.data()[0], 0.75f);
  EXPECT_EQ(s.rope_sin.data()[1], 0.4f);
  EXPECT_EQ(s.batch, &next);

  // Tables wider than the recorded ones, or another number of tokens: refused.
  ForwardBatch wider;
  wider.chunks = {{0, 1, 6, &a, nullptr}, {1, 1, 33, &b, nullptr}};
  wider.positions = {6, 33};
  wider.rope_cos = next.rope_cos;
  wider.rope_sin = next.rope_sin;
  EXPECT_FALSE(s.Rewrite(ops, wider, cache).ok());
  ForwardBatch fewer;
  fewer.chunks = {{0, 1, 6, &a, nullptr}};
  fewer.positions = {6};
  fewer.rope_cos = Tensor({1, 1});
  fewer.rope_sin = Tensor({1, 1});
  EXPECT_FALSE(s.Rewrite(ops, fewer, cache).ok());
}

}  // namespace
}  // namespace moe
