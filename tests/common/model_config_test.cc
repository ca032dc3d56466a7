#include "common/model_config.h"

#include <fstream>
#include <functional>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tools/model_maker.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string PresetPath(const std::string& name) {
  return std::string(MOE_SOURCE_DIR) + "/common/presets/" + name + ".json";
}

TEST(ModelConfigTest, ParsesDeepSeekV3) {
  auto c = LoadModelConfig(PresetPath("deepseek-v3"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "deepseek_v3");
  EXPECT_EQ(c->hidden_size, 7168);
  EXPECT_EQ(c->num_hidden_layers, 61);
  EXPECT_EQ(c->num_nextn_predict_layers, 1);
  EXPECT_EQ(c->n_routed_experts, 256);
  EXPECT_EQ(c->n_group, 8);
  EXPECT_EQ(c->topk_group, 4);
  EXPECT_EQ(c->q_lora_rank, 1536);
  EXPECT_EQ(c->kv_cache_dim(), 576);
  EXPECT_EQ(c->qk_head_dim(), 192);
  EXPECT_EQ(c->first_k_dense_replace, 3);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_EQ(c->topk_method, "noaux_tc");
  EXPECT_EQ(c->scoring_func, "sigmoid");
  EXPECT_TRUE(c->norm_topk_prob);
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->type, "yarn");
  EXPECT_DOUBLE_EQ(c->rope_scaling->factor, 40.0);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c->rope_scaling->beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling->mscale_all_dim, 1.0);
  ASSERT_TRUE(c->quantization_config.has_value());
  EXPECT_EQ(c->quantization_config->block_rows, 128);
  EXPECT_EQ(c->quantization_config->block_cols, 128);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{1});
  EXPECT_FALSE(c->IsMoeLayer(2));
  EXPECT_TRUE(c->IsMoeLayer(3));
  EXPECT_EQ(c->num_moe_layers(), 58);
}

TEST(ModelConfigTest, ParsesKimiK2) {
  auto c = LoadModelConfig(PresetPath("kimi-k2"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "kimi_k2");
  EXPECT_EQ(c->n_routed_experts, 384);
  EXPECT_EQ(c->n_group, 1);
  EXPECT_EQ(c->num_attention_heads, 64);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.827);
  EXPECT_EQ(c->num_moe_layers(), 60);
  EXPECT_EQ(c->bos_token_id, 163584);
}

// Kimi K2 Thinking's quantization_config as published (routed experts int4, the rest bf16).
nlohmann::json KimiK2ThinkingQuantization() {
  return nlohmann::json::parse(R"({
    "config_groups": {"group_0": {"input_activations": null, "output_activations": null,
      "targets": ["Linear"], "weights": {"actorder": null, "block_structure": null,
      "dynamic": false, "group_size": 32, "num_bits": 4, "observer": "minmax",
      "observer_kwargs": {}, "strategy": "group", "symmetric": true, "type": "int"}}},
    "format": "pack-quantized",
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
               "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
    "kv_cache_scheme": null, "quant_method": "compressed-tensors",
    "quantization_status": "compressed"})");
}

nlohmann::json KimiK2Json() {
  std::ifstream in(PresetPath("kimi-k2"));
  return nlohmann::json::parse(in);
}

TEST(ModelConfigTest, ParsesKimiK2ThinkingInt4Quantization) {
  nlohmann::json j = KimiK2Json();
  j["quantization_config"] = KimiK2ThinkingQuantization();
  auto c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->quantization_config.has_value());
  const QuantizationConfig& q = *c->quantization_config;
  EXPECT_TRUE(q.is_int4());
  EXPECT_FALSE(q.is_fp8());
  EXPECT_EQ(q.group_size, 32);
  EXPECT_EQ(q.num_bits, 4);
  EXPECT_EQ(q.ignore.size(), 4u);
  EXPECT_TRUE(q.Ignores("model.layers.1.self_attn.kv_b_proj"));
  EXPECT_FALSE(q.Ignores("model.layers.1.mlp.experts.0.up_proj"));
  // Written back and read again: the same quantization.
  auto again = ParseModelConfig(c->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->quantization_config->ignore, q.ignore);
  EXPECT_EQ(again->quantization_config->group_size, 32);
}

