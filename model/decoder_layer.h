// One decoder layer, the config's blocks in the config's order: attention (MLA or GQA) then the
// MLP (dense, or MoE), each in a residual, with RMSNorms before each block (DeepSeek, Qwen3,
// Mistral, SmolLM3), after it inside the residual (OLMo 2), or both (Gemma 3).
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_bytes.h"
#include "common/model_config.h"
#include "kernels/ops.h"
#include "model/gqa_attention.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/mla_attention.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/step_inputs.h"
#include "parallel/parallel_context.h"

namespace moe {

class DecoderLayer {
 public:
  static absl::StatusOr<std::unique_ptr<DecoderLayer>> Load(Ops& ops, const ModelConfig& config,
                                                            Checkpoint& ck, int64_t layer,
                                                            const ParallelContext& ctx,
                                                            float softmax_scale,
                                                            WeightBytes* bytes);
  // x [batch.num_tokens(), hidden] in place; collectives through `mb` (only the MoE layer's when
  // it overlaps: two-batch overlap needs a TP size of 1).
  absl::Status Forward(float* x, const StepInputs& step, KvCache& cache,
                       const MicroBatchContext& mb = {});
  const MoeLayer* moe() const { return moe_.get(); }
  MoeLayer* moe() { return moe_.get(); }

 private:
  Ops* ops_ = nullptr;
  int64_t hidden_ = 0;
  NormPlacement placement_ = NormPlacement::kPre;
  RmsNorm input_layernorm_, post_attention_layernorm_, pre_feedforward_layernorm_,
      post_feedforward_layernorm_;
  std::optional<MlaAttention> mla_;
  std::optional<GqaAttention> gqa_;
  std::optional<GatedMlp> dense_;  // first_k_dense_replace layers (TP-split rows)
  std::unique_ptr<MoeLayer> moe_;
  Communicator* tp_ = nullptr;
};

}  // namespace moe
