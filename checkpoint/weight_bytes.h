// Bytes of checkpoint data one rank read while loading its shard, by part of the model — what
// lets a test check that a rank reads only its share.
#pragma once

#include <cstdint>
#include <string>

#include "checkpoint/checkpoint.h"

namespace moe {

struct WeightBytes {
  uint64_t embedding = 0;             // embed_tokens and lm_head rows (vocab-parallel)
  uint64_t attention_head_split = 0;  // q_b_proj / q_proj, kv_b_proj, o_proj (split by head)
  uint64_t attention_replicated = 0;  // q_a_proj, kv_a_proj_with_mqa and the attention norms
  uint64_t dense_mlp = 0;             // first_k_dense_replace layers (TP rows)
  uint64_t shared_experts = 0;        // (TP rows)
  uint64_t routed_experts = 0;        // this rank's experts only
  uint64_t router = 0;                // gate weight and correction bias (replicated)
  uint64_t norms = 0;                 // layer norms and the final norm (replicated)
  // The MTP layer's own tensors (embedding, enorm/hnorm, eh_proj, shared head; its decoder block
  // counts in the parts above), when it is loaded.
  uint64_t mtp = 0;
  uint64_t total() const {
    return embedding + attention_head_split + attention_replicated + dense_mlp + shared_experts +
           routed_experts + router + norms + mtp;
  }
  std::string Describe() const;  // "12.3 MB: routed experts 8.1 MB, ..."
};

// Runs `load` and adds the checkpoint bytes it read to `*counter`.
template <typename F>
auto Metered(const Checkpoint& ck, uint64_t* counter, F&& load) {
  const uint64_t before = ck.bytes_read();
  auto result = load();
  *counter += ck.bytes_read() - before;
  return result;
}

}  // namespace moe
