#include "common/model_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using Json = nlohmann::json;

// Whether d is a whole number int64_t holds (false for NaN and infinities), checked before any
// conversion.
bool IsWholeInt64(double d) { return d >= -0x1p63 && d < 0x1p63 && d == std::trunc(d); }

absl::string_view TypeName(const Json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number_integer() || j.is_number_unsigned()) return "an integer";
  if (j.is_number_float()) return "a float";
  if (j.is_string()) return "a string";
  if (j.is_array()) return "an array";
  return "an object";
}

// Typed access to the fields of one JSON object; errors name `<where>.<field>`.
class Fields {
 public:
  Fields(const Json& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  bool Has(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

  absl::Status Error(const char* key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, "field \"", key, "\": ", what));
  }
  absl::Status TypeError(const char* key, absl::string_view expected) const {
    return Error(key, absl::StrCat("expected ", expected, ", got ", TypeName(obj_.at(key))));
  }

  absl::Status Int(const char* key, int64_t* out, bool required, int64_t min_value) const {
    if (!Has(key)) return required ? Error(key, "missing (required)") : absl::OkStatus();
    const Json& v = obj_.at(key);
    int64_t value;
    if (v.is_number_integer()) {
      value = v.get<int64_t>();
    } else if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return Error(key, "out of range");
      value = static_cast<int64_t>(v.get<uint64_t>());
    } else if (v.is_number_float() && IsWholeInt64(v.get<double>())) {  // e.g. 4096.0
      value = static_cast<int64_t>(v.get<double>());
    } else {
      return TypeError(key, "an integer");
    }
    if (value < min_value)
      return Error(key, absl::StrCat("must be >= ", min_value, ", got ", value));
    *out = value;
    return absl::OkStatus();
  }

  absl::Status Double(const char* key, double* out, bool required) const {
    if (!Has(key)) return required ? Error(key, "missing (required)") : absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_number()) return TypeError(key, "a number");
    *out = v.get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_boolean()) return TypeError(key, "a boolean");
    *out = v.get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* key, std::string* out, bool required) const {
    if (!Has(key)) return required ? Error(key, "missing (required)") : absl::OkStatus();
    const Json& v = obj_.at(key);
    if (!v.is_string()) return TypeError(key, "a string");
    *out = v.get<std::string>();
    return absl::OkStatus();
  }

  absl::Status OneOf(const char* key, const std::string& value,
                     std::initializer_list<absl::string_view> allowed) const {
    for (absl::string_view a : allowed) {
      if (value == a) return absl::OkStatus();
    }
    return Error(key, absl::StrCat("unsupported value \"", value,
                                   "\" (supported: ", absl::StrJoin(allowed, ", "), ")"));
  }

  const Json& obj() const { return obj_; }

 private:
  const Json& obj_;
  std::string where_;
};

absl::Status ParseRopeScaling(const Json& j, RopeScaling* rs) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json field \"rope_scaling\": expected an object, got ", TypeName(j)));
  }
  Fields f(j, "config.json rope_scaling ");
  // HF accepts both spellings.
  if (f.Has("rope_type")) {
    MOE_RETURN_IF_ERROR(f.String("rope_type", &rs->type, true));
    MOE_RETURN_IF_ERROR(f.OneOf("rope_type", rs->type, {"yarn"}));
  } else {
    MOE_RETURN_IF_ERROR(f.String("type", &rs->type, true));
    MOE_RETURN_IF_ERROR(f.OneOf("type", rs->type, {"yarn"}));
  }
  MOE_RETURN_IF_ERROR(f.Double("factor", &rs->factor, true));
  if (!(rs->factor >= 1.0)) return f.Error("factor", "must be >= 1");
  MOE_RETURN_IF_ERROR(
      f.Int("original_max_position_embeddings", &rs->original_max_position_embeddings, false, 1));
  MOE_RETURN_IF_ERROR(f.Double("beta_fast", &rs->beta_fast, false));
  MOE_RETURN_IF_ERROR(f.Double("beta_slow", &rs->beta_slow, false));
  MOE_RETURN_IF_ERROR(f.Double("mscale", &rs->mscale, false));
  MOE_RETURN_IF_ERROR(f.Double("mscale_all_dim", &rs->mscale_all_dim, false));
  if (!(rs->beta_fast > 0) || !(rs->beta_slow > 0)) {
    return f.Error("beta_fast", "beta_fast and beta_slow must be positive");
  }
  return absl::OkStatus();
}

