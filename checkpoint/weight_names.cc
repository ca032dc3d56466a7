#include "checkpoint/weight_names.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moe {

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

std::string ModuleOf(const std::string& weight_name) {
  return absl::EndsWith(weight_name, ".weight")
             ? weight_name.substr(0, weight_name.size() - std::string(".weight").size())
             : weight_name;
}

Int4TensorNames Int4Names(const std::string& weight_name) {
  const std::string module = ModuleOf(weight_name);
  return {module + ".weight_packed", module + ".weight_scale", module + ".weight_shape"};
}

std::string ExpertPrefix(int64_t layer, int64_t expert) {
  return absl::StrCat(LayerPrefix(layer), "mlp.experts.", expert, ".");
}

namespace {

using Kind = WeightSpec::Kind;

MlpWeights Mlp(const std::string& prefix, int64_t hidden, int64_t inter) {
  return {{prefix + "gate_proj.weight", {inter, hidden}, Kind::kLinear},
          {prefix + "up_proj.weight", {inter, hidden}, Kind::kLinear},
          {prefix + "down_proj.weight", {hidden, inter}, Kind::kLinear}};
}

void Append(const MlpWeights& m, std::vector<WeightSpec>* out) {
  out->push_back(m.gate_proj);
  out->push_back(m.up_proj);
  out->push_back(m.down_proj);
}

void Append(const DecoderLayerWeights& w, std::vector<WeightSpec>* out) {
  if (w.input_layernorm) out->push_back(*w.input_layernorm);
  if (w.mla) {
    const MlaWeights& a = *w.mla;
    for (const auto* s : {&a.q_a_proj, &a.q_a_layernorm, &a.q_b_proj, &a.q_proj}) {
      if (*s) out->push_back(**s);
    }
    for (const WeightSpec* s :
         {&a.kv_a_proj_with_mqa, &a.kv_a_layernorm, &a.kv_b_proj, &a.o_proj}) {
      out->push_back(*s);
    }
  }
  if (w.gqa) {
    const GqaWeights& a = *w.gqa;
    for (const WeightSpec* s : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj}) out->push_back(*s);
    for (const auto* s : {&a.q_bias, &a.k_bias, &a.v_bias, &a.o_bias}) {
      if (*s) out->push_back(**s);
    }
    if (a.q_norm) out->push_back(*a.q_norm);
    if (a.k_norm) out->push_back(*a.k_norm);
  }
  out->push_back(w.post_attention_layernorm);
  if (w.pre_feedforward_layernorm) out->push_back(*w.pre_feedforward_layernorm);
  if (w.post_feedforward_layernorm) out->push_back(*w.post_feedforward_layernorm);
  if (w.mlp) Append(*w.mlp, out);
  if (w.gate) out->push_back(*w.gate);
  if (w.e_score_correction_bias) out->push_back(*w.e_score_correction_bias);
  for (const MlpWeights& e : w.experts) Append(e, out);
  if (w.fused_gate_up_proj) out->push_back(*w.fused_gate_up_proj);
  if (w.fused_down_proj) out->push_back(*w.fused_down_proj);
  if (w.shared_experts) Append(*w.shared_experts, out);
}

}  // namespace

