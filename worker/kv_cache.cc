#include "worker/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace moe {

KvCache::KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t dim)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      dim_(dim),
      layer_stride_(num_blocks * block_size * dim),
      data_(static_cast<size_t>(num_layers * num_blocks * block_size * dim), 0.0f) {}

absl::StatusOr<KvCache> KvCache::WithBudget(const ModelConfig& c, int64_t block_size,
                                            uint64_t bytes) {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size must be > 0, got ", block_size));
  }
  const uint64_t per_block = static_cast<uint64_t>(LatentBytesPerToken(c, sizeof(float))) *
                             static_cast<uint64_t>(block_size);
  const int64_t blocks = static_cast<int64_t>(bytes / per_block);
  if (blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache budget of ", bytes, " bytes holds no block of ", per_block, " bytes"));
  }
  return KvCache(c.num_hidden_layers, blocks, block_size, c.kv_cache_dim());
}

int64_t KvCache::LatentBytesPerToken(const ModelConfig& c, int64_t bytes_per_value) {
  return c.num_hidden_layers * c.kv_cache_dim() * bytes_per_value;
}

int64_t KvCache::ExpandedBytesPerToken(const ModelConfig& c, int64_t bytes_per_value) {
  return c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim) *
         bytes_per_value;
}

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
  for (auto it = table->rbegin(); it != table->rend(); ++it) free_.push_back(*it);
  table->clear();
}

}  // namespace moe
