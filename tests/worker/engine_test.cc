// Engine behaviour that the goldens do not cover: bad steps are refused with messages naming the
// sequence, the cache layout has the documented size, and activations stay finite.
#include "worker/engine.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;
using ::testing::HasSubstr;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cpu::SetNumThreads(2);
    dir_ = new ScratchDir();
    MakeModelOptions opt;
    opt.out_dir = dir_->path();
    opt.seed = 5;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  }
  static void TearDownTestSuite() { delete dir_; }

  std::unique_ptr<Engine> Load(int64_t block_size = 16, uint64_t kv_bytes = 8 << 20,
                               bool two_batch_overlap = false) {
    auto config = LoadModelConfig(dir_->path());
    EngineOptions opt;
    opt.two_batch_overlap = two_batch_overlap;
    opt.block_size = block_size;
    opt.kv_blocks = *KvCache::BlocksForBudget(*config, block_size, kv_bytes);
    auto e = Engine::Load(dir_->path(), ParallelContext::Single(*config), opt);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(*e);
  }
  static ScratchDir* dir_;
};
ScratchDir* EngineTest::dir_ = nullptr;

SequenceStep Seq(int64_t id, std::vector<int32_t> tokens, std::vector<int32_t> blocks) {
  SequenceStep s;
  s.seq_id = id;
  s.tokens = std::move(tokens);
  s.block_table = std::move(blocks);
  return s;
}

TEST_F(EngineTest, RefusesBadSteps) {
  auto e = Load();
  auto expect = [&](std::vector<SequenceStep> step, const std::string& what) {
    auto r = e->Step(step);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  expect({Seq(7, {1, 600}, {0})}, "sequence 7: token id 600 outside the vocabulary");
  expect({Seq(7, {-1}, {0})}, "token id -1");
  expect({Seq(3, {}, {0})}, "no tokens");
  expect({Seq(3, std::vector<int32_t>(20, 1), {0})}, "cannot hold 20 positions");
  expect({Seq(3, {1}, {100000})}, "outside the cache");
  expect({Seq(1, {1}, {0}), Seq(1, {2}, {1})}, "appears twice");
  SequenceStep far = Seq(4, {1}, std::vector<int32_t>(40, 0));
  far.start_pos = 512;
  expect({far}, "max_position_embeddings 512");
  SequenceStep windowed = Seq(5, {1}, {0});
  windowed.window_block_tables = {{1}};
  expect({windowed}, "1 window block tables for a model with 0 window layer groups");
}

// Gemma 3's sliding layers (window 8) hold five tables besides the global layer's: a step must
// bring all five, each with the blocks it reads and writes; blocks the window passed may be -1.
TEST(WindowKvEngineTest, WindowTablesMustHoldTheBlocksTheStepReads) {
  ScratchDir dir;
  MakeModelOptions mo;
  mo.out_dir = dir.path();
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-gemma3"), mo).ok());
  auto config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok());
  EngineOptions opt;
  opt.block_size = 4;
  opt.kv_blocks = 64;
  auto e = Engine::Load(dir.path(), ParallelContext::Single(*config), opt);
  ASSERT_TRUE(e.ok()) << e.status();
  // Position 12 sees 5..12: block 0 (0..3) is no longer read.
  SequenceStep s = Seq(1, {1, 2}, {0, 1, 2, 3});
  s.start_pos = 12;
  auto r = (*e)->Step({s});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("0 window block tables for a model with 5 window layer groups"));
  for (int32_t g = 0; g < 5; ++g) s.window_block_tables.push_back({-1, 10 + g, 20 + g, 30 + g});
  EXPECT_TRUE((*e)->Step({s}).ok());
  s.window_block_tables[2] = {40, -1, 41, 42};  // a block the step reads was freed
  r = (*e)->Step({s});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("layer group 3, entry 1"));
  s.window_block_tables[2] = {-1, 41, 42};  // too short for position 13
  r = (*e)->Step({s});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("cannot hold 14 positions (layer group 3)"));
}

// EPLB placements that do not fit the model are refused before any layer moves.
TEST_F(EngineTest, RefusesExpertPlacementsThatDoNotFit) {
  auto e = Load();
  const ModelConfig& c = e->config();
  const ExpertPlacement one = ExpertPlacement::Contiguous(c.n_routed_experts, 1);
  std::vector<ExpertPlacement> layers(static_cast<size_t>(c.num_moe_layers()), one);
  EXPECT_TRUE(e->SetExpertPlacement(layers).ok());
  EXPECT_THAT(std::string(e->SetExpertPlacement({one}).message()),
              HasSubstr("1 expert placements for a model with"));
  layers.back() = ExpertPlacement::Contiguous(c.n_routed_experts, 2);
  EXPECT_THAT(std::string(e->SetExpertPlacement(layers).message()),
              HasSubstr("over 2 ranks for a model of"));
  layers.back() = ExpertPlacement::Contiguous(c.n_routed_experts - 1, 1);
  EXPECT_FALSE(e->SetExpertPlacement(layers).ok());
}

