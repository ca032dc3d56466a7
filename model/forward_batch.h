// One step's tokens as the layers see them: the chunks of several sequences (prefill chunks and
// decode tokens mixed) laid end to end, with each token's position and RoPE angles.
#pragma once

#include <cstdint>
#include <vector>

#include "common/tensor.h"

namespace moe {

// Chunks of at most this many tokens (a decode token, or one with drafts to verify) attend token
// by token over the cache; longer ones attend as a prefill.
constexpr int64_t kFewTokenChunk = 4;

struct ForwardChunk {
  int64_t first_token = 0;  // row of its first token in the step's [num_tokens, hidden] buffers
  int64_t num_tokens = 0;
  int64_t start_pos = 0;  // position of its first token; the cache holds positions before it
  const std::vector<int32_t>* block_table = nullptr;  // the full-attention layers' (group 0)
  // The other groups' (KvLayout::groups[1...]); a block no future query of the group sees is -1.
  const std::vector<std::vector<int32_t>>* window_block_tables = nullptr;
  int64_t context() const { return start_pos + num_tokens; }
  const std::vector<int32_t>& table(int group) const {
    return group == 0 ? *block_table : (*window_block_tables)[static_cast<size_t>(group - 1)];
  }
};

struct ForwardBatch {
  std::vector<ForwardChunk> chunks;
  std::vector<int64_t> positions;  // per token
  Tensor rope_cos, rope_sin;       // [num_tokens, qk_rope_head_dim / 2]
  // Gemma 3's sliding-window layers' angles (their own base); empty for other models.
  Tensor local_rope_cos, local_rope_sin;
  int64_t num_tokens() const { return static_cast<int64_t>(positions.size()); }
};

// A step's tokens as two micro-batches (two-batch overlap): rows [0, first_row[1]) and the rest,
// each a batch of its own (chunks re-based, angles copied). The split is at the chunk boundary
// nearest the middle, or at the middle inside a chunk when both its pieces keep more than
// kFewTokenChunk tokens (so a prefill chunk stays a prefill: the second piece reads the first's
// keys from the cache, which the first micro-batch writes first in every layer).
struct MicroBatches {
  ForwardBatch batch[2];
  int64_t first_row_of_second = 0;
};
MicroBatches SplitInTwo(const ForwardBatch& batch);

}  // namespace moe
