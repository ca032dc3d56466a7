#include "tools/planner.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

ModelConfig Load(const std::string& name) {
  auto c = LoadModelConfig(std::string(MOE_SOURCE_DIR) + "/common/presets/" + name + ".json");
  EXPECT_TRUE(c.ok());
  return *c;
}

ClusterSpec Cluster(const std::string& gpu, int nodes) { return {nodes, 8, *GpuPreset(gpu)}; }

TEST(PlannerTest, ParametersAsPublished) {
  auto ds = Plan(Load("deepseek-v3"), Cluster("h800", 4), {1, 32, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(ds.ok());
  EXPECT_NEAR(ds->params.total / 671e9, 1.0, 0.005);
  // "37B activated" (DeepSeek-V3 report); the count with both embedding matrices is 37.6B.
  EXPECT_NEAR(ds->params.active / 37e9, 1.0, 0.02);
  auto kimi = Plan(Load("kimi-k2"), Cluster("h200", 4), {1, 32, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(kimi.ok());
  EXPECT_NEAR(kimi->params.total / 1.03e12, 1.0, 0.01);
  EXPECT_NEAR(kimi->params.active / 33e9, 1.0, 0.01);
}

// The GQA MoE models: "235B total, 22B activated" (Qwen3 report), "17B active, 400B total"
// (Llama 4 Maverick).
TEST(PlannerTest, GqaMoeParametersAsPublished) {
  auto qwen = Plan(Load("qwen3-235b-a22b"), Cluster("h200", 2), {1, 16, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_NEAR(qwen->params.total / 235e9, 1.0, 0.005);
  EXPECT_NEAR(qwen->params.active / 22e9, 1.0, 0.02);
  auto maverick =
      Plan(Load("llama4-maverick"), Cluster("h200", 2), {1, 16, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(maverick.ok()) << maverick.status();
  EXPECT_NEAR(maverick->params.total / 400e9, 1.0, 0.005);
  EXPECT_NEAR(maverick->params.active / 17e9, 1.0, 0.02);
}

// GQA's cache per GPU, by hand: Qwen3-235B-A22B has 94 layers of 4 KV heads x 128 keys and values
// in bf16 = 94 x 2 x 4 x 128 x 2 = 192,512 bytes per token; under attention TP 8 each GPU keeps
// one KV head (replicated on 2 GPUs): 48,128 bytes.
TEST(PlannerTest, GqaCacheHoldsEachGpusKvHeads) {
  auto dp = Plan(Load("qwen3-235b-a22b"), Cluster("h200", 2), {1, 16, 0}, PlanDType::kFP8, {});
  auto tp = Plan(Load("qwen3-235b-a22b"), Cluster("h200", 2), {8, 2, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(dp.ok() && tp.ok());
  EXPECT_EQ(dp->kv_bytes_per_token, 192512);
  EXPECT_EQ(tp->kv_bytes_per_token, 48128);
  EXPECT_FALSE(dp->latent_kv);
  auto bad = Plan(Load("qwen3-235b-a22b"), Cluster("h200", 1), {8, 1, 0}, PlanDType::kFP8, {});
  EXPECT_TRUE(bad.ok());  // 8 = 2 x 4 KV heads
  auto maverick =
      Plan(Load("llama4-maverick"), Cluster("h200", 2), {1, 16, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(maverick.ok());
  EXPECT_EQ(maverick->kv_bytes_per_token, 48.0 * 2 * 8 * 128 * 2);
}

// DeepSeek-V3, fp8, 2 nodes x 8 H100, attention TP 8 x DP 2, worked by hand:
//   attention per layer: replicated q_a 7168x1536 + kv_a 7168x576 = 15,138,816;
//     head-split q_b 1536x128x192 + kv_b 512x128x256 + o 128x128x7168 = 171,966,464, /8 per GPU;
//     61 layers x (15,138,816 + 21,495,808) = 2,234,712,064 parameters;
//   routed experts: ceil(256 / 16) = 16 per GPU x 58 MoE layers x 3x7168x2048 = 40,869,298,176;
//   fp8 bytes = parameters x (1 + 4 / 128^2) for the float32 scale of each 128x128 block;
//   embeddings: embed_tokens + lm_head = 2 x 129280 x 7168, bf16, / 8 = 463,339,520 bytes.
TEST(PlannerTest, MemoryOfAHandWorkedLayout) {
  Workload w;
  w.decode_batch = 8;  // x TP 8 = 64 sequences per DP group, whose latent cache each GPU holds
  auto r = Plan(Load("deepseek-v3"), Cluster("h100", 2), {8, 2, 0}, PlanDType::kFP8, w);
  ASSERT_TRUE(r.ok());
  const double fp8 = 1.0 + 4.0 / (128 * 128);
  EXPECT_EQ(r->experts_per_gpu, 16);
  EXPECT_NEAR(r->memory.attention, 2234712064.0 * fp8, 1.0);
  EXPECT_NEAR(r->memory.routed_experts, 40869298176.0 * fp8, 1.0);
  EXPECT_NEAR(r->memory.embeddings, 463339520.0, 1.0);
  // Shared experts (58 x 3x7168x2048) and dense MLPs (3 x 3x7168x18432), TP-split by 8.
  EXPECT_NEAR(r->memory.shared_and_dense, (58.0 * 44040192 + 3.0 * 396361728) / 8 * fp8, 1.0);
  // KV: 61 layers x 576 values x 2 bytes per token.
  EXPECT_EQ(r->kv_bytes_per_token, 61.0 * 576 * 2);
  const double free_bytes = 80.0 * (1 << 30) - r->memory.total();
  EXPECT_EQ(r->kv_capacity_tokens, static_cast<int64_t>(free_bytes / (61.0 * 576 * 2)));
  EXPECT_EQ(r->kv_needed_tokens, 64 * 3000);
  EXPECT_TRUE(r->fits);
}

TEST(PlannerTest, TensorParallelAttentionReplicatesTheLatentCache) {
  // The same 64 sequences per GPU: with attention TP 8 every GPU holds its group's 512 sequences'
  // latent cache (1.5M tokens, ~100 GB: does not fit); with attention DP each holds its own 64.
  Workload w;
  w.decode_batch = 64;
  auto tp = Plan(Load("deepseek-v3"), Cluster("h100", 2), {8, 2, 0}, PlanDType::kFP8, w);
  auto dp = Plan(Load("deepseek-v3"), Cluster("h100", 2), {1, 16, 0}, PlanDType::kFP8, w);
  ASSERT_TRUE(tp.ok() && dp.ok());
  EXPECT_EQ(tp->kv_needed_tokens, 512 * 3000);
  EXPECT_FALSE(tp->fits);
  EXPECT_EQ(dp->kv_needed_tokens, 64 * 3000);
  EXPECT_TRUE(dp->fits);
}

// Disaggregation: a 2000-token prompt of DeepSeek-V3 sends its bf16 latent, 61 layers x (512 +
// 64) values x 2 bytes a token = 140.5 MB, to each decode GPU; over H800's 50 GB/s NIC 2.8 ms.
TEST(PlannerTest, DisaggregatedKvTransferIsThePromptsLatent) {
  Workload w;
  w.input_len = 2000;
  auto r = Plan(Load("deepseek-v3"), Cluster("h800", 4), {1, 32, 0}, PlanDType::kFP8, w);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->kv_transfer_bytes, 2000.0 * 61 * 576 * 2);
  EXPECT_NEAR(r->kv_transfer_s, 2000.0 * 61 * 576 * 2 / (GpuPreset("h800")->nic_gbps * 1e9), 1e-12);
  EXPECT_GT(r->kv_transfer_over_prefill, 0);
  EXPECT_LT(r->kv_transfer_over_prefill, 1);  // far quicker than computing the prompt
}

TEST(PlannerTest, RedundantExpertsAddReplicas) {
  auto r = Plan(Load("deepseek-v3"), Cluster("h800", 18), {1, 144, 32}, PlanDType::kFP8, {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->experts_per_gpu, 2);  // (256 + 32) / 144, as DeepSeek's decode deployment
}

// Skewed routing: the most loaded GPU computes, receives and returns `expert_imbalance` times its
// share of expert rows; the routed-expert compute and the all-to-all grow by that factor, the
// rest not at all.
TEST(PlannerTest, ExpertImbalanceSlowsTheMostLoadedGpu) {
  auto even = Plan(Load("deepseek-v3"), Cluster("h800", 18), {1, 144, 32}, PlanDType::kFP8, {});
  Workload w;
  w.expert_imbalance = 1.5;
  auto skewed = Plan(Load("deepseek-v3"), Cluster("h800", 18), {1, 144, 32}, PlanDType::kFP8, w);
  ASSERT_TRUE(even.ok());
  ASSERT_TRUE(skewed.ok());
  EXPECT_EQ(skewed->decode.hbm_s, even->decode.hbm_s);
  EXPECT_GT(skewed->decode.compute_s, even->decode.compute_s);
  EXPECT_LT(skewed->decode.compute_s, 1.5 * even->decode.compute_s);  // attention is not skewed
  EXPECT_GT(skewed->decode.network_s, 1.4 * even->decode.network_s);
  EXPECT_LT(skewed->decode.tokens_per_s_per_node, even->decode.tokens_per_s_per_node);
  w.expert_imbalance = 0.5;
  EXPECT_FALSE(
      Plan(Load("deepseek-v3"), Cluster("h800", 18), {1, 144, 32}, PlanDType::kFP8, w).ok());
}

TEST(PlannerTest, LayoutsThatCannotFitSayWhy) {
  // 671B parameters in bf16 are 1.3 TB: not on one node of 8 x 80 GiB.
  auto bf16 = Plan(Load("deepseek-v3"), Cluster("h100", 1), {8, 1, 0}, PlanDType::kBF16, {});
  ASSERT_TRUE(bf16.ok());
  EXPECT_FALSE(bf16->fits);
  EXPECT_THAT(bf16->why_not, ::testing::HasSubstr("weights and reserve need"));
  // Kimi K2 in fp8 (1 TB) does not fit on 8 H100 either, nor 8 H200 (1.1 TiB of HBM, little KV).
  auto kimi = Plan(Load("kimi-k2"), Cluster("h100", 1), {8, 1, 0}, PlanDType::kFP8, {});
  ASSERT_TRUE(kimi.ok());
  EXPECT_FALSE(kimi->fits);
  // Fits in weights but not in KV: a huge decode batch.
  Workload w;
  w.decode_batch = 4000;
  w.input_len = 30000;
  auto kv = Plan(Load("deepseek-v3"), Cluster("h200", 2), {8, 2, 0}, PlanDType::kFP8, w);
  ASSERT_TRUE(kv.ok());
  EXPECT_FALSE(kv->fits);
  EXPECT_THAT(kv->why_not, ::testing::HasSubstr("KV cache holds"));
}

TEST(PlannerTest, CommunicationModel) {
  EXPECT_DOUBLE_EQ(DistinctRanks(1, 64), 1.0);
  EXPECT_DOUBLE_EQ(DistinctRanks(8, 1), 1.0);
  EXPECT_NEAR(DistinctRanks(8, 256), 256 * (1 - std::pow(255.0 / 256, 8)), 1e-12);
  // Two ranks on one node: all bytes over the intra-node link.
  EXPECT_NEAR(AllToAllSeconds(1e9, 2, 8, 100, 10, 5), 1e9 / 100e9 + 5e-6, 1e-12);
  // 16 ranks, 8 per node: 7/15 of the bytes intra, 8/15 inter; the slower side decides.
  EXPECT_NEAR(AllToAllSeconds(15e9, 16, 8, 100, 10, 0), 8e9 / 10e9, 1e-12);
  EXPECT_EQ(AllToAllSeconds(1e9, 1, 8, 100, 10, 5), 0.0);
}

TEST(PlannerTest, OverlapHelpsWhenCommunicationBoundNotWhenWeightBound) {
  // Decode across 18 nodes: the all-to-all dominates and two-batch overlap wins.
  auto wide = Plan(Load("deepseek-v3"), Cluster("h800", 18), {1, 144, 32}, PlanDType::kFP8, {});
  ASSERT_TRUE(wide.ok());
  EXPECT_GT(wide->decode.network_s, std::max(wide->decode.compute_s, wide->decode.hbm_s));
  EXPECT_TRUE(wide->decode.tbo_better);
  // Tiny batches with replicated attention (DP): every micro-batch reads the 10.6 GiB of
  // attention weights again, which costs more than the overlap saves.
  Workload small;
  small.decode_batch = 2;
  auto narrow = Plan(Load("deepseek-v3"), Cluster("h200", 1), {1, 8, 0}, PlanDType::kFP8, small);
  ASSERT_TRUE(narrow.ok());
  EXPECT_FALSE(narrow->decode.tbo_better);
  EXPECT_GT(narrow->decode.hbm_s, narrow->decode.network_s);
}

TEST(PlannerTest, BadLayoutsAreErrors) {
  auto heads = Plan(Load("kimi-k2"), Cluster("h100", 16), {128, 1, 0}, PlanDType::kFP8, {});
  EXPECT_THAT(std::string(heads.status().message()), ::testing::HasSubstr("64 heads"));
  auto product = Plan(Load("deepseek-v3"), Cluster("h100", 2), {8, 1, 0}, PlanDType::kFP8, {});
  EXPECT_THAT(std::string(product.status().message()), ::testing::HasSubstr("must equal the 16"));
  EXPECT_FALSE(GpuPreset("a100").ok());
}

TEST(PlannerTest, JsonReport) {
  const ClusterSpec c = Cluster("h100", 2);
  const Layout l{8, 2, 0};
  Workload w;
  w.decode_batch = 8;
  auto r = Plan(Load("deepseek-v3"), c, l, PlanDType::kFP8, w);
  ASSERT_TRUE(r.ok());
  auto j = nlohmann::json::parse(ReportJson(*r, c, l, PlanDType::kFP8, w));
  EXPECT_EQ(j["layout"]["ep"], 16);
  EXPECT_TRUE(j["fits"].get<bool>());
  EXPECT_GT(j["decode"]["tokens_per_s_per_node"].get<double>(), 0);
  EXPECT_NEAR(j["memory_gib"]["total"].get<double>() * (1 << 30), r->memory.total(), 1.0);
}

}  // namespace
}  // namespace moe
