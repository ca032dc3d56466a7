// ModelConfig: the architecture of a DeepseekV3ForCausalLM checkpoint (model_type deepseek_v3 or
// kimi_k2), read from its HF `config.json`, validated, with the figures derived from it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

struct RopeScaling {  // "rope_scaling": {"type": "yarn", ...}
  std::string type = "yarn";
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0: not given
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// "quantization_config": how the checkpoint's weights are stored below float.
//   {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], ...}: DeepSeek-V3/R1
//     and Kimi K2: F8_E4M3 weights, each with a float32 `weight_scale_inv` per block.
//   {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {...},
//     "ignore": [...]}: Kimi K2 Thinking: int4 `weight_packed` + bf16 `weight_scale` per group of
//     columns, symmetric, for every Linear except the modules `ignore` names (kept in bf16).
struct QuantizationConfig {
  std::string quant_method = "fp8";
  std::string fmt = "e4m3";
  std::string activation_scheme = "dynamic";
  int64_t block_rows = 128;  // weight_block_size[0]: rows (output features) per scale block
  int64_t block_cols = 128;  // weight_block_size[1]: columns (input features) per scale block

  std::string format = "pack-quantized";  // compressed-tensors only
  int64_t num_bits = 4;
  int64_t group_size = 32;       // columns per scale
  std::vector<std::string> ignore;  // module names, or "re:<regex>" matched from the start

  bool is_fp8() const { return quant_method == "fp8"; }
  bool is_int4() const { return quant_method == "compressed-tensors"; }
  // Whether `module` (e.g. "model.layers.3.self_attn.o_proj") is named by `ignore`.
  bool Ignores(const std::string& module) const;
};

struct ParamCounts {
  int64_t embedding = 0;  // embed_tokens + lm_head
  int64_t attention = 0;  // MLA projections and their norms, all layers
  int64_t dense_mlp = 0;  // the first_k_dense_replace dense layers
  int64_t routed_experts = 0;
  int64_t shared_experts = 0;
  int64_t router = 0;  // gate weight and e_score_correction_bias
  int64_t norms = 0;   // input/post-attention layernorms and the final norm
  int64_t total = 0;
  int64_t active = 0;  // per token: num_experts_per_tok routed experts instead of all
};

struct ModelConfig {
  std::vector<std::string> architectures;
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_nextn_predict_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t n_shared_experts = 0;
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  double routed_scaling_factor = 1.0;
  int64_t kv_lora_rank = 0;
  std::optional<int64_t> q_lora_rank;  // null: a direct q_proj (DeepSeek-V2-Lite style)
  int64_t qk_rope_head_dim = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  std::string topk_method = "noaux_tc";  // noaux_tc | greedy | group_limited_greedy
  std::string scoring_func = "sigmoid";  // sigmoid | softmax
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense_replace = 0;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool attention_bias = false;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "bfloat16";
  std::optional<QuantizationConfig> quantization_config;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values per token and layer in the MLA latent KV cache: c_kv and the shared rotated k_pe.
  int64_t kv_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  int64_t shared_intermediate_size() const { return moe_intermediate_size * n_shared_experts; }
  bool IsMoeLayer(int64_t layer) const;
  int64_t num_moe_layers() const;
  // Bytes per token of the MLA latent KV cache over all layers, at `bytes_per_value` (2 for bf16,
  // 4 for the CPU backend's float32).
  int64_t LatentKvBytesPerToken(int64_t bytes_per_value) const {
    return num_hidden_layers * kv_cache_dim() * bytes_per_value;
  }
  // What caching the expanded per-head K and V would take instead.
  int64_t ExpandedKvBytesPerToken(int64_t bytes_per_value) const {
    return num_hidden_layers * num_attention_heads * (qk_head_dim() + v_head_dim) *
           bytes_per_value;
  }
  // Parameter counts of the decoder (the MTP layers of num_nextn_predict_layers excluded).
  ParamCounts CountParameters() const;

  // Serializes back to HF config.json form (the checkpoint generator writes this).
  std::string ToJson() const;
};

// Parses and validates the text of a config.json. Errors name the offending field.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);
// Reads `path` (a config.json file, or a checkpoint folder holding one).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace moe
