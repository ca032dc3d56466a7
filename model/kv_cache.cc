#include "model/kv_cache.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace moe {

KvCache::KvCache(Ops& ops, KvLayout layout, int64_t num_blocks, int64_t block_size, int64_t dim)
    : layout_(std::move(layout)),
      num_blocks_(num_blocks),
      block_size_(block_size),
      dim_(dim),
      slot_stride_(num_blocks * block_size * dim),
      data_(ops.AllocateZeroed(layout_.slots * num_blocks * block_size * dim)) {}

absl::StatusOr<int64_t> KvCache::BlocksForBudget(const ModelConfig& c, int64_t block_size,
                                                 uint64_t bytes, int64_t mtp_layers) {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size must be > 0, got ", block_size));
  }
  const uint64_t per_block =
      static_cast<uint64_t>(KvLayout::For(c, mtp_layers).BlockBytes(c.kv_cache_dim(), block_size));
  const int64_t blocks = static_cast<int64_t>(bytes / per_block);
  if (blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache budget of ", bytes, " bytes holds no block of ", per_block, " bytes"));
  }
  return blocks;
}

}  // namespace moe
