#include "common/kv_layout.h"

#include <algorithm>
#include <map>
#include <utility>

namespace moe {

KvLayout KvLayout::For(const ModelConfig& c, int64_t mtp_layers) {
  KvLayout k;
  // Layers by what they see: (window, chunk), (0, 0) first.
  std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> by_kind;
  by_kind[{0, 0}];
  const int64_t layers = c.num_hidden_layers + mtp_layers;
  for (int64_t l = 0; l < layers; ++l) {
    const bool decoder = l < c.num_hidden_layers;
    const int64_t window = decoder && c.IsSliding(l) ? c.sliding_window : 0;
    const int64_t chunk = decoder && c.IsChunked(l) ? c.attention_chunk_size : 0;
    by_kind[{window, chunk}].push_back(l);
  }
  // Blocks of as many slots as there are full-attention layers (all layers when there are none);
  // the window layers fill as many groups of that size as they need.
  const std::vector<int64_t>& full = by_kind[{0, 0}];
  k.slots = full.empty() ? layers : static_cast<int64_t>(full.size());
  k.groups.push_back({full, 0, 0});
  for (const auto& [kind, members] : by_kind) {
    if (kind == std::make_pair<int64_t, int64_t>(0, 0)) continue;
    for (size_t i = 0; i < members.size(); i += static_cast<size_t>(k.slots)) {
      const size_t end = std::min(members.size(), i + static_cast<size_t>(k.slots));
      k.groups.push_back({{members.begin() + static_cast<std::ptrdiff_t>(i),
                           members.begin() + static_cast<std::ptrdiff_t>(end)},
                          kind.first,
                          kind.second});
    }
  }
  k.group_of.assign(static_cast<size_t>(layers), 0);
  k.slot_of.assign(static_cast<size_t>(layers), 0);
  for (size_t g = 0; g < k.groups.size(); ++g) {
    for (size_t i = 0; i < k.groups[g].layers.size(); ++i) {
      const size_t l = static_cast<size_t>(k.groups[g].layers[i]);
      k.group_of[l] = static_cast<int>(g);
      k.slot_of[l] = static_cast<int>(i);
    }
  }
  return k;
}

int64_t KvLayout::FirstLiveBlock(int64_t g, int64_t start, int64_t block_size) const {
  const Group& group = groups[static_cast<size_t>(g)];
  return FirstVisibleKey(start, group.window, group.chunk) / block_size;
}

void KvLayout::ReleasePassedBlocks(std::vector<std::vector<int32_t>>& window_tables, int64_t start,
                                   int64_t block_size,
                                   const std::function<void(int32_t)>& release) const {
  for (size_t w = 0; w < window_tables.size(); ++w) {
    std::vector<int32_t>& table = window_tables[w];
    const size_t live = std::min(
        table.size(),
        static_cast<size_t>(FirstLiveBlock(static_cast<int64_t>(w) + 1, start, block_size)));
    for (size_t i = 0; i < live; ++i) {
      if (table[i] >= 0) release(table[i]);
      table[i] = -1;
    }
  }
}

int64_t KvLayout::MostBlocks(int64_t tokens, int64_t step_tokens, int64_t block_size) const {
  const int64_t all = (tokens + block_size - 1) / block_size;
  int64_t blocks = groups.empty() ? all : 0;
  for (const Group& g : groups) {
    const int64_t span = std::max(g.window, g.chunk);
    // A step reads the span before its first position and writes its own: at most
    // span - 1 + step_tokens positions, over one block more than they fill.
    blocks +=
        span == 0 ? all : std::min(all, (span - 1 + step_tokens + block_size - 1) / block_size + 1);
  }
  return blocks;
}

int64_t KvLayout::MostTokens(int64_t blocks, int64_t step_tokens, int64_t block_size) const {
  int64_t lo = 0, hi = blocks * block_size;  // MostBlocks grows with the tokens
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (MostBlocks(mid, step_tokens, block_size) <= blocks) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace moe
