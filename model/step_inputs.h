// One (micro-)batch's indices and RoPE angles in the device's memory, built once per step from its
// ForwardBatch before the layers run and read by all of them: where each token's KV goes in the
// cache, which rows are decode queries and what they see, which cache rows each prefill chunk
// reads. Per KV layout group (common/kv_layout.h), since each group has tables of its own.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"

namespace moe {

struct StepInputs {
  // A chunk of more than kFewTokenChunk tokens: it attends as a prefill over its whole context.
  struct Prefill {
    int64_t first_token, num_tokens, start_pos, context;
    int64_t slot_offset;  // its context's rows in each group's prefill_slots
  };
  struct Group {
    DeviceArray<int32_t> slots;          // [tokens]: each token's cache row, block * bs + offset
    DeviceArray<int32_t> decode_tables;  // [decode tokens, table_width], -1 past a table's end
    DeviceArray<int32_t> prefill_slots;  // per prefill chunk, its context's cache rows (-1: freed)
  };

  const ForwardBatch* batch = nullptr;
  DeviceArray<float> rope_cos, rope_sin, local_rope_cos, local_rope_sin;  // ForwardBatch's
  std::vector<Group> groups;
  // Decode queries: the tokens of chunks of at most kFewTokenChunk tokens (a decode token, or
  // drafts to verify), each seeing the positions up to its own.
  int64_t decode = 0, table_width = 0;
  DeviceArray<int32_t> decode_rows;     // [decode]: their rows in the step
  DeviceArray<int32_t> decode_context;  // [decode]: positions each sees
  std::vector<Prefill> prefill;

  int64_t num_tokens() const { return batch->num_tokens(); }
  // Blocks a decode query of `batch` reads at most, rounded up to a power of two of at least 8
  // with `rounded` (few widths, so few recorded shapes; the tables' padding is -1).
  static int64_t TableWidth(const ForwardBatch& batch, int64_t block_size, bool rounded);
  static StepInputs Build(Ops& ops, const ForwardBatch& batch, const KvCache& cache,
                          bool rounded_width = false);
  // Writes the inputs of `batch` into these arrays (CopyFromHost), which a recorded step reads:
  // an error unless `batch` has this one's shape (tokens, decode queries, prefill context rows,
  // table width at most this one's).
  absl::Status Rewrite(Ops& ops, const ForwardBatch& batch, const KvCache& cache);
};

}  // namespace moe