TEST(ModelConfigTest, RejectsInt4QuantizationsItCannotRun) {
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> cases = {
      {[](auto& q) { q["format"] = "marlin-24"; }, "\"format\": unsupported value \"marlin-24\""},
      {[](auto& q) { q["config_groups"]["group_0"]["weights"]["num_bits"] = 8; },
       "only 4 is supported"},
      {[](auto& q) { q["config_groups"]["group_0"]["weights"]["symmetric"] = false; },
       "only symmetric"},
      {[](auto& q) { q["config_groups"]["group_0"]["weights"]["group_size"] = 48; },
       "must be a multiple of 32, got 48"},
      {[](auto& q) { q["config_groups"]["group_0"]["weights"]["strategy"] = "channel"; },
       "\"strategy\""},
      {[](auto& q) { q["config_groups"]["group_0"]["input_activations"] = {{"num_bits", 8}}; },
       "activation quantization is not supported"},
      {[](auto& q) { q["config_groups"]["group_1"] = q["config_groups"]["group_0"]; },
       "exactly one group"},
      {[](auto& q) { q["ignore"] = {"re:(unclosed"}; }, "bad regular expression"},
  };
  for (const auto& [mutate, needle] : cases) {
    nlohmann::json j = KimiK2Json();
    j["quantization_config"] = KimiK2ThinkingQuantization();
    mutate(j["quantization_config"]);
    auto c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_THAT(c.status().message(), ::testing::HasSubstr(needle));
  }
}

// Published: DeepSeek-V3 671B total / 37B active (37.6B with both embedding matrices);
// Kimi K2 1.04T total / 32.9B active. Counted here without the MTP module.
TEST(ModelConfigTest, ParameterCountsMatchPublishedFigures) {
  auto ds = LoadModelConfig(PresetPath("deepseek-v3"));
  ASSERT_TRUE(ds.ok());
  const ParamCounts d = ds->CountParameters();
  EXPECT_NEAR(d.total / 671.0e9, 1.0, 0.005) << d.total;
  EXPECT_NEAR(d.active / 37.6e9, 1.0, 0.005) << d.active;
  auto kimi = LoadModelConfig(PresetPath("kimi-k2"));
  ASSERT_TRUE(kimi.ok());
  const ParamCounts k = kimi->CountParameters();
  EXPECT_NEAR(k.total / 1.026e12, 1.0, 0.005) << k.total;
  EXPECT_NEAR(k.active / 32.9e9, 1.0, 0.005) << k.active;
  // Parts add up.
  EXPECT_EQ(d.total, d.embedding + d.attention + d.dense_mlp + d.routed_experts + d.shared_experts +
                         d.router + d.norms);
}

TEST(ModelConfigTest, ParameterCountOfHandWorkedTinyConfig) {
  // tiny-v2lite by hand: h=64, heads=4, q_proj (no LoRA), kv_lora=32, rope=16, nope=24, v=24,
  // 3 layers (1 dense, 2 MoE), 16 experts of width 32, 2 shared, vocab 384, dense width 96.
  auto c = PresetConfig("tiny-v2lite");
  ASSERT_TRUE(c.ok());
  const int64_t attn = 64 * 4 * 40 + 64 * 48 + 32 + 32 * 4 * 48 + 4 * 24 * 64;
  const int64_t expert = 3 * 64 * 32;
  const ParamCounts p = c->CountParameters();
  EXPECT_EQ(p.attention, 3 * attn);
  EXPECT_EQ(p.dense_mlp, 3 * 64 * 96);
  EXPECT_EQ(p.routed_experts, 2 * 16 * expert);
  EXPECT_EQ(p.shared_experts, 2 * 2 * expert);
  EXPECT_EQ(p.router, 2 * (64 * 16 + 16));
  EXPECT_EQ(p.embedding, 2 * 384 * 64);
  EXPECT_EQ(p.norms, 3 * 2 * 64 + 64);
  EXPECT_EQ(p.active, p.total - 2 * 16 * expert + 2 * 6 * expert);
}