TEST_F(EngineTest, GeneratorRefusesTooLongAndEmpty) {
  auto e = Load();
  BlockAllocator alloc(e->num_blocks());
  GenerateOptions g;
  g.max_new_tokens = 10;
  EXPECT_FALSE(GenerateGreedy(*e, alloc, {}, g).ok());
  auto r = GenerateGreedy(*e, alloc, std::vector<int32_t>(505, 3), g);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("max_position_embeddings"));
}

TEST_F(EngineTest, CacheExhaustionIsAnErrorAndReturnsBlocks) {
  // One 16-token block per layer budget: a 40-token prompt cannot fit.
  const uint64_t one_block = 16ull * PresetConfig("tiny-dsv3")->LatentKvBytesPerToken(4);
  auto e = Load(16, one_block * 2);
  ASSERT_EQ(e->num_blocks(), 2);
  BlockAllocator alloc(e->num_blocks());
  GenerateOptions g;
  auto r = GenerateGreedy(*e, alloc, std::vector<int32_t>(40, 3), g);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(alloc.free_blocks(), 2);
}

TEST_F(EngineTest, ActivationsStayFiniteOver256Tokens) {
  for (const char* preset : {"tiny-dsv3", "tiny-kimi-k2", "tiny-v2lite"}) {
    ScratchDir dir;
    MakeModelOptions opt;
    opt.out_dir = dir.path();
    opt.dtype = WeightDType::kBF16;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig(preset), opt).ok());
    auto config = LoadModelConfig(dir.path());
    EngineOptions eo;
    eo.kv_blocks = *KvCache::BlocksForBudget(*config, eo.block_size, 16 << 20);
    auto e = Engine::Load(dir.path(), ParallelContext::Single(*config), eo);
    ASSERT_TRUE(e.ok());
    BlockAllocator alloc((*e)->num_blocks());
    std::vector<int32_t> prompt;
    for (int i = 0; i < 200; ++i) prompt.push_back((i * 37 + 11) % 300);
    GenerateOptions g;
    g.max_new_tokens = 55;  // 200 + 56 positions
    auto r = GenerateGreedy(**e, alloc, prompt, g);
    ASSERT_TRUE(r.ok()) << r.status();
    for (int64_t i = 0; i < r->logits.numel(); ++i)
      ASSERT_TRUE(std::isfinite(r->logits[i])) << preset;
  }
}

TEST_F(EngineTest, SamplesOnTheBackendAsTheSamplerDoesOnItsLogits) {
  auto e = Load();
  BlockAllocator alloc(e->num_blocks());
  std::vector<SequenceStep> step;
  for (int i = 0; i < 4; ++i) {
    SequenceStep s = Seq(10 + i, {static_cast<int32_t>(3 + i), 7, 9}, {});
    ASSERT_TRUE(alloc.EnsureCapacity(&s.block_table, 3, e->block_size()).ok());
    if (i != 2) {
      s.sample = SampleRequest{{0.8f + 0.1f * i, i == 1 ? 5 : 0, 0.9f, 100u + i},
                               static_cast<uint64_t>(4 + i)};
    }
    step.push_back(std::move(s));
  }
  auto with_logits = e->Step(step);
  ASSERT_TRUE(with_logits.ok()) << with_logits.status();
  ASSERT_EQ(with_logits->tokens.size(), 4u);
  for (int j = 0; j < 4; ++j) {
    if (!step[j].sample) {
      EXPECT_EQ(with_logits->tokens[j], -1) << "a sequence without sampling got a token";
      continue;
    }
    EXPECT_EQ(with_logits->tokens[j],
              SampleToken(with_logits->logits.row(j), e->config().vocab_size, step[j].sample->spec,
                          step[j].sample->index));
  }
  // The same step again (same positions, so the same cache rows): no logits, the same tokens.
  auto tokens_only = e->Step(step, /*return_logits=*/false);
  ASSERT_TRUE(tokens_only.ok());
  EXPECT_TRUE(tokens_only->logits.empty());
  EXPECT_EQ(tokens_only->tokens, with_logits->tokens);
}

TEST_F(EngineTest, CudaDeviceWithoutAGpuIsAClearError) {
  auto config = LoadModelConfig(dir_->path());
  EngineOptions opt;
  opt.kv_blocks = 4;
  opt.device = Device::kCuda;
  auto e = Engine::Load(dir_->path(), ParallelContext::Single(*config), opt);
  if (e.ok()) GTEST_SKIP() << "a GPU is present: the cuda label's tests cover it";
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("device cuda: "));
  EXPECT_THAT(ParseDevice("tpu").status().message(), HasSubstr("\"tpu\" is not one of"));
}