// compressed-tensors: exactly one config group, weight-only symmetric int4 in groups.
absl::Status ParseCompressedTensors(const Fields& f, QuantizationConfig* q) {
  MOE_RETURN_IF_ERROR(f.String("format", &q->format, true));
  MOE_RETURN_IF_ERROR(f.OneOf("format", q->format, {"pack-quantized"}));
  if (!f.Has("config_groups") || !f.obj().at("config_groups").is_object() ||
      f.obj().at("config_groups").size() != 1) {
    return f.Error("config_groups", "expected an object with exactly one group");
  }
  const auto group = f.obj().at("config_groups").begin();
  const std::string where =
      absl::StrCat("config.json quantization_config.config_groups.", group.key(), " ");
  if (!group->is_object()) return f.Error("config_groups", "the group is not an object");
  Fields g(*group, where);
  if (g.Has("input_activations")) {
    return g.Error("input_activations", "activation quantization is not supported (weights only)");
  }
  if (!g.Has("weights") || !g.obj().at("weights").is_object()) {
    return g.Error("weights", "missing (required) or not an object");
  }
  Fields w(g.obj().at("weights"), where + "weights ");
  std::string type = "int", strategy = "group";
  bool symmetric = true;
  MOE_RETURN_IF_ERROR(w.Int("num_bits", &q->num_bits, true, 1));
  if (q->num_bits != 4)
    return w.Error("num_bits", absl::StrCat("only 4 is supported, got ", q->num_bits));
  MOE_RETURN_IF_ERROR(w.String("type", &type, false));
  MOE_RETURN_IF_ERROR(w.OneOf("type", type, {"int"}));
  MOE_RETURN_IF_ERROR(w.String("strategy", &strategy, false));
  MOE_RETURN_IF_ERROR(w.OneOf("strategy", strategy, {"group"}));
  MOE_RETURN_IF_ERROR(w.Bool("symmetric", &symmetric));
  if (!symmetric) return w.Error("symmetric", "only symmetric int4 (no zero points) is supported");
  MOE_RETURN_IF_ERROR(w.Int("group_size", &q->group_size, true, 1));
  if (q->group_size % 32 != 0) {
    return w.Error("group_size", absl::StrCat("must be a multiple of 32, got ", q->group_size));
  }
  q->ignore.clear();
  if (f.Has("ignore")) {
    const Json& ig = f.obj().at("ignore");
    if (!ig.is_array()) return f.TypeError("ignore", "an array of module names");
    for (const Json& e : ig) {
      if (!e.is_string()) return f.Error("ignore", "expected module names (strings)");
      q->ignore.push_back(e.get<std::string>());
      const std::string& entry = q->ignore.back();
      if (entry.rfind("re:", 0) == 0) {
        try {
          std::regex re(entry.substr(3));
        } catch (const std::regex_error& err) {
          return f.Error("ignore", absl::StrCat("bad regular expression \"", entry, "\""));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ParseQuantization(const Json& j, QuantizationConfig* q) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json field \"quantization_config\": expected an object, got ", TypeName(j)));
  }
  Fields f(j, "config.json quantization_config ");
  MOE_RETURN_IF_ERROR(f.String("quant_method", &q->quant_method, true));
  MOE_RETURN_IF_ERROR(f.OneOf("quant_method", q->quant_method, {"fp8", "compressed-tensors"}));
  if (q->is_int4()) return ParseCompressedTensors(f, q);
  MOE_RETURN_IF_ERROR(f.String("fmt", &q->fmt, false));
  MOE_RETURN_IF_ERROR(f.OneOf("fmt", q->fmt, {"e4m3"}));
  MOE_RETURN_IF_ERROR(f.String("activation_scheme", &q->activation_scheme, false));
  MOE_RETURN_IF_ERROR(f.OneOf("activation_scheme", q->activation_scheme, {"dynamic"}));
  if (f.Has("weight_block_size")) {
    const Json& b = j.at("weight_block_size");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0) {
      return f.Error("weight_block_size", "expected two positive integers [rows, cols]");
    }
    q->block_rows = b[0].get<int64_t>();
    q->block_cols = b[1].get<int64_t>();
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const Fields& f, const char* key, std::vector<int64_t>* out) {
  if (!f.Has(key)) return absl::OkStatus();
  const Json& v = f.obj().at(key);
  auto one = [&](const Json& e) -> absl::Status {
    if (!e.is_number_integer() || e.get<int64_t>() < 0) {
      return f.Error(key, "expected a non-negative integer or a list of them");
    }
    out->push_back(e.get<int64_t>());
    return absl::OkStatus();
  };
  if (v.is_array()) {
    for (const Json& e : v) MOE_RETURN_IF_ERROR(one(e));
    return absl::OkStatus();
  }
  return one(v);
}

absl::Status Validate(const ModelConfig& c) {
  auto err = [](const char* field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("config.json field \"", field, "\": ", what));
  };
  if (c.num_experts_per_tok > c.n_routed_experts) {
    return err(
        "num_experts_per_tok",
        absl::StrCat(c.num_experts_per_tok, " exceeds n_routed_experts ", c.n_routed_experts));
  }
  if (c.n_routed_experts % c.n_group != 0) {
    return err("n_group",
               absl::StrCat(c.n_group, " does not divide n_routed_experts ", c.n_routed_experts));
  }
  if (c.topk_group > c.n_group) {
    return err("topk_group", absl::StrCat(c.topk_group, " exceeds n_group ", c.n_group));
  }
  const int64_t group_size = c.n_routed_experts / c.n_group;
  if (c.topk_group * group_size < c.num_experts_per_tok) {
    return err("topk_group", absl::StrCat("the ", c.topk_group, " selected groups hold only ",
                                          c.topk_group * group_size, " experts, fewer than ",
                                          "num_experts_per_tok ", c.num_experts_per_tok));
  }
  if (c.topk_method == "noaux_tc" && c.n_group > 1 && group_size < 2) {
    return err("n_group", "noaux_tc ranks groups by their top-2 scores: groups need >= 2 experts");
  }
  if (c.first_k_dense_replace > c.num_hidden_layers) {
    return err(
        "first_k_dense_replace",
        absl::StrCat(c.first_k_dense_replace, " exceeds num_hidden_layers ", c.num_hidden_layers));
  }
  if (c.qk_rope_head_dim % 2 != 0) {
    return err("qk_rope_head_dim", absl::StrCat("must be even, got ", c.qk_rope_head_dim));
  }
  if (c.rope_scaling &&
      c.rope_scaling->original_max_position_embeddings > c.max_position_embeddings) {
    return err("rope_scaling", "original_max_position_embeddings exceeds max_position_embeddings");
  }
  if (c.tie_word_embeddings && c.is_mla()) {
    return err("tie_word_embeddings", "tied embeddings are not supported for this architecture");
  }
  if (c.attention_bias && c.is_mla()) {
    return err("attention_bias", "attention biases are not supported for MLA");
  }
  for (int64_t id : c.eos_token_ids) {
    if (id >= c.vocab_size) return err("eos_token_id", "outside the vocabulary");
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Each `ignore` pattern compiled once: Ignores runs for every projection of a checkpoint (tens of
// thousands for Kimi K2), and compiling takes longer than matching.
const std::regex& CompiledPattern(const std::string& pattern) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<const std::regex>> compiled;
  std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<const std::regex>& re = compiled[pattern];
  if (!re) re = std::make_unique<const std::regex>(pattern);
  return *re;
}

}  // namespace

bool QuantizationConfig::Ignores(const std::string& module) const {
  for (const std::string& entry : ignore) {
    if (entry.rfind("re:", 0) == 0) {
      // As compressed-tensors does (Python's re.match): anchored at the start only.
      if (std::regex_search(module, CompiledPattern(entry.substr(3)),
                            std::regex_constants::match_continuous)) {
        return true;
      }
    } else if (module == entry) {
      return true;
    }
  }
  return false;
}

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (n_routed_experts == 0) return false;
  if (decoder_sparse_step > 0) {
    return (layer + 1) % decoder_sparse_step == 0 &&
           std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) ==
               mlp_only_layers.end();
  }
  return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += IsMoeLayer(l) ? 1 : 0;
  return n;
}