TEST(ModelConfigTest, QLoraRankNullSelectsDirectQProj) {
  auto j = nlohmann::json::parse(ReadFile(PresetPath("deepseek-v3")));
  j["q_lora_rank"] = nullptr;
  auto c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->q_lora_rank.has_value());
}

TEST(ModelConfigTest, RoundTripsThroughJson) {
  for (const std::string& name : PresetNames()) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    auto again = ParseModelConfig(c->ToJson());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->ToJson(), c->ToJson());
  }
}

struct BadCase {
  std::string label;
  std::function<void(nlohmann::json&)> edit;
  std::string expected_field;
  std::string preset = "deepseek-v3";  // the config edited
};

class ModelConfigErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ModelConfigErrorTest, NamesTheField) {
  auto j = nlohmann::json::parse(ReadFile(PresetPath(GetParam().preset)));
  GetParam().edit(j);
  auto c = ParseModelConfig(j.dump());
  ASSERT_FALSE(c.ok()) << GetParam().label;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(GetParam().expected_field))
      << c.status();
}

INSTANTIATE_TEST_SUITE_P(
    BadConfigs, ModelConfigErrorTest,
    ::testing::Values(
        BadCase{"unknown_architecture", [](auto& j) { j["architectures"] = {"LlamaForCausalLM"}; },
                "\"architectures\""},
        BadCase{"unknown_model_type", [](auto& j) { j["model_type"] = "mixtral"; },
                "\"model_type\""},
        BadCase{"hidden_size_string", [](auto& j) { j["hidden_size"] = "7168"; },
                "\"hidden_size\": expected an integer, got a string"},
        BadCase{"layers_float", [](auto& j) { j["num_hidden_layers"] = 61.5; },
                "\"num_hidden_layers\""},
        BadCase{"layers_past_int64", [](auto& j) { j["num_hidden_layers"] = 1e300; },
                "\"num_hidden_layers\": expected an integer"},
        BadCase{"layers_below_int64", [](auto& j) { j["num_hidden_layers"] = -9.3e18; },
                "\"num_hidden_layers\": expected an integer"},
        BadCase{"missing_vocab", [](auto& j) { j.erase("vocab_size"); }, "\"vocab_size\": missing"},
        BadCase{"missing_kv_lora", [](auto& j) { j.erase("kv_lora_rank"); }, "\"kv_lora_rank\""},
        BadCase{"missing_q_lora_key", [](auto& j) { j.erase("q_lora_rank"); }, "\"q_lora_rank\""},
        BadCase{"negative_heads", [](auto& j) { j["num_attention_heads"] = -1; },
                "\"num_attention_heads\": must be >= 1"},
        BadCase{"topk_too_large", [](auto& j) { j["num_experts_per_tok"] = 300; },
                "\"num_experts_per_tok\""},
        BadCase{"groups_not_dividing", [](auto& j) { j["n_group"] = 7; }, "\"n_group\""},
        BadCase{"topk_group_too_large", [](auto& j) { j["topk_group"] = 9; }, "\"topk_group\""},
        BadCase{"groups_too_few_experts",
                [](auto& j) {
                  j["topk_group"] = 1;
                  j["num_experts_per_tok"] = 40;
                },
                "\"topk_group\""},
        BadCase{"norm_topk_not_bool", [](auto& j) { j["norm_topk_prob"] = 1; },
                "\"norm_topk_prob\""},
        BadCase{"bad_scoring", [](auto& j) { j["scoring_func"] = "relu"; }, "\"scoring_func\""},
        BadCase{"bad_topk_method", [](auto& j) { j["topk_method"] = "random"; }, "\"topk_method\""},
        BadCase{"bad_act", [](auto& j) { j["hidden_act"] = "gelu"; }, "\"hidden_act\""},
        BadCase{"rope_type", [](auto& j) { j["rope_scaling"]["type"] = "dynamic"; }, "\"type\""},
        BadCase{"rope_factor", [](auto& j) { j["rope_scaling"]["factor"] = "big"; }, "\"factor\""},
        BadCase{"rope_not_object", [](auto& j) { j["rope_scaling"] = 4; }, "\"rope_scaling\""},
        BadCase{"quant_method", [](auto& j) { j["quantization_config"]["quant_method"] = "awq"; },
                "\"quant_method\""},
        BadCase{"quant_block",
                [](auto& j) { j["quantization_config"]["weight_block_size"] = {128}; },
                "\"weight_block_size\""},
        BadCase{"dense_beyond_layers", [](auto& j) { j["first_k_dense_replace"] = 62; },
                "\"first_k_dense_replace\""},
        BadCase{"odd_rope_dim", [](auto& j) { j["qk_rope_head_dim"] = 63; },
                "\"qk_rope_head_dim\""},
        BadCase{"eos_outside_vocab", [](auto& j) { j["eos_token_id"] = 200000; },
                "\"eos_token_id\""},
        BadCase{"tied_embeddings", [](auto& j) { j["tie_word_embeddings"] = true; },
                "\"tie_word_embeddings\""}),
    [](const auto& info) { return info.param.label; });