DecoderLayerWeights LayerWeights(const ModelConfig& c, int64_t layer, bool moe) {
  const std::string p = LayerPrefix(layer), a = p + "self_attn.";
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  DecoderLayerWeights w;
  if (c.norm_placement != NormPlacement::kPost) {
    w.input_layernorm = {p + "input_layernorm.weight", {h}, Kind::kNorm};
  }
  w.post_attention_layernorm = {p + "post_attention_layernorm.weight", {h}, Kind::kNorm};
  if (c.norm_placement == NormPlacement::kSandwich) {
    w.pre_feedforward_layernorm = {p + "pre_feedforward_layernorm.weight", {h}, Kind::kNorm};
  }
  if (c.norm_placement != NormPlacement::kPre) {
    w.post_feedforward_layernorm = {p + "post_feedforward_layernorm.weight", {h}, Kind::kNorm};
  }
  if (c.is_mla()) {
    MlaWeights& m = w.mla.emplace();
    if (c.q_lora_rank) {
      const int64_t r = *c.q_lora_rank;
      m.q_a_proj = {a + "q_a_proj.weight", {r, h}, Kind::kLinear};
      m.q_a_layernorm = {a + "q_a_layernorm.weight", {r}, Kind::kNorm};
      m.q_b_proj = {a + "q_b_proj.weight", {heads * c.qk_head_dim(), r}, Kind::kLinear};
    } else {
      m.q_proj = {a + "q_proj.weight", {heads * c.qk_head_dim(), h}, Kind::kLinear};
    }
    m.kv_a_proj_with_mqa = {a + "kv_a_proj_with_mqa.weight", {c.kv_cache_dim(), h}, Kind::kLinear};
    m.kv_a_layernorm = {a + "kv_a_layernorm.weight", {c.kv_lora_rank}, Kind::kNorm};
    m.kv_b_proj = {a + "kv_b_proj.weight",
                   {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                   Kind::kLinear};
    m.o_proj = {a + "o_proj.weight", {h, heads * c.v_head_dim}, Kind::kLinear};
  } else {
    GqaWeights& g = w.gqa.emplace();
    const int64_t q = heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
    g.q_proj = {a + "q_proj.weight", {q, h}, Kind::kLinear};
    g.k_proj = {a + "k_proj.weight", {kv, h}, Kind::kLinear};
    g.v_proj = {a + "v_proj.weight", {kv, h}, Kind::kLinear};
    g.o_proj = {a + "o_proj.weight", {h, q}, Kind::kLinear};
    if (c.attention_bias) {
      g.q_bias = {a + "q_proj.bias", {q}, Kind::kBias};
      g.k_bias = {a + "k_proj.bias", {kv}, Kind::kBias};
      g.v_bias = {a + "v_proj.bias", {kv}, Kind::kBias};
      g.o_bias = {a + "o_proj.bias", {h}, Kind::kBias};
    }
    if (c.qk_norm == QkNorm::kPerHead || c.qk_norm == QkNorm::kWhole) {
      const bool whole = c.qk_norm == QkNorm::kWhole;
      g.q_norm = {a + "q_norm.weight", {whole ? q : c.head_dim}, Kind::kNorm};
      g.k_norm = {a + "k_norm.weight", {whole ? kv : c.head_dim}, Kind::kNorm};
    }
  }
  // Llama 4 names the MLP block feed_forward, its router `router`, its one shared expert
  // shared_expert, and stacks its experts.
  const bool llama4 = c.fused_experts;
  const std::string f = p + (llama4 ? "feed_forward." : "mlp.");
  if (!moe) {
    w.mlp = Mlp(f, h, c.intermediate_size);
    return w;
  }
  w.gate = {f + (llama4 ? "router.weight" : "gate.weight"), {c.n_routed_experts, h}, Kind::kRouter};
  if (c.topk_method == "noaux_tc") {
    w.e_score_correction_bias = {
        p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, Kind::kRouterBias};
  }
  const int64_t inter = c.moe_intermediate_size;
  if (llama4) {
    w.fused_gate_up_proj = {
        f + "experts.gate_up_proj", {c.n_routed_experts, h, 2 * inter}, Kind::kFusedExperts};
    w.fused_down_proj = {
        f + "experts.down_proj", {c.n_routed_experts, inter, h}, Kind::kFusedExperts};
  } else {
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      w.experts.push_back(Mlp(ExpertPrefix(layer, e), h, inter));
    }
  }
  if (c.n_shared_experts > 0) {
    w.shared_experts =
        Mlp(f + (llama4 ? "shared_expert." : "shared_experts."), h, c.shared_intermediate_size());
  }
  return w;
}

ModelWeights TopLevelWeights(const ModelConfig& c) {
  const WeightSpec embed = {
      "model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding};
  return {embed,
          {"model.norm.weight", {c.hidden_size}, Kind::kNorm},
          c.tie_word_embeddings
              ? embed
              : WeightSpec{"lm_head.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding}};
}

MtpWeights MtpLayerWeights(const ModelConfig& c, int64_t depth) {
  MtpWeights m;
  m.layer = c.num_hidden_layers + depth;
  const std::string p = LayerPrefix(m.layer);
  m.embed_tokens = {p + "embed_tokens.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding};
  m.enorm = {p + "enorm.weight", {c.hidden_size}, Kind::kNorm};
  m.hnorm = {p + "hnorm.weight", {c.hidden_size}, Kind::kNorm};
  m.eh_proj = {p + "eh_proj.weight", {c.hidden_size, 2 * c.hidden_size}, Kind::kLinear};
  m.head_norm = {p + "shared_head.norm.weight", {c.hidden_size}, Kind::kNorm};
  m.head = {p + "shared_head.head.weight", {c.vocab_size, c.hidden_size}, Kind::kEmbedding};
  return m;
}

std::vector<WeightSpec> CheckpointWeightSpecs(const ModelConfig& c, bool include_mtp) {
  const ModelWeights top = TopLevelWeights(c);
  std::vector<WeightSpec> out;
  out.push_back(top.embed_tokens);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    Append(LayerWeights(c, l, c.IsMoeLayer(l)), &out);
  out.push_back(top.norm);
  if (!c.tie_word_embeddings) out.push_back(top.lm_head);
  if (include_mtp) {
    for (int64_t i = 0; i < c.num_nextn_predict_layers; ++i) {
      const MtpWeights m = MtpLayerWeights(c, i);
      out.push_back(m.embed_tokens);
      out.push_back(m.enorm);
      out.push_back(m.hnorm);
      out.push_back(m.eh_proj);
      Append(LayerWeights(c, m.layer, c.n_routed_experts > 0), &out);
      out.push_back(m.head_norm);
      out.push_back(m.head);
    }
  }
  return out;
}

}  // namespace moe
