// The engine split over real MPI ranks against the single-rank engine (which the golden tests tie
// to HF transformers): every TP size the world allows, several sequences spread over the
// attention-DP groups; and each rank reads only its share of the weights.
#include <mpi.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "checkpoint/weight_names.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "parallel/eplb.h"
#include "parallel/mpi_communicator.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

int Rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int World() {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// Rank 0 writes the checkpoint into a folder named by the job; the others wait for it.
std::string SharedCheckpoint(const std::string& preset, WeightDType dtype) {
  int job = 0;
  if (Rank() == 0) job = static_cast<int>(::getpid());
  MPI_Bcast(&job, 1, MPI_INT, 0, MPI_COMM_WORLD);
  const std::string dir = absl::StrCat(::testing::TempDir(), "/moe_mpi_", job, "_", preset, "_",
                                       static_cast<int>(dtype));
  if (Rank() == 0 && !std::filesystem::exists(dir + "/config.json")) {
    MakeModelOptions opt;
    opt.out_dir = dir;
    opt.seed = 21;
    opt.dtype = dtype;
    EXPECT_TRUE(WriteCheckpoint(*PresetConfig(preset), opt).ok());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return dir;
}

// max |a - b| / max |b|.
double RelativeError(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t k = 0; k < b.numel(); ++k) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[k] - b[k])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[k])));
  }
  return diff / scale;
}

// How the layouts under test differ from the single-rank reference.
struct LayoutOptions {
  bool speculative = false;  // decode with the MTP layer (sharded like the others)
  int draft_tokens = 1;
  int64_t redundant_experts = 0;   // EPLB's replicas
  bool two_batch_overlap = false;  // only the layouts of TP size 1 (it needs that)
  int64_t prefill_chunk = 8;
};

std::unique_ptr<Engine> LoadEngine(const std::string& dir, std::unique_ptr<Communicator> world,
                                   int tp, const LayoutOptions& layout = {},
                                   bool tokens_on_every_rank = true) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok());
  auto ctx = ParallelContext::Create(*config, std::move(world), tp, layout.redundant_experts);
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  EngineOptions opt;
  opt.block_size = 16;
  opt.mtp = layout.speculative;
  opt.mtp_draft_tokens = layout.draft_tokens;
  opt.two_batch_overlap = layout.two_batch_overlap;
  opt.tokens_on_every_rank = tokens_on_every_rank;
  opt.kv_blocks = *KvCache::BlocksForBudget(*config, opt.block_size, 16 << 20, opt.mtp ? 1 : 0);
  auto e = Engine::Load(dir, std::move(*ctx), opt);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

class MpiEngineTest : public ::testing::TestWithParam<std::string> {};

// Called between the steps of a layout's generation (see GenerateOptions::between_steps).
using BetweenSteps = std::function<absl::Status(Engine& engine, int tp, int64_t step)>;