// The GQA families, each from its tiny preset (written in the family's published config.json
// form): the switches the engine reads.
TEST(ModelConfigTest, ParsesTheGqaFamilies) {
  auto qwen3 = PresetConfig("tiny-qwen3");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_FALSE(qwen3->is_mla());
  EXPECT_EQ(qwen3->head_dim, 16);  // independent of hidden_size / heads (8)
  EXPECT_EQ(qwen3->qk_norm, QkNorm::kPerHead);
  EXPECT_TRUE(qwen3->tie_word_embeddings);
  EXPECT_EQ(qwen3->n_routed_experts, 0);
  EXPECT_EQ(qwen3->kv_cache_dim(), 2 * 2 * 16);  // 2 KV heads, key and value
  EXPECT_EQ(qwen3->qk_head_dim(), 16);           // the softmax scale is 1 / sqrt(head_dim)

  auto moe = PresetConfig("tiny-qwen3-moe");
  ASSERT_TRUE(moe.ok()) << moe.status();
  EXPECT_EQ(moe->n_routed_experts, 16);
  EXPECT_EQ(moe->scoring_func, "softmax");
  EXPECT_EQ(moe->topk_method, "greedy");
  EXPECT_TRUE(moe->norm_topk_prob);
  EXPECT_EQ(moe->n_shared_experts, 0);
  // decoder_sparse_step 1 with mlp_only_layers [1]: layers 0, 2, 3 are MoE.
  EXPECT_TRUE(moe->IsMoeLayer(0));
  EXPECT_FALSE(moe->IsMoeLayer(1));
  EXPECT_TRUE(moe->IsMoeLayer(2));
  EXPECT_EQ(moe->num_moe_layers(), 3);
  auto j = nlohmann::json::parse(ReadFile(PresetPath("tiny-qwen3-moe")));
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = nlohmann::json::array();
  auto every_other = ParseModelConfig(j.dump());
  ASSERT_TRUE(every_other.ok()) << every_other.status();
  EXPECT_FALSE(every_other->IsMoeLayer(0));  // (l + 1) % 2 == 0: layers 1 and 3
  EXPECT_TRUE(every_other->IsMoeLayer(1));
  EXPECT_EQ(every_other->num_moe_layers(), 2);

  auto smol = PresetConfig("tiny-smollm3");
  ASSERT_TRUE(smol.ok()) << smol.status();
  EXPECT_EQ(smol->rope_layers, (std::vector<bool>{true, true, true, false}));
  EXPECT_FALSE(smol->UsesRope(3));
  auto s = nlohmann::json::parse(ReadFile(PresetPath("tiny-smollm3")));
  s.erase("no_rope_layers");
  s["no_rope_layer_interval"] = 2;  // transformers' default list from the interval
  auto from_interval = ParseModelConfig(s.dump());
  ASSERT_TRUE(from_interval.ok()) << from_interval.status();
  EXPECT_EQ(from_interval->rope_layers, (std::vector<bool>{true, false, true, false}));

  auto olmo = PresetConfig("tiny-olmo2");
  ASSERT_TRUE(olmo.ok()) << olmo.status();
  EXPECT_EQ(olmo->qk_norm, QkNorm::kWhole);
  EXPECT_EQ(olmo->norm_placement, NormPlacement::kPost);
  EXPECT_EQ(olmo->head_dim, 8);  // hidden_size / heads when config.json has no head_dim

  auto mistral = PresetConfig("tiny-mistral");
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->qk_norm, QkNorm::kNone);
  EXPECT_EQ(mistral->rope_theta, 1e9);
}

