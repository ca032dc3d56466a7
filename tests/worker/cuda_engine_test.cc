// The whole model on the CUDA backend against the CPU engine (float32, itself checked against HF
// transformers) on the tiny presets, with bf16, fp8 and int4 checkpoints (the GPU keeps fp8 and
// int4 weights as they are stored). The GPU rounds bf16 weights' GEMM operands to bf16, so the
// generations agree up to near ties (tests/worker/near_tie_compare.h, tolerance 1e-2). Skipped
// where no GPU is visible.
#include <cmath>

#include "gtest/gtest.h"
#include "kernels/cuda/ops.h"
#include "model/model.h"
#include "tests/test_util.h"
#include "tests/worker/near_tie_compare.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;

constexpr double kLogitTolerance = 1e-2;

class CudaEngineTest : public ::testing::TestWithParam<const char*> {
 public:
  void SetUp() override {
    if (cuda::DeviceCount() == 0)
      GTEST_SKIP() << "no CUDA device visible: the GPU engine is not run";
  }

  static bool WriteModel(const ScratchDir& dir, const std::string& preset,
                         WeightDType dtype = WeightDType::kBF16) {
    MakeModelOptions mo;
    mo.out_dir = dir.path();
    mo.dtype = dtype;
    mo.seed = 11;
    return WriteCheckpoint(*PresetConfig(preset), mo).ok();
  }

  std::unique_ptr<Engine> Load(const std::string& dir, Device device, bool graphs = true) {
    auto config = LoadModelConfig(dir);
    EngineOptions opt;
    opt.block_size = 16;
    opt.kv_blocks = *KvCache::BlocksForBudget(*config, opt.block_size, 32 << 20);
    opt.device = device;
    opt.cuda_graphs = graphs;
    auto e = Engine::Load(dir, ParallelContext::Single(*config), opt);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
};

// Five prompts of 1 to 41 tokens generated together, prefilled in chunks of 8, so the long ones
// still prefill while the short ones decode: the GPU's generations against the CPU's.
void ExpectMixedStepsMatch(Engine& gpu, Engine& cpu, const std::string& what) {
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {3, 18, 41, 1, 9}) {
    std::vector<int32_t> p;
    for (int i = 0; i < len; ++i) p.push_back((len * 31 + i * 7) % 250);
    prompts.push_back(p);
  }
  GenerateOptions g;
  g.max_new_tokens = 12;
  g.prefill_chunk = 8;
  BlockAllocator ca(cpu.num_blocks()), ga(gpu.num_blocks());
  auto want = GenerateGreedyBatch(cpu, ca, prompts, g);
  auto got = GenerateGreedyBatch(gpu, ga, prompts, g);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ::moe::testing::ExpectSameUpToNearTies((*got)[i], (*want)[i], cpu.config().vocab_size,
                                           kLogitTolerance,
                                           what + " sequence " + std::to_string(i));
  }
}

TEST_P(CudaEngineTest, GreedyGenerationMatchesTheCpuEngine) {
  const std::string preset = GetParam();
  for (WeightDType dtype : {WeightDType::kBF16, WeightDType::kFP8, WeightDType::kInt4}) {
    ScratchDir dir;
    ASSERT_TRUE(WriteModel(dir, preset, dtype));
    auto cpu = Load(dir.path(), Device::kCpu);
    auto gpu = Load(dir.path(), Device::kCuda);
    ASSERT_TRUE(cpu && gpu);
    const int64_t vocab = cpu->config().vocab_size;
    // Prompts of 1 token, across a 16-token block boundary, and several blocks long.
    for (const std::vector<int32_t>& prompt :
         {std::vector<int32_t>{5}, std::vector<int32_t>(17, 9), std::vector<int32_t>(70, 3)}) {
      GenerateOptions g;
      g.max_new_tokens = 20;
      BlockAllocator ca(cpu->num_blocks()), ga(gpu->num_blocks());
      auto want = GenerateGreedy(*cpu, ca, prompt, g);
      auto got = GenerateGreedy(*gpu, ga, prompt, g);
      ASSERT_TRUE(want.ok() && got.ok()) << got.status();
      ::moe::testing::ExpectSameUpToNearTies(*got, *want, vocab, kLogitTolerance,
                                             preset +
                                                 (dtype == WeightDType::kFP8    ? " fp8"
                                                  : dtype == WeightDType::kInt4 ? " int4"
                                                                                : " bf16") +
                                                 ", prompt of " + std::to_string(prompt.size()));
    }
    auto& model = dynamic_cast<DecoderModel&>(gpu->model());
    EXPECT_GT(model.steps_recorded(), 0) << "decode steps were not captured";
    EXPECT_GT(model.steps_replayed(), model.steps_recorded())
        << "captured decode steps were not replayed";
  }
}