// One rank's engine against every layout of the world, on a checkpoint in `dtype`, the layouts
// changed by `layout`; `between_steps` may change the layout's engine.
void CheckEveryTpSizeMatchesOneRank(const std::string& preset, WeightDType dtype,
                                    const LayoutOptions& layout = {},
                                    const BetweenSteps& between_steps = nullptr) {
  cpu::SetNumThreads(1);
  const std::string dir = SharedCheckpoint(preset, dtype);
  auto single = LoadEngine(dir, MakeSelfCommunicator(), 1);
  ASSERT_NE(single, nullptr);
  std::vector<std::vector<int32_t>> prompts = {
      {5, 6, 7}, {100}, std::vector<int32_t>(21, 9), {300, 301, 302, 303, 304, 305, 306}, {42, 7}};
  GenerateOptions gen;
  gen.max_new_tokens = 12;
  gen.prefill_chunk = layout.prefill_chunk;
  BlockAllocator single_alloc(single->num_blocks());
  auto want = GenerateGreedyBatch(*single, single_alloc, prompts, gen);
  ASSERT_TRUE(want.ok()) << want.status();
  const int heads = static_cast<int>(single->config().num_attention_heads);
  for (int tp = 1; tp <= World(); tp *= 2) {
    if (World() % tp != 0 || heads % tp != 0 || (layout.two_batch_overlap && tp > 1)) continue;
    SCOPED_TRACE(absl::StrCat("W=", World(), " T=", tp));
    auto world = MakeMpiWorldCommunicator();
    ASSERT_TRUE(world.ok());
    auto engine = LoadEngine(dir, std::move(*world), tp, layout);
    ASSERT_NE(engine, nullptr);
    BlockAllocator alloc(engine->num_blocks());
    GenerateOptions layout_gen = gen;
    layout_gen.speculative = layout.speculative;
    if (between_steps) {
      layout_gen.between_steps = [&](int64_t step) { return between_steps(*engine, tp, step); };
    }
    auto got = GenerateGreedyBatch(*engine, alloc, prompts, layout_gen);
    ASSERT_TRUE(got.ok()) << got.status();
    const int dp = World() / tp, my_group = Rank() / tp;
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "sequence " << i;
      const bool mine = static_cast<int>(i) % dp == my_group;
      ASSERT_EQ((*got)[i].logits.empty(), !mine) << "sequence " << i;
      if (!mine) continue;
      ASSERT_EQ((*got)[i].logits.shape(), (*want)[i].logits.shape());
      EXPECT_LE(RelativeError((*got)[i].logits, (*want)[i].logits), 1e-5) << "sequence " << i;
    }
  }
}

// EPLB: redundant replicas of experts (a token's rows for a replicated expert split over its
// ranks), and every MoE layer's experts moved to a new placement before every other step —
// balanced for random skewed loads, different on each layer and each move — under every TP size:
// the same tokens and logits as one rank.
TEST(MpiEplbTest, RedundantAndMovingExpertsMatchOneRank) {
  int moves = 0;
  auto move = [&](Engine& engine, int tp, int64_t step) -> absl::Status {
    const ModelConfig& c = engine.config();
    EXPECT_EQ(engine.parallel().shard().experts.size(),
              static_cast<size_t>((c.n_routed_experts + World()) / World()));
    if (step % 2 == 1) return absl::OkStatus();
    std::mt19937 rng(static_cast<uint32_t>(step * 131 + tp));  // the same on every rank
    std::exponential_distribution<double> skew(0.3);
    std::vector<ExpertPlacement> layers;
    for (int64_t l = 0; l < c.num_moe_layers(); ++l) {
      std::vector<double> load(static_cast<size_t>(c.n_routed_experts));
      for (double& x : load) x = skew(rng);
      EplbOptions o;
      o.world = World();
      o.redundant = World();
      o.expert_groups = c.n_group;
      MOE_ASSIGN_OR_RETURN(ExpertPlacement p, BalanceExperts(load, o));
      layers.push_back(std::move(p));
    }
    ++moves;
    return engine.SetExpertPlacement(layers);
  };
  CheckEveryTpSizeMatchesOneRank("tiny-dsv3", WeightDType::kF32, {.redundant_experts = World()},
                                 move);
  EXPECT_GE(moves, 4);
}

TEST_P(MpiEngineTest, EveryTpSizeMatchesOneRank) {
  CheckEveryTpSizeMatchesOneRank(GetParam(), WeightDType::kF32);
}

// The GQA families: query heads split over the TP group with the KV heads they read (replicated
// across ranks where the group is larger than num_key_value_heads: tiny-qwen3 at T >= 4, OLMo 2's
// whole-projection k_norm at T = 8), Qwen3-MoE's experts over every rank.
class MpiGqaEngineTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MpiGqaEngineTest, EveryTpSizeMatchesOneRank) {
  CheckEveryTpSizeMatchesOneRank(GetParam(), WeightDType::kF32);
}

TEST(MpiGqaEngineFormatsTest, Qwen3MoeBf16EveryTpSizeMatchesOneRank) {
  CheckEveryTpSizeMatchesOneRank("tiny-qwen3-moe", WeightDType::kBF16);
}