ParamCounts ModelConfig::CountParameters() const {
  ParamCounts p;
  const int64_t h = hidden_size, heads = num_attention_heads;
  p.embedding = (tie_word_embeddings ? 1 : 2) * vocab_size * h;
  int64_t attn = 0;
  if (!is_mla()) {
    attn += h * heads * head_dim * 2 + 2 * h * num_key_value_heads * head_dim;
    if (qk_norm == QkNorm::kPerHead) attn += 2 * head_dim;
    if (qk_norm == QkNorm::kWhole) attn += (heads + num_key_value_heads) * head_dim;
  } else if (q_lora_rank) {
    attn += h * *q_lora_rank + *q_lora_rank + *q_lora_rank * heads * qk_head_dim();
  } else {
    attn += h * heads * qk_head_dim();
  }
  if (is_mla()) {
    attn += h * kv_cache_dim() + kv_lora_rank;
    attn += kv_lora_rank * heads * (qk_nope_head_dim + v_head_dim);
    attn += heads * v_head_dim * h;
  }
  const int64_t expert = 3 * h * moe_intermediate_size;
  int64_t moe_active = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    p.attention += attn;
    p.norms += 2 * h;
    if (IsMoeLayer(l)) {
      p.routed_experts += n_routed_experts * expert;
      p.shared_experts += n_shared_experts * expert;
      p.router += h * n_routed_experts + (topk_method == "noaux_tc" ? n_routed_experts : 0);
      moe_active += num_experts_per_tok * expert;
    } else {
      p.dense_mlp += 3 * h * intermediate_size;
    }
  }
  p.norms += h;
  p.total = p.embedding + p.attention + p.dense_mlp + p.routed_experts + p.shared_experts +
            p.router + p.norms;
  p.active = p.total - p.routed_experts + moe_active;
  return p;
}