TEST(ModelConfigTest, ParsesGemma3) {
  auto g = PresetConfig("tiny-gemma3");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->norm_placement, NormPlacement::kSandwich);
  EXPECT_TRUE(g->norm_unit_offset);
  EXPECT_TRUE(g->scale_embeddings);
  EXPECT_EQ(g->activation(), Activation::kGeluTanh);
  EXPECT_EQ(g->sliding_window, 8);
  EXPECT_EQ(g->sliding_layers, (std::vector<bool>{true, true, true, true, true, false}));
  EXPECT_EQ(g->rope_local_theta, 1e4);
  EXPECT_EQ(g->rope_linear_factor, 8.0);
  EXPECT_EQ(g->final_logit_softcapping, 30.0);
  EXPECT_EQ(g->query_pre_attn_scalar, 32);
  // The older spelling: sliding_window_pattern instead of layer_types (every 6th layer global).
  auto j = nlohmann::json::parse(ReadFile(PresetPath("tiny-gemma3")));
  j.erase("layer_types");
  j["sliding_window_pattern"] = 3;
  auto pattern = ParseModelConfig(j.dump());
  ASSERT_TRUE(pattern.ok()) << pattern.status();
  EXPECT_EQ(pattern->sliding_layers, (std::vector<bool>{true, true, false, true, true, false}));
  // transformers 5's rope_parameters per layer type.
  j = nlohmann::json::parse(ReadFile(PresetPath("tiny-gemma3")));
  j.erase("rope_theta");
  j.erase("rope_local_base_freq");
  j.erase("rope_scaling");
  j["rope_parameters"] = {
      {"full_attention", {{"rope_type", "linear"}, {"factor", 4.0}, {"rope_theta", 5e5}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 2e4}}}};
  auto params = ParseModelConfig(j.dump());
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(params->rope_theta, 5e5);
  EXPECT_EQ(params->rope_local_theta, 2e4);
  EXPECT_EQ(params->rope_linear_factor, 4.0);
}