// The compact formats, computed in place: DeepSeek's fp8 blocks (TP shards cut blocks) and Kimi K2
// Thinking's int4 experts.
TEST(MpiEngineFormatsTest, Fp8EveryTpSizeMatchesOneRank) {
  CheckEveryTpSizeMatchesOneRank("tiny-dsv3", WeightDType::kFP8);
}

TEST(MpiEngineFormatsTest, Int4EveryTpSizeMatchesOneRank) {
  CheckEveryTpSizeMatchesOneRank("tiny-kimi-k2", WeightDType::kInt4);
}

// Speculative decoding with the MTP layer under every layout: the tokens and logits of one rank
// decoding without it.
TEST(MpiEngineSpeculativeTest, MtpUnderEveryTpSizeMatchesOneRankWithoutIt) {
  CheckEveryTpSizeMatchesOneRank("tiny-dsv3", WeightDType::kF32, {.speculative = true});
}

// Three drafts a step (the MTP layer applied to its own output): the same.
TEST(MpiEngineSpeculativeTest, ThreeDraftTokensUnderEveryTpSizeMatchOneRankWithoutThem) {
  CheckEveryTpSizeMatchesOneRank("tiny-dsv3", WeightDType::kF32,
                                 {.speculative = true, .draft_tokens = 3});
}

// Bytes of a tensor (and its fp8 scales) as stored.
uint64_t StoredBytes(const Checkpoint& ck, const std::string& name) {
  uint64_t b = 0;
  for (const std::string& n : {name, name + "_scale_inv"}) {
    auto e = ck.Describe(n);
    if (e.ok()) b += e->end - e->begin;
  }
  return b;
}

// Two-batch overlap under DP attention with expert parallelism (TP 1): every rank's step as two
// micro-batches whose dispatch and combine run on the communication thread while the other
// computes — chunked and whole prompts (whole ones cut inside their prefill), fp8 weights,
// speculative decoding, EPLB's replicas: the same tokens and logits as one rank without it.
TEST_P(MpiEngineTest, TwoBatchOverlapMatchesOneRank) {
  for (int64_t chunk : {8, 32}) {
    SCOPED_TRACE(absl::StrCat("prefill chunk ", chunk));
    CheckEveryTpSizeMatchesOneRank(GetParam(), WeightDType::kF32,
                                   {.two_batch_overlap = true, .prefill_chunk = chunk});
  }
}

TEST(MpiTwoBatchOverlapTest, Fp8SpeculativeAndReplicatedExpertsMatchOneRank) {
  CheckEveryTpSizeMatchesOneRank("tiny-dsv3", WeightDType::kFP8,
                                 {.speculative = true,
                                  .redundant_experts = World(),
                                  .two_batch_overlap = true,
                                  .prefill_chunk = 32});
}

TEST(MpiTwoBatchOverlapTest, NeedsATpSizeOfOne) {
  const std::string dir = SharedCheckpoint("tiny-dsv3", WeightDType::kF32);
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  auto world = MakeMpiWorldCommunicator();
  ASSERT_TRUE(world.ok());
  auto ctx = ParallelContext::Create(*config, std::move(*world), 2);
  ASSERT_TRUE(ctx.ok());
  EngineOptions opt;
  opt.kv_blocks = 16;
  opt.two_batch_overlap = true;
  auto e = Engine::Load(dir, std::move(*ctx), opt);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("two-batch overlap needs a TP size of 1"),
            absl::string_view::npos)
      << e.status();
}

