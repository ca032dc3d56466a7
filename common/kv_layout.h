// How the layers' KV share the paged cache. Layers that see every earlier position (full
// attention) form group 0. Layers that see only the last `window` positions (Gemma 3's sliding
// layers) or their own attention chunk (Llama 4's chunked layers) form further groups, each with
// its own block table per sequence, so that a block none of their future queries can see goes
// back to the pool while the full layers keep theirs. Every group has at most `slots` layers and
// a block holds `slots` layers' rows of block_size positions, so the tables of all groups draw
// from one pool of equal blocks. Models without window layers have one group of all layers (and
// the MTP layers), with one table as before.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "common/model_config.h"

namespace moe {

// The first key position a query at `position` sees under a sliding window or attention chunks
// (0 for both: no limit).
inline int64_t FirstVisibleKey(int64_t position, int64_t window, int64_t chunk) {
  int64_t first = 0;
  if (window > 0 && position + 1 > window) first = position + 1 - window;
  if (chunk > 0 && position / chunk * chunk > first) first = position / chunk * chunk;
  return first;
}

struct KvLayout {
  struct Group {
    std::vector<int64_t> layers;  // slot i of a block holds layers[i]
    int64_t window = 0;           // sliding window (0: none)
    int64_t chunk = 0;            // attention chunk (0: none)
  };
  std::vector<Group> groups;           // groups[0]: the full-attention layers
  int64_t slots = 0;                   // layers per block
  std::vector<int> group_of, slot_of;  // per layer: decoder layers, then the MTP layers

  // The layout of `config`'s decoder layers and `mtp_layers` MTP layers (full attention).
  static KvLayout For(const ModelConfig& config, int64_t mtp_layers = 0);

  // Groups beyond the first: the tables a sequence holds besides its full-attention one.
  int64_t window_groups() const {
    return groups.empty() ? 0 : static_cast<int64_t>(groups.size()) - 1;
  }
  // The first block of group `g`'s table that a step starting at position `start` (or any later
  // one) reads or writes; the blocks before it can be freed.
  int64_t FirstLiveBlock(int64_t g, int64_t start, int64_t block_size) const;
  // Gives back what the windows passed: in each window group's table (`window_tables`, one per
  // group) every block before FirstLiveBlock(g, start) goes to `release` and becomes -1.
  void ReleasePassedBlocks(std::vector<std::vector<int32_t>>& window_tables, int64_t start,
                           int64_t block_size, const std::function<void(int32_t)>& release) const;
  // Bytes of one block of `dim` float32 values per position and layer slot.
  int64_t BlockBytes(int64_t dim, int64_t block_size) const {
    return slots * dim * static_cast<int64_t>(sizeof(float)) * block_size;
  }
  // The most blocks a sequence of `tokens` positions holds, all groups together, while it runs
  // steps of at most `step_tokens` tokens.
  int64_t MostBlocks(int64_t tokens, int64_t step_tokens, int64_t block_size) const;
  // The longest sequence `blocks` blocks hold (MostBlocks within it).
  int64_t MostTokens(int64_t blocks, int64_t step_tokens, int64_t block_size) const;
};

}  // namespace moe