std::string ModelConfig::ToJson() const {
  Json j;
  j["architectures"] = architectures;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  if (is_mla()) {
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["num_nextn_predict_layers"] = num_nextn_predict_layers;
    j["n_shared_experts"] = n_shared_experts;
    j["n_routed_experts"] = n_routed_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["kv_lora_rank"] = kv_lora_rank;
    j["q_lora_rank"] = q_lora_rank ? Json(*q_lora_rank) : Json(nullptr);
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["topk_method"] = topk_method;
    j["scoring_func"] = scoring_func;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["moe_layer_freq"] = moe_layer_freq;
    j["first_k_dense_replace"] = first_k_dense_replace;
  } else {
    j["head_dim"] = head_dim;
    if (model_type == "qwen3_moe") {
      j["num_experts"] = n_routed_experts;
      j["num_experts_per_tok"] = num_experts_per_tok;
      j["moe_intermediate_size"] = moe_intermediate_size;
      j["norm_topk_prob"] = norm_topk_prob;
      j["decoder_sparse_step"] = decoder_sparse_step;
      j["mlp_only_layers"] = mlp_only_layers;
    }
    if (model_type == "llama4_text") {
      j["intermediate_size"] = moe_intermediate_size;
      j["intermediate_size_mlp"] = intermediate_size;
      j["num_local_experts"] = n_routed_experts;
      j["num_experts_per_tok"] = num_experts_per_tok;
      std::vector<int64_t> moe_layers;
      for (int64_t l = 0; l < num_hidden_layers; ++l) {
        if (IsMoeLayer(l)) moe_layers.push_back(l);
      }
      j["moe_layers"] = moe_layers;
      j["use_qk_norm"] = qk_norm == QkNorm::kL2;
      j["attn_temperature_tuning"] = attn_temperature_tuning;
      j["floor_scale"] = floor_scale;
      j["attn_scale"] = attn_scale;
      j["attention_chunk_size"] =
          attention_chunk_size > 0 ? Json(attention_chunk_size) : Json(nullptr);
      std::vector<std::string> types;
      for (int64_t l = 0; l < num_hidden_layers; ++l) {
        types.push_back(IsChunked(l) ? "chunked_attention" : "full_attention");
      }
      j["layer_types"] = types;
    }
    if (model_type == "smollm3" || model_type == "llama4_text") {
      std::vector<int> flags;
      for (bool b : rope_layers) flags.push_back(b ? 1 : 0);
      j["no_rope_layers"] = flags;
    }
    if (model_type == "gemma3_text") {
      std::vector<std::string> types;
      for (bool b : sliding_layers) types.push_back(b ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
      j["sliding_window"] = sliding_window;
      j["rope_local_base_freq"] = rope_local_theta;
      j["query_pre_attn_scalar"] = query_pre_attn_scalar;
      j["final_logit_softcapping"] =
          final_logit_softcapping > 0 ? Json(final_logit_softcapping) : Json(nullptr);
      j["attn_logit_softcapping"] = nullptr;
      j["use_bidirectional_attention"] = false;
    } else if (model_type != "olmo2" && model_type != "llama4_text") {
      j["sliding_window"] = nullptr;
    }
    if (model_type != "mistral" && model_type != "olmo2" && model_type != "gemma3_text" &&
        model_type != "llama4_text") {
      j["use_sliding_window"] = false;
    }
  }
  j[model_type == "gemma3_text" ? "hidden_activation" : "hidden_act"] = hidden_act;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (llama3_rope) {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", llama3_rope->factor},
        {"low_freq_factor", llama3_rope->low_freq_factor},
        {"high_freq_factor", llama3_rope->high_freq_factor},
        {"original_max_position_embeddings", llama3_rope->original_max_position_embeddings}};
  } else if (rope_linear_factor != 1.0) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_linear_factor}};
  } else if (rope_scaling) {
    Json r;
    r["type"] = rope_scaling->type;
    r["factor"] = rope_scaling->factor;
    if (rope_scaling->original_max_position_embeddings > 0) {
      r["original_max_position_embeddings"] = rope_scaling->original_max_position_embeddings;
    }
    r["beta_fast"] = rope_scaling->beta_fast;
    r["beta_slow"] = rope_scaling->beta_slow;
    r["mscale"] = rope_scaling->mscale;
    r["mscale_all_dim"] = rope_scaling->mscale_all_dim;
    j["rope_scaling"] = r;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["attention_bias"] = attention_bias;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  j["pad_token_id"] = pad_token_id ? Json(*pad_token_id) : Json(nullptr);
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  j["torch_dtype"] = torch_dtype;
  if (quantization_config && quantization_config->is_int4()) {
    const QuantizationConfig& qc = *quantization_config;
    Json weights = {{"num_bits", qc.num_bits}, {"type", "int"},       {"symmetric", true},
                    {"strategy", "group"},     {"group_size", qc.group_size}, {"dynamic", false},
                    {"actorder", nullptr},     {"block_structure", nullptr},
                    {"observer", "minmax"},    {"observer_kwargs", Json::object()}};
    Json group = {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations", nullptr},
                  {"output_activations", nullptr}};
    j["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                {"format", qc.format},
                                {"quantization_status", "compressed"},
                                {"kv_cache_scheme", nullptr},
                                {"config_groups", {{"group_0", group}}},
                                {"ignore", qc.ignore}};
  } else if (quantization_config) {
    Json q;
    q["quant_method"] = quantization_config->quant_method;
    q["fmt"] = quantization_config->fmt;
    q["activation_scheme"] = quantization_config->activation_scheme;
    q["weight_block_size"] = {quantization_config->block_rows, quantization_config->block_cols};
    j["quantization_config"] = q;
  }
  return j.dump(2) + "\n";
}

