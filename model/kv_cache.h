// The paged MLA latent KV cache. Per token and layer it stores kv_lora_rank + qk_rope_head_dim
// values — the normalised c_kv and the rotated, head-shared k_pe — never per-head K/V. Storage is
// a pool of fixed-size blocks per layer; a sequence's block table (assigned by whoever schedules:
// the coordinator, or a local BlockAllocator) maps its positions to blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/block_allocator.h"
#include "common/model_config.h"
#include "common/tensor.h"

namespace moe {

class KvCache {
 public:
  KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_size, int64_t dim);
  // As many float32 blocks as fit in `bytes` (for the decoder's layers and `mtp_layers` MTP
  // layers); an error when none does.
  static absl::StatusOr<int64_t> BlocksForBudget(const ModelConfig& config, int64_t block_size,
                                                 uint64_t bytes, int64_t mtp_layers = 0);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t dim() const { return dim_; }
  // The block pool of `layer`: block b starts at Layer(layer) + b * block_size * dim.
  float* Layer(int64_t layer) { return data_.data() + layer * layer_stride_; }
  const float* Layer(int64_t layer) const { return data_.data() + layer * layer_stride_; }
  float* Row(int64_t layer, int32_t block, int64_t offset) {
    return Layer(layer) + (static_cast<int64_t>(block) * block_size_ + offset) * dim_;
  }

 private:
  int64_t num_layers_, num_blocks_, block_size_, dim_, layer_stride_;
  FloatVector data_;
};

}  // namespace moe
