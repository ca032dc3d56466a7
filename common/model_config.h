// ModelConfig: the architecture of a checkpoint, read from its HF `config.json`, validated, with
// the figures derived from it. One decoder shape with switches:
//   - DeepseekV3ForCausalLM (model_type deepseek_v3 or kimi_k2): MLA attention, DeepSeek's MoE
//     with shared experts and grouped routing, an MTP layer;
//   - the GQA families — Qwen3ForCausalLM (qwen3), Qwen3MoeForCausalLM (qwen3_moe),
//     MistralForCausalLM (mistral), SmolLM3ForCausalLM (smollm3), Olmo2ForCausalLM (olmo2),
//     Gemma3ForCausalLM (gemma3_text), Llama4ForCausalLM (llama4_text, the text model of Llama 4
//     Scout / Maverick):
//     grouped-query attention over num_key_value_heads x head_dim, rotate-half RoPE, and the
//     family's switches below (QK-norm, norm placement, NoPE layers, softmax top-k MoE).
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

// Where a GQA family normalises a layer's blocks.
enum class NormPlacement {
  kPre,   // x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x))
  kPost,  // OLMo 2: x + post_attention_layernorm(attn(x)), then x +
          // post_feedforward_layernorm(mlp(x))
  // Gemma 3: x + post_attention_layernorm(attn(input_layernorm(x))), then
  // x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))
  kSandwich,
};

// The gated MLP's activation: act(gate_proj(x)) * up_proj(x).
enum class Activation {
  kSilu,      // hidden_act "silu"
  kGeluTanh,  // Gemma's hidden_activation "gelu_pytorch_tanh"
};

// RMSNorm of the queries and keys before RoPE.
enum class QkNorm {
  kNone,
  kPerHead,  // Qwen3: over each head's head_dim values (q_norm/k_norm weights [head_dim])
  kWhole,  // OLMo 2: over the whole projection (q_norm [heads * head_dim], k_norm [kv * head_dim])
  kL2,     // Llama 4: per head without weights, after RoPE, on the RoPE layers only
};

// Llama 4's rope_scaling {"rope_type": "llama3", ...}: frequencies of wavelength above
// original / low_freq_factor divided by factor, below original / high_freq_factor kept, and
// blended in between.
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
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
  std::optional<int64_t> pad_token_id;  // null: none (transformers then pads no embedding row)
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "bfloat16";
  std::optional<QuantizationConfig> quantization_config;

  // GQA families (is_mla() false). For them qk_rope_head_dim = v_head_dim = head_dim and
  // qk_nope_head_dim = 0, so RoPE and the softmax scale are computed as for MLA.
  int64_t head_dim = 0;
  QkNorm qk_norm = QkNorm::kNone;
  NormPlacement norm_placement = NormPlacement::kPre;
  std::vector<bool> rope_layers;  // SmolLM3's no_rope_layers (1: RoPE, 0: NoPE); empty: all RoPE
  // Qwen3-MoE: layer l is MoE when (l + 1) % decoder_sparse_step == 0 and l is not in
  // mlp_only_layers (0: DeepSeek's first_k_dense_replace / moe_layer_freq rule instead).
  int64_t decoder_sparse_step = 0;
  std::vector<int64_t> mlp_only_layers;
  // Gemma 3: sliding-window layers (layer_types / sliding_window_pattern) see the last
  // sliding_window positions, up to their own, and rotate with rope_local_base_freq; the others
  // ("full_attention") with rope_theta and rope_scaling's linear factor.
  std::vector<bool> sliding_layers;  // empty: none
  int64_t sliding_window = 0;
  double rope_local_theta = 0;  // rope_local_base_freq
  double rope_linear_factor = 1.0;
  int64_t query_pre_attn_scalar = 0;   // the softmax scale is its -1/2 power (0: head_dim's)
  double final_logit_softcapping = 0;  // logits = cap * tanh(logits / cap) (0: none)
  bool norm_unit_offset = false;       // RMSNorm scales by (1 + weight)
  bool scale_embeddings = false;       // embeddings times sqrt(hidden_size)
  // Llama 4: interleaved RoPE pairs; chunked attention on the RoPE layers (a query sees the
  // positions of its own attention_chunk_size chunk, up to its own); on NoPE layers queries scaled
  // by log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1; the routing weight (sigmoid of the
  // top-k logit) multiplies the expert's input, not its output; experts stored fused
  // (feed_forward.experts.gate_up_proj [E, hidden, 2 I], down_proj [E, I, hidden]).
  bool rope_interleaved = false;
  std::vector<bool> chunked_layers;  // empty: none
  int64_t attention_chunk_size = 0;
  bool attn_temperature_tuning = false;
  int64_t floor_scale = 8192;
  double attn_scale = 0.1;
  bool router_weight_on_input = false;
  bool fused_experts = false;
  std::optional<Llama3RopeScaling> llama3_rope;

  bool is_mla() const { return kv_lora_rank > 0; }  // DeepseekV3ForCausalLM
  Activation activation() const {
    return hidden_act == "gelu_pytorch_tanh" ? Activation::kGeluTanh : Activation::kSilu;
  }
  bool IsSliding(int64_t layer) const {
    return layer < static_cast<int64_t>(sliding_layers.size()) &&
           sliding_layers[static_cast<size_t>(layer)];
  }
  bool IsChunked(int64_t layer) const {
    return layer < static_cast<int64_t>(chunked_layers.size()) &&
           chunked_layers[static_cast<size_t>(layer)];
  }
  bool UsesRope(int64_t layer) const {
    return rope_layers.empty() || layer >= static_cast<int64_t>(rope_layers.size()) ||
           rope_layers[static_cast<size_t>(layer)];
  }

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values per token and layer in the KV cache: for MLA the latent c_kv and the shared rotated
  // k_pe; for GQA every KV head's key then value.
  int64_t kv_cache_dim() const {
    return is_mla() ? kv_lora_rank + qk_rope_head_dim : 2 * num_key_value_heads * head_dim;
  }
  int64_t shared_intermediate_size() const { return moe_intermediate_size * n_shared_experts; }
  bool IsMoeLayer(int64_t layer) const;
  int64_t num_moe_layers() const;
  // Bytes per token of the MLA latent KV cache over all layers, at `bytes_per_value` (2 for bf16,
  // 4 for the CPU backend's float32).
  int64_t LatentKvBytesPerToken(int64_t bytes_per_value) const {
    return num_hidden_layers * kv_cache_dim() * bytes_per_value;
  }
  // What caching the expanded per-head K and V would take instead (GQA: what it caches).
  int64_t ExpandedKvBytesPerToken(int64_t bytes_per_value) const {
    if (!is_mla()) return LatentKvBytesPerToken(bytes_per_value);
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
