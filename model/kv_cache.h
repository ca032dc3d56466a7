// The paged KV cache. Per token and layer it stores `dim` values: for MLA the latent
// kv_lora_rank + qk_rope_head_dim — the normalised c_kv and the rotated, head-shared k_pe — never
// per-head K/V; for GQA the rank's KV heads' keys and values. Storage is a pool of fixed-size
// blocks per slot of the KvLayout (a slot holds one layer of each layer group); a sequence's block
// tables, one per group (assigned by whoever schedules: the coordinator, or a local
// BlockAllocator), map its positions to blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/block_allocator.h"
#include "common/kv_layout.h"
#include "common/model_config.h"
#include "common/tensor.h"
#include "kernels/ops.h"

namespace moe {

class KvCache {
 public:
  // Zero-filled, in `ops`'s memory.
  KvCache(Ops& ops, KvLayout layout, int64_t num_blocks, int64_t block_size, int64_t dim);
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;
  KvCache(const KvCache&) = delete;  // one cache, never two views of it
  KvCache& operator=(const KvCache&) = delete;
  // As many float32 blocks as fit in `bytes` (for the decoder's layers and `mtp_layers` MTP
  // layers, laid out as KvLayout::For says); an error when none does.
  static absl::StatusOr<int64_t> BlocksForBudget(const ModelConfig& config, int64_t block_size,
                                                 uint64_t bytes, int64_t mtp_layers = 0);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t dim() const { return dim_; }
  // Cache layers: the decoder's, then the MTP layers'.
  int64_t layers() const { return static_cast<int64_t>(layout_.group_of.size()); }
  const KvLayout& layout() const { return layout_; }
  // The group whose block tables hold `layer`'s positions.
  int group(int64_t layer) const { return layout_.group_of[static_cast<size_t>(layer)]; }
  // The block pool of `layer`: block b starts at Layer(layer) + b * block_size * dim.
  float* Layer(int64_t layer) { return data_.data() + SlotOffset(layer); }
  const float* Layer(int64_t layer) const { return data_.data() + SlotOffset(layer); }
  float* Row(int64_t layer, int32_t block, int64_t offset) {
    return Layer(layer) + (static_cast<int64_t>(block) * block_size_ + offset) * dim_;
  }
  const float* Row(int64_t layer, int32_t block, int64_t offset) const {
    return Layer(layer) + (static_cast<int64_t>(block) * block_size_ + offset) * dim_;
  }

 private:
  int64_t SlotOffset(int64_t layer) const {
    return layout_.slot_of[static_cast<size_t>(layer)] * slot_stride_;
  }
  KvLayout layout_;
  int64_t num_blocks_, block_size_, dim_, slot_stride_;
  DeviceArray<float> data_;
};

}  // namespace moe
