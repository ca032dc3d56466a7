// Multi-head Latent Attention (DeepSeek-V2/V3), split over the TP group by heads.
//   q     = q_b_proj(q_a_layernorm(q_a_proj(x)))  or  q_proj(x)      per head [q_nope | q_pe]
//   kv    = kv_a_proj_with_mqa(x) = [c_kv | k_pe];  c_kv = kv_a_layernorm(c_kv)
//   q_pe, k_pe rotated (interleaved RoPE); [c_kv | k_pe] written to the latent cache
//   prefill (a chunk of several tokens): K/V expanded from the cache, k = [W_UK c_kv | k_pe],
//     v = W_UV c_kv, causal softmax attention
//   decode (a chunk of at most kFewTokenChunk tokens: a decode token, or drafts to verify):
//     absorbed — per token, q_lat = W_UK^T q_nope; scores = q_lat·c_kv + q_pe·k_pe over the
//     positions up to its own; out = W_UV (sum_t p_t c_kv_t) — the cache is never expanded
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

class MlaAttention {
 public:
  static absl::StatusOr<MlaAttention> Load(Ops& ops, const ModelConfig& config, Checkpoint& ck,
                                           int64_t layer, const DecoderLayerWeights& w,
                                           const ParallelContext& ctx, float softmax_scale,
                                           WeightBytes* bytes);
  // out [n, hidden] for x [n, hidden] (already input-normalised); writes this layer's cache rows.
  absl::Status Forward(const float* x, const StepInputs& step, KvCache& cache, float* out) const;

 private:
  void Prefill(const StepInputs& step, const StepInputs::Prefill& chunk, const float* q,
               const KvCache& cache, float* attn) const;

  Ops* ops_ = nullptr;
  int64_t layer_ = 0, heads_ = 0, nope_ = 0, rope_ = 0, v_ = 0, kv_lora_ = 0, hidden_ = 0;
  float scale_ = 1.0f;
  std::optional<Linear> q_a_proj_, q_b_proj_, q_proj_;
  std::optional<RmsNorm> q_a_layernorm_;
  Linear kv_a_proj_with_mqa_;
  RmsNorm kv_a_layernorm_;
  // [heads_local * (nope + v), kv_lora]: per head W_UK rows then W_UV rows. Float32 (widened at
  // load; about 0.15% of DeepSeek-V3's weights): decode multiplies by W_UK untransposed.
  Linear kv_b_proj_;
  Linear o_proj_;     // [hidden, heads_local * v]
  Communicator* tp_ = nullptr;
};

}  // namespace moe
