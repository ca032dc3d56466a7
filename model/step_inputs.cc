#include "model/step_inputs.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

// Blocks of a table that a query seeing `context` positions reads.
int64_t BlocksSeen(int64_t context, int64_t block_size) {
  return (context + block_size - 1) / block_size;
}

// The index arrays of StepInputs in host memory, tables `table_width` wide.
struct HostInputs {
  struct Group {
    std::vector<int32_t> slots, decode_tables, prefill_slots;
  };
  std::vector<int32_t> decode_rows, decode_context;
  std::vector<Group> groups;
  std::vector<StepInputs::Prefill> prefill;
};

HostInputs Collect(const ForwardBatch& batch, const KvCache& cache, int64_t table_width) {
  HostInputs h;
  const int64_t bs = cache.block_size();
  for (const ForwardChunk& c : batch.chunks) {
    if (c.num_tokens <= kFewTokenChunk) {
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        h.decode_rows.push_back(static_cast<int32_t>(c.first_token + i));
        h.decode_context.push_back(static_cast<int32_t>(c.start_pos + i + 1));
      }
    } else {
      const int64_t offset =
          h.prefill.empty() ? 0 : h.prefill.back().slot_offset + h.prefill.back().context;
      h.prefill.push_back({c.first_token, c.num_tokens, c.start_pos, c.context(), offset});
    }
  }
  const auto decode = static_cast<int64_t>(h.decode_rows.size());
  const auto n = static_cast<size_t>(batch.num_tokens());
  const int64_t groups = std::max<int64_t>(1, static_cast<int64_t>(cache.layout().groups.size()));
  for (int g = 0; g < groups; ++g) {
    HostInputs::Group& out = h.groups.emplace_back();
    out.slots.resize(n);
    out.decode_tables.assign(static_cast<size_t>(decode * table_width), -1);
    auto slot = [&](const std::vector<int32_t>& table, int64_t pos) {
      const int32_t block = table[static_cast<size_t>(pos / bs)];
      return block < 0 ? -1 : static_cast<int32_t>(block * bs + pos % bs);
    };
    int64_t d = 0;
    for (const ForwardChunk& c : batch.chunks) {
      const std::vector<int32_t>& table = c.table(g);
      for (int64_t i = 0; i < c.num_tokens; ++i)
        out.slots[c.first_token + i] = slot(table, c.start_pos + i);
      if (c.num_tokens <= kFewTokenChunk) {
        for (int64_t i = 0; i < c.num_tokens; ++i, ++d) {
          const int64_t used = std::min<int64_t>(BlocksSeen(c.start_pos + i + 1, bs),
                                                 static_cast<int64_t>(table.size()));
          std::copy_n(table.begin(), used, out.decode_tables.begin() + d * table_width);
        }
      } else {
        for (int64_t t = 0; t < c.context(); ++t) out.prefill_slots.push_back(slot(table, t));
      }
    }
  }
  return h;
}

}  // namespace

int64_t StepInputs::TableWidth(const ForwardBatch& batch, int64_t block_size, bool rounded) {
  int64_t width = 0;
  for (const ForwardChunk& c : batch.chunks) {
    if (c.num_tokens <= kFewTokenChunk)
      width = std::max(width, BlocksSeen(c.context(), block_size));
  }
  if (!rounded || width == 0) return width;
  int64_t p = 8;
  while (p < width) p *= 2;
  return p;
}

StepInputs StepInputs::Build(Ops& ops, const ForwardBatch& batch, const KvCache& cache,
                             bool rounded_width) {
  StepInputs s;
  s.batch = &batch;
  s.rope_cos = ops.Place(batch.rope_cos);
  s.rope_sin = ops.Place(batch.rope_sin);
  s.local_rope_cos = ops.Place(batch.local_rope_cos);
  s.local_rope_sin = ops.Place(batch.local_rope_sin);
  s.table_width = TableWidth(batch, cache.block_size(), rounded_width);
  HostInputs h = Collect(batch, cache, s.table_width);
  s.decode = static_cast<int64_t>(h.decode_rows.size());
  s.prefill = std::move(h.prefill);
  for (HostInputs::Group& g : h.groups) {
    s.groups.push_back({ops.Place(std::move(g.slots)), ops.Place(std::move(g.decode_tables)),
                        ops.Place(std::move(g.prefill_slots))});
  }
  s.decode_rows = ops.Place(std::move(h.decode_rows));
  s.decode_context = ops.Place(std::move(h.decode_context));
  return s;
}

absl::Status StepInputs::Rewrite(Ops& ops, const ForwardBatch& batch, const KvCache& cache) {
  if (TableWidth(batch, cache.block_size(), false) > table_width) {
    return absl::InvalidArgumentError(
        absl::StrCat("a step reading more than the ", table_width, " blocks its inputs hold"));
  }
  const HostInputs h = Collect(batch, cache, table_width);
  std::vector<std::pair<const std::vector<int32_t>*, const DeviceArray<int32_t>*>> ints = {
      {&h.decode_rows, &decode_rows}, {&h.decode_context, &decode_context}};
  for (size_t g = 0; g < groups.size() && g < h.groups.size(); ++g) {
    ints.push_back({&h.groups[g].slots, &groups[g].slots});
    ints.push_back({&h.groups[g].decode_tables, &groups[g].decode_tables});
    ints.push_back({&h.groups[g].prefill_slots, &groups[g].prefill_slots});
  }
  const std::vector<std::pair<const Tensor*, const DeviceArray<float>*>> floats = {
      {&batch.rope_cos, &rope_cos},
      {&batch.rope_sin, &rope_sin},
      {&batch.local_rope_cos, &local_rope_cos},
      {&batch.local_rope_sin, &local_rope_sin}};
  bool same = h.groups.size() == groups.size() && h.prefill.size() == prefill.size();
  for (size_t i = 0; same && i < prefill.size(); ++i) {  // read on the host: must be the same
    const Prefill &a = h.prefill[i], &b = prefill[i];
    same = a.first_token == b.first_token && a.num_tokens == b.num_tokens &&
           a.start_pos == b.start_pos && a.context == b.context;
  }
  for (const auto& [host, array] : ints)
    same &= static_cast<int64_t>(host->size()) == array->size();
  for (const auto& [host, array] : floats) same &= host->numel() == array->size();
  if (!same) {
    return absl::InvalidArgumentError("a step of another shape than the inputs it is written into");
  }
  for (const auto& [host, array] : ints) {
    ops.CopyFromHost(host->data(), host->size() * sizeof(int32_t), array->data());
  }
  for (const auto& [host, array] : floats)
    ops.CopyFromHost(host->data(), host->bytes(), array->data());
  this->batch = &batch;
  return absl::OkStatus();
}

}  // namespace moe