TEST(ModelConfigTest, ParsesLlama4) {
  auto l = PresetConfig("tiny-llama4");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->n_routed_experts, 16);
  EXPECT_EQ(l->moe_intermediate_size, 32);  // config.json's intermediate_size
  EXPECT_EQ(l->intermediate_size, 128);     // intermediate_size_mlp: the dense layers
  EXPECT_EQ(l->n_shared_experts, 1);
  EXPECT_TRUE(l->router_weight_on_input);
  EXPECT_TRUE(l->fused_experts);
  EXPECT_TRUE(l->rope_interleaved);
  EXPECT_EQ(l->qk_norm, QkNorm::kL2);
  // interleave_moe_layer_step 2: layers 1 and 3 are MoE.
  EXPECT_FALSE(l->IsMoeLayer(0));
  EXPECT_TRUE(l->IsMoeLayer(1));
  EXPECT_EQ(l->num_moe_layers(), 2);
  // NoPE on layer 3; chunked attention on the RoPE layers.
  EXPECT_EQ(l->rope_layers, (std::vector<bool>{true, true, true, false}));
  EXPECT_EQ(l->chunked_layers, (std::vector<bool>{true, true, true, false}));
  EXPECT_EQ(l->attention_chunk_size, 8);
  ASSERT_TRUE(l->llama3_rope.has_value());
  EXPECT_EQ(l->llama3_rope->original_max_position_embeddings, 64);
  // Round trip through config.json keeps the MoE layers as a list.
  auto again = ParseModelConfig(l->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->num_moe_layers(), 2);
  auto j = nlohmann::json::parse(ReadFile(PresetPath("tiny-llama4")));
  j["moe_layers"] = {0, 2};
  auto listed = ParseModelConfig(j.dump());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->IsMoeLayer(0));
  EXPECT_FALSE(listed->IsMoeLayer(1));
  j["attention_chunk_size"] = nullptr;
  j.erase("layer_types");
  auto unchunked = ParseModelConfig(j.dump());
  ASSERT_TRUE(unchunked.ok()) << unchunked.status();
  EXPECT_TRUE(unchunked->chunked_layers.empty());
}

TEST(ModelConfigTest, ParameterCountOfHandWorkedQwen3Moe) {
  // tiny-qwen3-moe: h=64, 8 heads and 4 KV heads of 16, per-head q/k norms, 4 layers (layer 1
  // dense of width 128), 16 experts of width 32 without shared experts or router bias, vocab 512.
  auto c = PresetConfig("tiny-qwen3-moe");
  ASSERT_TRUE(c.ok());
  const int64_t attn = 64 * 128 + 2 * 64 * 64 + 128 * 64 + 2 * 16;
  const int64_t expert = 3 * 64 * 32;
  const ParamCounts p = c->CountParameters();
  EXPECT_EQ(p.attention, 4 * attn);
  EXPECT_EQ(p.dense_mlp, 3 * 64 * 128);
  EXPECT_EQ(p.routed_experts, 3 * 16 * expert);
  EXPECT_EQ(p.shared_experts, 0);
  EXPECT_EQ(p.router, 3 * 64 * 16);
  EXPECT_EQ(p.embedding, 2 * 512 * 64);
  EXPECT_EQ(PresetConfig("tiny-qwen3")->CountParameters().embedding, 512 * 64);  // tied
  EXPECT_EQ(p.active, p.total - 3 * 16 * expert + 3 * 4 * expert);
}

