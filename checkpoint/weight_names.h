// The tensors of a checkpoint, named as the official checkpoints of each family name them
// (`model.layers.N.self_attn.kv_a_proj_with_mqa.weight`, `model.layers.N.mlp.experts.E.up_proj
// .weight`, `model.layers.N.self_attn.k_norm.weight`, ...), with the shapes a config implies.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/model_config.h"

namespace moe {

struct WeightSpec {
  // kFusedExperts: Llama 4's [experts, in, out] stacks of every expert's projection.
  // kBias: a projection's bias (attention_bias).
  enum class Kind { kLinear, kNorm, kEmbedding, kRouter, kRouterBias, kFusedExperts, kBias };
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
  // Linear projection weights are what fp8 checkpoints store as F8_E4M3 with block scales;
  // embeddings, lm_head, norms and the router stay in the model's float dtype.
  bool quantizable() const { return kind == Kind::kLinear; }
};

std::string LayerPrefix(int64_t layer);                   // "model.layers.<layer>."
std::string ExpertPrefix(int64_t layer, int64_t expert);  // "model.layers.<l>.mlp.experts.<e>."

// "a.b.weight" -> "a.b": the module a projection weight belongs to (the name compressed-tensors'
// `ignore` list matches).
std::string ModuleOf(const std::string& weight_name);
// The tensors that stand in for "<module>.weight" in a compressed-tensors pack-quantized
// checkpoint: int4 values (I32), group scales (BF16) and the unpacked shape (I32 [2]).
struct Int4TensorNames {
  std::string packed, scale, shape;
};
Int4TensorNames Int4Names(const std::string& weight_name);

// The one place tensor names and shapes are spelled: the model backends load by these roles and
// the checkpoint writer writes them.

// A SiLU-gated MLP: a dense layer's, one routed expert's, or the shared experts'.
struct MlpWeights {
  WeightSpec gate_proj, up_proj, down_proj;  // [inter, hidden], [inter, hidden], [hidden, inter]
  int64_t intermediate() const { return gate_proj.shape[0]; }
};

// MLA: with q-LoRA q_a_proj, q_a_layernorm and q_b_proj; without, a direct q_proj.
struct MlaWeights {
  std::optional<WeightSpec> q_a_proj, q_a_layernorm, q_b_proj, q_proj;
  WeightSpec kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj;
};

// Grouped-query attention: q_proj [heads * head_dim, hidden], k_proj and v_proj
// [kv_heads * head_dim, hidden], o_proj [hidden, heads * head_dim]; the QK-norm weights where the
// family has them ([head_dim] per head, or the whole projection's width).
struct GqaWeights {
  WeightSpec q_proj, k_proj, v_proj, o_proj;
  std::optional<WeightSpec> q_norm, k_norm;
  // With attention_bias: "<proj>.bias" of each projection, [out].
  std::optional<WeightSpec> q_bias, k_bias, v_bias, o_bias;
};

// One decoder layer by role.
struct DecoderLayerWeights {
  std::optional<WeightSpec> input_layernorm;  // absent with post-normalisation (OLMo 2)
  // Before the MLP with pre-normalisation; after attention with post- and sandwich norms.
  WeightSpec post_attention_layernorm;
  std::optional<WeightSpec> pre_feedforward_layernorm;   // Gemma 3
  std::optional<WeightSpec> post_feedforward_layernorm;  // OLMo 2, Gemma 3
  std::optional<MlaWeights> mla;
  std::optional<GqaWeights> gqa;
  // A dense MLP, or a MoE: router (with its correction bias for noaux_tc), routed experts and
  // shared experts.
  std::optional<MlpWeights> mlp;
  std::optional<WeightSpec> gate, e_score_correction_bias;
  std::vector<MlpWeights> experts;
  // Llama 4: every expert in two tensors, gate_up_proj [E, hidden, 2 I] and down_proj [E, I,
  // hidden].
  std::optional<WeightSpec> fused_gate_up_proj, fused_down_proj;
  std::optional<MlpWeights> shared_experts;
};

// `moe` selects the MoE block (the config's choice for decoder layers; always for MTP layers).
DecoderLayerWeights LayerWeights(const ModelConfig& config, int64_t layer, bool moe);

// The weights outside the decoder layers.
struct ModelWeights {
  WeightSpec embed_tokens, norm, lm_head;  // with tie_word_embeddings lm_head is embed_tokens
};
ModelWeights TopLevelWeights(const ModelConfig& config);

// MTP depth `depth` (model.layers.<num_hidden_layers + depth>.*): its own embedding, the two
// input norms, eh_proj [hidden, 2 * hidden], a MoE decoder layer and the shared head.
struct MtpWeights {
  int64_t layer = 0;
  WeightSpec embed_tokens, enorm, hnorm, eh_proj, head_norm, head;
};
MtpWeights MtpLayerWeights(const ModelConfig& config, int64_t depth);

// Every tensor of the decoder, in a stable order. With `include_mtp`, also the MTP layers that
// DeepSeek-V3 checkpoints carry as model.layers.<num_hidden_layers + i>.*.
std::vector<WeightSpec> CheckpointWeightSpecs(const ModelConfig& config, bool include_mtp);

}  // namespace moe
