// Grouped-query attention (Llama, Qwen3, Mistral, SmolLM3, OLMo 2), split over the TP group by
// query heads, each rank keeping the key/value heads its query heads read:
//   q = q_proj(x) [heads x head_dim], k = k_proj(x), v = v_proj(x) [kv_heads x head_dim]
//   QK-norm where the family has it: RMSNorm per head (Qwen3) or over the whole projection
//     (OLMo 2; under TP its sum of squares is summed over the group)
//   q, k rotated (rotate-half RoPE; Llama 4: interleaved, then an L2 QK-norm) except on NoPE
//     layers (SmolLM3's and Llama 4's no_rope_layers; Llama 4 scales their queries by position);
//     Llama 4's chunked attention on the RoPE layers; Gemma 3's
//     sliding-window layers with their own RoPE base, seeing only the last sliding_window
//     positions
//   [k | v] written to the layer's paged cache; causal softmax(scale q·k) v with query head h
//     reading K/V head h / (heads / kv_heads)
//   o_proj row-parallel: partial sums over the TP group are added.
#pragma once

#include <optional>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_bytes.h"
#include "common/model_config.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/step_inputs.h"
#include "parallel/parallel_context.h"

namespace moe {

class GqaAttention {
 public:
  static absl::StatusOr<GqaAttention> Load(Ops& ops, const ModelConfig& config, Checkpoint& ck,
                                           int64_t layer, const DecoderLayerWeights& w,
                                           const ParallelContext& ctx, float softmax_scale,
                                           WeightBytes* bytes);
  // Values per token in this rank's cache rows: its KV heads' keys and values.
  static int64_t CacheDim(const ModelConfig& config, const RankShard& shard) {
    return 2 * shard.kv_heads.size() * config.head_dim;
  }
  // out [n, hidden] for x [n, hidden] (already normalised where the family does); writes this
  // layer's cache rows.
  absl::Status Forward(const float* x, const StepInputs& step, KvCache& cache, float* out) const;

 private:
  // RMSNorm over the whole projection (OLMo 2): n rows of `norm`'s local values, `ld` apart; the
  // sum of squares of a row is taken over the TP group, divided by how many ranks hold each value.
  absl::Status WholeNorm(float* x, int64_t n, int64_t ld, int64_t width, const RmsNorm& norm,
                         int64_t replication) const;

  Ops* ops_ = nullptr;
  int64_t layer_ = 0, heads_ = 0, kv_heads_ = 0, head_dim_ = 0, hidden_ = 0;
  int64_t full_q_ = 0, full_kv_ = 0;  // the whole projections' widths (for WholeNorm)
  int64_t kv_replication_ = 1;        // ranks holding each KV head
  bool rope_ = true;
  bool local_rope_ = false;   // the batch's local_rope_cos/sin (Gemma 3's sliding layers)
  bool interleaved_ = false;  // Llama 4's RoPE pairs (x[2i], x[2i+1])
  bool temperature_ = false;  // Llama 4's NoPE-layer query scaling
  int64_t floor_scale_ = 8192;
  float attn_scale_ = 0.1f;
  int64_t window_ = 0;  // sliding window (0: all positions)
  int64_t chunk_ = 0;   // attention chunk (0: none)
  float scale_ = 1.0f, eps_ = 1e-6f;
  QkNorm qk_norm_ = QkNorm::kNone;
  Linear q_proj_, k_proj_, v_proj_, o_proj_;
  std::optional<RmsNorm> q_norm_, k_norm_;  // per head, or (kWhole) this rank's slice of the
                                            // whole-projection weights
  Communicator* tp_ = nullptr;
};

}  // namespace moe