// The GQA families' configs: {label, edit, field, preset}.
INSTANTIATE_TEST_SUITE_P(
    GqaConfigs, ModelConfigErrorTest,
    ::testing::Values(
        BadCase{"model_type_of_another_family", [](auto& j) { j["model_type"] = "qwen3"; },
                "\"model_type\"", "tiny-qwen3-moe"},
        BadCase{"kv_heads_not_dividing", [](auto& j) { j["num_key_value_heads"] = 3; },
                "\"num_key_value_heads\"", "tiny-qwen3"},
        BadCase{"odd_head_dim", [](auto& j) { j["head_dim"] = 15; }, "\"head_dim\"",
                "tiny-mistral"},
        BadCase{"sliding_window", [](auto& j) { j["sliding_window"] = 4096; }, "\"sliding_window\"",
                "tiny-mistral"},
        BadCase{"use_sliding_window",
                [](auto& j) {
                  j["use_sliding_window"] = true;
                  j["sliding_window"] = 32;
                },
                "\"sliding_window\"", "tiny-qwen3"},
        BadCase{"rope_scaling",
                [](auto& j) {
                  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
                },
                "\"rope_scaling\"", "tiny-qwen3"},
        BadCase{"missing_num_experts", [](auto& j) { j.erase("num_experts"); },
                "\"num_experts\": missing", "tiny-qwen3-moe"},
        BadCase{"topk_beyond_experts", [](auto& j) { j["num_experts_per_tok"] = 17; },
                "\"num_experts_per_tok\"", "tiny-qwen3-moe"},
        BadCase{"no_rope_layers_length",
                [](auto& j) {
                  j["no_rope_layers"] = {1, 1, 0};
                },
                "\"no_rope_layers\"", "tiny-smollm3"},
        BadCase{"mlp_only_layers_not_ints", [](auto& j) { j["mlp_only_layers"] = {"1"}; },
                "\"mlp_only_layers\"", "tiny-qwen3-moe"},
        BadCase{"bad_act", [](auto& j) { j["hidden_act"] = "gelu"; }, "\"hidden_act\"",
                "tiny-olmo2"},
        BadCase{"gemma_bad_act", [](auto& j) { j["hidden_activation"] = "relu"; },
                "\"hidden_activation\"", "tiny-gemma3"},
        BadCase{"attention_softcap", [](auto& j) { j["attn_logit_softcapping"] = 50.0; },
                "\"attn_logit_softcapping\"", "tiny-gemma3"},
        BadCase{"bidirectional", [](auto& j) { j["use_bidirectional_attention"] = true; },
                "\"use_bidirectional_attention\"", "tiny-gemma3"},
        BadCase{"layer_types_length", [](auto& j) { j["layer_types"] = {"full_attention"}; },
                "\"layer_types\"", "tiny-gemma3"},
        BadCase{"layer_type_unknown", [](auto& j) { j["layer_types"][0] = "chunked_attention"; },
                "\"layer_types\"", "tiny-gemma3"},
        BadCase{"llama4_rope_type", [](auto& j) { j["rope_scaling"]["rope_type"] = "yarn"; },
                "\"rope_type\"", "tiny-llama4"},
        BadCase{"llama4_rope_factors", [](auto& j) { j["rope_scaling"]["high_freq_factor"] = 0.5; },
                "\"factor\"", "tiny-llama4"},
        BadCase{"llama4_missing_experts", [](auto& j) { j.erase("num_local_experts"); },
                "\"num_local_experts\"", "tiny-llama4"},
        BadCase{"llama4_layer_types",
                [](auto& j) {
                  j["layer_types"] = {"sliding_attention", "full_attention", "full_attention",
                                      "full_attention"};
                },
                "\"layer_types\"", "tiny-llama4"},
        BadCase{"window_beyond_context", [](auto& j) { j["sliding_window"] = 4096; },
                "\"sliding_window\": 4096 exceeds", "tiny-gemma3"},
        BadCase{"chunk_beyond_context", [](auto& j) { j["attention_chunk_size"] = 8192; },
                "\"attention_chunk_size\"", "tiny-llama4"},
        BadCase{"unknown_model_type", [](auto& j) { j["model_type"] = "qwen2"; }, "\"model_type\"",
                "tiny-qwen3"},
        BadCase{"gemma_rope_type", [](auto& j) { j["rope_scaling"]["rope_type"] = "yarn"; },
                "\"rope_type\"", "tiny-gemma3"}),
    [](const auto& info) { return info.param.label; });

TEST(ModelConfigTest, RejectsNonJson) {
  for (const char* text : {"", "{", "[1,2]", "null", "{\"a\":}"}) {
    auto c = ParseModelConfig(text);
    EXPECT_FALSE(c.ok()) << text;
  }
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  auto c = LoadModelConfig("/nonexistent/config.json");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moe