namespace {

// The architectures this engine runs, with their model_type values.
struct Architecture {
  const char* name;
  std::initializer_list<absl::string_view> model_types;
};
constexpr Architecture kArchitectures[] = {
    {"DeepseekV3ForCausalLM", {"deepseek_v3", "kimi_k2"}},
    {"Qwen3ForCausalLM", {"qwen3"}},
    {"Qwen3MoeForCausalLM", {"qwen3_moe"}},
    {"MistralForCausalLM", {"mistral"}},
    {"SmolLM3ForCausalLM", {"smollm3"}},
    {"Olmo2ForCausalLM", {"olmo2"}},
    {"Gemma3ForCausalLM", {"gemma3_text"}},
    {"Llama4ForCausalLM", {"llama4_text"}},
};

// SmolLM3's and Llama 4's NoPE layers: no_rope_layers (1: RoPE, 0: NoPE) or, without it, a NoPE
// layer every no_rope_layer_interval layers.
absl::Status ParseNoRopeLayers(const Fields& f, ModelConfig& c);
absl::Status ParseIntList(const Fields& f, const char* key, std::vector<int64_t>* out);

// config.json's layer_types, one per layer, each "full_attention" or `local` (Gemma 3's
// "sliding_attention", Llama 4's "chunked_attention"): which layers are `local`.
absl::Status ParseLayerTypes(const Fields& f, int64_t layers, const char* local,
                             std::vector<bool>* out) {
  const Json& t = f.obj().at("layer_types");
  if (!t.is_array() || static_cast<int64_t>(t.size()) != layers) {
    return f.Error("layer_types", absl::StrCat("expected one entry per layer (", layers, ")"));
  }
  out->clear();
  for (const Json& e : t) {
    if (!e.is_string() || (e != local && e != "full_attention")) {
      return f.Error("layer_types", absl::StrCat("expected \"", local, "\" or \"full_attention\""));
    }
    out->push_back(e == local);
  }
  return absl::OkStatus();
}

// Llama 4: interleaved MoE layers (shared expert + sigmoid-gated top-k routed experts, fused
// tensors), NoPE layers with temperature tuning, chunked attention and L2 QK-norm on the others.
absl::Status ParseLlama4Fields(const Fields& f, ModelConfig& c) {
  const Json& j = f.obj();
  c.rope_interleaved = true;
  c.fused_experts = true;
  c.router_weight_on_input = true;
  c.topk_method = "greedy";
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = false;
  c.n_shared_experts = 1;
  // Experts and the shared expert are intermediate_size wide, dense layers intermediate_size_mlp.
  c.moe_intermediate_size = c.intermediate_size;
  c.intermediate_size = 16384;
  MOE_RETURN_IF_ERROR(f.Int("intermediate_size_mlp", &c.intermediate_size, false, 1));
  MOE_RETURN_IF_ERROR(f.Int("num_local_experts", &c.n_routed_experts, true, 1));
  c.num_experts_per_tok = 1;
  MOE_RETURN_IF_ERROR(f.Int("num_experts_per_tok", &c.num_experts_per_tok, false, 1));
  c.decoder_sparse_step = 1;
  MOE_RETURN_IF_ERROR(f.Int("interleave_moe_layer_step", &c.decoder_sparse_step, false, 1));
  if (f.Has("moe_layers")) {
    std::vector<int64_t> moe_layers;
    MOE_RETURN_IF_ERROR(ParseIntList(f, "moe_layers", &moe_layers));
    c.decoder_sparse_step = 1;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (std::find(moe_layers.begin(), moe_layers.end(), l) == moe_layers.end()) {
        c.mlp_only_layers.push_back(l);
      }
    }
  }
  MOE_RETURN_IF_ERROR(ParseNoRopeLayers(f, c));
  bool qk_norm = true;
  MOE_RETURN_IF_ERROR(f.Bool("use_qk_norm", &qk_norm));
  if (qk_norm) c.qk_norm = QkNorm::kL2;
  c.attn_temperature_tuning = true;
  MOE_RETURN_IF_ERROR(f.Bool("attn_temperature_tuning", &c.attn_temperature_tuning));
  MOE_RETURN_IF_ERROR(f.Int("floor_scale", &c.floor_scale, false, 1));
  MOE_RETURN_IF_ERROR(f.Double("attn_scale", &c.attn_scale, false));
  c.attention_chunk_size = j.contains("attention_chunk_size") ? 0 : 8192;  // explicit null: none
  MOE_RETURN_IF_ERROR(f.Int("attention_chunk_size", &c.attention_chunk_size, false, 1));
  if (f.Has("layer_types")) {
    MOE_RETURN_IF_ERROR(
        ParseLayerTypes(f, c.num_hidden_layers, "chunked_attention", &c.chunked_layers));
    if (c.attention_chunk_size == 0 && std::find(c.chunked_layers.begin(), c.chunked_layers.end(),
                                                 true) != c.chunked_layers.end()) {
      return f.Error("layer_types", "chunked_attention layers need attention_chunk_size");
    }
  } else if (c.attention_chunk_size > 0) {
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) c.chunked_layers.push_back(c.UsesRope(l));
  }
  if (c.attention_chunk_size > c.max_position_embeddings) {
    return f.Error("attention_chunk_size",
                   absl::StrCat(c.attention_chunk_size, " exceeds the context (",
                                "max_position_embeddings ", c.max_position_embeddings, ")"));
  }
  c.rope_theta = 500000.0;
  MOE_RETURN_IF_ERROR(f.Double("rope_theta", &c.rope_theta, false));
  if (f.Has("rope_scaling")) {
    const Json& rs = j.at("rope_scaling");
    if (!rs.is_object()) return f.TypeError("rope_scaling", "an object");
    Fields r(rs, "config.json rope_scaling ");
    std::string type;
    MOE_RETURN_IF_ERROR(r.String(r.Has("rope_type") ? "rope_type" : "type", &type, true));
    MOE_RETURN_IF_ERROR(r.OneOf("rope_type", type, {"llama3"}));
    Llama3RopeScaling l3;
    MOE_RETURN_IF_ERROR(r.Double("factor", &l3.factor, true));
    MOE_RETURN_IF_ERROR(r.Double("low_freq_factor", &l3.low_freq_factor, true));
    MOE_RETURN_IF_ERROR(r.Double("high_freq_factor", &l3.high_freq_factor, true));
    MOE_RETURN_IF_ERROR(
        r.Int("original_max_position_embeddings", &l3.original_max_position_embeddings, true, 1));
    if (!(l3.factor >= 1) || !(l3.high_freq_factor > l3.low_freq_factor) ||
        !(l3.low_freq_factor > 0)) {
      return r.Error("factor", "needs factor >= 1 and high_freq_factor > low_freq_factor > 0");
    }
    c.llama3_rope = l3;
  }
  return absl::OkStatus();
}

