// The tensors of a DeepseekV3ForCausalLM checkpoint, named as the official checkpoints name them
// (`model.layers.N.self_attn.kv_a_proj_with_mqa.weight`, `model.layers.N.mlp.experts.E.up_proj
// .weight`, ...), with the shapes a config implies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/model_config.h"

namespace moe {

struct WeightSpec {
  enum class Kind { kLinear, kNorm, kEmbedding, kRouter, kRouterBias };
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
  // Linear projection weights are what fp8 checkpoints store as F8_E4M3 with block scales;
  // embeddings, lm_head, norms and the router stay in the model's float dtype.
  bool quantizable() const { return kind == Kind::kLinear; }
};

std::string LayerPrefix(int64_t layer);                   // "model.layers.<layer>."
std::string ExpertPrefix(int64_t layer, int64_t expert);  // "model.layers.<l>.mlp.experts.<e>."

// Every tensor of the decoder, in a stable order. With `include_mtp`, also the MTP layers that
// DeepSeek-V3 checkpoints carry as model.layers.<num_hidden_layers + i>.* (the engine ignores
// them).
std::vector<WeightSpec> CheckpointWeightSpecs(const ModelConfig& config, bool include_mtp);

}  // namespace moe
