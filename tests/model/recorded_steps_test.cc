// DecoderModel's recorded decode steps (DecoderModelOptions::record_decode_steps) on a device
// that records, here RecordingCpuOps (its recordings' memory reused across recordings and never
// cleared, as on a GPU): every step replayed from a recording gives the logits, bit for bit, that
// the same model gives running each step as it comes; with speculative decoding too, whose MTP
// layer reads a replayed step's hidden states.
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "tests/model/recording_cpu_ops.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::RecordingCpuOps;
using ::moe::testing::ScratchDir;

class RecordedStepsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One thread: the CPU sums many experts' outputs in the order its threads finish them.
    cpu::SetNumThreads(1);
    dir_ = new ScratchDir();
    MakeModelOptions opt;
    opt.out_dir = dir_->path();
    opt.dtype = WeightDType::kFP8;
    opt.seed = 9;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  }
  static void TearDownTestSuite() {
    cpu::SetNumThreads(2);
    delete dir_;
  }

  // An engine over DecoderModel on the CPU's ops, or on RecordingCpuOps (then `*model` is it).
  static std::unique_ptr<Engine> Load(bool recording, bool mtp, DecoderModel** model = nullptr) {
    const ModelConfig config = *LoadModelConfig(dir_->path());
    EngineOptions opt;
    opt.block_size = 4;
    opt.mtp = mtp;
    opt.kv_blocks = *KvCache::BlocksForBudget(config, opt.block_size, 8 << 20, mtp ? 1 : 0);
    std::unique_ptr<Ops> ops = recording ? std::unique_ptr<Ops>(new RecordingCpuOps())
                                         : std::unique_ptr<Ops>(new CpuOps());
    auto ctx = ParallelContext::Single(config);
    auto m = DecoderModel::LoadOver(std::move(ops), dir_->path(), config, *ctx,
                                    {opt.kv_blocks, opt.block_size}, {.load_mtp = mtp});
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return nullptr;
    if (model != nullptr) *model = m->get();
    return Engine::Over(config, std::move(ctx), std::move(*m), opt);
  }

  static std::vector<std::vector<int32_t>> Prompts() {
    std::vector<std::vector<int32_t>> prompts;
    for (int len : {2, 13, 30, 1, 7}) {
      std::vector<int32_t> p;
      for (int i = 0; i < len; ++i) p.push_back((len * 37 + i * 11) % 300);
      prompts.push_back(p);
    }
    return prompts;
  }

  static void ExpectSame(const std::vector<Generation>& got, const std::vector<Generation>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i].tokens, want[i].tokens) << "sequence " << i;
      ASSERT_EQ(got[i].logits.shape(), want[i].logits.shape()) << "sequence " << i;
      for (int64_t j = 0; j < want[i].logits.numel(); ++j) {
        ASSERT_EQ(got[i].logits[j], want[i].logits[j]) << "sequence " << i << ", element " << j;
      }
    }
  }
  static ScratchDir* dir_;
};
ScratchDir* RecordedStepsTest::dir_ = nullptr;

// Prompts of 1 to 30 tokens prefilled in chunks of 5 while the others decode, with 4-token blocks:
// steps of 1 to 5 decode tokens, tables of growing width, each batch size met again after it was
// recorded.
TEST_F(RecordedStepsTest, ReplayedDecodeStepsEqualStepsRunAsTheyCome) {
  DecoderModel* recorded = nullptr;
  auto eager = Load(false, false), replaying = Load(true, false, &recorded);
  ASSERT_TRUE(eager && replaying);
  GenerateOptions g;
  g.max_new_tokens = 40;
  g.prefill_chunk = 5;
  BlockAllocator a1(eager->num_blocks()), a2(replaying->num_blocks());
  auto want = GenerateGreedyBatch(*eager, a1, Prompts(), g);
  auto got = GenerateGreedyBatch(*replaying, a2, Prompts(), g);
  ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
  ExpectSame(*got, *want);
  // Batch sizes 1..5 and table widths 8 and 16 (up to 70 positions in 4-token blocks).
  EXPECT_GE(recorded->steps_recorded(), 5);
  EXPECT_GT(recorded->steps_replayed(), 2 * recorded->steps_recorded());
  EXPECT_EQ(replaying->model().ExpertTokenCounts(), eager->model().ExpertTokenCounts());
}

// Speculative decoding: the verification steps (a token and its draft per sequence) replay, and
// the MTP layer drafts from the replayed step's hidden states.
TEST_F(RecordedStepsTest, SpeculativeDecodingReadsTheReplayedHiddenStates) {
  DecoderModel* recorded = nullptr;
  auto eager = Load(false, true), replaying = Load(true, true, &recorded);
  ASSERT_TRUE(eager && replaying);
  GenerateOptions g;
  g.max_new_tokens = 20;
  g.speculative = true;
  for (const std::vector<int32_t>& prompt : Prompts()) {
    BlockAllocator a1(eager->num_blocks()), a2(replaying->num_blocks());
    auto want = GenerateGreedy(*eager, a1, prompt, g);
    auto got = GenerateGreedy(*replaying, a2, prompt, g);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
    ExpectSame({*got}, {*want});
    EXPECT_GT(got->drafts, 0);
  }
  EXPECT_GT(recorded->steps_replayed(), recorded->steps_recorded());
}

// The CPU's own ops do not record: the model runs every step as it comes.
TEST_F(RecordedStepsTest, TheCpuOpsRunEveryStepAsItComes) {
  DecoderModel* model = nullptr;
  const ModelConfig config = *LoadModelConfig(dir_->path());
  auto ctx = ParallelContext::Single(config);
  auto m =
      DecoderModel::LoadOver(std::make_unique<CpuOps>(), dir_->path(), config, *ctx, {64, 4}, {});
  ASSERT_TRUE(m.ok()) << m.status();
  model = m->get();
  EngineOptions opt;
  opt.block_size = 4;
  opt.kv_blocks = 64;
  auto engine = Engine::Over(config, std::move(ctx), std::move(*m), opt);
  BlockAllocator a(engine->num_blocks());
  GenerateOptions g;
  g.max_new_tokens = 4;
  ASSERT_TRUE(GenerateGreedy(*engine, a, {3, 4}, g).ok());
  EXPECT_EQ(model->steps_recorded(), 0);
  EXPECT_EQ(model->steps_replayed(), 0);
}

}  // namespace
}  // namespace moe