// Gemma 3's own switches: sandwich norms with (1 + weight), scaled embeddings, GELU-tanh, five
// sliding-window layers to one global one with separate RoPE bases, soft-capped logits.
absl::Status ParseGemma3Fields(const Fields& f, ModelConfig& c) {
  const Json& j = f.obj();
  c.qk_norm = QkNorm::kPerHead;
  c.norm_placement = NormPlacement::kSandwich;
  c.norm_unit_offset = true;
  c.scale_embeddings = true;
  c.query_pre_attn_scalar = 256;
  MOE_RETURN_IF_ERROR(f.Int("query_pre_attn_scalar", &c.query_pre_attn_scalar, false, 1));
  if (f.Has("attn_logit_softcapping")) {
    return f.Error("attn_logit_softcapping", "attention soft-capping is not supported (null only)");
  }
  bool bidirectional = false;
  MOE_RETURN_IF_ERROR(f.Bool("use_bidirectional_attention", &bidirectional));
  if (bidirectional) return f.Error("use_bidirectional_attention", "only causal attention");
  MOE_RETURN_IF_ERROR(f.Double("final_logit_softcapping", &c.final_logit_softcapping, false));
  if (c.final_logit_softcapping < 0) return f.Error("final_logit_softcapping", "must be >= 0");
  c.sliding_window = 4096;
  MOE_RETURN_IF_ERROR(f.Int("sliding_window", &c.sliding_window, false, 1));
  if (f.Has("layer_types")) {
    MOE_RETURN_IF_ERROR(
        ParseLayerTypes(f, c.num_hidden_layers, "sliding_attention", &c.sliding_layers));
  } else {
    int64_t pattern = 6;
    MOE_RETURN_IF_ERROR(f.Int("sliding_window_pattern", &pattern, false, 1));
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      c.sliding_layers.push_back((l + 1) % pattern != 0);
  }
  c.rope_local_theta = 10000.0;
  MOE_RETURN_IF_ERROR(f.Double("rope_local_base_freq", &c.rope_local_theta, false));
  // transformers 5 writes both bases as rope_parameters.{full,sliding}_attention.
  auto linear = [&](const Fields& r) -> absl::Status {
    std::string type = "default";
    MOE_RETURN_IF_ERROR(r.String(r.Has("rope_type") ? "rope_type" : "type", &type, false));
    MOE_RETURN_IF_ERROR(r.OneOf("rope_type", type, {"default", "linear"}));
    if (type == "linear") MOE_RETURN_IF_ERROR(r.Double("factor", &c.rope_linear_factor, true));
    if (!(c.rope_linear_factor >= 1)) return r.Error("factor", "must be >= 1");
    return absl::OkStatus();
  };
  if (f.Has("rope_parameters") && j.at("rope_parameters").contains("full_attention")) {
    const Json& rp = j.at("rope_parameters");
    for (const char* kind : {"full_attention", "sliding_attention"}) {
      if (!rp.contains(kind) || !rp.at(kind).is_object()) {
        return f.Error("rope_parameters", absl::StrCat("expected an object \"", kind, "\""));
      }
      Fields r(rp.at(kind), absl::StrCat("config.json rope_parameters.", kind, " "));
      double* theta = std::string(kind) == "full_attention" ? &c.rope_theta : &c.rope_local_theta;
      MOE_RETURN_IF_ERROR(r.Double("rope_theta", theta, false));
      if (std::string(kind) == "full_attention") MOE_RETURN_IF_ERROR(linear(r));
    }
  } else if (f.Has("rope_scaling")) {
    const Json& rs = j.at("rope_scaling");
    if (!rs.is_object()) return f.TypeError("rope_scaling", "an object");
    MOE_RETURN_IF_ERROR(linear(Fields(rs, "config.json rope_scaling ")));
  }
  if (!(c.rope_local_theta > 1)) return f.Error("rope_local_base_freq", "must be > 1");
  if (c.sliding_window > c.max_position_embeddings) {
    return f.Error("sliding_window",
                   absl::StrCat(c.sliding_window, " exceeds the context (",
                                "max_position_embeddings ", c.max_position_embeddings, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParseIntList(const Fields& f, const char* key, std::vector<int64_t>* out) {
  if (!f.Has(key)) return absl::OkStatus();
  const Json& v = f.obj().at(key);
  if (!v.is_array()) return f.TypeError(key, "an array of integers");
  out->clear();
  for (const Json& e : v) {
    if (!e.is_number_integer()) return f.Error(key, "expected integers");
    out->push_back(e.get<int64_t>());
  }
  return absl::OkStatus();
}

absl::Status ParseNoRopeLayers(const Fields& f, ModelConfig& c) {
  std::vector<int64_t> flags;
  if (f.Has("no_rope_layers")) {
    MOE_RETURN_IF_ERROR(ParseIntList(f, "no_rope_layers", &flags));
    if (static_cast<int64_t>(flags.size()) != c.num_hidden_layers) {
      return f.Error("no_rope_layers", absl::StrCat("expected one entry per layer (",
                                                    c.num_hidden_layers, "), got ", flags.size()));
    }
  } else {
    int64_t interval = 4;
    MOE_RETURN_IF_ERROR(f.Int("no_rope_layer_interval", &interval, false, 1));
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) flags.push_back((l + 1) % interval != 0);
  }
  c.rope_layers.clear();
  for (int64_t v : flags) c.rope_layers.push_back(v != 0);
  return absl::OkStatus();
}

// MLA and DeepSeek's MoE.
absl::Status ParseDeepseekFields(const Fields& f, ModelConfig& c) {
  const Json& j = f.obj();
  MOE_RETURN_IF_ERROR(f.Int("moe_intermediate_size", &c.moe_intermediate_size, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers, false, 0));
  MOE_RETURN_IF_ERROR(f.Int("n_shared_experts", &c.n_shared_experts, false, 0));
  MOE_RETURN_IF_ERROR(f.Int("n_routed_experts", &c.n_routed_experts, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("num_experts_per_tok", &c.num_experts_per_tok, true, 1));
  MOE_RETURN_IF_ERROR(f.Double("routed_scaling_factor", &c.routed_scaling_factor, false));
  if (!(c.routed_scaling_factor > 0)) return f.Error("routed_scaling_factor", "must be positive");
  MOE_RETURN_IF_ERROR(f.Int("kv_lora_rank", &c.kv_lora_rank, true, 1));
  if (f.Has("q_lora_rank")) {
    int64_t q = 0;
    MOE_RETURN_IF_ERROR(f.Int("q_lora_rank", &q, true, 1));
    c.q_lora_rank = q;
  } else if (!j.contains("q_lora_rank")) {
    return f.Error("q_lora_rank", "missing (required; null selects a direct q_proj)");
  }
  MOE_RETURN_IF_ERROR(f.Int("qk_rope_head_dim", &c.qk_rope_head_dim, true, 2));
  MOE_RETURN_IF_ERROR(f.Int("qk_nope_head_dim", &c.qk_nope_head_dim, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("v_head_dim", &c.v_head_dim, true, 1));
  MOE_RETURN_IF_ERROR(f.String("topk_method", &c.topk_method, false));
  MOE_RETURN_IF_ERROR(
      f.OneOf("topk_method", c.topk_method, {"noaux_tc", "greedy", "group_limited_greedy"}));
  MOE_RETURN_IF_ERROR(f.String("scoring_func", &c.scoring_func, false));
  MOE_RETURN_IF_ERROR(f.OneOf("scoring_func", c.scoring_func, {"sigmoid", "softmax"}));
  MOE_RETURN_IF_ERROR(f.Int("n_group", &c.n_group, false, 1));
  MOE_RETURN_IF_ERROR(f.Int("topk_group", &c.topk_group, false, 1));
  MOE_RETURN_IF_ERROR(f.Bool("norm_topk_prob", &c.norm_topk_prob));
  MOE_RETURN_IF_ERROR(f.Int("moe_layer_freq", &c.moe_layer_freq, false, 1));
  MOE_RETURN_IF_ERROR(f.Int("first_k_dense_replace", &c.first_k_dense_replace, false, 0));
  if (f.Has("rope_scaling")) {
    RopeScaling rs;
    MOE_RETURN_IF_ERROR(ParseRopeScaling(j.at("rope_scaling"), &rs));
    c.rope_scaling = rs;
  }
  return absl::OkStatus();
}

// Grouped-query attention and the switches of each GQA family.
absl::Status ParseGqaFields(const Fields& f, ModelConfig& c) {
  c.head_dim = c.hidden_size / c.num_attention_heads;
  MOE_RETURN_IF_ERROR(f.Int("head_dim", &c.head_dim, false, 2));
  if (c.head_dim % 2 != 0)
    return f.Error("head_dim", absl::StrCat("must be even, got ", c.head_dim));
  c.qk_rope_head_dim = c.v_head_dim = c.head_dim;
  c.qk_nope_head_dim = 0;
  c.kv_lora_rank = 0;
  c.n_group = c.topk_group = 1;
  c.n_routed_experts = c.num_experts_per_tok = 0;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.Error("num_key_value_heads",
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads ",
                                c.num_attention_heads));
  }
  if (c.model_type == "gemma3_text") return ParseGemma3Fields(f, c);
  if (c.model_type == "llama4_text") return ParseLlama4Fields(f, c);
  if (f.Has("rope_scaling")) {
    return f.Error("rope_scaling", "RoPE scaling is not supported for this architecture yet");
  }
  bool sliding = false;
  MOE_RETURN_IF_ERROR(f.Bool("use_sliding_window", &sliding));
  if (sliding || (c.model_type == "mistral" && f.Has("sliding_window"))) {
    return f.Error("sliding_window",
                   "sliding-window attention is not supported for this "
                   "architecture yet (null or use_sliding_window false)");
  }
  if (c.model_type == "qwen3" || c.model_type == "qwen3_moe") c.qk_norm = QkNorm::kPerHead;
  if (c.model_type == "olmo2") {
    c.qk_norm = QkNorm::kWhole;
    c.norm_placement = NormPlacement::kPost;
  }
  if (c.model_type == "smollm3") MOE_RETURN_IF_ERROR(ParseNoRopeLayers(f, c));
  if (c.model_type == "qwen3_moe") {
    c.topk_method = "greedy";
    c.scoring_func = "softmax";
    c.norm_topk_prob = false;  // transformers' Qwen3MoeConfig default
    MOE_RETURN_IF_ERROR(f.Int("num_experts", &c.n_routed_experts, true, 1));
    MOE_RETURN_IF_ERROR(f.Int("num_experts_per_tok", &c.num_experts_per_tok, true, 1));
    MOE_RETURN_IF_ERROR(f.Int("moe_intermediate_size", &c.moe_intermediate_size, true, 1));
    MOE_RETURN_IF_ERROR(f.Bool("norm_topk_prob", &c.norm_topk_prob));
    c.decoder_sparse_step = 1;
    MOE_RETURN_IF_ERROR(f.Int("decoder_sparse_step", &c.decoder_sparse_step, false, 1));
    MOE_RETURN_IF_ERROR(ParseIntList(f, "mlp_only_layers", &c.mlp_only_layers));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: expected a JSON object");
  Fields f(j, "config.json ");
  ModelConfig c;

  if (!f.Has("architectures")) return f.Error("architectures", "missing (required)");
  const Json& arch = j.at("architectures");
  if (!arch.is_array()) return f.TypeError("architectures", "an array of strings");
  for (const Json& a : arch) {
    if (!a.is_string()) return f.TypeError("architectures", "an array of strings");
    c.architectures.push_back(a.get<std::string>());
  }
  const Architecture* known = nullptr;
  for (const Architecture& a : kArchitectures) {
    if (c.architectures.size() == 1 && c.architectures[0] == a.name) known = &a;
  }
  if (known == nullptr) {
    std::vector<std::string> names;
    for (const Architecture& a : kArchitectures) names.push_back(a.name);
    return f.Error("architectures",
                   absl::StrCat("unsupported architecture [", absl::StrJoin(c.architectures, ", "),
                                "] (supported: ", absl::StrJoin(names, ", "), ")"));
  }
  MOE_RETURN_IF_ERROR(f.String("model_type", &c.model_type, true));
  MOE_RETURN_IF_ERROR(f.OneOf("model_type", c.model_type, known->model_types));

  MOE_RETURN_IF_ERROR(f.Int("vocab_size", &c.vocab_size, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("hidden_size", &c.hidden_size, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("intermediate_size", &c.intermediate_size, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("num_hidden_layers", &c.num_hidden_layers, true, 1));
  MOE_RETURN_IF_ERROR(f.Int("num_attention_heads", &c.num_attention_heads, true, 1));
  c.num_key_value_heads = c.num_attention_heads;
  MOE_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c.num_key_value_heads, false, 1));
  const bool gemma = c.model_type == "gemma3_text";
  if (gemma) {  // transformers' Gemma3TextConfig defaults
    c.hidden_act = "gelu_pytorch_tanh";
    c.rope_theta = 1000000.0;
    c.tie_word_embeddings = true;
    MOE_RETURN_IF_ERROR(f.String("hidden_activation", &c.hidden_act, false));
    MOE_RETURN_IF_ERROR(f.OneOf("hidden_activation", c.hidden_act, {"gelu_pytorch_tanh"}));
  } else {
    MOE_RETURN_IF_ERROR(f.String("hidden_act", &c.hidden_act, false));
    MOE_RETURN_IF_ERROR(f.OneOf("hidden_act", c.hidden_act, {"silu"}));
  }
  MOE_RETURN_IF_ERROR(f.Int("max_position_embeddings", &c.max_position_embeddings, true, 1));
  MOE_RETURN_IF_ERROR(f.Double("rms_norm_eps", &c.rms_norm_eps, false));
  if (!(c.rms_norm_eps > 0)) return f.Error("rms_norm_eps", "must be positive");
  MOE_RETURN_IF_ERROR(f.Double("rope_theta", &c.rope_theta, false));
  if (f.Has("rope_parameters") &&
      !gemma) {  // transformers 5 spelling: {"rope_type": ..., "rope_theta": ...}
    const Json& rp = j.at("rope_parameters");
    if (!rp.is_object()) return f.TypeError("rope_parameters", "an object");
    Fields r(rp, "config.json rope_parameters ");
    std::string type = "default";
    MOE_RETURN_IF_ERROR(r.String("rope_type", &type, false));
    MOE_RETURN_IF_ERROR(r.OneOf("rope_type", type, {"default"}));
    MOE_RETURN_IF_ERROR(r.Double("rope_theta", &c.rope_theta, false));
  }
  if (!(c.rope_theta > 1)) return f.Error("rope_theta", "must be > 1");
  MOE_RETURN_IF_ERROR(f.Bool("attention_bias", &c.attention_bias));
  MOE_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.model_type == "deepseek_v3" || c.model_type == "kimi_k2") {
    MOE_RETURN_IF_ERROR(ParseDeepseekFields(f, c));
  } else {
    MOE_RETURN_IF_ERROR(ParseGqaFields(f, c));
  }
  if (f.Has("bos_token_id")) {
    int64_t bos = 0;
    MOE_RETURN_IF_ERROR(f.Int("bos_token_id", &bos, true, 0));
    c.bos_token_id = bos;
  }
  if (f.Has("pad_token_id")) {
    int64_t pad = 0;
    MOE_RETURN_IF_ERROR(f.Int("pad_token_id", &pad, true, 0));
    c.pad_token_id = pad;
  }
  MOE_RETURN_IF_ERROR(ParseTokenIds(f, "eos_token_id", &c.eos_token_ids));
  MOE_RETURN_IF_ERROR(f.String("torch_dtype", &c.torch_dtype, false));
  if (f.Has("quantization_config")) {
    QuantizationConfig q;
    MOE_RETURN_IF_ERROR(ParseQuantization(j.at("quantization_config"), &q));
    c.quantization_config = q;
  }
  MOE_RETURN_IF_ERROR(Validate(c));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) p /= "config.json";
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", p.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseModelConfig(ss.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(p.string(), ": ", config.status().message()));
  }
  return config;
}

}  // namespace moe