// Two-batch overlap runs the same arithmetic on two halves of each step: the same greedy tokens,
// logits within float32 rounding of the whole batch's (the products see fewer rows), for whole
// prompts (a long prompt cut inside its prefill) and chunked ones mixed with decoding.
TEST_F(EngineTest, TwoBatchOverlapKeepsTokensAndLogits) {
  auto plain = Load(16, 8 << 20);
  auto overlapped = Load(16, 8 << 20, /*two_batch_overlap=*/true);
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 6, 7}, std::vector<int32_t>(37, 9), {100}, {300, 301, 302, 303, 304}, {42, 7}};
  for (int64_t chunk : {0, 8}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    GenerateOptions gen;
    gen.max_new_tokens = 10;
    gen.prefill_chunk = chunk;
    BlockAllocator a(plain->num_blocks()), b(overlapped->num_blocks());
    auto want = GenerateGreedyBatch(*plain, a, prompts, gen);
    auto got = GenerateGreedyBatch(*overlapped, b, prompts, gen);
    ASSERT_TRUE(want.ok() && got.ok());
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "sequence " << i;
      const Tensor& x = (*got)[i].logits;
      const Tensor& y = (*want)[i].logits;
      ASSERT_EQ(x.shape(), y.shape());
      double diff = 0, scale = 0;
      for (int64_t k = 0; k < y.numel(); ++k) {
        diff = std::max(diff, static_cast<double>(std::fabs(x[k] - y[k])));
        scale = std::max(scale, static_cast<double>(std::fabs(y[k])));
      }
      EXPECT_LE(diff / scale, 1e-6) << "sequence " << i;
    }
  }
}

TEST_F(EngineTest, TwoBatchOverlapOnCudaIsAClearError) {
  auto config = LoadModelConfig(dir_->path());
  EngineOptions opt;
  opt.device = Device::kCuda;
  opt.two_batch_overlap = true;
  opt.kv_blocks = 8;
  auto e = Engine::Load(dir_->path(), ParallelContext::Single(*config), opt);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("two-batch overlap"));
}

TEST(KvCacheTest, BytesPerTokenOfTheRealModels) {
  // DeepSeek-V3 / Kimi K2: 61 layers x (512 + 64) values; per-head K/V: 61 x heads x (192 + 128).
  for (const char* name : {"deepseek-v3", "kimi-k2"}) {
    auto c = LoadModelConfig(std::string(MOE_SOURCE_DIR) + "/common/presets/" + name + ".json");
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->LatentKvBytesPerToken(2), 61 * 576 * 2);
    EXPECT_EQ(c->ExpandedKvBytesPerToken(2), 61 * c->num_attention_heads * 320 * 2);
  }
}

TEST(BlockAllocatorTest, AllocatesAndFrees) {
  BlockAllocator a(4);
  std::vector<int32_t> t;
  ASSERT_TRUE(a.EnsureCapacity(&t, 33, 16).ok());
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(a.free_blocks(), 1);
  std::vector<int32_t> u;
  EXPECT_EQ(a.EnsureCapacity(&u, 40, 16).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(u.empty());
  EXPECT_EQ(a.free_blocks(), 1);
  a.Free(&t);
  EXPECT_EQ(a.free_blocks(), 4);
  EXPECT_TRUE(t.empty());
  // A window group's table (window 16) gives back its first blocks and keeps its length: from
  // position 47 on, queries see 32 and later, blocks 2 and 3.
  KvLayout layout;
  layout.slots = 1;
  layout.groups = {{{0}, 0, 0}, {{1}, 16, 0}};
  std::vector<std::vector<int32_t>> window(1);
  ASSERT_TRUE(a.EnsureCapacity(&window[0], 64, 16).ok());
  const int32_t kept = window[0][2];
  auto free = [&](int32_t block) { a.Free(block); };
  layout.ReleasePassedBlocks(window, 47, 16, free);
  EXPECT_EQ(a.free_blocks(), 2);
  ASSERT_EQ(window[0].size(), 4u);
  EXPECT_EQ(window[0][0], -1);
  EXPECT_EQ(window[0][1], -1);
  EXPECT_EQ(window[0][2], kept);
  layout.ReleasePassedBlocks(window, 47, 16, free);  // nothing more to give back
  EXPECT_EQ(a.free_blocks(), 2);
  a.Free(&window[0]);
  EXPECT_EQ(a.free_blocks(), 4);
}

}  // namespace
}  // namespace moe