// Continuous batching's steps: prefill chunks of some sequences next to decode tokens of others,
// in every weight format.
TEST_P(CudaEngineTest, MixedPrefillAndDecodeStepsMatchTheCpuEngine) {
  for (WeightDType dtype : {WeightDType::kBF16, WeightDType::kFP8, WeightDType::kInt4}) {
    ScratchDir dir;
    ASSERT_TRUE(WriteModel(dir, GetParam(), dtype));
    auto cpu = Load(dir.path(), Device::kCpu);
    auto gpu = Load(dir.path(), Device::kCuda);
    ASSERT_TRUE(cpu && gpu);
    ExpectMixedStepsMatch(
        *gpu, *cpu, std::string(GetParam()) + " dtype " + std::to_string(static_cast<int>(dtype)));
  }
}

// Replaying graphs must not change a single bit against running the same steps eagerly.
TEST_P(CudaEngineTest, GraphReplayEqualsEagerExecution) {
  ScratchDir dir;
  ASSERT_TRUE(WriteModel(dir, GetParam()));
  auto graphed = Load(dir.path(), Device::kCuda, true);
  auto eager = Load(dir.path(), Device::kCuda, false);
  ASSERT_TRUE(graphed && eager);
  std::vector<std::vector<int32_t>> prompts = {{4, 8, 15}, {16, 23, 42, 4}, {7}};
  GenerateOptions g;
  g.max_new_tokens = 10;
  BlockAllocator a1(graphed->num_blocks()), a2(eager->num_blocks());
  auto x = GenerateGreedyBatch(*graphed, a1, prompts, g);
  auto y = GenerateGreedyBatch(*eager, a2, prompts, g);
  ASSERT_TRUE(x.ok() && y.ok());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ((*x)[i].tokens, (*y)[i].tokens);
    ASSERT_EQ((*x)[i].logits.numel(), (*y)[i].logits.numel());
    for (int64_t j = 0; j < (*x)[i].logits.numel(); ++j) {
      ASSERT_EQ((*x)[i].logits[j], (*y)[i].logits[j]) << "sequence " << i << ", element " << j;
    }
  }
  EXPECT_GT(dynamic_cast<DecoderModel&>(graphed->model()).steps_replayed(), 0);
  EXPECT_EQ(dynamic_cast<DecoderModel&>(eager->model()).steps_recorded(), 0);
}

// Sampling on the device picks what the CPU sampler picks from the same (GPU) logits.
TEST_P(CudaEngineTest, DeviceSamplingMatchesTheCpuSamplerOnTheSameLogits) {
  ScratchDir dir;
  ASSERT_TRUE(WriteModel(dir, GetParam()));
  auto gpu = Load(dir.path(), Device::kCuda);
  ASSERT_TRUE(gpu);
  BlockAllocator alloc(gpu->num_blocks());
  std::vector<SequenceStep> step;
  for (int i = 0; i < 6; ++i) {
    SequenceStep s;
    s.seq_id = i;
    s.tokens = {static_cast<int32_t>(i + 1), 2, 3};
    ASSERT_TRUE(alloc.EnsureCapacity(&s.block_table, 3, gpu->block_size()).ok());
    s.sample = SampleRequest{
        {i == 0 ? 0.0f : 0.7f + 0.1f * i, i % 2 ? 0 : 20, i % 3 ? 0.9f : 1.0f, 77u + i},
        static_cast<uint64_t>(i)};
    step.push_back(std::move(s));
  }
  auto r = gpu->Step(step);
  ASSERT_TRUE(r.ok()) << r.status();
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(r->tokens[j], SampleToken(r->logits.row(j), gpu->config().vocab_size,
                                        step[j].sample->spec, step[j].sample->index))
        << "sequence " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, CudaEngineTest,
                         ::testing::Values("tiny-dsv3", "tiny-kimi-k2", "tiny-v2lite"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

}  // namespace
}  // namespace moe