// As a served worker runs (EngineOptions::tokens_on_every_rank false): the sampled tokens and
// expert counts are summed onto world rank 0 only, and there they are one rank's, step by step
// (prefill, then decode steps fed one rank's tokens), under every TP size.
TEST(MpiEngineTokensTest, TokensOnTheLeaderOnlyAreOneRanks) {
  cpu::SetNumThreads(1);
  const std::string dir = SharedCheckpoint("tiny-dsv3", WeightDType::kF32);
  auto single = LoadEngine(dir, MakeSelfCommunicator(), 1);
  ASSERT_NE(single, nullptr);
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {100}, {300, 301, 302, 303}};
  for (int tp = 1; tp <= World(); tp *= 2) {
    if (World() % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("W=", World(), " T=", tp));
    auto world = MakeMpiWorldCommunicator();
    ASSERT_TRUE(world.ok());
    auto engine = LoadEngine(dir, std::move(*world), tp, {}, /*tokens_on_every_rank=*/false);
    ASSERT_NE(engine, nullptr);
    const int dp = World() / tp;
    std::vector<SequenceStep> one(prompts.size()), layout(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      SequenceStep& s = one[i];
      s.seq_id = static_cast<int64_t>(i);
      s.tokens = prompts[i];
      for (int32_t b = 0; b < 4; ++b) s.block_table.push_back(static_cast<int32_t>(4 * i) + b);
      s.sample = SampleRequest{};
      layout[i] = s;
      layout[i].dp_group = static_cast<int>(i) % dp;
    }
    for (int step = 0; step < 4; ++step) {
      auto want = single->Step(one, /*return_logits=*/false);
      auto got = engine->Step(layout, /*return_logits=*/false);
      ASSERT_TRUE(want.ok() && got.ok()) << got.status();
      if (Rank() == 0) {
        EXPECT_EQ(got->tokens, want->tokens) << "step " << step;
        EXPECT_EQ(got->expert_tokens, want->expert_tokens) << "step " << step;
      }
      for (size_t i = 0; i < prompts.size(); ++i) {  // every rank goes on with one rank's token
        for (SequenceStep* s : {&one[i], &layout[i]}) {
          s->start_pos += static_cast<int64_t>(s->tokens.size());
          s->tokens = {want->tokens[i]};
        }
      }
    }
  }
}

TEST_P(MpiEngineTest, EachRankReadsOnlyItsShare) {
  const std::string dir = SharedCheckpoint(GetParam(), WeightDType::kBF16);
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  auto ck = Checkpoint::Open(dir, config->quantization_config);
  ASSERT_TRUE(ck.ok());
  uint64_t experts_total = 0, head_split_total = 0, one_expert = 0;
  for (const WeightSpec& s : CheckpointWeightSpecs(*config, /*include_mtp=*/false)) {
    const uint64_t b = StoredBytes(**ck, s.name);
    if (s.name.find(".mlp.experts.") != std::string::npos) {
      experts_total += b;
      if (s.name.find(".mlp.experts.0.") != std::string::npos) one_expert += b;
    }
    for (const char* part : {"q_b_proj", "q_proj", "kv_b_proj", "o_proj"}) {
      if (s.name.find(std::string("self_attn.") + part + ".") != std::string::npos)
        head_split_total += b;
    }
  }
  const int W = World();
  for (int tp = 1; tp <= W; tp *= 2) {
    if (W % tp != 0 || config->num_attention_heads % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("W=", W, " T=", tp));
    auto world = MakeMpiWorldCommunicator();
    auto engine = LoadEngine(dir, std::move(*world), tp);
    ASSERT_NE(engine, nullptr);
    const WeightBytes& wb = engine->model().weight_bytes();
    // Routed experts: 1/W of the total, within one expert (experts need not divide evenly).
    EXPECT_NEAR(static_cast<double>(wb.routed_experts), static_cast<double>(experts_total) / W,
                static_cast<double>(one_expert));
    // Head-split attention: exactly 1/T.
    EXPECT_EQ(wb.attention_head_split * tp, head_split_total);
    // Nothing read twice: the ranks of one TP group together read the head-split tensors once.
    uint64_t split = wb.attention_head_split, sum = 0;
    MPI_Allreduce(&split, &sum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(sum, head_split_total * (W / tp));
  }
}

std::string ParamName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) c = std::isalnum(c) ? c : '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Models, MpiEngineTest, ::testing::Values("tiny-dsv3", "tiny-kimi-k2"),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(Models, MpiGqaEngineTest,
                         ::testing::Values("tiny-qwen3", "tiny-qwen3-moe", "tiny-mistral",
                                           "tiny-smollm3", "tiny-olmo2", "tiny-gemma3",
                                           "tiny-llama4"),
                         ParamName);

}  // namespace
}  // namespace moe
