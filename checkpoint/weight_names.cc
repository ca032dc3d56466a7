#include "checkpoint/weight_names.h"

#include "absl/strings/str_cat.h"

namespace moe {

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

std::string ExpertPrefix(int64_t layer, int64_t expert) {
  return absl::StrCat(LayerPrefix(layer), "mlp.experts.", expert, ".");
}

namespace {

using Kind = WeightSpec::Kind;

void AddDecoderLayer(const ModelConfig& c, int64_t layer, bool moe, std::vector<WeightSpec>* out) {
  const std::string p = LayerPrefix(layer);
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  out->push_back({p + "input_layernorm.weight", {h}, Kind::kNorm});
  if (c.q_lora_rank) {
    out->push_back({p + "self_attn.q_a_proj.weight", {*c.q_lora_rank, h}, Kind::kLinear});
    out->push_back({p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank}, Kind::kNorm});
    out->push_back({p + "self_attn.q_b_proj.weight",
                    {heads * c.qk_head_dim(), *c.q_lora_rank},
                    Kind::kLinear});
  } else {
    out->push_back({p + "self_attn.q_proj.weight", {heads * c.qk_head_dim(), h}, Kind::kLinear});
  }
  out->push_back({p + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_cache_dim(), h}, Kind::kLinear});
  out->push_back({p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, Kind::kNorm});
  out->push_back({p + "self_attn.kv_b_proj.weight",
                  {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                  Kind::kLinear});
  out->push_back({p + "self_attn.o_proj.weight", {h, heads * c.v_head_dim}, Kind::kLinear});
  out->push_back({p + "post_attention_layernorm.weight", {h}, Kind::kNorm});
  auto mlp = [&](const std::string& q, int64_t inter) {
    out->push_back({q + "gate_proj.weight", {inter, h}, Kind::kLinear});
    out->push_back({q + "up_proj.weight", {inter, h}, Kind::kLinear});
    out->push_back({q + "down_proj.weight", {h, inter}, Kind::kLinear});
  };
  if (!moe) {
    mlp(p + "mlp.", c.intermediate_size);
    return;
  }
  out->push_back({p + "mlp.gate.weight", {c.n_routed_experts, h}, Kind::kRouter});
  if (c.topk_method == "noaux_tc") {
    out->push_back(
        {p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, Kind::kRouterBias});
  }
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    mlp(ExpertPrefix(layer, e), c.moe_intermediate_size);
  if (c.n_shared_experts > 0) mlp(p + "mlp.shared_experts.", c.shared_intermediate_size());
}

}  // namespace

std::vector<WeightSpec> CheckpointWeightSpecs(const ModelConfig& c, bool include_mtp) {
  std::vector<WeightSpec> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) AddDecoderLayer(c, l, c.IsMoeLayer(l), &out);
  out.push_back({"model.norm.weight", {c.hidden_size}, Kind::kNorm});
  out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding});
  if (include_mtp) {
    for (int64_t i = 0; i < c.num_nextn_predict_layers; ++i) {
      const int64_t l = c.num_hidden_layers + i;
      const std::string p = LayerPrefix(l);
      out.push_back({p + "embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding});
      out.push_back({p + "enorm.weight", {c.hidden_size}, Kind::kNorm});
      out.push_back({p + "hnorm.weight", {c.hidden_size}, Kind::kNorm});
      out.push_back({p + "eh_proj.weight", {c.hidden_size, 2 * c.hidden_size}, Kind::kLinear});
      AddDecoderLayer(c, l, c.n_routed_experts > 0, &out);
      out.push_back({p + "shared_head.norm.weight", {c.hidden_size}, Kind::kNorm});
      out.push_back(
          {p + "shared_head.head.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding});
    }
  }
  return out;
}

}  // namespace moe
