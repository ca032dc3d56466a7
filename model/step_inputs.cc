#include "model/step_inputs.h"

#include <algorithm>

namespace moe {

StepInputs StepInputs::Build(Ops& ops, const ForwardBatch& batch, const KvCache& cache) {
  StepInputs s;
  s.batch = &batch;
  s.rope_cos = ops.Place(batch.rope_cos);
  s.rope_sin = ops.Place(batch.rope_sin);
  s.local_rope_cos = ops.Place(batch.local_rope_cos);
  s.local_rope_sin = ops.Place(batch.local_rope_sin);
  const int64_t bs = cache.block_size();
  // Blocks of a table that a query seeing `context` positions reads.
  const auto blocks_seen = [bs](int64_t context) { return (context + bs - 1) / bs; };
  std::vector<int32_t> rows, context;
  for (const ForwardChunk& c : batch.chunks) {
    if (c.num_tokens <= kFewTokenChunk) {
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        rows.push_back(static_cast<int32_t>(c.first_token + i));
        context.push_back(static_cast<int32_t>(c.start_pos + i + 1));
        s.table_width = std::max(s.table_width, blocks_seen(c.start_pos + i + 1));
      }
    } else {
      const int64_t offset =
          s.prefill.empty() ? 0 : s.prefill.back().slot_offset + s.prefill.back().context;
      s.prefill.push_back({c.first_token, c.num_tokens, c.start_pos, c.context(), offset});
    }
  }
  s.decode = static_cast<int64_t>(rows.size());
  const auto n = static_cast<size_t>(batch.num_tokens());
  const int64_t groups = std::max<int64_t>(1, static_cast<int64_t>(cache.layout().groups.size()));
  for (int g = 0; g < groups; ++g) {
    std::vector<int32_t> slots(n), tables(static_cast<size_t>(s.decode * s.table_width), -1),
        prefill;
    auto slot = [&](const std::vector<int32_t>& table, int64_t pos) {
      const int32_t block = table[static_cast<size_t>(pos / bs)];
      return block < 0 ? -1 : static_cast<int32_t>(block * bs + pos % bs);
    };
    int64_t d = 0;
    for (const ForwardChunk& c : batch.chunks) {
      const std::vector<int32_t>& table = c.table(g);
      for (int64_t i = 0; i < c.num_tokens; ++i)
        slots[c.first_token + i] = slot(table, c.start_pos + i);
      if (c.num_tokens <= kFewTokenChunk) {
        for (int64_t i = 0; i < c.num_tokens; ++i, ++d) {
          const int64_t used = std::min<int64_t>(blocks_seen(c.start_pos + i + 1),
                                                 static_cast<int64_t>(table.size()));
          std::copy_n(table.begin(), used, tables.begin() + d * s.table_width);
        }
      } else {
        for (int64_t t = 0; t < c.context(); ++t) prefill.push_back(slot(table, t));
      }
    }
    s.groups.push_back(
        {ops.Place(std::move(slots)), ops.Place(std::move(tables)), ops.Place(std::move(prefill))});
  }
  s.decode_rows = ops.Place(std::move(rows));
  s.decode_context = ops.Place(std::move(context));
  return s;
}

}  // namespace moe
