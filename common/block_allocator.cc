#include "common/block_allocator.h"

#include "absl/strings/str_cat.h"

namespace moe {

BlockAllocator::BlockAllocator(int64_t num_blocks) : total_(num_blocks) {
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::Status BlockAllocator::EnsureCapacity(std::vector<int32_t>* table, int64_t tokens,
                                            int64_t block_size) {
  const int64_t need = (tokens + block_size - 1) / block_size - static_cast<int64_t>(table->size());
  if (need <= 0) return absl::OkStatus();
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: need ", need, " more blocks for ",
                                                     tokens, " tokens, ", free_blocks(),
                                                     " free of ", total_));
  }
  for (int64_t i = 0; i < need; ++i) {
    table->push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void BlockAllocator::Free(std::vector<int32_t>* table) {
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    if (*it >= 0) free_.push_back(*it);
  }
  table->clear();
}

}  // namespace moe
