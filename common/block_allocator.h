// A free list of KV-cache blocks: whoever schedules sequences (the coordinator, or offline
// generation) assigns blocks with it; the engine only reads and writes the blocks it is given.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace moe {

// Free list of cache blocks.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t total_blocks() const { return total_; }
  // Appends blocks to `table` until it covers `tokens` positions; ResourceExhausted (and no
  // change) when too few are free.
  absl::Status EnsureCapacity(std::vector<int32_t>* table, int64_t tokens, int64_t block_size);
  // Frees the table's blocks (entries of -1 hold none) and clears it.
  void Free(std::vector<int32_t>* table);
  void Free(int32_t block) { free_.push_back(block); }

 private:
  int64_t total_;
  std::vector<int32_t> free_;
};

}  // namespace moe
